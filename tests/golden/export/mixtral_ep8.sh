#!/bin/bash
# Megatron-LM config written by `clusterplan export` for mixtral-8x7b on 4 x dgx-h100 (8 x H100-SXM5-80GB) = 32 GPUs
# layout: tp1 pp4 dp8 ep8 mbs1 z1 ful, gbs 256 x seq 4096, 1f1b, bf16
# launch (every node, from the Megatron-LM checkout): NODE_RANK=<0..3> MASTER_ADDR=<head node> bash megatron_mixtral_8x7b.sh
# DATA_ARGS train on mock data; replace them with --data-path and your tokenizer for real runs.
set -euo pipefail

DISTRIBUTED_ARGS=(
    --nproc-per-node 8
    --nnodes 4
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
    --max-position-embeddings 32768
    --normalization RMSNorm
    --group-query-attention
    --num-query-groups 8
    --swiglu
    --position-embedding-type rope
    --rotary-base 1000000
    --untie-embeddings-and-output-weights
    --disable-bias-linear
    --attention-dropout 0
    --hidden-dropout 0
    --num-experts 8
    --moe-router-topk 2
    --moe-ffn-hidden-size 14336
    --moe-grouped-gemm
    --moe-token-dispatcher-type alltoall
    --moe-router-score-function softmax
)
MODEL_PARALLEL_ARGS=(
    --tensor-model-parallel-size 1
    --pipeline-model-parallel-size 4
    --context-parallel-size 1
    --expert-model-parallel-size 8
    --expert-tensor-parallel-size 1
    --use-distributed-optimizer
    --overlap-grad-reduce
    --overlap-param-gather
)
TRAINING_ARGS=(
    --micro-batch-size 1
    --global-batch-size 256
    --recompute-granularity full
    --recompute-method uniform
    --recompute-num-layers 1
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
    --vocab-size 32000
)
torchrun "${DISTRIBUTED_ARGS[@]}" pretrain_gpt.py "${MODEL_ARGS[@]}" "${MODEL_PARALLEL_ARGS[@]}" \
    "${TRAINING_ARGS[@]}" "${DATA_ARGS[@]}"
