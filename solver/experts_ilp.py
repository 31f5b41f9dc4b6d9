"""ILP expert placement: balance GPU load and cut predicted all-to-all time using cross-layer affinity.

Decomposition (MoETuner's two-ILP idea and EPLB's node-then-GPU hierarchy, research/moe-placement.md 2, 4):
- Replica counts per layer: greedy min-max load per replica (EPLB `replicate_experts` over all slots).
- Layers are placed in order. With layer l-1 fixed, the GPUs each expert's tokens come from are known
  (placement_metrics.origin), so the traffic of layer l is linear in its placement.
- Per layer, ILP 1 puts replicas on nodes and ILP 2 puts each node's replicas on its GPUs. Integer y[e, n]
  (z[e, g]) counts replicas of expert e on node n (GPU g). Objective, in microseconds: busiest node's (GPU's)
  expert compute + busiest NIC's cross-node time + the mean NIC time (which drives total cross-node bytes).
- Warm start: EPLB's balanced packing of the same replicas; the busiest node may be at most `load_slack`
  heavier and the busiest GPU no heavier than in that packing. A layer whose busiest GPU is heavier than
  the baseline's keeps the baseline's layer; a placement with a worse worst-layer max/mean or more total
  cross-node bytes than the baseline is replaced by the baseline (so the ILP is never worse on either).
- Lookahead: the node ILP also counts next-layer tokens that cannot stay on their node because a
  replicated expert is spread over nodes (`_lookahead`), so layer-by-layer placement keeps locality.
CBC runs single-threaded with a fixed seed and a node limit per subproblem, so results repeat unless the
wall-clock safety limit (`time_limit_s` shared over subproblems) cuts a solve short (reported).
"""

from __future__ import annotations

import re
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pulp

from clusterplan.models.moe.metrics import (
    Fabric,
    Placement,
    evaluate,
    origin,
    slots_from_counts,
    summary,
)
from clusterplan.models.moe.routing import RoutingStats
from clusterplan.progress import ProgressFn
from clusterplan.solver.experts import balanced_packing, replicate_experts


@dataclass(frozen=True, kw_only=True, slots=True)
class IlpOptions:
    time_limit_s: float = 60.0
    """Wall-clock limit for all subproblems together."""
    seed: int = 0
    max_nodes: int = 3
    """CBC branch-and-bound nodes per subproblem (a deterministic work limit)."""
    lookahead: float = 1.0
    """Weight of the next layer's unavoidable cross-node tokens (replicas spread over nodes) in the node ILP."""
    load_slack: float = 0.05
    """How much heavier than EPLB's balanced packing of the same replicas a node may get to save traffic."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SolveLog:
    """Sum over subproblems of CBC's best objective and best bound (microseconds)."""

    objective_us: float = 0.0
    bound_us: float = 0.0
    subproblems: int = 0
    proven_optimal: int = 0
    hit_time_limit: int = 0
    cbc_s: float = 0.0
    """Wall-clock time spent in CBC runs (the rest is building models and metrics)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class IlpResult:
    placement: Placement
    log: SolveLog
    fallback_layers: tuple[int, ...]
    """Layers where the baseline's placement was kept."""
    node_locked: bool
    """True when the free ILP sent more bytes across nodes (or had a worse worst layer) than the baseline, so
    the result keeps the baseline's replicas per node and only re-places them on each node's GPUs."""
    free_placement: Placement | None
    """The rejected free ILP placement when `node_locked` (often faster, but more cross-node bytes)."""
    unsolved_layers: tuple[int, ...]
    """Layers placed by balanced packing without a solve because the time limit was used up."""
    solve_s: float

    @property
    def gap(self) -> float | None:
        """Relative optimality gap of the solved subproblems together: (objective - bound) / objective; None when
        no subproblem was solved (a gap of 0 would claim optimality for layers only packed)."""
        if self.log.subproblems == 0:
            return None
        obj = self.log.objective_us
        return max(obj - self.log.bound_us, 0.0) / obj if obj > 0 else 0.0


