#!/bin/bash
# Megatron-Bridge config written by `clusterplan export` for llama3.1-8b on 2 x dgx-h100 (8 x H100-SXM5-80GB) = 16 GPUs
# layout: tp1 pp1 dp16(2x8) mbs2 z3 ful, gbs 256 x seq 4096, 1f1b, bf16
# launch (every node, from the Megatron-Bridge checkout): NODE_RANK=<0..1> MASTER_ADDR=<head node> bash megatron_bridge_llama3_1_8b.sh
# the recipe's own data (mock tokens where it names none); run_recipe.py --help lists the dataset options.
set -euo pipefail

RECIPE="${RECIPE:-llama31_8b_pretrain_config}"
OVERRIDES=(
    "model.tensor_model_parallel_size=1"
    "model.pipeline_model_parallel_size=1"
    "model.virtual_pipeline_model_parallel_size=null"
    "model.pipeline_model_parallel_layout=null"
    "model.num_layers_in_first_pipeline_stage=null"
    "model.num_layers_in_last_pipeline_stage=null"
    "model.context_parallel_size=1"
    "model.cp_comm_type=null"
    "model.hierarchical_context_parallel_sizes=null"
    "model.sequence_parallel=false"
    "train.micro_batch_size=2"
    "train.global_batch_size=256"
    "dataset.sequence_length=4096"
    "model.seq_length=4096"
    "model.recompute_granularity=full"
    "model.recompute_method=uniform"
    "model.recompute_num_layers=1"
    "model.cpu_offloading=false"
    "model.cpu_offloading_num_layers=0"
    "ddp.use_distributed_optimizer=true"
    "optimizer.use_distributed_optimizer=true"
    "ddp.use_megatron_fsdp=true"
    "dist.use_megatron_fsdp=true"
    "ddp.data_parallel_sharding_strategy=optim_grads_params"
    "ddp.num_distributed_optimizer_instances=2"
    "ddp.overlap_grad_reduce=true"
    "ddp.overlap_param_gather=true"
    "optimizer.optimizer=adam"
    "optimizer.use_precision_aware_optimizer=false"
    "mixed_precision=bf16_mixed"
    "train.train_iters=100"
)
torchrun --nproc-per-node 8 --nnodes 2 --node-rank "${NODE_RANK:-0}" --master-addr "${MASTER_ADDR:-localhost}" --master-port "${MASTER_PORT:-29500}" \
    scripts/training/run_recipe.py --recipe "$RECIPE" "${OVERRIDES[@]}"
