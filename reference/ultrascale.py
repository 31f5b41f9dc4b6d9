"""Our predictions against the Hugging Face Ultra-Scale Playbook's benchmark sweep (data/ultrascale_playbook.csv):
nanotron runs of Llama-shaped 1.34B / 3.57B / 8.86B models on one node of 8 H100 80 GB at sequence 4096 and a
global batch of 256 sequences, every combination of dp x tp x pp = 8, micro-batch, gradient accumulation and ZeRO 0/1
that ran, with the measured tokens/s per GPU and the memory of rank 0, and every point that crashed (1B-80B), against
estimate's memory verdict.

A held-out set for issue #13 (published H100-era runs: tokens/s within 10 % median, 20 % max; memory within 8 %). Each
row runs `estimate` with the nanotron stack (hardware_db/data/stacks.yaml `nanotron`: asynchronous TP, 1F1B, 25 MiB
DDP buckets in fp32, ZeRO-1's weight all-gather after the step, FlashAttention-2) on one DGX H100 node (the playbook
names 8 x H100 per node and no more: the node's NVLink is the DGX H100's). One node only: the playbook's measured
collectives fall from 362 GB/s all-reduce bus bandwidth on 2 nodes to 33 GB/s on 64 (pp_comm_bandwidth.html), a
fabric no node preset here describes, so the multi-node points are not compared. One constant is fitted on five of
these rows and the rest check it: stacks.yaml nanotron dense_host.uncounted_scale, the dense layer's host time over
what its counted calls cost, fitted on the 1B points at pp 1, tp 2-8 and one sequence per micro-batch (HOST_FIT_POINTS,
refit_uncounted_scale); those five are shown, not counted in the time statistics.

    python -m clusterplan.reference            # prints every reference table, this one included
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.estimate import Estimate, estimate
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.memory import (
    GIB,
    outside_allocator_bytes,
    stage_layers,
    stage_params,
    zero1_gather_flat_bytes,
)
from clusterplan.models.training.pipeline_split import cost_balanced_ranks as nanotron_stage_layers
from clusterplan.reference.report import (
    TARGET_MEMORY,
    TARGET_TIME_MAX,
    TARGET_TIME_MEDIAN,
    Column,
    markdown_rows,
    notes_cell,
    print_rows,
    read_rows,
    refusal,
    row_notes,
)

ULTRASCALE_CSV = "ultrascale_playbook.csv"
RAW_LOG_CSV = "ultrascale_raw_log.csv"
"""The sweep's raw log (data/ultrascale_raw_log.csv): each run's max_memory_allocated after the step and rank 0's
parameter count beside the figure's values."""
STACK = "nanotron"
NODE = "dgx-h100"
SEQ = 4096
PRINTED_GBS = 256
"""The hover text prints GBS 256 on every point (1,048,576 tokens per step at sequence 4096)."""

MODELS: dict[str, tuple[int, int, int, int, bool]] = {
    "1B": (16, 2048, 32, 8192, True),
    "3B": (28, 3072, 32, 8192, True),
    "8B": (32, 4096, 32, 14336, False),
    "80B": (80, 8192, 64, 28672, False),
}
"""(layers, hidden, heads, intermediate, tied embeddings) of huggingface/nanotron scripts/scaling_benchmarks.py at
0e0a27ea (its model table; NUM_KEY_VALUE_HEADS None: every head its own K and V; VOCAB_SIZES [131072];
tie_word_embeddings when the intermediate size is under 10,000). Their parameter counts reproduce the sweep's
heatmap axis (nanotron docs/benchmark_summary.svg: 1.34, 3.57, 8.86, 80.0 billion; tests/test_reference_ultrascale.py).
The 80B ("70B" in the script: Llama 3 70B's shape with every head its own K and V) ran on no single node."""
VOCAB = 131072

