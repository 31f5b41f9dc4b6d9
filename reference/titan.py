"""Our predictions against torchtitan's published H100 runs (data/torchtitan_h100_2412.csv): Liang et al.,
"TorchTitan", arXiv 2410.06511 (ICLR 2025) Section 3.2, as pytorch/torchtitan benchmarks/llama3_h100_202412_torchtitan.md
publishes them with their layouts.

A held-out check set for the torchtitan stacks (hardware_db/data/stacks.yaml torchtitan / torchtitan-compile): each
row runs `estimate` with the stack its techniques name (eager or compiled, float8, async TP) on the Grand Teton
preset at its 500 W power limit, and is compared on tokens/s per GPU and peak memory per GPU. No constant is fitted
to these rows and no per-row factor exists; what the source leaves unsaid is assumed below and noted per row.

    python -m clusterplan.reference            # prints every reference table, this one included
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from statistics import median

from clusterplan.hardware_db import get_stack
from clusterplan.hardware_db.stacks import ExecutionStack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.cluster import Cluster, cluster_from_dict
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout
from clusterplan.reference.bridge import layout_text
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

TITAN_CSV = "torchtitan_h100_2412.csv"
NODE = "grand-teton-h100-96gb"
GPUS_PER_NODE = 8
POWER_CAP_W = 500.0
"""benchmarks/llama3_h100_202412_torchtitan.md: 'We used the default 500W power limit' (TDP 700 W)."""
FP8_RECIPE = "tensorwise"
"""torchao float8 with dynamic tensorwise scaling, torchtitan's float8 default at 9dec370 (docs/float8.md)."""
SCHEDULES = {"1F1B": "1f1b", "Interleaved1F1B": "interleaved-1f1b"}
STAGES_PER_RANK = {"1F1B": 1, "Interleaved1F1B": 2}
"""torchtitan generate_split_points (torchtitan/parallelisms/pipeline_llama.py at 9dec370): without explicit split
points, 1 stage per rank for single-stage schedules and 2 for multi-stage (looped) ones."""


@dataclass(frozen=True)
class TitanRow:
    """One CSV row, how we run it, and what we predict."""

    table: int
    model: str
    gpus: int
    techniques: str
    stack: str
    layout: Layout
    notes: tuple[str, ...]
    published_tokens_per_s: float
    published_memory_gib: float
    predicted_tokens_per_s: float
    predicted_memory_gib: float
    refused: str = ""
    """The estimate's own reasons (e.g. out of memory) when it refuses the layout; time and memory still compared."""
    reason: str = ""
    """Why the CLI cannot express the row ('' when it can; every row here can)."""

    @property
    def label(self) -> str:
        return f"T{self.table} {self.model.removeprefix('llama3.1-')} {self.gpus} {self.techniques}"

    @property
    def expressible(self) -> bool:
        return not self.reason

    @property
    def error(self) -> float:
        """Predicted over published tokens/s per GPU, minus 1."""
        return self.predicted_tokens_per_s / self.published_tokens_per_s - 1

    @property
    def memory_error(self) -> float:
        """Predicted over published peak GiB per GPU, minus 1."""
        return self.predicted_memory_gib / self.published_memory_gib - 1


def techniques(r: dict[str, str]) -> str:
    parts = ["FSDP" if r["fsdp"] != "1" else ""]
    parts += [f"TP{r['tp']}" if r["tp"] != "1" else "", f"PP{r['pp']}" if r["pp"] != "1" else "",
              f"CP{r['cp']}" if r["cp"] != "1" else "", "compile" if r["compile"] == "1" else "eager",
              "float8" if r["float8"] == "1" else "", "asyncTP" if r["async_tp"] == "1" else "",
              r["schedule"], f"s{int(r['seq']) // 1024}k" if r["seq"] != "8192" else ""]
    return "+".join(p for p in parts if p)


def published_sdpa(stack: ExecutionStack) -> ExecutionStack:
    """The stack as torchtitan ran before its cuDNN-first SDPA wrapper (stacks.yaml torchtitan sources.kernels): plain
    F.scaled_dot_product_attention in PyTorch's own backend order, FlashAttention-2 on Hopper. Every torchtitan row
    here (Dec 2024) and in titan_community.py (up to Aug 2025) was published before it."""
    return replace(stack, attention_kernel="sdpa")


