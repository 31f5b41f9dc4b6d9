# torchtitan main recipe config written by `clusterplan export` for llama3.1-70b on 8 x dgx-h100 (8 x H100-SXM5-80GB) = 64 GPUs
# layout: tp8 pp4v2 dp2 mbs1 z1 sel+sp, gbs 512 x seq 8192, interleaved-1f1b, bf16
# launch (every node, clusterplan_llama3_1_70b.py on PYTHONPATH): torchrun --nnodes 8 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint $HEAD_NODE_ADDR:29500 --rdzv-id clusterplan -m torchtitan.train --module clusterplan_llama3_1_70b --config clusterplan_llama3_1_70b
"""clusterplan recipe for llama3.1-70b: tp8 pp4v2 dp2 mbs1 z1 sel+sp."""

from torchtitan.config import ParallelismConfig, TrainingConfig
from torchtitan.distributed.activation_checkpoint import FullAC, SelectiveAC  # noqa: F401
from torchtitan.models.llama3 import model_registry
from torchtitan.trainer import Trainer


def clusterplan_llama3_1_70b() -> Trainer.Config:
    return Trainer.Config(
        model_spec=model_registry('70B'),
        training=TrainingConfig(
            num_tokens_per_microbatch_per_dp_rank=1 * 8192,
            num_tokens_per_train_step=512 * 8192,
            max_context_length=8192,
        ),
        parallelism=ParallelismConfig(
            data_parallel_replicate_degree=1,
            data_parallel_shard_degree=2,
            fsdp_reshard_after_forward='never',
            tensor_parallel_degree=8,
            enable_sequence_parallel=True,
            pipeline_parallel_degree=4,
            pipeline_parallel_schedule='Interleaved1F1B',
            num_pp_microbatches=256,
            context_parallel_degree=1,
            expert_parallel_degree=1,
        ),
        activation_checkpoint=SelectiveAC.Config(),
    )
