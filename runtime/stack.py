"""The execution stack the runtime's layers are (validate's runs, profile's eager-layer measurement), as data for the
cost model. No torch here: the planner side imports it."""

from __future__ import annotations

from dataclasses import replace

from clusterplan.hardware_db.stacks import MIXED_PRECISION_AUTOCAST, ExecutionStack, get_stack


def runtime_stack(fsdp: bool = False) -> ExecutionStack:
    """The stack validate's runs are: plain PyTorch layers under FSDP2 / DTensor / pipelining, as torchtitan runs
    them in eager mode (DTensor sequence parallelism keeps the gathered linear inputs); their selective recompute
    checkpoints the attention core (runtime/apply_ac.py), not torchtitan's op-level SAC; its step does not clip
    gradients (validate/run.py Trainer.step). Its attention is plain F.scaled_dot_product_attention, which PyTorch
    2.11 runs cuDNN-first on Hopper and Blackwell (our H200 profile), as torchtitan's stack says (sdpa_cudnn_first).
    Its bf16 is torch.autocast around the step over fp32 parameters (validate/run.py Trainer.step; the profile's
    eager layers likewise, profiler/layer.py); with `fsdp` (dp > 1: runtime/apply_fsdp.py) FSDP2's
    MixedPrecisionPolicy casts the parameters and inputs to bf16 first, so the compute runs in the parameters' copy
    as torchtitan's does."""
    stack = replace(get_stack("torchtitan"), selective_recompute="core_attn", grad_clip="none")
    return stack if fsdp else replace(stack, mixed_precision=MIXED_PRECISION_AUTOCAST)