def titan_stack(r: dict[str, str]) -> tuple[ExecutionStack, list[str]]:
    """The stack entry the row's techniques name: torchtitan (eager) or torchtitan-compile (compiled blocks, async TP);
    a compiled TP run without async TP is torchtitan-compile with its TP overlap off."""
    if r["compile"] != "1":
        return published_sdpa(get_stack("torchtitan")), []
    stack = published_sdpa(get_stack("torchtitan-compile"))
    if int(r["tp"]) > 1 and r["async_tp"] != "1":
        return (replace(stack, name="torchtitan-compile, async TP off", tp_overlap="none", tp_overlap_share=0.0),
                ["async TP off: stack torchtitan-compile with tp_overlap none"])
    return stack, []


def pipeline_split(model: ModelSpec, pp: int, stages_per_rank: int) -> tuple[int, int, str]:
    """(first, last) rank's layers as torchtitan's generate_split_points cuts n layers into pp x stages_per_rank
    stages: the first stage gets n // S, middle stages one more while n % S lasts, the last stage the rest; rank r
    holds stages r, r + pp, ... (looped). (0, 0) when the split is even."""
    stages = pp * stages_per_rank
    base, extra = divmod(model.n_layers, stages)
    sizes = [base]
    for _ in range(stages - 2):
        sizes.append(base + (1 if extra > 0 else 0))
        extra -= 1 if extra > 0 else 0
    sizes.append(model.n_layers - sum(sizes))
    per_rank = [sum(sizes[r::pp]) for r in range(pp)]
    if len(set(per_rank)) == 1:
        return 0, 0, ""
    middle = per_rank[1:-1]
    if len(set(middle)) != 1:
        raise ValueError(f"{model.name}: uneven middle stages {per_rank} cannot be expressed")
    return per_rank[0], per_rank[-1], (f"torchtitan split of {model.n_layers} layers into {stages} stages: "
                                       f"{per_rank[0]}/{middle[0]}/{per_rank[-1]} layers on first/middle/last rank")


def titan_layout(r: dict[str, str], model: ModelSpec) -> tuple[Layout, list[str]]:
    fsdp, tp, pp, cp = int(r["fsdp"]), int(r["tp"]), int(r["pp"]), int(r["cp"])
    local, seq = int(r["local_batch"]), int(r["seq"])
    notes: list[str] = []
    first = last = 0
    vpp = 1
    schedule = "1f1b"
    mbs = local
    if pp > 1:
        per_rank = STAGES_PER_RANK[r["schedule"]]
        vpp, schedule = per_rank, SCHEDULES[r["schedule"]]
        first, last, note = pipeline_split(model, pp, per_rank)
        if note:
            notes.append(note)
        # torchtitan's pipeline_parallel_microbatches defaulted to the pp degree: local batch / pp per micro-batch, for
        # the interleaved schedule too at 9dec370 (pytorch/torchtitan PR #781, merged 2025-01-07, made it pp x stages
        # per rank for multi-stage schedules afterwards). With 16 interleaved micro-batches of 2 the model would predict
        # interleaved 1.46x faster than 1F1B (published 1.28x; 8 micro-batches: 1.29x) and 62.5 GiB (published 72.7).
        mbs = local // pp
        notes.append(f"{pp} micro-batches of {mbs} (torchtitan's default: pp degree; not published)")
    if cp > 1:
        # torch/distributed/tensor/experimental/_attention.py: _ContextParallelOptions.rotate_method = ALL_GATHER,
        # enable_load_balance = True (the torch context_parallel torchtitan called; no torchtitan option then).
        notes.append("CP all-gather of K/V with causal load balancing (torch context_parallel's defaults)")
    if r["float8"] == "1":
        notes.append("float8 tensorwise (torchao default; recipe not published)")
    layout = Layout(dp=fsdp, tp=tp, pp=pp, vpp=vpp, cp=cp, cp_kind="allgather", zero=3, mbs=mbs, gbs=local * fsdp,
                    seq=seq, recompute="selective" if r["ac"] == "selective" else "full", schedule=schedule,
                    precision="fp8" if r["float8"] == "1" else "bf16", flash_attn=True, first_stage_layers=first,
                    last_stage_layers=last)
    return layout, notes


