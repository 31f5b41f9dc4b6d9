#!/bin/bash
# Megatron-Bridge config written by `clusterplan export` for llama3.1-70b on 8 x dgx-h100 (8 x H100-SXM5-80GB) = 64 GPUs
# layout: tp8 pp4v2 dp2 mbs1 z1 sel+sp, gbs 512 x seq 8192, interleaved-1f1b, bf16
# launch (every node, from the Megatron-Bridge checkout): NODE_RANK=<0..7> MASTER_ADDR=<head node> bash megatron_bridge_llama3_1_70b.sh
# the recipe's own data (mock tokens where it names none); run_recipe.py --help lists the dataset options.
# note: Megatron-Bridge's bf16_mixed hands fp8_recipe tensorwise to the optimizer config, so Megatron-Core keeps a full fp32 master shard: 2 B per parameter / dp more than the plan priced (export --to megatron keeps the 2-byte remainders)
set -euo pipefail

export CUDA_DEVICE_MAX_CONNECTIONS=1
RECIPE="${RECIPE:-llama31_70b_pretrain_config}"
OVERRIDES=(
    "model.tensor_model_parallel_size=8"
    "model.pipeline_model_parallel_size=4"
    "model.virtual_pipeline_model_parallel_size=2"
    "model.pipeline_model_parallel_layout=null"
    "model.num_layers_in_first_pipeline_stage=null"
    "model.num_layers_in_last_pipeline_stage=null"
    "model.context_parallel_size=1"
    "model.cp_comm_type=null"
    "model.hierarchical_context_parallel_sizes=null"
    "model.sequence_parallel=true"
    "train.micro_batch_size=1"
    "train.global_batch_size=512"
    "dataset.sequence_length=8192"
    "model.seq_length=8192"
    "model.recompute_granularity=selective"
    "model.recompute_method=null"
    "model.recompute_num_layers=null"
    "model.recompute_modules=[core_attn]"
    "model.cpu_offloading=false"
    "model.cpu_offloading_num_layers=0"
    "ddp.use_distributed_optimizer=true"
    "optimizer.use_distributed_optimizer=true"
    "ddp.use_megatron_fsdp=false"
    "dist.use_megatron_fsdp=false"
    "ddp.data_parallel_sharding_strategy=no_shard"
    "ddp.num_distributed_optimizer_instances=1"
    "ddp.overlap_grad_reduce=true"
    "ddp.overlap_param_gather=true"
    "optimizer.optimizer=adam"
    "optimizer.use_precision_aware_optimizer=false"
    "mixed_precision=bf16_mixed"
    "train.train_iters=100"
)
torchrun --nproc-per-node 8 --nnodes 8 --node-rank "${NODE_RANK:-0}" --master-addr "${MASTER_ADDR:-localhost}" --master-port "${MASTER_PORT:-29500}" \
    scripts/training/run_recipe.py --recipe "$RECIPE" "${OVERRIDES[@]}"
