"""Fully sharded data parallelism with FSDP2 `fully_shard` (ZeRO-3; HSDP on a 2-D mesh), as torchtitan's apply_fsdp.

Each transformer block is its own FSDP unit, then the root takes the embedding, norm and head.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard


def apply_fsdp(model: nn.Module, dp_mesh: DeviceMesh, param_dtype: torch.dtype, reshard_after_forward: bool) -> None:
    """Shard parameters, gradients and optimizer states over `dp_mesh` (1-D: FSDP, 2-D replicate x shard: HSDP)."""
    # Parameters stay fp32 when sharded (the master copy); compute runs in param_dtype, grads reduce in fp32.
    mp_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for layer in model.layers.values():
        fully_shard(layer, mesh=dp_mesh, mp_policy=mp_policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=dp_mesh, mp_policy=mp_policy, reshard_after_forward=reshard_after_forward)