# ---- CBC ----------------------------------------------------------------------------------------
_NUMBER = r"([-+0-9.eE]+)"
CBC_SHARE = 0.85
"""CBC's time limit as a share of the time left per subproblem (CBC checks its clock between nodes)."""
MIN_SOLVE_S = 0.05
"""Below this much time left per subproblem, layers are packed without a solve so the limit holds."""


@dataclass(frozen=True, kw_only=True, slots=True)
class _Solved:
    objective_us: float
    bound_us: float
    optimal: bool
    timed_out: bool
    cbc_s: float

    def failed(self) -> _Solved:
        """The same run when its solution was unusable and the warm start is kept."""
        return _Solved(objective_us=self.objective_us, bound_us=self.bound_us, optimal=False,
                       timed_out=self.timed_out, cbc_s=self.cbc_s)


def _solve(prob: pulp.LpProblem, limit_s: float, opts: IlpOptions) -> _Solved:
    """Solve with CBC; objective and bound from its log (bound = objective when proven optimal)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="clusterplan-cbc-") as tmp:
        log_path = Path(tmp) / "cbc.log"
        with warnings.catch_warnings():  # PuLP >= 3.3 flags the bundled-CBC class as deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=max(limit_s, 0.05), threads=1, warmStart=True,
                                       gapRel=1e-4, logPath=str(log_path), keepFiles=False,
                                       options=[f"randomSeed {opts.seed + 1}", f"randomCbcSeed {opts.seed + 1}",
                                                f"maxNodes {opts.max_nodes}", "cuts off"])
            try:
                prob.solve(solver)
            except pulp.PulpSolverError:  # CBC crashed or wrote no solution: the caller keeps its warm start
                return _Solved(objective_us=float("nan"), bound_us=float("nan"), optimal=False, timed_out=False,
                               cbc_s=time.monotonic() - started)
        text = log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else ""
    objective = pulp.value(prob.objective)
    objective = float(objective) if objective is not None else float("nan")
    optimal = "Optimal solution found" in text
    bound = objective
    found = re.search(r"Lower bound:\s*" + _NUMBER, text)
    if found and not optimal:
        bound = min(float(found.group(1)), objective)
    return _Solved(objective_us=objective, bound_us=bound, optimal=optimal, timed_out="Stopped on time" in text,
                   cbc_s=time.monotonic() - started)


# ---- one layer ----------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class _Layer:
    tokens: np.ndarray  # [E]
    count: np.ndarray  # [E] replicas
    origin_eg: np.ndarray  # [E, G]
    has_next: bool = False  # transitions to a next layer exist, so where replicas sit shapes its origins

    @property
    def per_replica(self) -> np.ndarray:
        return self.tokens / self.count


def _coefficients_us(fabric: Fabric) -> tuple[float, float, float]:
    """Microseconds per token: expert compute, NIC (dispatch + combine), NVLink (dispatch + combine)."""
    per_token_bytes = fabric.dispatch_bytes_per_token + fabric.combine_bytes_per_token
    return (fabric.expert_s_per_token * 1e6, per_token_bytes / fabric.scale_out_busbw_bytes_per_s * 1e6,
            per_token_bytes / fabric.scale_up_busbw_bytes_per_s * 1e6)


def _var(prob: pulp.LpProblem, name: str, low: float | None = None, up: float | None = None,
         cat: str = "Continuous") -> pulp.LpVariable:
    """A variable of `prob` (PuLP >= 3.3 attaches it via add_variable; older versions construct it)."""
    if hasattr(prob, "add_variable"):
        return prob.add_variable(name, low, up, cat=cat)
    return pulp.LpVariable(name, low, up, cat=cat)


def _dot(variables: list, coefficients: np.ndarray) -> pulp.LpAffineExpression:
    """sum(c * v) built in one go (pulp's lpSum of products is slow at this size)."""
    return pulp.LpAffineExpression(list(zip(variables, (float(c) for c in coefficients), strict=True)))


def _warm_counts(weights: np.ndarray, count: np.ndarray, n_packs: int) -> np.ndarray:
    """[E, packs] replicas per pack from EPLB's balanced packing of the replicas."""
    experts = np.repeat(np.arange(len(count)), count)
    pack, _ = balanced_packing(weights[experts][None, :], n_packs)
    out = np.zeros((len(count), n_packs), dtype=np.int64)
    np.add.at(out, (experts, pack[0]), 1)
    return out


def _node_stage(lay: _Layer, fabric: Fabric, slots_per_node: int, limit_s: float,
                opts: IlpOptions) -> tuple[np.ndarray, _Solved]:
    """[E, N] replicas per node."""
    n_nodes, gpn = fabric.n_nodes, fabric.gpus_per_node
    w = lay.per_replica
    o_node = lay.origin_eg.reshape(len(w), n_nodes, gpn).sum(axis=2)
    warm = _warm_counts(w, lay.count, n_nodes)
    warm_max = float((w[:, None] * warm).sum(axis=0).max())
    cap = warm_max * (1 + opts.load_slack)
    comp_us, nic_us, _ = _coefficients_us(fabric)
    prob = pulp.LpProblem("expert_nodes", pulp.LpMinimize)
    live = range(len(w))
    y = {(e, n): _var(prob, f"y_{e}_{n}", 0, int(lay.count[e]), "Integer") for e in live
         for n in range(n_nodes)}
    z_load, w_nic = _var(prob, "max_node_tokens", 0), _var(prob, "max_node_nic_tokens", 0)
    remote_in = []
    for n in range(n_nodes):
        col = [y[e, n] for e in live]
        prob += _dot(col, np.ones(len(col))) == slots_per_node
        prob += _dot(col, w) <= z_load
        recv = _dot(col, w * (1 - o_node[:, n]))
        sent = float((o_node[:, n] * lay.tokens).sum()) - _dot(col, w * o_node[:, n])
        prob += recv <= w_nic
        prob += sent <= w_nic
        remote_in.append(recv)
    for e in live:
        prob += _dot([y[e, n] for n in range(n_nodes)], np.ones(n_nodes)) == int(lay.count[e])
    prob += z_load <= cap * (1 + 1e-9)
    # Busiest node's compute and NIC time per GPU, plus mean NIC time (MoETuner: load balance + comm. skew).
    lookahead = _lookahead(prob, y, lay, warm, n_nodes) if lay.has_next else 0.0
    prob += comp_us / gpn * z_load + nic_us / gpn * w_nic + nic_us / fabric.n_gpus * (
        pulp.lpSum(remote_in) + opts.lookahead * lookahead)
    for (e, n), var in y.items():
        var.setInitialValue(int(warm[e, n]))
    z_load.setInitialValue(warm_max)
    stats = _solve(prob, limit_s, opts)
    got = np.array([[round(y[e, n].value() or 0) for n in range(n_nodes)] for e in live], dtype=np.int64)
    if not _valid(got, lay.count, slots_per_node):
        return warm, stats.failed()
    return got, stats


def _lookahead(prob: pulp.LpProblem, y: dict, lay: _Layer, warm: np.ndarray, n_nodes: int) -> object:
    """Tokens of the next layer that cannot stay on their node: sum_e tokens_e * (1 - largest node share of e).

    A replicated expert spread over nodes splits where its tokens start the next layer, so at most its
    largest node share can meet a co-located successor. v_e <= share on node n unless u[e, n] picks another.
    """
    terms = []
    for e in np.flatnonzero(lay.count > 1):
        e = int(e)
        u = [_var(prob, f"u_{e}_{n}", 0, 1, "Binary") for n in range(n_nodes)]
        v = _var(prob, f"v_{e}", 0, 1)
        prob += _dot(u, np.ones(n_nodes)) == 1
        for n in range(n_nodes):
            prob += v <= y[e, n] * (1.0 / lay.count[e]) + 1 - u[n]
        best = int(np.argmax(warm[e]))
        for n in range(n_nodes):
            u[n].setInitialValue(int(n == best))
        v.setInitialValue(float(warm[e, best] / lay.count[e]))
        terms.append(float(lay.tokens[e]) * (1 - v))
    return pulp.lpSum(terms)


def _valid(counts: np.ndarray, want: np.ndarray, per_pack: int) -> bool:
    return bool(np.all(counts >= 0) and np.all(counts.sum(axis=1) == want) and np.all(counts.sum(axis=0) == per_pack))


def _gpu_stage(lay: _Layer, on_node: np.ndarray, fabric: Fabric, slots_per_gpu: int, limit_s: float,
               opts: IlpOptions, warm: np.ndarray | None = None) -> tuple[np.ndarray, _Solved]:
    """[E, G] replicas per GPU given replicas per node `on_node` [E, N]; the nodes' blocks share one CBC run.

    `warm` [E, G] is the start and sets each node's load cap; by default EPLB's balanced packing per node.
    """
    gpn = fabric.gpus_per_node
    prob = pulp.LpProblem("expert_gpus", pulp.LpMinimize)
    warm = _gpu_stage_warm(lay, on_node, fabric) if warm is None else warm
    z: dict[tuple[int, int], pulp.LpVariable] = {}
    objective = []
    for n in range(fabric.n_nodes):
        block = slice(n * gpn, (n + 1) * gpn)
        objective.append(_gpu_block(prob, z, lay, on_node, n, warm[:, block], fabric, slots_per_gpu))
    prob += pulp.lpSum(objective)
    for (e, g), var in z.items():
        var.setInitialValue(int(warm[e, g]))
    result = _solve(prob, limit_s, opts)
    got = np.zeros_like(warm)
    for (e, g), var in z.items():
        got[e, g] = round(var.value() or 0)
    ok = all(_valid(got[:, n * gpn:(n + 1) * gpn], on_node[:, n], slots_per_gpu) for n in range(fabric.n_nodes))
    if not ok:
        return warm, result.failed()
    return got, result


def _gpu_block(prob: pulp.LpProblem, z: dict, lay: _Layer, on_node: np.ndarray, n: int, warm: np.ndarray,
               fabric: Fabric, slots_per_gpu: int) -> pulp.LpAffineExpression:
    """Add node n's GPU assignment to `prob` (variables into `z`); returns its objective in microseconds."""
    gpn = fabric.gpus_per_node
    first = n * gpn
    w, o = lay.per_replica, lay.origin_eg[:, first:first + gpn]
    o_node = o.sum(axis=1)
    warm_max = float((w[:, None] * warm).sum(axis=0).max())
    comp_us, nic_us, nvl_us = _coefficients_us(fabric)
    # Cross-node tokens each GPU sends are fixed by the node stage (origin x replicas on other nodes).
    sent_remote = (o * (lay.tokens - w * on_node[:, n])[:, None]).sum(axis=0)
    here = [int(e) for e in np.flatnonzero(on_node[:, n])]
    z_load = _var(prob, f"max_gpu_tokens_{n}", 0, warm_max * (1 + 1e-9))
    w_nic = _var(prob, f"max_gpu_nic_tokens_{n}", float(sent_remote.max()))
    gpus = range(first, first + gpn)
    for e in here:
        for g in gpus:
            z[e, g] = _var(prob, f"z_{e}_{g}", 0, int(on_node[e, n]), "Integer")
        prob += _dot([z[e, g] for g in gpus], np.ones(gpn)) == int(on_node[e, n])
    local_in = []
    for g in gpus:
        col = [z[e, g] for e in here]
        prob += _dot(col, np.ones(len(here))) == slots_per_gpu
        prob += _dot(col, w[here]) <= z_load
        prob += _dot(col, w[here] * (1 - o_node[here])) <= w_nic
        local_in.append(_dot(col, w[here] * (o_node[here] - o[here, g - first])))
    z_load.setInitialValue(warm_max)
    # Node n's busiest GPU: compute + NIC time, plus its GPUs' mean NVLink time; the blocks are summed.
    return comp_us * z_load + nic_us * w_nic + nvl_us / gpn * pulp.lpSum(local_in)


def _not_heavier(cand: np.ndarray, base: np.ndarray, tokens: np.ndarray) -> bool:
    """Is the candidate [E, G] share's busiest GPU no heavier than the baseline's?"""
    return float((tokens @ cand).max()) <= float((tokens @ base).max()) * (1 + 1e-9)


def _add(log: SolveLog, solved: _Solved) -> SolveLog:
    usable = np.isfinite(solved.objective_us)
    return SolveLog(objective_us=log.objective_us + (solved.objective_us if usable else 0.0),
                    bound_us=log.bound_us + (solved.bound_us if usable else 0.0),
                    subproblems=log.subproblems + 1, proven_optimal=log.proven_optimal + solved.optimal,
                    hit_time_limit=log.hit_time_limit + solved.timed_out, cbc_s=log.cbc_s + solved.cbc_s)


def _place_layer(lay: _Layer, fabric: Fabric, slots_per_gpu: int, deadline: float, layers_left: int,
                 opts: IlpOptions) -> tuple[np.ndarray, list[_Solved]]:
    """[E, G] replicas per GPU for one layer; EPLB-style packing without a solve once time is up."""
    slots_per_node = slots_per_gpu * fabric.gpus_per_node
    budget_s = CBC_SHARE * (deadline - time.monotonic()) / (2 * layers_left)
    if budget_s < MIN_SOLVE_S:
        on_node = _warm_counts(lay.per_replica, lay.count, fabric.n_nodes)
        return _gpu_stage_warm(lay, on_node, fabric), []
    on_node, node_solve = _node_stage(lay, fabric, slots_per_node, budget_s, opts)
    budget_s = CBC_SHARE * (deadline - time.monotonic()) / (2 * layers_left - 1)
    if budget_s < MIN_SOLVE_S:
        return _gpu_stage_warm(lay, on_node, fabric), [node_solve]
    per_gpu, gpu_solve = _gpu_stage(lay, on_node, fabric, slots_per_gpu, budget_s, opts)
    return per_gpu, [node_solve, gpu_solve]


def _gpu_stage_warm(lay: _Layer, on_node: np.ndarray, fabric: Fabric) -> np.ndarray:
    gpn = fabric.gpus_per_node
    return np.concatenate([_warm_counts(lay.per_replica, on_node[:, n], gpn) for n in range(fabric.n_nodes)], axis=1)


def _layer_input(stats: RoutingStats, layer: int, counts: np.ndarray, prev_share: np.ndarray | None,
                 n_gpus: int) -> _Layer:
    trans = stats.transitions[layer - 1] if layer and stats.transitions is not None else None
    if trans is None or prev_share is None:
        org = np.full((stats.n_experts, n_gpus), 1.0 / n_gpus)
    else:
        org = origin(prev_share, trans)
    has_next = stats.transitions is not None and layer + 1 < stats.n_layers
    return _Layer(tokens=stats.tokens_per_expert[layer], count=counts[layer], origin_eg=org, has_next=has_next)


def ilp_placement(stats: RoutingStats, fabric: Fabric, baseline: Placement, opts: IlpOptions,
                  progress: ProgressFn | None = None) -> IlpResult:
    """Place every layer in order (node ILP, then GPU ILP); never worse than `baseline` (see module doc).
    progress(layers solved, layers, what) after each layer (and each layer of the node-locked pass)."""
    start = time.monotonic()
    theirs = summary(evaluate(baseline, stats, fabric))
    # Keep as long again as that evaluation took for evaluating the ILP's placement at the end.
    loop_start = time.monotonic()
    deadline = start + opts.time_limit_s - 2 * (loop_start - start)
    spg = baseline.slots_per_gpu
    counts = replicate_experts(stats.tokens_per_expert, baseline.n_slots)[2]
    rows, fallback, unsolved, log = [], [], [], SolveLog()
    prev_share: np.ndarray | None = None
    for layer in range(stats.n_layers):
        left = stats.n_layers - layer
        # Keep time for what is not CBC (building models, metrics) in the layers still to come.
        overhead_s = (time.monotonic() - loop_start - log.cbc_s) / layer if layer else 0.0
        lay = _layer_input(stats, layer, counts, prev_share, fabric.n_gpus)
        per_gpu, solves = _place_layer(lay, fabric, spg, deadline - overhead_s * left, left, opts)
        if len(solves) < 2:
            unsolved.append(layer)
        for solved in solves:
            log = _add(log, solved)
        share = per_gpu / lay.count[:, None]
        if _not_heavier(share, baseline.share(layer), lay.tokens):
            rows.append(slots_from_counts(per_gpu))
        else:
            fallback.append(layer)
            rows.append(baseline.phy2log[layer])
            share = baseline.share(layer)
        prev_share = share
        if progress is not None:
            progress(layer + 1, stats.n_layers, f"layer {layer} placed")
    placement = Placement(phy2log=np.array(rows, dtype=np.int64), n_experts=stats.n_experts, slots_per_gpu=spg,
                          gpus_per_node=fabric.gpus_per_node)
    if not _worse(summary(evaluate(placement, stats, fabric)), theirs):
        return IlpResult(placement=placement, log=log, fallback_layers=tuple(fallback), node_locked=False,
                         free_placement=None, unsolved_layers=tuple(unsolved), solve_s=time.monotonic() - start)
    locked, log = _node_locked(stats, fabric, baseline, deadline, opts, log, progress)
    if _worse(summary(evaluate(locked, stats, fabric)), theirs):  # guard against rounding surprises
        locked = baseline
    return IlpResult(placement=locked, log=log, fallback_layers=tuple(fallback), node_locked=True,
                     free_placement=placement, unsolved_layers=tuple(unsolved), solve_s=time.monotonic() - start)


def _worse(mine: dict[str, float], theirs: dict[str, float]) -> bool:
    return any(mine[k] > theirs[k] * (1 + 1e-9) for k in ("max_over_mean_worst", "cross_node_bytes"))


def _node_locked(stats: RoutingStats, fabric: Fabric, baseline: Placement, deadline: float, opts: IlpOptions,
                 log: SolveLog, progress: ProgressFn | None = None) -> tuple[Placement, SolveLog]:
    """Keep the baseline's replicas per node in every layer (so node-level shares, origins and cross-node bytes
    are the baseline's exactly) and re-solve the GPU stage from the baseline's GPU packing (no GPU heavier)."""
    counts, gpn = baseline.replica_count(), fabric.gpus_per_node
    rows, prev = [], None
    for layer in range(stats.n_layers):
        lay = _layer_input(stats, layer, counts, prev, fabric.n_gpus)
        base = baseline.per_gpu(layer)
        per_gpu = base
        budget_s = CBC_SHARE * (deadline - time.monotonic()) / (stats.n_layers - layer)
        if budget_s >= MIN_SOLVE_S:
            on_node = base.reshape(stats.n_experts, fabric.n_nodes, gpn).sum(axis=2)
            per_gpu, solved = _gpu_stage(lay, on_node, fabric, baseline.slots_per_gpu, budget_s, opts, warm=base)
            log = _add(log, solved)
        rows.append(slots_from_counts(per_gpu))
        prev = per_gpu / lay.count[:, None]
        if progress is not None:
            progress(layer + 1, stats.n_layers, f"layer {layer} re-placed within the baseline's nodes")
    placement = Placement(phy2log=np.array(rows, dtype=np.int64), n_experts=stats.n_experts,
                          slots_per_gpu=baseline.slots_per_gpu, gpus_per_node=gpn)
    return placement, log
