#!/bin/bash
# Megatron-Bridge config written by `clusterplan export` for mixtral-8x7b on 4 x dgx-h100 (8 x H100-SXM5-80GB) = 32 GPUs
# layout: tp1 pp4 dp8 ep8 mbs1 z1 ful, gbs 256 x seq 4096, 1f1b, bf16
# launch (every node, from the Megatron-Bridge checkout): NODE_RANK=<0..3> MASTER_ADDR=<head node> bash megatron_bridge_mixtral_8x7b.sh
# the recipe's own data (mock tokens where it names none); run_recipe.py --help lists the dataset options.
# note: Megatron-Bridge's bf16_mixed hands fp8_recipe tensorwise to the optimizer config, so Megatron-Core keeps a full fp32 master shard: 2 B per parameter / dp more than the plan priced (export --to megatron keeps the 2-byte remainders)
# note: no Megatron-Bridge recipe is known here for mixtral-8x7b: set RECIPE to its pre-training recipe (run_recipe.py --help lists them); the overrides set the layout, the recipe the model
set -euo pipefail

RECIPE="${RECIPE:?set RECIPE to the Megatron-Bridge pre-training recipe of mixtral-8x7b}"
OVERRIDES=(
    "model.tensor_model_parallel_size=1"
    "model.pipeline_model_parallel_size=4"
    "model.virtual_pipeline_model_parallel_size=null"
    "model.pipeline_model_parallel_layout=null"
    "model.num_layers_in_first_pipeline_stage=null"
    "model.num_layers_in_last_pipeline_stage=null"
    "model.context_parallel_size=1"
    "model.cp_comm_type=null"
    "model.hierarchical_context_parallel_sizes=null"
    "model.sequence_parallel=false"
    "model.expert_model_parallel_size=8"
    "model.expert_tensor_parallel_size=1"
    "model.moe_token_dispatcher_type=alltoall"
    "model.moe_expert_capacity_factor=null"
    "model.moe_pad_expert_input_to_capacity=false"
    "model.overlap_moe_expert_parallel_comm=false"
    "model.delay_wgrad_compute=false"
    "train.micro_batch_size=1"
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
torchrun --nproc-per-node 8 --nnodes 4 --node-rank "${NODE_RANK:-0}" --master-addr "${MASTER_ADDR:-localhost}" --master-port "${MASTER_PORT:-29500}" \
    scripts/training/run_recipe.py --recipe "$RECIPE" "${OVERRIDES[@]}"
