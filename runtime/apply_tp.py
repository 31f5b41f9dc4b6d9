"""Tensor (and sequence) parallelism with DTensor, as torchtitan's llama3 `apply_tp`.

Column-parallel q/k/v and w1/w3, row-parallel wo and w2 (Megatron-LM, Shoeybi et al. 2019); with sequence
parallelism the norms run on sequence shards and the row-parallel outputs reduce-scatter to them
(Korthikanti et al. 2022).
"""

from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)


def _ends_plan(model: nn.Module, sp: bool) -> dict[str, object]:
    plan: dict[str, object] = {}
    if getattr(model, "tok_embeddings", None) is not None:
        plan["tok_embeddings"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1) if sp else Replicate())
    if getattr(model, "norm", None) is not None and sp:
        plan["norm"] = SequenceParallel()
    if getattr(model, "output", None) is not None:
        # Logits stay sharded over the vocabulary; the loss runs under loss_parallel (torchtitan's default).
        plan["output"] = ColwiseParallel(input_layouts=Shard(1) if sp else Replicate(), output_layouts=Shard(-1),
                                         use_local_output=False)
    return plan


def _layer_plan(layer: nn.Module, sp: bool) -> dict[str, object]:
    residual = Shard(1) if sp else Replicate()
    plan: dict[str, object] = {
        "attention.wq": ColwiseParallel(),
        "attention.wk": ColwiseParallel(),
        "attention.wv": ColwiseParallel(),
        "attention.wo": RowwiseParallel(output_layouts=residual),
    }
    # The block's input enters as one DTensor, so q, k and v (and w1, w3) share it and their input gradients add up
    # before one all-reduce (SP: reduce-scatter) per block backward, as Megatron's fused QKV and gate/up GEMMs do;
    # converting it per linear would issue one all-reduce per linear, 7 per layer instead of 4
    # (tests/test_validate_collectives.py counts them).
    plan["attention"] = PrepareModuleInput(input_layouts=(residual, None, None),
                                           desired_input_layouts=(Replicate(), None, None))
    if sp:
        plan["attention_norm"] = SequenceParallel()
        plan["ffn_norm"] = SequenceParallel()
    if hasattr(layer.feed_forward, "router"):  # MoE: experts are split by expert parallelism (apply_ep), not here
        return plan
    plan["feed_forward.w1"] = ColwiseParallel()
    plan["feed_forward.w2"] = RowwiseParallel(output_layouts=residual)
    if layer.feed_forward.w3 is not None:
        plan["feed_forward.w3"] = ColwiseParallel()
    plan["feed_forward"] = PrepareModuleInput(input_layouts=(residual,), desired_input_layouts=(Replicate(),))
    return plan


def apply_tp(model: nn.Module, tp_mesh: DeviceMesh, sp: bool) -> None:
    """Shard the attention heads and MLP columns of every layer over `tp_mesh`."""
    parallelize_module(model, tp_mesh, _ends_plan(model, sp))
    for layer in model.layers.values():
        parallelize_module(layer, tp_mesh, _layer_plan(layer, sp))
