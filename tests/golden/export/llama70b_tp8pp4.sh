#!/bin/bash
# Megatron-LM config written by `clusterplan export` for llama3.1-70b on 8 x dgx-h100 (8 x H100-SXM5-80GB) = 64 GPUs
# layout: tp8 pp4v2 dp2 mbs1 z1 sel+sp, gbs 512 x seq 8192, interleaved-1f1b, bf16
# launch (every node, from the Megatron-LM checkout): NODE_RANK=<0..7> MASTER_ADDR=<head node> bash megatron_llama3_1_70b.sh
# DATA_ARGS train on mock data; replace them with --data-path and your tokenizer for real runs.
set -euo pipefail

export CUDA_DEVICE_MAX_CONNECTIONS=1
DISTRIBUTED_ARGS=(
    --nproc-per-node 8
    --nnodes 8
    --node-rank "${NODE_RANK:-0}"
    --master-addr "${MASTER_ADDR:-localhost}"
    --master-port "${MASTER_PORT:-29500}"
)
MODEL_ARGS=(
    --num-layers 80
    --hidden-size 8192
    --ffn-hidden-size 28672
    --num-attention-heads 64
    --seq-length 8192
    --max-position-embeddings 131072
    --normalization RMSNorm
    --group-query-attention
    --num-query-groups 8
    --swiglu
    --position-embedding-type rope
    --rotary-base 500000
    --use-rope-scaling
    --rope-scaling-factor 8
    --untie-embeddings-and-output-weights
    --disable-bias-linear
    --attention-dropout 0
    --hidden-dropout 0
)
MODEL_PARALLEL_ARGS=(
    --tensor-model-parallel-size 8
    --pipeline-model-parallel-size 4
    --num-layers-per-virtual-pipeline-stage 10
    --context-parallel-size 1
    --sequence-parallel
    --use-distributed-optimizer
    --overlap-grad-reduce
    --overlap-param-gather
)
TRAINING_ARGS=(
    --micro-batch-size 1
    --global-batch-size 512
    --recompute-granularity selective
    --bf16
    --attention-backend flash
    --use-precision-aware-optimizer
    --train-iters 100
    --lr 3e-4
    --lr-decay-style cosine
)
DATA_ARGS=(
    --mock-data
    --tokenizer-type NullTokenizer
    --vocab-size 128256
)
torchrun "${DISTRIBUTED_ARGS[@]}" pretrain_gpt.py "${MODEL_ARGS[@]}" "${MODEL_PARALLEL_ARGS[@]}" \
    "${TRAINING_ARGS[@]}" "${DATA_ARGS[@]}"