def titan_cluster(gpus: int) -> Cluster:
    return cluster_from_dict({"groups": [{"node": NODE, "count": gpus // GPUS_PER_NODE, "power_cap_w": POWER_CAP_W}]},
                             where=f"{NODE}:{gpus // GPUS_PER_NODE} at {POWER_CAP_W:g} W")


def titan_rows() -> list[TitanRow]:
    out = []
    for r in read_rows(TITAN_CSV):
        model = load_model(r["model"])
        gpus = int(r["gpus"])
        layout, notes = titan_layout(r, model)
        stack, stack_notes = titan_stack(r)
        est = estimate(model, titan_cluster(gpus), layout, stack=stack,
                       fp8_recipe=FP8_RECIPE if layout.precision == "fp8" else None)
        js = est.to_json()
        out.append(TitanRow(table=int(r["table"]), model=r["model"], gpus=gpus, techniques=techniques(r),
                            stack=stack.name, layout=layout, notes=tuple(stack_notes + notes),
                            published_tokens_per_s=float(r["tokens_per_s_per_gpu"]),
                            published_memory_gib=float(r["memory_gib"]),
                            predicted_tokens_per_s=js["tokens_per_s"] / gpus,
                            predicted_memory_gib=js["memory"]["peak_gib"],
                            refused=refusal(est)))
    return out


def summary(rows: list[TitanRow]) -> tuple[int, float, float, float, float]:
    """(rows, median |time error|, max |time error|, median |memory error|, max |memory error|)."""
    times = [abs(r.error) for r in rows]
    mems = [abs(r.memory_error) for r in rows]
    return len(rows), median(times), max(times), median(mems), max(mems)


def _summary_line(rows: list[TitanRow]) -> str:
    n, tmed, tmax, mmed, mmax = summary(rows)
    return (f"{n} rows: tokens/s median |error| {tmed:.1%}, max {tmax:.1%}; peak memory median |error| {mmed:.1%}, "
            f"max {mmax:.1%} (issue #13 held-out target: time {TARGET_TIME_MEDIAN:.0%} median / "
            f"{TARGET_TIME_MAX:.0%} max, memory {TARGET_MEMORY:.0%})")


TITLE = ("torchtitan on H100 (Liang et al. 2024, arXiv 2410.06511; torchtitan benchmarks, Dec 2024): tokens/s "
         "and peak memory per GPU")
"""The table's heading on the console (print_table)."""


def print_table(rows: list[TitanRow]) -> None:
    columns, cells = table(rows)
    print_rows(TITLE, columns, cells, [r.label for r in rows], [_summary_line(rows)])


def table(rows: list[TitanRow]) -> tuple[list[Column], list[list[str]]]:
    """The columns, and each row's cells with its notes last: what markdown_table and print_table show."""
    columns = [("table", "r"), ("model", "l"), ("GPUs", "r"), ("techniques", "l"), ("stack", "l"), ("layout", "l"),
               ("tokens/s/GPU published", "r"), ("predicted", "r"), ("error", "r"), ("peak GiB published", "r"),
               ("predicted", "r"), ("error", "r"), ("notes", "l")]
    cells = ([f"{r.table}", r.model, f"{r.gpus}", r.techniques, r.stack, layout_text(r.layout),
              f"{r.published_tokens_per_s:.0f}", f"{r.predicted_tokens_per_s:.0f}", f"{r.error:+.1%}",
              f"{r.published_memory_gib:.1f}", f"{r.predicted_memory_gib:.1f}", f"{r.memory_error:+.1%}",
              notes_cell(row_notes(r.notes, r.refused))] for r in rows)
    return columns, [list(c) for c in cells]


def markdown_table(rows: list[TitanRow]) -> str:
    columns, cells = table(rows)
    return "\n".join([*markdown_rows(columns, cells), "", _summary_line(rows) + "."])
