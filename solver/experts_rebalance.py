"""How often to rebalance expert placement when routing drifts, and what each rebalance moves.

Protocol (as engines rebalance online, e.g. SGLang/vLLM EPLB every N steps from a recent load window): window 0's
placement is computed from window 0; afterwards, with interval k, a new placement is computed at every window t
with t % k == 0 from window t-1's loads (the most recent complete window) and serves windows t .. t+k-1.
`static` never rebalances; `oracle` places every window from its own loads (a bound no online policy reaches).

A rebalance moves, for every MoE layer and GPU, the expert replicas the GPU newly holds: over NVLink when the old
placement had that expert on the same node, else over the GPU's NIC. Its time is the slowest GPU's received bytes
over those links (weights move while serving pauses, SGLang's rebalance; an upper bound where engines overlap it).
The amortised cost spreads it over the k windows of `steps_per_window` steps each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from clusterplan.models.moe.metrics import DispatchRule, Fabric, Placement, evaluate, summary
from clusterplan.models.moe.windows import RoutingWindows


@dataclass(frozen=True, kw_only=True, slots=True)
class Move:
    nvlink_bytes: float
    nic_bytes: float
    time_s: float
    replicas_moved: int


@dataclass(frozen=True, kw_only=True, slots=True)
class IntervalResult:
    interval: str
    """Windows between rebalances ('1', '2', ..., 'static', 'oracle')."""
    rebalances: int
    moe_s_per_step: float
    """Mean over windows of all layers' dispatch+combine plus expert time of one step."""
    worst_max_over_mean: float
    moved_bytes_per_rebalance: float
    rebalance_s: float
    """Mean time of one rebalance."""
    overhead_s_per_step: float
    """Rebalance time spread over the steps it serves."""

    @property
    def total_s_per_step(self) -> float:
        return self.moe_s_per_step + self.overhead_s_per_step


def move_cost(old: Placement, new: Placement, expert_bytes: float, fabric: Fabric) -> Move:
    """Bytes each GPU must receive to go from `old` to `new`, and the slowest GPU's time to receive them."""
    node = np.arange(new.n_gpus) // new.gpus_per_node
    nvl = np.zeros(new.n_gpus)
    nic = np.zeros(new.n_gpus)
    moved = 0
    for layer in range(new.n_layers):
        before, after = old.per_gpu(layer) > 0, new.per_gpu(layer) > 0  # [E, G]
        on_node_before = np.zeros_like(before)
        for n in range(new.n_nodes):
            on_node_before[:, node == n] = before[:, node == n].any(axis=1, keepdims=True)
        incoming = after & ~before
        moved += int(incoming.sum())
        nvl += (incoming & on_node_before).sum(axis=0) * expert_bytes
        nic += (incoming & ~on_node_before).sum(axis=0) * expert_bytes
    time_s = float(np.max(nvl / fabric.scale_up_busbw_bytes_per_s + nic / fabric.scale_out_busbw_bytes_per_s))
    return Move(nvlink_bytes=float(nvl.sum()), nic_bytes=float(nic.sum()), time_s=time_s, replicas_moved=moved)


def _moe_s(placement: Placement, windows: RoutingWindows, t: int, fabric: Fabric,
           rule: DispatchRule) -> tuple[float, float]:
    s = summary(evaluate(placement, windows.window(t), fabric, 1.0, rule))
    return s["all_to_all_s"] + s["expert_compute_s"], s["max_over_mean_worst"]


def compare_intervals(windows: RoutingWindows, place: Callable[[int], Placement], intervals: list[int],
                      fabric: Fabric, rule: DispatchRule, expert_bytes: float,
                      steps_per_window: float) -> list[IntervalResult]:
    """Each interval's mean MoE time per step, rebalance traffic and amortised cost; `place(i)` is the placement
    computed from window i's loads (cached: every interval reuses it)."""
    cache: dict[int, Placement] = {}

    def placement_from(i: int) -> Placement:
        if i not in cache:
            cache[i] = place(i)
        return cache[i]

    n = windows.n_windows
    schedules: list[tuple[str, list[int]]] = [(str(k), [0] + [t - 1 if t % k == 0 else -1 for t in range(1, n)])
                                             for k in intervals]
    schedules.append(("static", [0] + [-1] * (n - 1)))
    schedules.append(("oracle", list(range(n))))
    out = []
    for name, sources in schedules:
        current = placement_from(sources[0])
        times, worst, moves = [], [], []
        for t in range(n):
            if t and sources[t] >= 0:
                new = placement_from(sources[t])
                moves.append(move_cost(current, new, expert_bytes, fabric))
                current = new
            moe_s, ratio = _moe_s(current, windows, t, fabric, rule)
            times.append(moe_s)
            worst.append(ratio)
        rebalance_s = float(np.mean([m.time_s for m in moves])) if moves else 0.0
        moved = float(np.mean([m.nvlink_bytes + m.nic_bytes for m in moves])) if moves else 0.0
        overhead = sum(m.time_s for m in moves) / (n * steps_per_window)
        out.append(IntervalResult(interval=name, rebalances=len(moves), moe_s_per_step=float(np.mean(times)),
                                  worst_max_over_mean=float(np.max(worst)), moved_bytes_per_rebalance=moved,
                                  rebalance_s=rebalance_s, overhead_s_per_step=overhead))
    return out
