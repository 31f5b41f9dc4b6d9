# torchtitan 0.3 recipe config written by `clusterplan export` for llama3.1-70b on 8 x dgx-h100 (8 x H100-SXM5-80GB) = 64 GPUs
# layout: tp8 pp4v2 dp2 mbs1 z1 sel+sp, gbs 512 x seq 8192, interleaved-1f1b, bf16
# launch (every node, clusterplan_llama3_1_70b.py on PYTHONPATH): torchrun --nnodes 8 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint $HEAD_NODE_ADDR:29500 --rdzv-id clusterplan -m torchtitan.train --module clusterplan_llama3_1_70b --config clusterplan_llama3_1_70b
# note: ZeRO-1 runs as FSDP with fsdp_reshard_after_forward "never" (weights stay gathered from forward to backward, gradients reduce-scattered: ZeRO-2)
"""clusterplan recipe for llama3.1-70b: tp8 pp4v2 dp2 mbs1 z1 sel+sp."""

from torchtitan.config import ParallelismConfig, TrainingConfig
from torchtitan.distributed.activation_checkpoint import FullAC, SelectiveAC  # noqa: F401
from torchtitan.models.llama3 import model_registry
from torchtitan.trainer import Trainer


def clusterplan_llama3_1_70b() -> Trainer.Config:
    return Trainer.Config(
        model_spec=model_registry('70B'),
        hf_assets_path='./assets/hf/Llama-3.1-70B',
        training=TrainingConfig(
            local_batch_size=256,
            global_batch_size=512,
            seq_len=8192,
            disable_cuda_graphs=True,
        ),
        parallelism=ParallelismConfig(
            data_parallel_replicate_degree=1,
            data_parallel_shard_degree=2,
            fsdp_reshard_after_forward='never',
            tensor_parallel_degree=8,
            enable_sequence_parallel=True,
            pipeline_parallel_degree=4,
            pipeline_parallel_schedule='Interleaved1F1B',
            pipeline_parallel_microbatch_size=1,
            pipeline_parallel_layers_per_stage=10,
            pipeline_parallel_first_stage_less_layers=0,
            pipeline_parallel_last_stage_less_layers=0,
            module_fqns_per_model_part=[['tok_embeddings', 'layers.0', 'layers.1', 'layers.2', 'layers.3', 'layers.4', 'layers.5', 'layers.6', 'layers.7', 'layers.8', 'layers.9'], ['layers.10', 'layers.11', 'layers.12', 'layers.13', 'layers.14', 'layers.15', 'layers.16', 'layers.17', 'layers.18', 'layers.19'], ['layers.20', 'layers.21', 'layers.22', 'layers.23', 'layers.24', 'layers.25', 'layers.26', 'layers.27', 'layers.28', 'layers.29'], ['layers.30', 'layers.31', 'layers.32', 'layers.33', 'layers.34', 'layers.35', 'layers.36', 'layers.37', 'layers.38', 'layers.39'], ['layers.40', 'layers.41', 'layers.42', 'layers.43', 'layers.44', 'layers.45', 'layers.46', 'layers.47', 'layers.48', 'layers.49'], ['layers.50', 'layers.51', 'layers.52', 'layers.53', 'layers.54', 'layers.55', 'layers.56', 'layers.57', 'layers.58', 'layers.59'], ['layers.60', 'layers.61', 'layers.62', 'layers.63', 'layers.64', 'layers.65', 'layers.66', 'layers.67', 'layers.68', 'layers.69'], ['layers.70', 'layers.71', 'layers.72', 'layers.73', 'layers.74', 'layers.75', 'layers.76', 'layers.77', 'layers.78', 'layers.79', 'norm', 'lm_head']],
            context_parallel_degree=1,
            expert_parallel_degree=1,
        ),
        activation_checkpoint=SelectiveAC.Config(),
    )
