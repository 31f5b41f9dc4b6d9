"""Nearest feasible option: when nothing fits, the smallest change that does, each priced by re-running the model.

    nearest_plan(...)    `plan` found no layout: other node counts, less headroom, or a --fix key unpinned. Each
                         candidate request is searched with the same exhaustive search (solver/search.py), so an
                         option's numbers are that search's best plan.
    nearest_layout(...)  `estimate`'s layout is out of memory: one knob of the layout at a time (recompute, ZeRO
                         stage, micro-batch, tp, pp, cp, ep, HSDP replicas, nodes). Each candidate is priced by
                         estimate() itself, the function `estimate` prints.

"Smallest change" (the order options are listed in; README "When nothing fits"):
  1. fewest knobs changed: one knob before two (pairs are tried only when no single knob fits);
  2. least hardware added: GPUs added, the one change that costs money by the hour (same GPU type: $/h grows with
     the GPU count; a job on fewer nodes counts negative, so it comes first when it fits);
  3. the fastest predicted step.
Within one knob the nearest value that fits is taken: the first on the knob's ladder (recompute none -> selective ->
full, ZeRO up one stage at a time, micro-batch down through its divisors, tp/pp/cp/ep up through the next valid
degrees, headroom down to what the closest layout leaves). Node counts are two knobs, one per direction, each
nearest first: fewer nodes (n-1 .. n-8) and more nodes (n+1 .. n+8, then 2n .. 32n). Fewer GPUs rarely fix an
out-of-memory cause but can fix a divisibility one (a pinned tp * pp that the GPU count does not divide), and they
cost less; with one ladder for both, more nodes came first and the first that fit hid a smaller job that fit too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from clusterplan.errors import BadInputError, InfeasibleError
from clusterplan.hardware_db.stacks import ExecutionStack
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.calibration import Calibration
from clusterplan.models.hardware.cluster import MAX_NODES, Cluster
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.estimate import (
    MEMORY_TERMS,
    Estimate,
    estimate,
    fp8_hardware_problems,
    passes_rules,
    stack_memory,
)
from clusterplan.models.training.layout import (
    CHOICES,
    Layout,
    keeps_master_remainders,
    named_fp8_recipe,
    stack_problems,
)
from clusterplan.models.training.memory import GIB
from clusterplan.models.training.pipeline_split import stack_pp_layers
from clusterplan.models.training.rules import RuleCode
from clusterplan.solver.search import precision_options, recipe_stack, search, with_pinned_recipe
from clusterplan.solver.space import divisors, enumerate_space, layer_splits

NODE_STEPS = 8
"""Node counts tried one at a time on each side of the request (n-8..n-1, n+1..n+8); beyond that, doublings."""
NODE_DOUBLINGS = (2, 4, 8, 16, 32)
"""Larger jobs tried after the single steps: the request's node count times these (the old hint's ladder)."""
HEADROOM_STEP_GIB = 0.1
"""Headroom options are rounded down to this, so the closest layout still fits at the printed value."""
CP_DEGREES = (1, 2, 4, 8, 16, 32)
"""Context-parallel degrees the search tries (solver/space.py); the estimate ladder uses the same."""
ZERO_STAGES = (0, 1, 2, 3)


class Knob:
    """What an option changes (Change.knob); layout keys use their own names (tp, pp, zero, ...)."""

    NODES = "nodes"
    HEADROOM = "headroom_gib"


FEWER_NODES, MORE_NODES = "fewer nodes", "more nodes"
"""The node-count knob's two ladders, tried as two knobs (NearestFeasible.tried names them; Change.knob is NODES)."""


