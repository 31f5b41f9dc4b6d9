# torchtitan 0.3 recipe config written by `clusterplan export` for llama3.1-8b on 2 x dgx-h100 (8 x H100-SXM5-80GB) = 16 GPUs
# layout: tp1 pp1 dp16(2x8) mbs2 z3 ful, gbs 256 x seq 4096, 1f1b, bf16
# launch (every node, clusterplan_llama3_1_8b.py on PYTHONPATH): torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint $HEAD_NODE_ADDR:29500 --rdzv-id clusterplan -m torchtitan.train --module clusterplan_llama3_1_8b --config clusterplan_llama3_1_8b
"""clusterplan recipe for llama3.1-8b: tp1 pp1 dp16(2x8) mbs2 z3 ful."""

from torchtitan.config import ParallelismConfig, TrainingConfig
from torchtitan.distributed.activation_checkpoint import FullAC, SelectiveAC  # noqa: F401
from torchtitan.models.llama3 import model_registry
from torchtitan.trainer import Trainer


def clusterplan_llama3_1_8b() -> Trainer.Config:
    return Trainer.Config(
        model_spec=model_registry('8B'),
        hf_assets_path='./assets/hf/Llama-3.1-8B',
        training=TrainingConfig(
            local_batch_size=2,
            global_batch_size=256,
            seq_len=4096,
        ),
        parallelism=ParallelismConfig(
            data_parallel_replicate_degree=2,
            data_parallel_shard_degree=8,
            fsdp_reshard_after_forward='always',
            tensor_parallel_degree=1,
            enable_sequence_parallel=False,
            pipeline_parallel_degree=1,
            context_parallel_degree=1,
            expert_parallel_degree=1,
        ),
        activation_checkpoint=FullAC.Config(),
    )
