"""Time and cost to train with failures: checkpoint size and cost, the Young/Daly interval, work lost, restarts.

A synchronous job stops at any interruption of any of its GPUs, hosts or links, rolls back to its last durable
checkpoint and restarts. With useful (failure-free) compute time T, unexpected interruptions at rate lambda,
planned ones at rate lambda_p, checkpoints every tau seconds of compute each blocking training for delta:

    W = T (1 + delta / tau) / (1 - lambda (L + R) - lambda_p R_p)        (first-order renewal model, Daly 2006 Sec. 3)

where L is the work lost per interruption (half an interval plus, for a checkpoint written in the background, the
time until it is durable), R the restart (detection, rescheduling, re-rendezvous, checkpoint load, waiting for a
spare) and R_p a planned restart (checkpoint taken first: nothing lost). Goodput = T / W. Vectorised over layouts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from clusterplan.hardware_db.prices import row_json
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.cluster import Cluster
from clusterplan.models.hardware.resilience import Resilience
from clusterplan.models.training.batch import PREC_FP32, LayoutArrays
from clusterplan.models.training.estimate import Estimate
from clusterplan.models.training.memory import GIB, MemoryBreakdown, bytes_per_param

SECONDS_PER_HOUR = 3600.0
SECONDS_PER_DAY = 86400.0
GB = 1e9
WALL_TERMS = ("useful", "checkpoint", "lost_work", "restart", "spare_wait", "planned")


def daly_interval_s(blocking_s: np.ndarray | float, mtbf_s: float) -> np.ndarray:
    """Optimal compute time between checkpoints that each block training for `blocking_s`, mean time between
    failures `mtbf_s`: Daly 2006 (FGCS 22(3), Eq. 37), tau = sqrt(2 d M) [1 + sqrt(d / 2M) / 3 + (d / 2M) / 9] - d
    for d < 2M, else M. Its leading term sqrt(2 d M) is Young 1974 (CACM 17(9)). Infinite without failures."""
    d = np.asarray(blocking_s, dtype=float)
    if not math.isfinite(mtbf_s):
        return np.full_like(d, np.inf)
    x = d / (2 * mtbf_s)
    tau = np.sqrt(2 * d * mtbf_s) * (1 + np.sqrt(x) / 3 + x / 9) - d
    return np.where(d < 2 * mtbf_s, tau, mtbf_s)


def expected_wall_s(useful_s: np.ndarray, rate_per_s: float, planned_per_s: float, blocking_s: np.ndarray,
                    interval_s: np.ndarray, lost_s: np.ndarray, restart_s: np.ndarray,
                    planned_restart_s: np.ndarray) -> np.ndarray:
    """W = T (1 + d / tau) / (1 - lambda (L + R) - lambda_p R_p); infinite when failures outpace progress."""
    ckpt = np.where(np.isinf(interval_s), 0.0, blocking_s / np.where(np.isinf(interval_s), 1.0, interval_s))
    # Terms with a zero rate must not turn infinite intervals into NaN.
    lost_term = rate_per_s * np.where(rate_per_s > 0, lost_s + restart_s, 0.0)
    denom = 1 - lost_term - planned_per_s * planned_restart_s
    return np.where(denom > 0, useful_s * (1 + ckpt) / np.where(denom > 0, denom, 1.0), np.inf)


def checkpoint_bytes(shapes: ModelShapes, L: LayoutArrays, memory: MemoryBreakdown) -> tuple[np.ndarray, np.ndarray]:
    """(whole checkpoint, most loaded rank's share) in bytes.

    The checkpoint holds one copy of the weights in the training dtype and the optimizer state (fp32 master weights
    and Adam moments: Megatron-Core dist-checkpointing and torch DCP save replicated tensors once); a rank stages
    its own weights and optimizer shard from the memory model."""
    _, _, opt_bpp = bytes_per_param(L)
    weight_bpp = np.where(L.precision == PREC_FP32, 4.0, 2.0)
    total = shapes.total_params * (weight_bpp + opt_bpp)
    per_rank = (memory.by_position[:, 0, :] + memory.by_position[:, 2, :]).max(axis=0)
    return total, per_rank


@dataclass(frozen=True, slots=True)
class TrainTime:
    """Time and cost to train `tokens` for a batch of layouts (arrays), with the breakdown behind them."""

    tokens: float
    step_s: np.ndarray
    useful_s: np.ndarray
    wall_s: np.ndarray
    checkpoint_total_bytes: np.ndarray
    checkpoint_rank_bytes: np.ndarray
    blocking_s: np.ndarray
    persist_s: np.ndarray
    restore_s: np.ndarray
    interval_s: np.ndarray
    lost_s: np.ndarray
    restart_s: np.ndarray
    spare_wait_s: float
    rate_per_s: float
    planned_per_s: float
    usd_per_hour: float | None
    gpus: int
    nodes: int
    resilience: Resilience
    usd_missing_reason: str | None = None
    """Why there are no dollars (usd_per_hour None): usd_missing_reason(cluster)."""

    @property
    def goodput(self) -> np.ndarray:
        return np.where(np.isinf(self.wall_s), 0.0, self.useful_s / np.where(np.isinf(self.wall_s), 1.0, self.wall_s))

    def wall_share(self, i: int) -> dict[str, float]:
        """Share of wall-clock time by what it was spent on (sums to 1)."""
        w = float(self.wall_s[i])
        if not math.isfinite(w):
            return {t: 0.0 for t in WALL_TERMS}
        u = float(self.useful_s[i])
        tau = float(self.interval_s[i])
        lam, lam_p = self.rate_per_s, self.planned_per_s
        restore = float(self.restore_s[i])
        base_restart = self.resilience.restart_s + restore
        return {"useful": u / w, "checkpoint": 0.0 if math.isinf(tau) else u * float(self.blocking_s[i]) / tau / w,
                "lost_work": lam * float(self.lost_s[i]) if lam else 0.0,
                "restart": lam * base_restart, "spare_wait": lam * self.spare_wait_s,
                "planned": lam_p * base_restart}

    def to_json(self, i: int) -> dict[str, Any]:
        w = float(self.wall_s[i])
        finite = math.isfinite(w)
        tau = float(self.interval_s[i])
        res = self.resilience
        out: dict[str, Any] = {
            "tokens": self.tokens,
            "days": _r(w / SECONDS_PER_DAY) if finite else None,
            "days_without_failures": _r(float(self.useful_s[i]) / SECONDS_PER_DAY),
            "goodput": _r(float(self.goodput[i])),
            "checkpoint": {
                "mode": res.checkpoint,
                "total_gib": _r(float(self.checkpoint_total_bytes[i]) / GIB),
                "per_rank_gib": _r(float(self.checkpoint_rank_bytes[i]) / GIB),
                "blocking_s": _r(float(self.blocking_s[i])),
                "persist_s": _r(float(self.persist_s[i])),
                "restore_s": _r(float(self.restore_s[i])),
                "interval_s": _r(tau) if math.isfinite(tau) else None,
                "interval_steps": round(tau / float(self.step_s[i])) if math.isfinite(tau) else None,
                "interval_method": "given" if res.checkpoint_interval_s else "Daly 2006 (Young 1974 leading term)",
            },
            "failures": {
                "unexpected_per_day": _r(self.rate_per_s * SECONDS_PER_DAY),
                "planned_per_day": _r(self.planned_per_s * SECONDS_PER_DAY),
                "mtbf_hours": _r(1 / self.rate_per_s / SECONDS_PER_HOUR) if self.rate_per_s else None,
                "expected_unexpected": _r(self.rate_per_s * w) if finite else None,
                "expected_planned": _r(self.planned_per_s * w) if finite else None,
                "lost_work_per_failure_s": _r(float(self.lost_s[i])) if self.rate_per_s else 0.0,
                "restart_per_failure_s": _r(float(self.restart_s[i])),
                "spare_nodes": res.spare_nodes,
                "spare_wait_per_failure_s": _r(self.spare_wait_s),
                "source": res.rates.source,
            },
            "wall_share": {k: _r(v) for k, v in self.wall_share(i).items()},
            "gpus": self.gpus,
            "nodes": self.nodes,
        }
        if self.usd_per_hour is not None:
            out["usd"] = _r(w / SECONDS_PER_HOUR * self.usd_per_hour) if finite else None
            out["usd_without_failures"] = _r(float(self.useful_s[i]) / SECONDS_PER_HOUR * self.usd_per_hour)
            out["usd_per_hour"] = _r(self.usd_per_hour)
        elif self.usd_missing_reason is not None:
            out["usd_missing_reason"] = self.usd_missing_reason
        return out


def _r(x: float) -> float:
    return float(f"{x:.6g}")


def poisson_tail(k: int, mean: float) -> float:
    """P(N >= k) for N ~ Poisson(mean)."""
    if k <= 0:
        return 1.0
    term, cdf = math.exp(-mean), 0.0
    for n in range(k):
        cdf += term
        term *= mean / (n + 1)
    return max(0.0, 1.0 - cdf)


def spare_wait_s(res: Resilience, hardware_rate_per_s: float) -> float:
    """Expected wait for a replacement node per interruption.

    None (the scheduler's pool): no wait beyond restart_s. With k hot spares and repair time T_r, failed nodes in
    repair form an M/G/infinity queue: their number is Poisson(lambda_hw T_r) (Palm's theorem); a failure finds no
    spare when k or more are away, and then waits for the first of them to return, T_r / (k + 1) on average
    (the earliest of k + 1 uniform residual repair times). Software faults restart in place (no wait)."""
    if res.spare_nodes is None or hardware_rate_per_s == 0:
        return 0.0
    k = res.spare_nodes
    p_none = poisson_tail(k, hardware_rate_per_s * res.node_repair_s)
    return p_none * res.node_repair_s / (k + 1)


PRICE_HINT = "or `usd_per_gpu_hour:` on the group in a cluster file"
"""The price a user can always give, beside the price table's options (PriceChoice.why_missing)."""


def unpriced_gpu(cluster: Cluster) -> str | None:
    """The first GPU type of `cluster` without a price (no row under the price rule and none in the cluster file),
    whose absence leaves the whole cluster unpriced (cluster_usd_per_hour); None when every type has one."""
    return next((g.gpu.name for g in cluster.groups if g.price is None), None)


def usd_missing_reason(cluster: Cluster) -> str | None:
    """Why `cluster` has no dollars (no $ per 1M tokens, no $ to train), with the fix; None when it is priced."""
    gpu = unpriced_gpu(cluster)
    if gpu is None:
        return None
    mixed = " (a mixed cluster is priced only when every GPU type has one)" if len(cluster.groups) > 1 else ""
    why = cluster.prices.why_missing(gpu) if cluster.prices is not None else f"no price for {gpu}; give one"
    return f"{why}, {PRICE_HINT}{mixed}"


def cluster_usd_per_hour(cluster: Cluster, spare_nodes: int | None) -> float | None:
    if unpriced_gpu(cluster) is not None:
        return None
    usd = sum(g.count * g.gpus_per_node * g.price.usd_per_gpu_hour for g in cluster.groups)
    p = cluster.primary
    return usd + (spare_nodes or 0) * p.gpus_per_node * p.price.usd_per_gpu_hour


def cluster_prices_json(cluster: Cluster) -> dict[str, Any]:
    """The prices an answer's dollars use, per GPU type: the row (provider, pricing, $/GPU-hour, date, source) and the
    rule that chose it; a cluster file's own price shows as provider "cluster file". Keys are GPU names (a second
    price of the same type, from another group's cluster-file price, is keyed `NAME (groups[i])`)."""
    rows: dict[str, dict[str, Any]] = {}
    for i, g in enumerate(cluster.groups):
        if g.price is None:
            continue
        row = row_json(g.price)
        key = g.gpu.name if rows.get(g.gpu.name, row) == row else f"{g.gpu.name} (groups[{i}])"
        rows[key] = row
    rule = cluster.prices.to_json() if cluster.prices is not None else {}
    missing = sorted({g.gpu.name for g in cluster.groups if g.price is None})
    return {k: v for k, v in rule.items() if k not in ("rows", "missing")} | {"rows": dict(sorted(rows.items())),
                                                                              "missing": missing}


def time_to_train(tokens: float, tokens_per_s: np.ndarray, shapes: ModelShapes, L: LayoutArrays,
                  memory: MemoryBreakdown, cluster: Cluster) -> TrainTime:
    """Expected wall-clock time and cost to train `tokens` on the whole `cluster`, failures included."""
    res = cluster.reliability
    gpus, nodes = cluster.world_size, cluster.n_nodes
    rate_per_s = res.rates.job_rate_per_hour(gpus, nodes) / SECONDS_PER_HOUR
    planned_per_s = res.rates.planned_per_node_hour * nodes / SECONDS_PER_HOUR
    total, per_rank = checkpoint_bytes(shapes, L, memory)
    # Writes and reads are spread over all nodes (fully parallel save/load) and bound by the slower of the
    # per-node link and the file system's aggregate bandwidth.
    write_s = np.maximum(total / (res.storage_write_gb_per_s_aggregate * GB),
                         total / nodes / (res.storage_write_gb_per_s_per_node * GB))
    read_s = np.maximum(total / (res.storage_read_gb_per_s_aggregate * GB),
                        total / nodes / (res.storage_read_gb_per_s_per_node * GB))
    copy_s = per_rank / (res.host_copy_gb_per_s_per_gpu * GB)
    p = cluster.primary
    if res.checkpoint == "sync":
        blocking, persist, restore = write_s, np.zeros_like(write_s), read_s
    elif res.checkpoint == "async":
        blocking, persist, restore = copy_s, write_s, read_s
    else:  # in-memory: a copy of each node's state in a peer's host memory, over the scale-out network
        peer_s = total / nodes / (p.scale_out_busbw_gb_per_s * p.gpus_per_node * GB)
        blocking, persist, restore = copy_s, peer_s, peer_s
    mtbf_s = 1 / rate_per_s if rate_per_s else math.inf
    if res.checkpoint_interval_s is not None:
        interval = np.full_like(blocking, res.checkpoint_interval_s)
    else:
        # A background write must finish before the next snapshot starts (one in flight at a time).
        interval = np.maximum(daly_interval_s(blocking, mtbf_s), persist - blocking)
    # Checkpoints are taken between steps: the interval is a whole number of steps (the nearer one, at least one).
    step_s = L.gbs * L.seq / tokens_per_s
    finite = np.isfinite(interval)
    interval = np.where(finite, np.maximum(1.0, np.round(np.where(finite, interval, 0.0) / step_s)) * step_s, np.inf)
    lost = np.where(np.isinf(interval), 0.0, (interval + blocking) / 2 + persist)
    hw_rate = rate_per_s * res.rates.hardware_share(gpus, nodes)
    wait = spare_wait_s(res, hw_rate)
    restart = res.restart_s + restore + (wait * hw_rate / rate_per_s if rate_per_s else 0.0)
    useful = tokens / tokens_per_s
    wall = expected_wall_s(useful, rate_per_s, planned_per_s, blocking, interval, lost, restart,
                           res.restart_s + restore)
    return TrainTime(tokens=tokens, step_s=step_s, useful_s=useful, wall_s=wall, checkpoint_total_bytes=total,
                     checkpoint_rank_bytes=per_rank, blocking_s=blocking, persist_s=persist, restore_s=restore,
                     interval_s=interval, lost_s=lost, restart_s=restart,
                     spare_wait_s=wait * hw_rate / rate_per_s if rate_per_s else 0.0, rate_per_s=rate_per_s,
                     planned_per_s=planned_per_s, usd_per_hour=cluster_usd_per_hour(cluster, res.spare_nodes),
                     gpus=gpus, nodes=nodes, resilience=res, usd_missing_reason=usd_missing_reason(cluster))


def short_budget_warning(tokens: float, gbs: int, seq: int) -> str | None:
    """A token budget below one step's tokens (gbs x seq): its days and dollars price a fraction of one step, most
    likely a typo (--tokens 1 for 1e12); None when the budget holds a step at least."""
    if tokens >= gbs * seq:
        return None
    return (f"--tokens {tokens:g} is less than one step's {gbs * seq:,} tokens (gbs {gbs:,} x seq {seq:,}): the days "
            "and $ price a fraction of one step; give the whole training budget (e.g. --tokens 15e12)")


def estimate_time_to_train(est: Estimate, tokens: float) -> dict[str, Any] | None:
    """`time_to_train` JSON of one feasible estimate (None when it is infeasible)."""
    ev = est.evaluation
    if ev is None or not est.feasible:
        return None
    shapes = ModelShapes.of(est.model)
    L = LayoutArrays.from_layouts([est.layout])
    return time_to_train(tokens, ev.tokens_per_s, shapes, L, ev.memory, est.cluster).to_json(est.index)