@dataclass(frozen=True, slots=True)
class Change:
    """One knob moved: from `old` to `new`, `steps` rungs along its ladder."""

    knob: str
    old: int | float | str | bool
    new: int | float | str | bool
    steps: int = 1
    also: tuple[tuple[str, Any, Any], ...] = ()
    """Layout keys the move changes with it (key, old, new): the stage split a new pp needs, sp with a new tp, the
    schedule a pipeline starts with; printed beside the knob, so that the option applies as printed."""

    def __str__(self) -> str:
        if self.knob == Knob.HEADROOM:
            return f"headroom {self.old:g} -> {self.new:g} GiB"
        text = (f"{self.new} nodes instead of {self.old}" if self.knob == Knob.NODES
                else f"{self.knob} {_shown(self.old)} -> {_shown(self.new)}")
        if self.also:
            text += " (" + ", ".join(f"{k} {_shown(a)} -> {_shown(b)}" for k, a, b in self.also) + ")"
        return text

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"knob": self.knob, "from": self.old, "to": self.new, "steps": self.steps}
        if self.also:
            out["also"] = [{"key": k, "from": a, "to": b} for k, a, b in self.also]
        return out


ALSO_KEYS = ("first_stage_layers", "last_stage_layers", "pp_layers", "sp", "schedule", "dp_replicate")
"""Layout keys a knob's move may change with it (Change.also); dp follows tp, pp and cp by the world size and is in
every option's layout."""


def _shown(value: Any) -> Any:
    """A knob's value as --layout takes it (booleans 0/1, a per-rank list as a/b/c, an empty one as even)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, tuple):
        return "/".join(map(str, value)) or "even"
    return value


@dataclass(frozen=True, slots=True)
class MemoryCause:
    """Why the layout (or, for `plan`, the layout closest to fitting) does not fit: its peak against the limit,
    and the terms of the stage that peaks."""

    layout: Layout
    peak_gib: float
    capacity_gib: float
    headroom_gib: float
    """Memory the request keeps free (plan --headroom-gib; 0 for estimate)."""
    stage: str
    terms_gib: dict[str, float]
    """weights, grads, optimizer, activations, other: on the peak stage."""

    @property
    def limit_gib(self) -> float:
        return self.capacity_gib - self.headroom_gib

    @property
    def over_gib(self) -> float:
        return self.peak_gib - self.limit_gib

    @property
    def largest_term(self) -> str:
        return max(MEMORY_TERMS, key=lambda t: (self.terms_gib[t], t))

    def describe(self) -> str:
        limit = (f"{self.limit_gib:.1f} GiB ({self.capacity_gib:.1f} less {self.headroom_gib:g} GiB headroom)"
                 if self.headroom_gib else f"{self.capacity_gib:.1f} GiB")
        if self.headroom_gib >= self.capacity_gib:  # no room at all: say so rather than compare with a negative
            limit = f"the 0 GiB a {self.headroom_gib:g} GiB headroom leaves of {self.capacity_gib:.1f} GiB"
        big = self.largest_term
        rest = ", ".join(f"{t} {self.terms_gib[t]:.1f}" for t in MEMORY_TERMS if t != big and self.terms_gib[t] > 0)
        text = (f"peak {self.peak_gib:.1f} GiB on the {self.stage} stage > {limit}, over by {self.over_gib:.1f} GiB: "
                f"{big} {self.terms_gib[big]:.1f} GiB is the largest term" + (f" ({rest})" if rest else ""))
        if self.headroom_gib and self.peak_gib <= self.capacity_gib:
            text += f"; it fits the GPU itself: the {self.headroom_gib:g} GiB headroom is what fails"
        return text

    def to_json(self) -> dict[str, Any]:
        return {"layout": self.layout.short(), "peak_gib": _r(self.peak_gib), "capacity_gib": _r(self.capacity_gib),
                "headroom_gib": _r(self.headroom_gib), "limit_gib": _r(self.limit_gib), "over_gib": _r(self.over_gib),
                "peak_stage": self.stage, "terms_gib": {t: _r(v) for t, v in self.terms_gib.items()},
                "largest_term": self.largest_term}


@dataclass(frozen=True, slots=True)
class FeasibleOption:
    """A change that fits, with the model's numbers for it."""

    changes: tuple[Change, ...]
    gpus_added: int
    layout: Layout
    cluster: str
    step_time_s: float
    tokens_per_s: float
    peak_gib: float
    capacity_gib: float
    headroom_gib: float
    """What the request keeps free after this change (the option's own headroom for a headroom change)."""
    memory_change_gib: dict[str, float]
    """Each memory term on the peak stage minus the cause's (negative: freed), non-zero terms only."""

    def sort_key(self) -> tuple:
        return (len(self.changes), self.gpus_added, self.step_time_s, self.describe())

    def describe(self) -> str:
        what = ", ".join(map(str, self.changes))
        if self.gpus_added:
            what += f" ({self.gpus_added:+d} GPU{'s' if abs(self.gpus_added) > 1 else ''})"
        freed = sorted(self.memory_change_gib.items(), key=lambda kv: (kv[1], kv[0]))
        moved = ", ".join(f"{t} {d:+.1f}" for t, d in freed[:2] if d < 0)
        return (f"{what}: peak {self.peak_gib:.1f} GiB of {self.capacity_gib:.1f}"
                + (f" ({moved} GiB)" if moved else "") + f", step {self.step_time_s:.4g} s, "
                f"{self.tokens_per_s:,.0f} tokens/s")

    def to_json(self) -> dict[str, Any]:
        return {"changes": [c.to_json() for c in self.changes], "summary": self.describe(),
                "gpus_added": self.gpus_added, "layout": self.layout.to_dict(), "layout_short": self.layout.short(),
                "cluster": self.cluster, "step_time_s": _r(self.step_time_s), "tokens_per_s": _r(self.tokens_per_s),
                "peak_gib": _r(self.peak_gib), "capacity_gib": _r(self.capacity_gib),
                "headroom_gib": _r(self.headroom_gib),
                "memory_change_gib": {t: _r(v) for t, v in self.memory_change_gib.items()}}


