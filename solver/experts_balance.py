"""Min-max load balancing of expert replicas over GPUs, the objective every engine's dispatch pays for.

Under home-origin dispatch with an even split over replicas (vLLM, TensorRT-LLM, SGLang dynamic; see
models/moe/metrics.py) a placement changes only which GPU carries which replica load: cross-node bytes are fixed
and the busiest GPU's expert time and NIC share both follow its load. So the problem per layer is: put S replicas
of known load w_r (expert load / its replica count, EPLB's even split) on G GPUs with exactly S/G each, no two
replicas of one expert on one GPU, minimising the largest GPU load (equal-cardinality multiway partitioning,
strongly NP-hard, Garey & Johnson 1979).

Method: start from the better of the given packings (EPLB's), then steepest-descent pairwise swaps between the
busiest GPU and any other (the classic interchange improvement of Graham-style list schedules, Finn & Horowitz
1979), until no swap lowers the busiest GPU. Every swap is exact arithmetic on the loads, so the result is never
heavier than the start. The gap is reported against a lower bound that holds for any placement:
max(total / G, heaviest replica + the S/G - 1 lightest others), and 0 when the bound is reached.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_SWAPS_PER_LAYER = 10_000
"""Safety cap on improving swaps per layer (each strictly lowers the busiest GPU or the count of GPUs at the
maximum; far above what 64-GPU layers need: tens)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class BalancedLayer:
    gpu_of_replica: np.ndarray
    """[S] GPU of each replica (replicas listed by expert, as `replica_experts` returns them)."""
    max_load: float
    lower_bound: float
    swaps: int

    @property
    def gap(self) -> float:
        """(max load - lower bound) / lower bound: how far from optimal at most."""
        return (self.max_load - self.lower_bound) / self.lower_bound if self.lower_bound > 0 else 0.0


def replica_experts(counts: np.ndarray) -> np.ndarray:
    """[S] expert of each replica, experts in order, `counts[e]` replicas each."""
    return np.repeat(np.arange(len(counts)), counts)


def lower_bound(weights: np.ndarray, n_gpus: int) -> float:
    """A load no placement of these replicas, S/G per GPU, can go below."""
    per_gpu = len(weights) // n_gpus
    ordered = np.sort(weights)
    heaviest_plus_lightest = ordered[-1] + ordered[: per_gpu - 1].sum() if per_gpu > 1 else ordered[-1]
    return float(max(weights.sum() / n_gpus, heaviest_plus_lightest))


def balance_layer(weights: np.ndarray, experts: np.ndarray, start_gpu: np.ndarray, n_gpus: int) -> BalancedLayer:
    """Improve `start_gpu` (GPU of each replica) by pairwise swaps with the busiest GPU.

    `weights[r]` is replica r's load, `experts[r]` its expert (two replicas of one expert never share a GPU).
    """
    gpu = start_gpu.astype(np.int64).copy()
    load = np.bincount(gpu, weights=weights, minlength=n_gpus).astype(float)
    has = np.zeros((int(experts.max()) + 1, n_gpus), dtype=bool)  # has[e, g]: expert e has a replica on GPU g
    has[experts, gpu] = True
    swaps = 0
    while swaps < MAX_SWAPS_PER_LAYER:
        busiest = int(np.argmax(load))
        mine = np.flatnonzero(gpu == busiest)
        others = np.flatnonzero(gpu != busiest)
        # Swap replica a (busiest GPU) with replica b (GPU g): busiest drops by w_a - w_b, g rises by the same.
        delta = weights[mine][:, None] - weights[others][None, :]  # [A, B]
        worse = np.maximum(load[busiest] - delta, load[gpu[others]][None, :] + delta)
        # No expert twice on one GPU after the swap (a's expert already on g, or b's already on the busiest).
        e_a, e_b = experts[mine][:, None], experts[others][None, :]
        clash = (has[e_a, gpu[others][None, :]] | has[e_b, busiest]) & (e_a != e_b)
        worse = np.where(clash | (delta <= 0), np.inf, worse)
        i, j = np.unravel_index(int(np.argmin(worse)), worse.shape)
        if not worse[i, j] < load[busiest] - 1e-9 * max(load[busiest], 1.0):
            break
        a, b = mine[i], others[j]
        target = gpu[b]
        load[busiest] -= delta[i, j]
        load[target] += delta[i, j]
        has[experts[a], busiest], has[experts[b], target] = False, False
        has[experts[a], target], has[experts[b], busiest] = True, True
        gpu[a], gpu[b] = target, busiest
        swaps += 1
    return BalancedLayer(gpu_of_replica=gpu, max_load=float(load.max()), lower_bound=lower_bound(weights, n_gpus),
                         swaps=swaps)
