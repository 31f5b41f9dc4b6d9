"""One rank of a validation run: build the rank's share of the model, train a few steps on random tokens, measure.

Called inside an initialised process group (gloo on CPU, NCCL on GPU) by worker.py.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.tensor.parallel import loss_parallel

from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.training.layout import MESH_AXES, Layout
from clusterplan.runtime.apply_pp import make_schedule
from clusterplan.runtime.model import materialize
from clusterplan.runtime.parallelize import build_mesh, build_stages
from clusterplan.validate.measure import ActivationTracker, gpu_peak_bytes, state_bytes, summarize_times


@dataclass(frozen=True, kw_only=True, slots=True)
class RunSpec:
    model: ModelSpec
    layout: Layout
    """The executed layout (see parallelize.executed_layout)."""
    warmup_steps: int = 1
    steps: int = 3
    seed: int = 0


def _loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())


def _coords(mesh: Any) -> dict[str, int]:
    return {axis: mesh[axis].get_local_rank() for axis in MESH_AXES}


class Trainer:
    """The rank's stages, optimizer and step function."""

    def __init__(self, run: RunSpec, device: torch.device) -> None:
        L, spec = run.layout, run.model
        if L.world != dist.get_world_size():
            raise ValueError(f"the layout needs {L.world} ranks ({L.short()}), launched with {dist.get_world_size()}")
        self.run, self.device = run, device
        self.compute_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.mesh = build_mesh(L, device.type)
        self.coords = _coords(self.mesh)
        self.modules, self.stage_ids = build_stages(spec, L, self.mesh, self.coords["pp"], self.compute_dtype,
                                                    fsdp=L.dp > 1, dispatch=True)
        for m in self.modules:
            materialize(m, device, spec, L.seq, run.seed)
        self.params = [p for m in self.modules for p in m.parameters()]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4)
        self.schedule = self._schedule() if L.pp > 1 else None
        # Same tokens on every tp/pp/cp rank of a data-parallel replica; different across replicas.
        dp_index = self.coords["dp_replicate"] * L.dp_shard + self.coords["dp_shard"]
        g = torch.Generator().manual_seed(run.seed + 1000 + dp_index)
        shape = (L.mbs * L.microbatches, L.seq)
        self.tokens = torch.randint(0, spec.vocab, shape, generator=g).to(device)
        self.labels = torch.randint(0, spec.vocab, shape, generator=g).to(device)

    def _schedule(self) -> object:
        L, spec = self.run.layout, self.run.model
        hidden_dtype = self.compute_dtype if L.dp > 1 else torch.float32
        seq_local = L.seq // L.tp if L.sp and L.tp > 1 else L.seq
        last = L.pp * L.vpp - 1

        def io_shapes(index: int) -> tuple[torch.Tensor, torch.Tensor]:
            hidden = torch.empty(L.mbs, seq_local, spec.hidden, dtype=hidden_dtype, device=self.device,
                                 requires_grad=True)
            tokens = torch.zeros(L.mbs, L.seq, dtype=torch.long, device=self.device)
            logits = torch.empty(L.mbs, L.seq, spec.vocab, dtype=self.compute_dtype, device=self.device)
            return (tokens if index == 0 else hidden), (logits if index == last else hidden)

        return make_schedule(L, self.modules, self.stage_ids, self.mesh["pp"], self.device, io_shapes, _loss)

    def step(self) -> float | None:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"), \
                (loss_parallel() if self.run.layout.tp > 1 else contextlib.nullcontext()):
            loss = self._pipeline_step() if self.schedule is not None else self._accumulate()
        self.optimizer.step()
        return loss

    def _accumulate(self) -> float:
        m, total = self.run.layout.microbatches, 0.0
        for i, (tokens, labels) in enumerate(zip(self.tokens.chunk(m), self.labels.chunk(m), strict=True)):
            self._gradient_sync(last=i == m - 1)
            loss = _loss(self.modules[0](tokens), labels) / m
            loss.backward()
            total += float(loss.detach())
        return total

    def _gradient_sync(self, last: bool) -> None:
        """ZeRO-0 (replicate-only, DDP) reduces gradients once per step, in the last micro-batch's backward, as DDP's
        no_sync does; ZeRO-3 (FSDP2, as torchtitan runs it) reduce-scatters in every micro-batch."""
        layout = self.run.layout
        if layout.dp > 1 and layout.zero == 0:
            for module in self.modules:
                module.set_requires_gradient_sync(last)

    def _pipeline_step(self) -> float | None:
        first = 0 in self.stage_ids
        last = self.run.layout.pp * self.run.layout.vpp - 1 in self.stage_ids
        losses: list[torch.Tensor] = []
        args = (self.tokens,) if first else ()
        kwargs = {"target": self.labels, "losses": losses} if last else {}
        self.schedule.step(*args, **kwargs)
        return float(torch.stack(losses).detach().mean()) if losses else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_rank(run: RunSpec, device: torch.device,
             on_step: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Train warm-up + measured steps; return this rank's measurements. on_step(i, n) before step i of n
    (warm-up steps first, counted from 1)."""
    trainer = Trainer(run, device)
    total = run.warmup_steps + run.steps
    for i in range(run.warmup_steps):
        if on_step is not None:
            on_step(i + 1, total)
        trainer.step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tracker, times_s, loss = ActivationTracker(), [], None
    for i in range(run.steps):
        if on_step is not None:
            on_step(run.warmup_steps + i + 1, total)
        dist.barrier()
        _sync(device)
        start = time.perf_counter()
        with tracker.active():
            loss = trainer.step()
        _sync(device)
        times_s.append(time.perf_counter() - start)
    times = summarize_times(times_s)
    return {"rank": dist.get_rank(), "coords": trainer.coords, "stages": trainer.stage_ids,
            "bytes": {**state_bytes(trainer.params, trainer.optimizer), "activations": tracker.peak_bytes},
            "gpu_peak_bytes": gpu_peak_bytes(device), "step_time_s": {"median": times.median_s, "min": times.min_s,
                                                                    "max": times.max_s, "all": times_s},
            "loss": loss}
