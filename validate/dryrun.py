"""Dry run at full scale: the real model at the plan's full world size in one CPU process, no memory needed.

For each distinct pipeline position, this process pretends to be one rank of that stage under torch's fake
process group (`init_process_group("fake")`, collectives are no-ops) and builds the stage on the meta device
with the same parallel APIs as a real run (DTensor TP, EP sharding, FSDP2). The shard shapes torch picks give
the exact elements per rank; bytes follow the plan's precision/optimizer convention (models/training/memory.py
bytes_per_param). ZeRO-3 shards come from FSDP2 itself; ZeRO-1/2 partitions (not a torch runtime feature) are
computed as Megatron's distributed optimizer does, over dp_shard x cp (experts: expert-data-parallel ranks).
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.testing._internal.distributed.fake_pg import FakeStore

from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.memory import bytes_per_param
from clusterplan.progress import ProgressFn
from clusterplan.runtime.parallelize import build_mesh, build_stages
from clusterplan.validate.measure import local_bytes
from clusterplan.validate.predict import position_of, predicted_bytes, rank_layout, runtime_stack
from clusterplan.validate.report import error_pct


def _uneven(module: nn.Module) -> list[str]:
    """Parameters whose sharded dimension does not divide evenly (DTensor pads them silently), once per name
    pattern (`layers.*.attention.wq.weight`)."""
    from torch.distributed.tensor import DTensor, Shard

    found: dict[str, str] = {}
    for name, p in module.named_parameters():
        if not isinstance(p, DTensor):
            continue
        for placement, size in zip(p.placements, p.device_mesh.shape, strict=True):
            if isinstance(placement, Shard) and p.shape[placement.dim] % size:
                pattern = re.sub(r"^layers\.\d+\.", "layers.*.", name)
                found.setdefault(pattern, f"{pattern}: dim {placement.dim} of {tuple(p.shape)} over {size} ranks")
    return list(found.values())


def _elements(modules: list[nn.Module]) -> tuple[float, float]:
    """(dense, expert) elements this rank holds, from the local shards (fp32 on meta: 4 bytes each)."""
    dense = expert = 0.0
    for module in modules:
        for name, p in module.named_parameters():
            n = local_bytes(p) / p.element_size()
            if ".experts." in name:
                expert += n
            else:
                dense += n
    return dense, expert


def _stage_elements(model: ModelSpec, layout: Layout, rank: int, pp_rank: int, fsdp: bool) -> dict[str, Any]:
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=layout.world)
    try:
        mesh = build_mesh(layout, "cpu")
        modules, stage_ids = build_stages(model, layout, mesh, pp_rank, torch.bfloat16, fsdp=fsdp)
        dense, expert = _elements(modules)
        return {"dense": dense, "expert": expert, "stages": stage_ids,
                "uneven": [u for m in modules for u in _uneven(m)]}
    finally:
        dist.destroy_process_group()


def _state_bytes(layout: Layout, tp_elems: dict[str, Any], fsdp_elems: dict[str, Any] | None) -> dict[str, float]:
    """Weights, grads and optimizer bytes of the rank under the plan's ZeRO stage, at the runtime's bytes per
    parameter: its FSDP2 keeps the parameters in fp32 (runtime/apply_fsdp.py), so no separate master."""
    fp32_params = runtime_stack().fsdp_impl == "fsdp2"
    wb, gb, ob = (float(np.asarray(x)[0]) for x in bytes_per_param(LayoutArrays.from_layouts([layout]),
                                                                   fp32_params=fp32_params))
    dense_shard = layout.dp_shard * layout.cp
    expert_shard = max(1.0, layout.dp_shard * layout.cp * layout.tp / (layout.ep * layout.etp))
    full = tp_elems["dense"] + tp_elems["expert"]
    zero_part = tp_elems["dense"] / dense_shard + tp_elems["expert"] / expert_shard
    sharded = full if fsdp_elems is None else fsdp_elems["dense"] + fsdp_elems["expert"]
    z = layout.zero
    return {"weights": wb * (sharded if z >= 3 else full),
            "grads": gb * (sharded if z >= 3 else zero_part if z >= 2 else full),
            "optimizer": ob * (sharded if z >= 3 else zero_part if z >= 1 else full)}


def dry_run(model: ModelSpec, layout: Layout, progress: ProgressFn | None = None) -> list[dict[str, Any]]:
    """One entry per distinct pipeline position: elements per rank, bytes vs the memory model, problems.
    progress(done, total, position) before each position is built."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\..*")
    per_stage = layout.world // layout.pp
    # the middle position's rank: the second, or under a per-rank list the heaviest middle rank (what it prices)
    middle = 1 + max(range(layout.pp - 2), key=lambda i: layout.pp_layers[i + 1]) \
        if layout.pp_layers and layout.pp > 2 else min(1, layout.pp - 1)
    pp_ranks = sorted({0, middle, layout.pp - 1})
    results = []
    for k, pp_rank in enumerate(pp_ranks):
        rank, pos = pp_rank * per_stage, position_of(pp_rank, layout.pp)
        predicted = predicted_bytes(model, rank_layout(layout, pp_rank))
        if progress is not None:
            progress(k, len(pp_ranks), f"{pos} stage")
        entry: dict[str, Any] = {"rank": rank, "pp_rank": pp_rank, "position": pos}
        try:
            tp_elems = _stage_elements(model, layout, rank, pp_rank, fsdp=False)
            fsdp_elems = _stage_elements(model, layout, rank, pp_rank, fsdp=True) if layout.zero == 3 else None
        except Exception as exc:  # the runtime rejected this sharding: that is the finding
            entry["rejected"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            results.append(entry)
            continue
        measured = _state_bytes(layout, tp_elems, fsdp_elems)
        entry.update({"stages": tp_elems["stages"], "uneven": tp_elems["uneven"],
                      "elements": {"dense": tp_elems["dense"], "expert": tp_elems["expert"],
                                   "fsdp_shard": None if fsdp_elems is None
                                   else fsdp_elems["dense"] + fsdp_elems["expert"]},
                      "terms": {t: {"predicted_bytes": round(predicted[pos][t]), "runtime_bytes": round(measured[t]),
                                    "error_pct": error_pct(predicted[pos][t], measured[t])}
                                for t in ("weights", "grads", "optimizer")}})
        results.append(entry)
    if progress is not None:
        progress(len(pp_ranks), len(pp_ranks), "done")
    return results
