"""What a rank holds and how long a step takes, measured exactly.

- State bytes: the local shards (DTensor.to_local) of parameters, gradients and optimizer states of a rank.
- Activations: every tensor autograd saves for backward, through saved-tensor hooks, counted once per storage
  while it is alive (parameters saved for backward are excluded: they are weights); the peak over a step is
  the activation memory. Reentrant checkpoints (apply_ac) save their inputs and recompute through the same hooks.
- Step time: wall clock per training step after warm-up; median and spread across steps.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


def local_bytes(t: torch.Tensor) -> int:
    """Bytes of the part of `t` this rank holds (the local shard of a DTensor)."""
    t = _plain(t)
    return t.numel() * t.element_size()


def state_bytes(params: Iterable[nn.Parameter], optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Exact bytes of weights, gradients and optimizer states (Adam m, v and step counters) held by this rank."""
    params = list(params)
    weights = sum(local_bytes(p) for p in params)
    grads = sum(local_bytes(p.grad) for p in params if p.grad is not None)
    opt = sum(local_bytes(v) for state in optimizer.state.values() for v in state.values()
              if isinstance(v, torch.Tensor))
    return {"weights": weights, "grads": grads, "optimizer": opt}


def _plain(t: torch.Tensor) -> torch.Tensor:
    """The dense tensor behind a DTensor (its local shard) or an AsyncCollectiveTensor (a TP collective's result)."""
    from torch.distributed._functional_collectives import AsyncCollectiveTensor
    from torch.distributed.tensor import DTensor

    while isinstance(t, (DTensor, AsyncCollectiveTensor)):
        t = t.to_local() if isinstance(t, DTensor) else t.trigger_wait()
    return t


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    storage = _plain(t).untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def _is_weight(t: torch.Tensor) -> bool:
    base = t._base if t._base is not None else t
    return isinstance(base, nn.Parameter)


class _Held:
    """One saved tensor; when autograd frees it, the tracker forgets its storage."""

    __slots__ = ("tensor", "tracker", "key")

    def __init__(self, tensor: torch.Tensor, tracker: ActivationTracker, key: tuple[int, int] | None) -> None:
        self.tensor, self.tracker, self.key = tensor, tracker, key

    def __del__(self) -> None:
        if self.key is not None:
            self.tracker.release(self.key)


class ActivationTracker:
    """Live and peak bytes of tensors saved for backward, each storage counted once."""

    def __init__(self) -> None:
        self.refs: dict[tuple[int, int], int] = {}
        self.live_bytes = 0
        self.peak_bytes = 0

    def hold(self, t: torch.Tensor) -> _Held:
        if _is_weight(t) or t.device.type == "meta":
            return _Held(t, self, None)
        key = _storage_key(t)
        if key[1] == 0:
            return _Held(t, self, None)
        if key not in self.refs:
            self.live_bytes += key[1]
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        self.refs[key] = self.refs.get(key, 0) + 1
        return _Held(t, self, key)

    def release(self, key: tuple[int, int]) -> None:
        self.refs[key] -= 1
        if not self.refs[key]:
            del self.refs[key]
            self.live_bytes -= key[1]

    @contextmanager
    def active(self) -> Iterator[ActivationTracker]:
        """Count what autograd saves inside this block (forward, and recomputation during backward)."""
        with torch.autograd.graph.saved_tensors_hooks(self.hold, lambda held: held.tensor):
            yield self


@dataclass(frozen=True, kw_only=True, slots=True)
class StepTimes:
    median_s: float
    min_s: float
    max_s: float

    @property
    def spread(self) -> float:
        """(max - min) / median over the measured steps."""
        return (self.max_s - self.min_s) / self.median_s if self.median_s else 0.0


def summarize_times(times_s: list[float]) -> StepTimes:
    return StepTimes(median_s=statistics.median(times_s), min_s=min(times_s), max_s=max(times_s))


def gpu_peak_bytes(device: torch.device) -> int | None:
    """The CUDA caching allocator's peak since the last reset, or None on CPU."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.max_memory_allocated(device))