@dataclass(frozen=True, slots=True)
class NearestFeasible:
    """The answer when nothing fits: the cause, and the options that fit, smallest change first."""

    cause: MemoryCause | None
    """None when no layout passes the divisibility rules (memory is not what failed)."""
    reason: str
    options: tuple[FeasibleOption, ...]
    tried: tuple[str, ...]
    """The knobs tried, in order (so an empty answer says what did not help)."""

    def summary(self) -> str:
        if self.options:
            return f"nearest that fits: {self.options[0].describe()}"
        return f"no change of {', '.join(self.tried)} fits (one knob or two)"

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "cause": self.cause.to_json() if self.cause else None,
                "options": [o.to_json() for o in self.options], "tried": list(self.tried),
                "ranking": "fewest knobs changed, then fewest GPUs added, then fastest step"}


class NothingFits(InfeasibleError):
    """`plan` found no layout; carries the nearest feasible options and the search's counts for the output."""

    def __init__(self, message: str, nearest: NearestFeasible, counts: dict[str, Any]) -> None:
        super().__init__(message)
        self.nearest = nearest
        self.counts = counts


def _r(x: float) -> float:
    """6 significant digits, as estimate's JSON."""
    return float(f"{x:.6g}")


# ---- the cause -------------------------------------------------------------------------------------------------

def memory_cause(est: Estimate, headroom_gib: float) -> MemoryCause:
    """The peak of one priced layout against capacity less headroom, with the terms of its peak stage."""
    mem = est.to_json()["memory"]
    stage = mem["peak_stage"]
    return MemoryCause(layout=est.layout, peak_gib=mem["peak_gib"], capacity_gib=mem["capacity_gib"],
                       headroom_gib=headroom_gib, stage=stage,
                       terms_gib={t: mem["by_stage"][stage][f"{t}_gib"] for t in MEMORY_TERMS})


def closest_layout(model: ModelSpec, cluster: Cluster, gbs: int, seq: int, fixed: dict | None,
                   stack: ExecutionStack) -> tuple[Layout, float] | None:
    """The layout of the search space with the smallest peak (bytes), or None when none passes the rules."""
    given, stack = stack, recipe_stack(cluster, stack, fixed or {})
    hw = HardwareRates.of(cluster)
    space = enumerate_space(model, cluster.world_size, hw.domain, gbs, seq, fixed, stack,
                            precision_options(cluster, stack, fixed or {}))
    if not len(space.arrays):
        return None
    peak = stack_memory(ModelShapes.of(model), space.arrays, stack).peak
    i = int(np.argmin(peak))
    return with_pinned_recipe(space.arrays.layout(i), fixed or {}, given), float(peak[i])