NOT_COMPARABLE = {
    ("1B", 1, 128, 1, 8, 1, 1): "0.6 % MFU, 485 tokens/s per GPU: 57 x below the same pipeline at ZeRO-0 (27,437); "
                                "ZeRO-1 over one data-parallel rank, which scaling_benchmarks.py itself skips: a "
                                "failed run, not a layout's speed",
}
"""Points listed but not compared, keyed (model, mbs, ga, dp, pp, tp, zero), with the reason."""
HOST_FIT_POINTS = frozenset({("1B", 1, 64, 4, 1, 2, 0), ("1B", 1, 64, 4, 1, 2, 1), ("1B", 1, 128, 2, 1, 4, 0),
                             ("1B", 1, 128, 2, 1, 4, 1), ("1B", 1, 256, 1, 1, 8, 0)})
"""The points stacks.yaml nanotron dense_host.uncounted_scale is fitted on, keyed as NOT_COMPARABLE: the 1B model
(16 layers) at pp 1, tp 2 / 4 / 8 and one sequence per micro-batch, whose micro-batch takes 70-74 ms whatever the tp
(4.4-4.6 ms per layer: research/nanotron-host.md section 0), the host-bound regime. The 3B / 8B points at the same
settings, and the pipelined ones, check it."""
FIT_NOTE = "fits nanotron dense_host.uncounted_scale: shown, not counted in the tokens/s statistics"


def ultrascale_model(size: str) -> ModelSpec:
    layers, hidden, heads, ffn, tied = MODELS[size]
    return ModelSpec(name=f"ultrascale-{size.lower()}", family="llama", n_layers=layers, hidden=hidden,
                     n_heads=heads, n_kv_heads=heads, ffn_hidden=ffn, vocab=VOCAB, tied_embeddings=tied,
                     max_positions=SEQ, source="huggingface/nanotron scripts/scaling_benchmarks.py (Ultra-Scale "
                     "Playbook sweep)")


@dataclass(frozen=True)
class UltrascaleRow:
    """One sweep point, how we run it, and what we predict."""

    model: str
    layout: Layout
    zero: int
    notes: tuple[str, ...]
    published_tokens_per_s: float
    published_mfu: float
    published_memory_gib: float
    predicted_tokens_per_s: float
    predicted_memory_gib: float
    """Rank 0's peak (the first pipeline stage), as the published figure reads rank 0."""
    logged_allocated_gib: float = float("nan")
    """The run's max_memory_allocated at step 4 (raw log): after the step's forward / backward, what the optimizer
    step, the gradient sync and the clipping hold."""
    predicted_state_gib: float = float("nan")
    """Our rank-0 weights, gradients and optimizer state (first stage), with ZeRO-1's flat gather copies of the step."""
    refused: str = ""
    reason: str = ""
    """Why the point is not compared ('' when it is)."""
    fitted: bool = False
    """One of HOST_FIT_POINTS: its tokens/s fits a constant, so it is left out of the held-out time statistics."""

    @property
    def label(self) -> str:
        L = self.layout
        return f"{self.model} dp{L.dp} tp{L.tp} pp{L.pp} mbs{L.mbs} ga{L.microbatches} z{self.zero}"

    @property
    def expressible(self) -> bool:
        return not self.reason

    @property
    def state_error(self) -> float:
        """Predicted state over the logged allocated memory after the step, minus 1."""
        return self.predicted_state_gib / self.logged_allocated_gib - 1

    @property
    def error(self) -> float:
        """Predicted over published tokens/s per GPU, minus 1."""
        return self.predicted_tokens_per_s / self.published_tokens_per_s - 1

    @property
    def memory_error(self) -> float:
        return self.predicted_memory_gib / self.published_memory_gib - 1


def point_key(r: dict[str, str]) -> tuple[str, int, int, int, int, int, int]:
    """(model, mbs, ga, dp, pp, tp, zero): a sweep point in the figure and in the raw log."""
    return (r["model"], *(int(r[k]) for k in ("mbs", "ga", "dp", "pp", "tp", "zero")))


