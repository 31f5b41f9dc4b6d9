"""Build a rank's part of the model and apply the layout in torchtitan's order: PP split -> TP -> AC -> FSDP.

Used by the real run (gloo on CPU, NCCL on GPU) and by the dry run (fake process group, meta device) alike.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from clusterplan.errors import BadInputError
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.training.layout import MESH_AXES, Layout
from clusterplan.runtime.apply_ac import apply_ac
from clusterplan.runtime.apply_ep import apply_ep
from clusterplan.runtime.apply_fsdp import apply_fsdp
from clusterplan.runtime.apply_pp import local_stages, stage_layer_ids
from clusterplan.runtime.apply_tp import apply_tp
from clusterplan.runtime.model import Decoder, keep_stage


def build_mesh(layout: Layout, device_type: str) -> DeviceMesh:
    """The 5-D mesh (pp, dp_replicate, dp_shard, cp, tp), tp innermost, as torchtitan's ParallelDims."""
    shape = tuple(layout.mesh()[axis] for axis in MESH_AXES)
    return init_device_mesh(device_type, shape, mesh_dim_names=MESH_AXES)


def dp_mesh(mesh: DeviceMesh, layout: Layout) -> DeviceMesh:
    """The mesh FSDP shards over: dp_shard (x cp), with dp_replicate as the outer HSDP axis when > 1."""
    if layout.cp > 1:
        shard = mesh["dp_shard", "cp"]._flatten("dp_shard_cp")
        return mesh["dp_replicate", "dp_shard_cp"] if layout.dp_replicate > 1 else shard
    return mesh["dp_replicate", "dp_shard"] if layout.dp_replicate > 1 else mesh["dp_shard"]


def build_stages(spec: ModelSpec, layout: Layout, mesh: DeviceMesh, pp_rank: int, param_dtype: torch.dtype,
                 fsdp: bool, dispatch: bool = False) -> tuple[list[nn.Module], list[int]]:
    """The (meta-device) modules of this rank's pipeline stages with TP, EP, AC and (when `fsdp`) FSDP2 applied;
    `dispatch` wires the expert-parallel all-to-all for a real run (the dry run only needs the shards)."""
    if spec.tied_embeddings and layout.pp > 1:
        raise BadInputError(f"model {spec.name}: tied embeddings with pp > 1 are not built by validate; use pp=1")
    ids = stage_layer_ids(spec, layout)
    stage_ids = local_stages(layout, pp_rank)
    modules = []
    for index in stage_ids:
        with torch.device("meta"):
            module = keep_stage(Decoder(spec, layout.seq), ids[index], first=index == 0, last=index == len(ids) - 1)
        if layout.tp > 1:
            apply_tp(module, mesh["tp"], layout.sp)
        if spec.is_moe and layout.ep * layout.etp > 1:
            apply_ep(module, mesh, layout, fsdp, dispatch)
        apply_ac(module, layout.recompute)
        if fsdp:
            apply_fsdp(module, dp_mesh(mesh, layout), param_dtype, reshard_after_forward=layout.pp == 1)
        modules.append(module)
    return modules, stage_ids
