"""Pipeline parallelism with torch.distributed.pipelining: which layers each stage holds, the stages of a rank,
and the schedule (GPipe, 1F1B, interleaved 1F1B).

Stage s of pp * vpp lives on pipeline rank s % pp (Megatron-LM's interleaved assignment, Narayanan et al. 2021
section 2.2); torch's looped schedules expect the same.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.training.layout import Layout, chunk_layers

SCHEDULES = {"gpipe": "ScheduleGPipe", "1f1b": "Schedule1F1B", "interleaved-1f1b": "ScheduleInterleaved1F1B"}


def stage_layer_ids(spec: ModelSpec, layout: Layout) -> list[list[int]]:
    """Layer indices of each of the pp * vpp stages, in order (ranks may be uneven: first/last stage layers or a
    per-rank list, Layout.pp_layers)."""
    if layout.pp == 1:
        return [list(range(spec.n_layers))]
    sizes = chunk_layers(spec, layout)  # the chunks the exported configs run (Megatron's layout, torchtitan's lists)
    ids, start = [], 0
    for size in sizes:
        ids.append(list(range(start, start + size)))
        start += size
    return ids


def local_stages(layout: Layout, pp_rank: int) -> list[int]:
    """Stage indices held by pipeline rank `pp_rank`."""
    return [chunk * layout.pp + pp_rank for chunk in range(layout.vpp)]


def make_schedule(layout: Layout, stages: list[nn.Module], stage_ids: list[int], pp_mesh: DeviceMesh,
                  device: torch.device, io_shapes: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
                  loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> object:
    """Wrap `stages` as PipelineStages and build the layout's schedule over `layout.microbatches`."""
    from torch.distributed import pipelining

    n_stages = layout.pp * layout.vpp
    wrapped = []
    for module, index in zip(stages, stage_ids, strict=True):
        example_in, example_out = io_shapes(index)
        wrapped.append(pipelining.PipelineStage(module, index, n_stages, device, input_args=(example_in,),
                                                output_args=(example_out,), group=pp_mesh.get_group()))
    cls = getattr(pipelining, SCHEDULES[layout.schedule])
    if layout.schedule == "interleaved-1f1b":
        return cls(wrapped, n_microbatches=layout.microbatches, loss_fn=loss_fn)
    return cls(wrapped[0], n_microbatches=layout.microbatches, loss_fn=loss_fn)