def raw_log() -> dict[tuple[str, int, int, int, int, int, int], dict[str, str]]:
    """The raw log's row of each point that ran (data/ultrascale_raw_log.csv)."""
    return {point_key(r): r for r in read_rows(RAW_LOG_CSV)}


def params_count(text: str) -> float:
    """'940M', '2.21G' (the log's Local Params) as a number."""
    return float(text[:-1]) * {"M": 1e6, "G": 1e9}[text[-1]]


def logged_rank0_layers(model: ModelSpec, tp: int, local_params: str) -> int:
    """Decoder layers on pipeline rank 0 from its logged parameter count: (local x tp - the embedding) / one
    layer's parameters (the log rounds to 3 figures; a layer is 5-6 % of rank 0's count at the smallest)."""
    layer = 4 * model.hidden * model.hidden + 3 * model.ffn_hidden * model.hidden + 2 * model.hidden
    return round((params_count(local_params) * tp - model.vocab * model.hidden) / layer)


def ultrascale_layout(r: dict[str, str], log: dict[str, str] | None = None) -> tuple[Layout, list[str]]:
    """How one sweep point runs; `log`: its raw-log row, whose rank-0 parameter count picks nanotron's split."""
    mbs, ga, dp, pp, tp, zero = (int(r[k]) for k in ("mbs", "ga", "dp", "pp", "tp", "zero"))
    notes = []
    gbs = dp * mbs * ga
    if gbs != PRINTED_GBS:
        notes.append(f"GBS printed {PRINTED_GBS}, but dp x mbs x ga = {gbs}: priced at {gbs}")
    first = last = 0
    ranks: tuple[int, ...] = ()
    if pp > 1:
        model = ultrascale_model(r["model"])
        split = nanotron_stage_layers(model, pp)
        if log is not None:
            logged = logged_rank0_layers(model, tp, log["local_params"])
            strict = nanotron_stage_layers(model, pp, ties_advance=False)
            if logged != split[0][0] and logged == strict[0][0]:
                split = strict
                notes.append(f"rank 0 holds {logged} decoder layers as this run's log counts them (Local Params "
                             f"{log['local_params']}): build_model's 'exceeds' split")
        layers = [n for n, _ in split]
        middle = layers[1:-1]
        text = "/".join(str(n) for n in layers)
        if split[-1][1] and min(layers) >= 1 and len(set(middle)) <= 1:
            first, last = layers[0], layers[-1]
            notes.append(f"nanotron's cost-balanced split {text} decoder layers, the LM head on the last rank")
        elif split[-1][1]:  # middle ranks that differ, or the head alone on the last rank: a per-rank list
            ranks = tuple(layers)
            notes.append(f"nanotron's cost-balanced split {text} decoder layers, the LM head on the last rank "
                         "(pp_layers)")
        else:
            notes.append(f"nanotron's cost-balanced split {text} decoder layers (the LM head with "
                         f"{split[[h for _, h in split].index(True)][0]} of them) is not expressible as first / "
                         "middle / last stages: priced with an even split and the head on the last stage")
    # nanotron's sequence parallelism (tp_mode REDUCE_SCATTER) is the sweep's default with tp > 1; no recompute.
    return Layout(dp=dp, tp=tp, pp=pp, zero=zero, mbs=mbs, gbs=gbs, seq=SEQ, sp=tp > 1, recompute="none",
                  schedule="1f1b", precision="bf16", fp32_grads=True, first_stage_layers=first,
                  last_stage_layers=last, pp_layers=ranks), notes