def _option(est: Estimate, changes: tuple[Change, ...], base: Cluster, cause: MemoryCause | None,
            headroom_gib: float) -> FeasibleOption:
    data = est.to_json()
    mem = data["memory"]
    stage = mem["peak_stage"]
    delta = {}
    if cause is not None:
        delta = {t: mem["by_stage"][stage][f"{t}_gib"] - cause.terms_gib[t] for t in MEMORY_TERMS}
        delta = {t: d for t, d in delta.items() if abs(d) >= 0.05}
    return FeasibleOption(changes=changes, gpus_added=est.cluster.world_size - base.world_size, layout=est.layout,
                          cluster=est.cluster.describe(), step_time_s=data["step_time_s"],
                          tokens_per_s=data["tokens_per_s"], peak_gib=mem["peak_gib"],
                          capacity_gib=mem["capacity_gib"], headroom_gib=headroom_gib, memory_change_gib=delta)


def _resized(cluster: Cluster, nodes: int) -> Cluster | None:
    """The same nodes (GPUs per node and link overrides kept), `nodes` of them, no measured matrix; None for a
    cluster of several node groups."""
    if len(cluster.groups) != 1 or not 1 <= nodes <= MAX_NODES:
        return None
    return replace(cluster, name=f"{cluster.primary.preset}:{nodes}",
                   groups=(replace(cluster.primary, count=nodes),), node_bandwidth_gb_per_s=None)


def node_ladders(n: int) -> dict[str, list[int]]:
    """Node counts to try on each side of n, nearest first: fewer (n-1 down to n-8) and more (n+1..n+8, then
    2n..32n). Each side is its own knob, so the first count that fits on one side never hides the other's."""
    more = [n + k for k in range(1, NODE_STEPS + 1)]
    more += [n * f for f in NODE_DOUBLINGS if n * f > more[-1]]
    return {FEWER_NODES: [n - k for k in range(1, NODE_STEPS + 1) if n - k >= 1], MORE_NODES: more}


# ---- plan: nothing fits -----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Request:
    cluster: Cluster
    fixed: dict
    headroom_gib: float
    changes: tuple[Change, ...] = ()


