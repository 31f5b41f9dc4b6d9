#!/bin/bash
# Megatron-LM config written by `clusterplan export` for llama3.1-8b on 2 x dgx-h100 (8 x H100-SXM5-80GB) = 16 GPUs
# layout: tp1 pp1 dp16(2x8) mbs2 z3 ful, gbs 256 x seq 4096, 1f1b, bf16
# launch (every node, from the Megatron-LM checkout): NODE_RANK=<0..1> MASTER_ADDR=<head node> bash megatron_llama3_1_8b.sh
# DATA_ARGS train on mock data; replace them with --data-path and your tokenizer for real runs.
set -euo pipefail

DISTRIBUTED_ARGS=(
    --nproc-per-node 8
    --nnodes 2
    --node-rank "${NODE_RANK:-0}"
    --master-addr "${MASTER_ADDR:-localhost}"
    --master-port "${MASTER_PORT:-29500}"
)
MODEL_ARGS=(
    --num-layers 32
    --hidden-size 4096
    --ffn-hidden-size 14336
    --num-attention-heads 32
    --seq-length 4096
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
    --tensor-model-parallel-size 1
    --pipeline-model-parallel-size 1
    --context-parallel-size 1
    --use-distributed-optimizer
    --overlap-grad-reduce
    --overlap-param-gather
    --use-megatron-fsdp
    --data-parallel-sharding-strategy optim_grads_params
    --no-gradient-accumulation-fusion
    --ckpt-format fsdp_dtensor
    --num-distributed-optimizer-instances 2
)
TRAINING_ARGS=(
    --micro-batch-size 2
    --global-batch-size 256
    --recompute-granularity full
    --recompute-method uniform
    --recompute-num-layers 1
    --bf16
    --attention-backend flash
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