def _priced(status: str, uncounted_scale: float | None = None,
            points: frozenset[tuple[str, int, int, int, int, int, int]] | None = None,
            ) -> Iterator[tuple[dict[str, str], Layout, list[str], Estimate]]:
    """Each sweep point of `status` (ran / crashed) with its layout, notes and estimate on one DGX H100 node; with
    `uncounted_scale`, at that dense_host.uncounted_scale in place of the stack's; with `points`, those only."""
    stack = get_stack(STACK)
    if uncounted_scale is not None and stack.dense_host is not None:
        stack = replace(stack, dense_host=replace(stack.dense_host, uncounted_scale=uncounted_scale))
    cluster = load_cluster(f"{NODE}:1")
    log = raw_log()
    for r in read_rows(ULTRASCALE_CSV):
        if r["status"] == status and (points is None or point_key(r) in points):
            layout, notes = ultrascale_layout(r, log.get(point_key(r)))
            yield r, layout, notes, estimate(ultrascale_model(r["model"]), cluster, layout, stack=stack)


def reserved_gib(js: dict, layout: Layout) -> float:
    """Rank 0's predicted peak as the published figure measures it: torch.cuda.max_memory_reserved, which holds
    neither the CUDA context nor NCCL's buffers (memory.outside_allocator_bytes; research/nanotron-memory.md:
    nanotron's log_throughput writes "Mem Res (GB)" of world rank 0, and the sweep's raw log matches the figure on
    that column). Our peak of the first stage less those two terms."""
    first = js["memory"]["by_stage"]["first"]["total_gib"] if "by_stage" in js["memory"] else js["memory"]["peak_gib"]
    outside = float(outside_allocator_bytes(LayoutArrays.from_layouts([layout]))[0]) / GIB
    return first - outside


def step_state_gib(first: dict, model: ModelSpec, layout: Layout) -> float:
    """What rank 0 holds during the optimizer step, after the activations are freed: its weights, gradients and
    optimizer state, and ZeRO-1's flat all-gather copies of the updated weights (memory.zero1_gather_flat_bytes)."""
    L = LayoutArrays.from_layouts([layout])
    shapes = ModelShapes.of(model)
    params = stage_params(shapes, L, stage_layers(shapes, L).first, True, L.pp == 1)
    flat = float(zero1_gather_flat_bytes(L, params)[0]) if get_stack(STACK).zero1_gather_flat_copies else 0.0
    return first["weights_gib"] + first["grads_gib"] + first["optimizer_gib"] + flat / GIB


def ultrascale_rows() -> list[UltrascaleRow]:
    out = []
    log = raw_log()
    for r, layout, notes, est in _priced("ran"):
        size = r["model"]
        key = point_key(r)
        js = est.to_json()
        first = js["memory"]["by_stage"]["first"] if "by_stage" in js["memory"] else js["memory"]
        out.append(UltrascaleRow(model=size, layout=layout, zero=layout.zero, notes=tuple(notes),
                                 published_tokens_per_s=float(r["tokens_per_s_per_gpu"]),
                                 published_mfu=float(r["mfu_percent"]) / 100.0,
                                 published_memory_gib=float(r["gpu_memory_gib"]),
                                 predicted_tokens_per_s=js["tokens_per_s"] / layout.world,
                                 predicted_memory_gib=reserved_gib(js, layout),
                                 logged_allocated_gib=float(log[key]["mem_alloc_gib"]),
                                 predicted_state_gib=step_state_gib(first, ultrascale_model(size), layout),
                                 refused=refusal(est), reason=NOT_COMPARABLE.get(key, ""),
                                 fitted=key in HOST_FIT_POINTS))
    return out


def refit_uncounted_scale(tolerance: float = 1e-3) -> float:
    """stacks.yaml nanotron dense_host.uncounted_scale refitted: the scale minimising the sum of squared log errors of
    tokens/s over HOST_FIT_POINTS, by golden-section search over [1, 4] (each point's step time grows with the scale,
    so the loss has one minimum)."""
    published = {point_key(r): float(r["tokens_per_s_per_gpu"]) for r in read_rows(ULTRASCALE_CSV)
                 if r["status"] == "ran"}

    def loss(scale: float) -> float:
        total = 0.0
        for r, layout, _, est in _priced("ran", scale, HOST_FIT_POINTS):
            total += math.log(est.to_json()["tokens_per_s"] / layout.world / published[point_key(r)]) ** 2
        return total

    lo, hi = 1.0, 4.0
    golden = (math.sqrt(5) - 1) / 2
    while hi - lo > tolerance:
        a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
        lo, hi = (lo, b) if loss(a) < loss(b) else (a, hi)
    return (lo + hi) / 2