def nearest_plan(model: ModelSpec, cluster: Cluster, gbs: int, seq: int, *, fixed: dict | None,
                 headroom_gib: float, calibration: Calibration | None, stack: ExecutionStack) -> NearestFeasible:
    """What `plan` answers when no layout fits: the cause (the closest layout's peak and terms) and the smallest
    changes of node count, headroom or a pinned key that make one fit, each with the search's best plan."""
    fixed = dict(fixed or {})
    base = _Request(cluster, fixed, headroom_gib)
    closest = closest_layout(model, cluster, gbs, seq, fixed, stack)
    cause = None
    if closest is not None:
        cause = memory_cause(estimate(model, cluster, closest[0], calibration, stack=stack), headroom_gib)
        reason = f"closest: {closest[0].short()}: {cause.describe()}"
    else:
        reason = "no layout passes the divisibility rules"

    def headroom(req: _Request) -> Iterator[_Request]:
        if req.headroom_gib <= 0:
            return
        found = closest_layout(model, req.cluster, gbs, seq, req.fixed, stack)
        if found is None:
            return
        capacity = HardwareRates.of(req.cluster, calibration).memory_bytes
        free = math.floor((capacity - found[1]) / GIB / HEADROOM_STEP_GIB) * HEADROOM_STEP_GIB
        if 0 <= free < req.headroom_gib:
            free = round(free, 1)
            yield replace(req, headroom_gib=free, changes=req.changes + (Change(Knob.HEADROOM, req.headroom_gib, free),))

    def nodes(side: str) -> Callable[[_Request], Iterator[_Request]]:
        def gen(req: _Request) -> Iterator[_Request]:
            n = req.cluster.n_nodes
            for count in node_ladders(n)[side]:
                resized = _resized(req.cluster, count)
                if resized is not None:
                    yield replace(req, cluster=resized, fixed={k: v for k, v in req.fixed.items() if k != "dp"},
                                  changes=req.changes + (Change(Knob.NODES, n, count, abs(count - n)),))
        return gen

    def unpin(key: str) -> Callable[[_Request], Iterator[_Request]]:
        # hierarchical CP's all-to-all group goes with its exchange (enumerate_space: pinned both or neither)
        gone = (key, "cp_a2a") if key == "cp_kind" else (key,)

        def gen(req: _Request) -> Iterator[_Request]:
            if key in req.fixed:
                yield replace(req, fixed={k: v for k, v in req.fixed.items() if k not in gone},
                              changes=req.changes + (Change(key, req.fixed[key], "any"),))
        return gen

    modifiers: dict[str, Callable[[_Request], Iterator[_Request]]] = {
        Knob.HEADROOM: headroom, FEWER_NODES: nodes(FEWER_NODES), MORE_NODES: nodes(MORE_NODES)}
    modifiers |= {f"unpin {k}": unpin(k) for k in sorted(fixed) if not (k == "cp_a2a" and "cp_kind" in fixed)}

    def price(req: _Request) -> FeasibleOption | None:
        try:
            result = search(model, req.cluster, gbs, seq, fixed=req.fixed, top=1, calibration=calibration,
                            headroom_gib=req.headroom_gib, suggest=False, stack=stack)
        except InfeasibleError:
            return None
        best = result.plans[0]
        # An unpinned key's new value is the one the search chose.
        changes = tuple(replace(c, new=getattr(best.layout, c.knob)) if c.new == "any" else c for c in req.changes)
        return _option(best.estimate, changes, cluster, cause, req.headroom_gib)

    options = _first_fits(base, modifiers, price, lambda r: r.changes)
    return NearestFeasible(cause=cause, reason=reason, options=options, tried=tuple(modifiers))


def _first_fits(base, modifiers: dict[str, Callable], price: Callable, changes_of: Callable) -> tuple:
    """For each knob, then (only when no single knob fits) each pair of knobs: the first rung of its ladder that
    fits, priced; smallest change first (FeasibleOption.sort_key)."""
    found = []
    for gen in modifiers.values():
        for req in gen(base):
            option = price(req)
            if option is not None:
                found.append(option)
                break
    if not found:
        names = list(modifiers)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                if {a, b} == {FEWER_NODES, MORE_NODES}:  # one knob, two directions: not a pair
                    continue
                option = _first_pair(base, modifiers[a], modifiers[b], price)
                if option is not None:
                    found.append(option)
    return tuple(sorted(found, key=FeasibleOption.sort_key))


def _first_pair(base, first: Callable, second: Callable, price: Callable) -> FeasibleOption | None:
    """The pair of rungs with the fewest steps in all that fits (ties: the first knob's nearer rung). Both orders
    are applied: a rung of one knob may exist only after the other moved (pp 8 on one node of 8 GPUs at tp 8
    needs more nodes first)."""
    candidates = [(sum(c.steps for c in req.changes), order, i, j, req)
                  for order, (a, b) in enumerate(((first, second), (second, first)))
                  for i, mid in enumerate(a(base)) for j, req in enumerate(b(mid))]
    for *_, req in sorted(candidates, key=lambda c: c[:4]):
        option = price(req)
        if option is not None:
            return option
    return None


# ---- estimate: one layout out of memory -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Candidate:
    cluster: Cluster
    layout: Layout
    changes: tuple[Change, ...] = ()


