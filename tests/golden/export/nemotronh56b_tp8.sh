#!/bin/bash
# Megatron-LM config written by `clusterplan export` for nemotron-h-56b on 4 x dgx-h100 (8 x H100-SXM5-80GB) = 32 GPUs
# layout: tp8 pp1 dp4 mbs1 z1 non+sp fp8:tensorwise-params, gbs 96 x seq 8192, 1f1b, fp8
# launch (every node, from the Megatron-LM checkout): NODE_RANK=<0..3> MASTER_ADDR=<head node> bash megatron_nemotron_h_56b.sh
# DATA_ARGS train on mock data; replace them with --data-path and your tokenizer for real runs.
set -euo pipefail

export CUDA_DEVICE_MAX_CONNECTIONS=1
DISTRIBUTED_ARGS=(
    --nproc-per-node 8
    --nnodes 4
    --node-rank "${NODE_RANK:-0}"
    --master-addr "${MASTER_ADDR:-localhost}"
    --master-port "${MASTER_PORT:-29500}"
)
MODEL_ARGS=(
    --num-layers 118
    --hidden-size 8192
    --ffn-hidden-size 32768
    --num-attention-heads 64
    --seq-length 8192
    --max-position-embeddings 8192
    --normalization RMSNorm
    --group-query-attention
    --num-query-groups 8
    --kv-channels 128
    --squared-relu
    --position-embedding-type none
    --untie-embeddings-and-output-weights
    --disable-bias-linear
    --attention-dropout 0
    --hidden-dropout 0
    --is-hybrid-model
    --hybrid-override-pattern 'M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-'
    --mamba-num-heads 256
    --mamba-head-dim 64
    --mamba-state-dim 256
    --mamba-num-groups 8
    --spec megatron.core.models.mamba.mamba_layer_specs mamba_stack_spec
)
MODEL_PARALLEL_ARGS=(
    --tensor-model-parallel-size 8
    --pipeline-model-parallel-size 1
    --context-parallel-size 1
    --sequence-parallel
    --use-distributed-optimizer
    --overlap-grad-reduce
    --overlap-param-gather
)
TRAINING_ARGS=(
    --micro-batch-size 1
    --global-batch-size 96
    --bf16
    --fp8-format hybrid
    --fp8-recipe tensorwise
    --fp8-param-gather
    --attention-backend flash
    --train-iters 100
    --lr 3e-4
    --lr-decay-style cosine
)
DATA_ARGS=(
    --mock-data
    --tokenizer-type NullTokenizer
    --vocab-size 131072
)
torchrun "${DISTRIBUTED_ARGS[@]}" pretrain_mamba.py "${MODEL_ARGS[@]}" "${MODEL_PARALLEL_ARGS[@]}" \
    "${TRAINING_ARGS[@]}" "${DATA_ARGS[@]}"