@dataclass(frozen=True)
class CrashedPoint:
    """A sweep point that ran out of memory or failed otherwise, and whether estimate refuses it for memory."""

    label: str
    verdict: str
    """"out of memory" (estimate refuses it for memory), "fits" (estimate prices it: it failed for a reason not
    priced, or the memory is under-predicted) or "other rule" (estimate refuses it for another reason)."""


def crashed_points() -> list[CrashedPoint]:
    from clusterplan.models.training.rules import RuleCode

    out = []
    for r, layout, _, est in _priced("crashed"):
        codes = {p.code for p in est.reasons}
        verdict = ("other rule" if codes - {RuleCode.OUT_OF_MEMORY} else "out of memory" if codes else "fits")
        out.append(CrashedPoint(label=f"{r['model']} dp{layout.dp} tp{layout.tp} pp{layout.pp} mbs{layout.mbs} "
                                      f"z{layout.zero}", verdict=verdict))
    return out


def feasibility_line(rows: list[UltrascaleRow], crashed: list[CrashedPoint]) -> str:
    """Whether estimate's memory verdict agrees with what ran and what crashed."""
    ran_refused = sum(1 for r in rows if r.refused and "out of memory" in r.refused)
    counts = {v: sum(1 for c in crashed if c.verdict == v) for v in ("out of memory", "fits", "other rule")}
    return (f"feasibility: of {len(rows)} points that ran, estimate refuses {ran_refused} for memory; of "
            f"{len(crashed)} that crashed (out of memory or another failure), it refuses {counts['out of memory']} for "
            f"memory, {counts['other rule']} by another rule, and prices {counts['fits']} as fitting")


def _stats(values: list[float]) -> tuple[int, float, float]:
    from statistics import median

    errors = sorted(abs(v) for v in values)
    return (len(errors), median(errors), errors[-1]) if errors else (0, float("nan"), float("nan"))


def summary_lines(rows: list[UltrascaleRow]) -> list[str]:
    """Per model and over all: tokens/s over the held-out points (HOST_FIT_POINTS left out), memory over every
    compared point (nothing is fitted to memory)."""
    compared = [r for r in rows if r.expressible]
    held = [r for r in compared if not r.fitted]
    out = []
    for size in (s for s in MODELS if any(r.model == s for r in compared)):
        n, med, worst = _stats([r.error for r in held if r.model == size])
        mn, mmed, mworst = _stats([r.memory_error for r in compared if r.model == size])
        fitted = sum(1 for r in compared if r.model == size and r.fitted)
        out.append(f"{size}: {n} points{f' (+ {fitted} fitted)' if fitted else ''}, tokens/s median |error| "
                   f"{med:.1%}, max {worst:.1%}; memory median {mmed:.1%}, max {mworst:.1%} over {mn}")
    n, med, worst = _stats([r.error for r in held])
    _, mmed, mworst = _stats([r.memory_error for r in compared])
    fitted = len(compared) - len(held)
    fits = [r.error for r in compared if r.fitted]
    fit_text = (f"; the {fitted} fit points of nanotron dense_host.uncounted_scale {min(fits):+.1%} .. "
                f"{max(fits):+.1%}" if fits else "")
    out.append(f"all: {n} held-out of {len(rows)} points, tokens/s median |error| {med:.1%}, max {worst:.1%}"
               f"{fit_text}; rank-0 memory median {mmed:.1%}, max {mworst:.1%} over {len(compared)} (issue #13 "
               f"held-out target: time {TARGET_TIME_MEDIAN:.0%} median / {TARGET_TIME_MAX:.0%} max, memory "
               f"{TARGET_MEMORY:.0%})")
    out.append(state_line(compared))
    return out


