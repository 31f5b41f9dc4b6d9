# torchtitan 0.3 recipe config written by `clusterplan export` for mixtral-8x7b on 4 x dgx-h100 (8 x H100-SXM5-80GB) = 32 GPUs
# layout: tp1 pp4 dp8 ep8 mbs1 z1 ful, gbs 256 x seq 4096, 1f1b, bf16
# launch (every node, clusterplan_mixtral_8x7b.py on PYTHONPATH): torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint $HEAD_NODE_ADDR:29500 --rdzv-id clusterplan -m torchtitan.train --module clusterplan_mixtral_8x7b --config clusterplan_mixtral_8x7b
# note: torchtitan ships no mixtral-8x7b: register a model flavor with these dimensions (hidden 4096, 32 layers, 32 heads) under this name
# note: ZeRO-1 runs as FSDP with fsdp_reshard_after_forward "never" (weights stay gathered from forward to backward, gradients reduce-scattered: ZeRO-2)
"""clusterplan recipe for mixtral-8x7b: tp1 pp4 dp8 ep8 mbs1 z1 ful."""

from torchtitan.config import ParallelismConfig, TrainingConfig
from torchtitan.distributed.activation_checkpoint import FullAC, SelectiveAC  # noqa: F401
from torchtitan.models.mixtral import model_registry
from torchtitan.trainer import Trainer


def clusterplan_mixtral_8x7b() -> Trainer.Config:
    return Trainer.Config(
        model_spec=model_registry('mixtral-8x7b'),
        hf_assets_path='./assets/hf/mixtral-8x7b',
        training=TrainingConfig(
            local_batch_size=32,
            global_batch_size=256,
            seq_len=4096,
            disable_cuda_graphs=True,
        ),
        parallelism=ParallelismConfig(
            data_parallel_replicate_degree=1,
            data_parallel_shard_degree=8,
            fsdp_reshard_after_forward='never',
            tensor_parallel_degree=1,
            enable_sequence_parallel=False,
            pipeline_parallel_degree=4,
            pipeline_parallel_schedule='1F1B',
            pipeline_parallel_microbatch_size=1,
            pipeline_parallel_layers_per_stage=8,
            pipeline_parallel_first_stage_less_layers=0,
            pipeline_parallel_last_stage_less_layers=0,
            module_fqns_per_model_part=[['tok_embeddings', 'layers.0', 'layers.1', 'layers.2', 'layers.3', 'layers.4', 'layers.5', 'layers.6', 'layers.7'], ['layers.8', 'layers.9', 'layers.10', 'layers.11', 'layers.12', 'layers.13', 'layers.14', 'layers.15'], ['layers.16', 'layers.17', 'layers.18', 'layers.19', 'layers.20', 'layers.21', 'layers.22', 'layers.23'], ['layers.24', 'layers.25', 'layers.26', 'layers.27', 'layers.28', 'layers.29', 'layers.30', 'layers.31', 'norm', 'lm_head']],
            context_parallel_degree=1,
            expert_parallel_degree=8,
        ),
        activation_checkpoint=FullAC.Config(),
    )
