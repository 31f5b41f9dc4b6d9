"""Count the collectives torch issues in one training step of validate's own runtime, per kind, group and bytes.

One CPU process pretends to be rank 0 of the layout's world under torch's fake process group (collectives are
no-ops, the compute is real; pipelines and expert dispatch, which need real data from their peers, run every rank
under gloo) and runs validate's Trainer step (runtime/: DTensor TP/SP, FSDP2/HSDP, EP dispatch,
torch.distributed.pipelining) under a dispatch mode that records every c10d and functional collective with the
size of its group and its bytes in nccl-tests' convention (models/training/collectives.py); integer tensors (the
dispatch's token counts and expert ids) are counted apart as `KIND/index`. Running the same
layout with one and with two transformer layers and subtracting leaves exactly what one layer adds.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist
from torch.testing._internal.distributed.fake_pg import FakeStore
from torch.utils._python_dispatch import TorchDispatchMode

from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.training.layout import Layout

# op name -> (kind, index of the tensor(s) whose bytes are the nccl-tests size, multiply by the group size)
_OPS: dict[str, tuple[str, int, bool]] = {
    "allreduce_": ("all_reduce", 0, False), "all_reduce": ("all_reduce", 0, False),
    "_allgather_base_": ("all_gather", 0, False), "allgather_into_tensor_coalesced_": ("all_gather", 0, False),
    "all_gather_into_tensor": ("all_gather", 0, True),
    "_reduce_scatter_base_": ("reduce_scatter", 1, False), "reduce_scatter_tensor_coalesced_": ("reduce_scatter", 1, False),
    "reduce_scatter_tensor": ("reduce_scatter", 0, False),
    "alltoall_base_": ("all_to_all", 1, False), "all_to_all_single": ("all_to_all", 0, False),
    "send": ("send_recv", 0, False), "recv_": ("send_recv", 0, False),
}
# Ops that only wait on or wrap a collective already counted.
_IGNORED = {"wait_tensor", "_wrap_tensor_autograd", "barrier", "broadcast_", "monitored_barrier_"}


@dataclass(frozen=True, slots=True)
class Issued:
    """Calls and total bytes per (kind, group size)."""

    calls: Counter
    size_bytes: Counter

    def __sub__(self, other: Issued) -> Issued:
        keys = set(self.calls) | set(other.calls)
        return Issued(calls=Counter({k: self.calls[k] - other.calls[k] for k in keys}),
                      size_bytes=Counter({k: self.size_bytes[k] - other.size_bytes[k] for k in keys}))


def _bytes(arg: Any) -> int:
    if isinstance(arg, torch.Tensor):
        return arg.numel() * arg.element_size()
    if isinstance(arg, list | tuple):
        return sum(_bytes(a) for a in arg)
    return 0


def _is_index(arg: Any) -> bool:
    tensor = arg[0] if isinstance(arg, list | tuple) and arg else arg
    return isinstance(tensor, torch.Tensor) and not tensor.is_floating_point()


def _group_size(args: tuple, kwargs: dict) -> int:
    """Ranks in the collective's group: c10d ops carry the ProcessGroup, functional ops name it."""
    for arg in (*args, *kwargs.values()):
        try:
            if isinstance(arg, torch.ScriptObject):
                return int(dist.ProcessGroup.unbox(arg).size())
            if isinstance(arg, str):
                return int(dist.distributed_c10d._resolve_process_group(arg).size())
        except (KeyError, RuntimeError, ValueError, AttributeError):
            continue
    return 0


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter = Counter()
        self.size_bytes: Counter = Counter()
        self.unknown: Counter = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func.namespace in ("c10d", "_c10d_functional", "_c10d_functional_autograd"):
            name = func._opname
            if name in _OPS:
                kind, index, times_group = _OPS[name]
                group = _group_size(args, kwargs)
                size = _bytes(args[index]) * (group if times_group else 1)
                if _is_index(args[index]):  # routing metadata (token counts, expert ids), not activations
                    kind += "/index"
                self.calls[(kind, group)] += 1
                self.size_bytes[(kind, group)] += size
            elif name not in _IGNORED:
                self.unknown[name] += 1
        return func(*args, **kwargs)


def _step(spec: ModelSpec, layout: Layout) -> Issued:
    """Inside an initialised process group: one warm-up step (lazy set-up traffic of FSDP2 and pipelining), then
    one recorded step of validate's Trainer."""
    from clusterplan.validate.run import RunSpec, Trainer

    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\..*")
    trainer = Trainer(RunSpec(model=spec, layout=layout), torch.device("cpu"))
    trainer.step()
    recorder = _Recorder()
    with recorder:
        trainer.step()
    if recorder.unknown:
        raise RuntimeError(f"collectives the counter does not know: {dict(recorder.unknown)}")
    return Issued(calls=recorder.calls, size_bytes=recorder.size_bytes)


def issued_per_step(spec: ModelSpec, layout: Layout) -> Issued:
    """Collectives rank 0 issues in one training step of `spec` under `layout`.

    One process plays rank 0 under the fake process group, except where ranks must exchange real data: a pipeline
    sends tensor metadata between stages before its first step, and the expert dispatch sizes its all-to-alls from
    the token counts it receives; those layouts run every rank as a gloo process."""
    if layout.pp > 1 or layout.ep > 1:
        return _gloo_run(spec, layout)
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=layout.world)
    try:
        return _step(spec, layout)
    finally:
        dist.destroy_process_group()


def _gloo_rank(rank: int, spec: ModelSpec, layout: Layout, port: int, results: Any) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=layout.world)
    try:
        issued = _step(spec, layout)
        if rank == 0:
            results.put(issued)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _gloo_run(spec: ModelSpec, layout: Layout) -> Issued:
    import torch.multiprocessing as mp

    from clusterplan.runtime.procs import free_port

    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    mp.start_processes(_gloo_rank, args=(spec, layout, free_port(), results), nprocs=layout.world, join=True,
                       start_method="spawn")
    return results.get()


def issued_per_layer(spec: ModelSpec, layout: Layout) -> Issued:
    """What one more transformer layer adds to a step: the two-layer run minus the one-layer run (the embedding,
    head, loss and pipeline boundaries cancel). Layers per stage: one and two on every pipeline stage."""
    pp = layout.pp * layout.vpp
    one = issued_per_step(replace(spec, n_layers=pp), layout)
    two = issued_per_step(replace(spec, n_layers=2 * pp), layout)
    return two - one