def state_line(rows: list[UltrascaleRow]) -> str:
    """Our weights + gradients + optimizer state against each run's logged max_memory_allocated after the step."""
    from statistics import median

    parts = []
    for zero in (0, 1):
        errors = [r.state_error for r in rows if r.zero == zero]
        if errors:
            parts.append(f"ZeRO-{zero} {len(errors)} points, median {median(errors):+.1%}, median |error| "
                         f"{median(abs(e) for e in errors):.1%}")
    return ("state after the step (the raw log's max_memory_allocated at step 4 against our rank-0 weights + "
            "gradients + optimizer state, and under ZeRO-1 the all-gather's flat copies of the updated weights, "
            "2 + 2/dp B per parameter): " + "; ".join(parts))


def _layout_cell(L: Layout) -> str:
    return f"dp{L.dp} tp{L.tp} pp{L.pp} z{L.zero} mbs{L.mbs} ga{L.microbatches}" + (" sp" if L.sp and L.tp > 1 else "")


TITLE = ("Ultra-Scale Playbook sweep (nanotron, 1 node of 8 H100, seq 4096, 1M-token batch): tokens/s and "
         "rank-0 memory per GPU")
"""The table's heading on the console (print_table)."""


def print_table(rows: list[UltrascaleRow]) -> None:
    columns, cells = table(rows)
    print_rows(TITLE, columns, cells, [r.label for r in rows],
               [*summary_lines(rows), feasibility_line(rows, crashed_points())])


def table(rows: list[UltrascaleRow]) -> tuple[list[Column], list[list[str]]]:
    """The columns, and each row's cells with its notes last: what markdown_table and print_table show."""
    columns = [("model", "l"), ("layout", "l"), ("tokens/s/GPU published", "r"), ("predicted", "r"), ("error", "r"),
               ("MFU published", "r"), ("rank-0 GiB published", "r"), ("predicted", "r"), ("error", "r"),
               ("state GiB logged", "r"), ("predicted", "r"), ("error", "r"), ("notes", "l")]
    cells = ([r.model, _layout_cell(r.layout), f"{r.published_tokens_per_s:.0f}", f"{r.predicted_tokens_per_s:.0f}",
              f"{r.error:+.1%}" if r.expressible else "-", f"{r.published_mfu:.1%}", f"{r.published_memory_gib:.1f}",
              f"{r.predicted_memory_gib:.1f}", f"{r.memory_error:+.1%}", f"{r.logged_allocated_gib:.2f}",
              f"{r.predicted_state_gib:.2f}", f"{r.state_error:+.1%}",
              notes_cell(([f"not compared: {r.reason}"] if r.reason else []) + ([FIT_NOTE] if r.fitted else [])
                         + row_notes(r.notes, r.refused))]
             for r in rows)
    return columns, [list(c) for c in cells]


def markdown_table(rows: list[UltrascaleRow]) -> str:
    columns, cells = table(rows)
    lines = markdown_rows(columns, cells)
    lines += [""] + [line + "." for line in (*summary_lines(rows), feasibility_line(rows, crashed_points()))]
    lines += ["", "Memory: the published figure is rank 0's (the first pipeline stage, the first TP rank) in GiB: "
                  "torch.cuda.max_memory_reserved at step 4 (nanotron's log_throughput \"Mem Res (GB)\", which the "
                  "sweep's raw log matches on this column; research/nanotron-memory.md), so it holds neither the CUDA "
                  "context nor NCCL's buffers; `predicted` is our peak of the first stage less those two terms. "
                  "`state GiB logged`: the same run's torch.cuda.max_memory_allocated at step 4 (the sweep's raw log, "
                  "data/ultrascale_raw_log.csv), the peak after the forward / backward, when the activations are "
                  "freed: against our first stage's weights + gradients + optimizer state."]
    return "\n".join(lines)
