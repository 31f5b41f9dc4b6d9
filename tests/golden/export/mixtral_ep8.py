# torchtitan main recipe config written by `clusterplan export` for mixtral-8x7b on 4 x dgx-h100 (8 x H100-SXM5-80GB) = 32 GPUs
# layout: tp1 pp4 dp8 ep8 mbs1 z1 ful, gbs 256 x seq 4096, 1f1b, bf16
# launch (every node, clusterplan_mixtral_8x7b.py on PYTHONPATH): torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint $HEAD_NODE_ADDR:29500 --rdzv-id clusterplan -m torchtitan.train --module clusterplan_mixtral_8x7b --config clusterplan_mixtral_8x7b
# note: torchtitan ships no mixtral-8x7b: register a model flavor with these dimensions (hidden 4096, 32 layers, 32 heads) under this name
"""clusterplan recipe for mixtral-8x7b: tp1 pp4 dp8 ep8 mbs1 z1 ful."""

from torchtitan.config import ParallelismConfig, TrainingConfig
from torchtitan.distributed.activation_checkpoint import FullAC, SelectiveAC  # noqa: F401
from torchtitan.models.mixtral import model_registry
from torchtitan.trainer import Trainer


def clusterplan_mixtral_8x7b() -> Trainer.Config:
    return Trainer.Config(
        model_spec=model_registry('mixtral-8x7b'),
        training=TrainingConfig(
            num_tokens_per_microbatch_per_dp_rank=1 * 4096,
            num_tokens_per_train_step=256 * 4096,
            max_context_length=4096,
        ),
        parallelism=ParallelismConfig(
            data_parallel_replicate_degree=1,
            data_parallel_shard_degree=8,
            fsdp_reshard_after_forward='never',
            tensor_parallel_degree=1,
            enable_sequence_parallel=False,
            pipeline_parallel_degree=4,
            pipeline_parallel_schedule='1F1B',
            num_pp_microbatches=32,
            context_parallel_degree=1,
            expert_parallel_degree=8,
        ),
        activation_checkpoint=FullAC.Config(),
    )