def nearest_layout(model: ModelSpec, cluster: Cluster, est: Estimate, calibration: Calibration | None,
                   stack: ExecutionStack) -> NearestFeasible | None:
    """For a layout that breaks only the memory rule: the term that overflows and the smallest changes of the
    layout (or its node count) that fit, each priced by estimate(). None when the layout breaks another rule
    (its reasons already name the fix) or fits. fp8 on GPUs without fp8 tensor cores (the PRECISION rule alone):
    the same layout in bf16, priced, when it fits."""
    if (est.reasons and est.layout.precision == "fp8" and all(r.code == RuleCode.PRECISION for r in est.reasons)
            and fp8_hardware_problems(cluster, est.layout)):
        # bf16 training: no fp8 recipe and no layers kept out of fp8 (they are all bf16)
        twin = estimate(model, cluster, replace(est.layout, precision="bf16", fp8_recipe="", bf16_first_layers=0,
                                                bf16_last_layers=0), calibration, stack=stack)
        if not twin.feasible:
            return None
        option = _option(twin, (Change("precision", "fp8", "bf16", 1),), cluster, None, 0.0)
        return NearestFeasible(cause=None, reason=str(est.reasons[0]), options=(option,), tried=("precision",))
    if not est.reasons or any(r.code != RuleCode.OUT_OF_MEMORY for r in est.reasons) or est.evaluation is None:
        return None
    cause = memory_cause(est, 0.0)
    domain = HardwareRates.of(cluster, calibration).domain

    def dp_for(world: int, L: Layout, **kw: int) -> dict[str, int] | None:
        tp, pp, cp = kw.get("tp", L.tp), kw.get("pp", L.pp), kw.get("cp", L.cp)
        if world % (tp * pp * cp):
            return None
        dp = world // (tp * pp * cp)
        return {**kw, "dp": dp, "dp_replicate": L.dp_replicate if dp % L.dp_replicate == 0 else 1}

    def step(c: _Candidate, knob: str, new: Any, steps: int, cluster: Cluster | None = None,
             **fields: Any) -> Iterator[_Candidate]:
        """The candidate with `fields` changed (nothing when the layout class refuses the combination)."""
        old = c.cluster.n_nodes if knob == Knob.NODES else getattr(c.layout, knob)
        try:
            layout = replace(c.layout, **fields)
        except BadInputError:
            return
        also = tuple((k, getattr(c.layout, k), getattr(layout, k)) for k in ALSO_KEYS
                     if k != knob and getattr(c.layout, k) != getattr(layout, k)
                     and not (k == "schedule" and c.layout.pp == 1))  # a first pipeline's schedule is its default
        yield _Candidate(cluster or c.cluster, layout, c.changes + (Change(knob, old, new, steps, also),))

    def recompute(c: _Candidate) -> Iterator[_Candidate]:
        ladder = CHOICES["recompute"]
        now = ladder.index(c.layout.recompute)
        for k, r in enumerate(ladder[now + 1:], start=1):
            yield from step(c, "recompute", r, k, recompute=r, recompute_layers=0)

    def zero(c: _Candidate) -> Iterator[_Candidate]:
        for k, z in enumerate(ZERO_STAGES[c.layout.zero + 1:], start=1):
            yield from step(c, "zero", z, k, zero=z)

    def mbs(c: _Candidate) -> Iterator[_Candidate]:
        for k, m in enumerate(reversed(divisors(c.layout.mbs)[:-1]), start=1):
            yield from step(c, "mbs", m, k, mbs=m)

    def degree(key: str, options: Callable[[_Candidate], list[int]]) -> Callable[[_Candidate], Iterator[_Candidate]]:
        def gen(c: _Candidate) -> Iterator[_Candidate]:
            rungs = [d for d in options(c) if d > getattr(c.layout, key)]
            for k, d in enumerate(rungs, start=1):
                fields = dp_for(c.cluster.world_size, c.layout, **{key: d})
                if fields is None:
                    continue
                if key == "pp":  # the new pipeline's stage split: even, or the search's uneven ends
                    schedule = c.layout.schedule if c.layout.pp > 1 else "1f1b"
                    own = stack_pp_layers(model, d, stack.pp_split)  # a stack that splits by its own rule
                    splits = ([(0, 0)] if stack.pp_split != "even" else
                              layer_splits(model.n_layers, d, c.layout.vpp) or [(0, 0)])
                    for first, last in splits:
                        yield from step(c, key, d, k, **fields, schedule=schedule, first_stage_layers=first,
                                        last_stage_layers=last, pp_layers=own)  # a per-rank list is pp's own
                elif key == "tp":  # sequence parallelism comes with tp unless the layout pinned it off
                    yield from step(c, key, d, k, **fields, sp=c.layout.sp or c.layout.tp == 1)
                else:
                    yield from step(c, key, d, k, **fields)
        return gen

    def nodes(side: str) -> Callable[[_Candidate], Iterator[_Candidate]]:
        def gen(c: _Candidate) -> Iterator[_Candidate]:
            n = c.cluster.n_nodes
            for count in node_ladders(n)[side]:
                other = _resized(c.cluster, count)
                fields = dp_for(other.world_size, c.layout) if other is not None else None
                if fields is not None:
                    yield from step(c, Knob.NODES, count, abs(count - n), cluster=other, **fields)
        return gen

    def replicate(c: _Candidate) -> Iterator[_Candidate]:
        if c.layout.dp_replicate > 1:
            yield from step(c, "dp_replicate", 1, 1, dp_replicate=1)

    world = cluster.world_size
    modifiers: dict[str, Callable[[_Candidate], Iterator[_Candidate]]] = {
        "recompute": recompute, "zero": zero, "mbs": mbs,
        "tp": degree("tp", lambda c: divisors(c.cluster.world_size, at_most=domain)),
        "pp": degree("pp", lambda c: divisors(c.cluster.world_size, at_most=model.n_layers)),
        "cp": degree("cp", lambda c: [d for d in CP_DEGREES if c.cluster.world_size % d == 0]),
        "dp_replicate": replicate, FEWER_NODES: nodes(FEWER_NODES), MORE_NODES: nodes(MORE_NODES)}
    if model.is_moe:
        modifiers["ep"] = degree("ep", lambda c: divisors(model.n_experts, at_most=world))
    if est.layout.precision == "fp8" and not est.layout.fp8_params and stack.keeps_fp8_params:
        # fp8-only weights, as every Megatron-Bridge fp8 recipe runs them: 2 B per parameter less (Layout.fp8_params).
        def fp8_params(c: _Candidate) -> Iterator[_Candidate]:
            if c.layout.zero >= 1:
                yield from step(c, "fp8_params", True, 1, fp8_params=True)
        modifiers["fp8_params"] = fp8_params
    if not est.layout.bf16_moments and stack.bf16_moments and est.layout.optimizer == "adam-master":
        # Adam's moments in bf16 (Megatron-Core's precision-aware optimizer): 4 B per parameter less, sharded.
        def bf16_moments(c: _Candidate) -> Iterator[_Candidate]:
            if c.layout.zero >= 1:
                yield from step(c, "bf16_moments", True, 1, bf16_moments=True, precision_aware=True)
        modifiers["bf16_moments"] = bf16_moments
    if (not est.layout.precision_aware and stack.optimizer_param_remainders
            and keeps_master_remainders(est.layout, named_fp8_recipe(est.layout, stack))):
        # the precision-aware optimizer's 2-byte master remainders: 2 B per parameter less, sharded
        def precision_aware(c: _Candidate) -> Iterator[_Candidate]:
            if keeps_master_remainders(c.layout, named_fp8_recipe(c.layout, stack)):
                yield from step(c, "precision_aware", True, 1, precision_aware=True)
        modifiers["precision_aware"] = precision_aware

    runs_already = {str(r) for r in stack_problems(est.layout, stack)}

    def price(c: _Candidate) -> FeasibleOption | None:
        if any(str(r) not in runs_already for r in stack_problems(c.layout, stack)):
            return None  # a change the stack cannot run (e.g. zero 2 on torchtitan) is no option
        if not passes_rules(model, c.cluster, c.layout, stack):
            return None  # most rungs still do not fit: their step time is not worth pricing
        got = estimate(model, c.cluster, c.layout, calibration, stack=stack)
        return _option(got, c.changes, cluster, cause, 0.0) if got.feasible else None

    options = _first_fits(_Candidate(cluster, est.layout), modifiers, price, lambda c: c.changes)
    return NearestFeasible(cause=cause, reason=cause.describe(), options=options, tried=tuple(modifiers))
