"""Our predictions against torchtitan runs published after the Dec 2024 set (data/torchtitan_community.csv): the H200
multi-node baseline (Trainy / WhiteFiber, June 2025), the June 2025 async-TP benchmark on H100, torchtitan's 2024
A100 numbers (docs/performance.md) and the B200 MXFP8 / float8 runs (docs/mxfp8.md = torchao mx_formats README).

A held-out check set like reference/titan.py's: each row runs `estimate` with the stack its flags name (eager or
compiled, async TP on or off, float8 all-gather on or off) on the node its source names, and is compared on tokens/s
per GPU and, where published, peak memory per GPU. No constant is fitted to these rows and no per-row factor exists;
what a source leaves unsaid is assumed in data/torchtitan_community.csv's header and noted per row. Published runs
that cannot be expressed are listed in UNEXPRESSED with the reason.

    python -m clusterplan.reference            # prints every reference table, these included
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from statistics import median

from clusterplan.hardware_db import get_stack
from clusterplan.hardware_db.stacks import ExecutionStack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.cluster import Cluster, cluster_from_dict, load_cluster
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
from clusterplan.reference.titan import published_sdpa

COMMUNITY_CSV = "torchtitan_community.csv"
SETS = {
    "h200-2506": "torchtitan on H200 (Trainy / WhiteFiber, June 2025; benchmarks/llama3_8b_h200_2025-06_torchtitan.md)",
    "asynctp-h100-2506": "torchtitan async TP on H100 (June 2025; benchmarks/asyncTP_llama3_h100_2025-06_torchtitan.md, "
                         "pull request #1299)",
    "a100-2404": "torchtitan FSDP2 on 64 A100 (2024; docs/performance.md)",
    "b200-2508": "torchtitan bf16 / float8 / MXFP8 on 8 B200 (Aug 2025; docs/mxfp8.md, torchao mx_formats README)",
    "torchao-h100-2502": "torchtitan bf16 / float8 on 8 H100 (early 2025; torchao float8 README)",
    "torchao-mi300x-2508": "torchtitan bf16 / float8 on 8 MI300X (Aug 2025; torchao float8 README)",
}
"""Set id -> title; the order the report prints them in."""
POWER_CAP_INFERRED = {
    "torchao-h100-2502": "power limit not published for these runs: 500 W, torchtitan's published default for Meta's "
                         "H100 96 GB (benchmarks/llama3_h100_202412_torchtitan.md); the GPU from the same author's "
                         "same-day log of the rowwise run (pytorch/ao #1802: 47.79 GiB = 50.30 % of a 95.0 GiB device)",
}
"""Sets whose power_cap_w the source does not state, with where the value comes from (printed as the row's note)."""
TIME_NOT_COMPARED = {
    "b200-2508": "the B200s are 'power limited' to a limit the source does not state: tokens/s is shown at the "
                 "1000 W TDP but not compared (peak memory does not depend on the clock and is)",
}
"""Sets whose tokens/s cannot be compared, with why; their rows are printed and their memory compared."""
LOSS_COMPILED_SETS = {
    "h200-2506": "torchtitan e7c0cae (2025-06-13)",
    "asynctp-h100-2506": "torchtitan 820504e (2025-06-13)",
    "b200-2508": "torchtitan 6fc499f (2025-08)",
    "torchao-mi300x-2508": "torchtitan 2c8b594 (2025-08)",
}
"""Sets run on a torchtitan that compiles the loss under --training.compile (pytorch/torchtitan#1033, April 2025,
build_cross_entropy_loss): their compiled rows run stack torchtitan-compile-loss. The A100 set ran eager."""
FSDP_SPLIT_ROOT_SETS = {
    "b200-2508": "torchtitan 6fc499f (2025-08)",
    "torchao-mi300x-2508": "torchtitan 2c8b594 (2025-08)",
}
"""Sets run on a torchtitan after pytorch/torchtitan#1094 ('improve reshard_after_forward logic', rebased to merge
2025-07-29): apply_fsdp wraps tok_embeddings alone (resharded after forward) and [norm, output] together (kept
unsharded), every block resharded; earlier ones leave the embedding, final norm and LM head to the root module, which
FSDP2 never reshards, and keep the last block unsharded. Their stacks run fsdp_root "split" (memory.fsdp2_peak_buffers)."""
AC_EVERY_OTHER = "layer2"
"""torchtitan selective_ac_option '2' ("selective layer"): every second TransformerBlock wrapped in checkpoint_wrapper
(torchtitan parallelize_llama apply_ac, _apply_ac_to_transformer_block: ac_freq = int(selective_ac_option))."""
AC_LAYER_FREQUENCY = 2
UNEXPRESSED: tuple[tuple[str, str], ...] = (
    ("asynctp-h100-2506: Llama 3.1 8B on 64 H100, FSDP 8 x TP 8, per-op SAC, local batch 12, bf16 / float8 "
     "tensorwise / rowwise, vanilla and async TP (6 runs)",
     "published only in assets/images/async-tp-perf-06-14-2025.png (no text table in the file or its pull request); "
     "not transcribed"),
    ("b200-2508 MoE: Llama 4 Scout on 64 GB200 trays (256 GPUs), FSDP 256 / EP 16, local batch 10, bf16 6169 and "
     "mxfp8 7401 median tokens/s",
     "the layout as published does not hold together: 10 sequences of 8,192 tokens per GPU with activation "
     "checkpointing off need about 750 GiB of activations by the memory model (llama4-scout-17b-16e, 185 GiB per "
     "GB200), and the routed experts' FSDP degree is given as 256/4 = 64 beside EP 16 (256/16 = 16); the mxfp8 run "
     "also leaves output, router.gate, wk and wv in bf16, which no recipe here prices"),
    ("torchao-mi300x-2508: Llama 3 8B on 8 MI300X, float8 rowwise_with_gw_hp (6100 median tokens/s, 39.32 GB)",
     "the recipe keeps the weight-gradient GEMM in bf16 (torchao Float8LinearRecipeName.ROWWISE_WITH_GW_HP): no fp8 "
     "recipe here prices one GEMM of three in high precision"),
)
"""Runs the sources publish that no row here expresses, with why."""


@dataclass(frozen=True)
class CommunityRow:
    """One CSV row, how we run it, and what we predict."""

    set: str
    model: str
    gpus: int
    node: str
    techniques: str
    stack: str
    layout: Layout
    notes: tuple[str, ...]
    published_tokens_per_s: float
    published_memory_gib: float | None
    predicted_tokens_per_s: float
    predicted_memory_gib: float
    refused: str = ""
    """The estimate's own reasons (e.g. out of memory) when it refuses the layout; time and memory still compared."""

    @property
    def label(self) -> str:
        return f"{self.set} {self.model.removeprefix('llama3.1-')} {self.gpus} {self.techniques}"

    @property
    def error(self) -> float:
        """Predicted over published tokens/s per GPU, minus 1."""
        return self.predicted_tokens_per_s / self.published_tokens_per_s - 1

    @property
    def time_compared(self) -> bool:
        return self.set not in TIME_NOT_COMPARED

    @property
    def memory_error(self) -> float | None:
        """Predicted over published peak GiB per GPU, minus 1 (None where the source publishes no memory)."""
        if self.published_memory_gib is None:
            return None
        return self.predicted_memory_gib / self.published_memory_gib - 1


def techniques(r: dict[str, str]) -> str:
    parts = [f"FSDP{r['fsdp']}", f"TP{r['tp']}" if r["tp"] != "1" else "",
             "compile" if r["compile"] == "1" else "eager", r["variant"] or r["float8"],
             "fp8AG" if r["fp8_allgather"] == "1" else "", "asyncTP" if r["async_tp"] == "1" else "",
             f"ac-{r['ac']}", f"b{r['local_batch']}", f"s{int(r['seq']) // 1024}k"]
    return "+".join(p for p in parts if p)


def community_stack(r: dict[str, str]) -> tuple[ExecutionStack, list[str]]:
    """The stack entry the row's flags name: torchtitan (eager) or, compiled, torchtitan-compile-loss on a torchtitan
    that compiles the loss too (LOSS_COMPILED_SETS), else torchtitan-compile; FSDP2's outer groups wrapped apart from
    the root on a torchtitan after #1094 (FSDP_SPLIT_ROOT_SETS); a compiled TP run without
    async TP has its TP overlap off (as reference/titan.py); float8 without enable_fsdp_float8_all_gather gathers
    bf16 weights (torchao float8 all-gather is opt-in: torchtitan [float8] enable_fsdp_float8_all_gather)."""
    notes: list[str] = []
    compiled = "torchtitan-compile-loss" if r["set"] in LOSS_COMPILED_SETS else "torchtitan-compile"
    stack = published_sdpa(get_stack(compiled if r["compile"] == "1" else "torchtitan"))
    if r["compile"] == "1" and r["set"] in LOSS_COMPILED_SETS:
        notes.append(f"{LOSS_COMPILED_SETS[r['set']]} compiles the loss with the blocks (torchtitan#1033)")
    if r["set"] in FSDP_SPLIT_ROOT_SETS and stack.fsdp_root != "split":
        stack = replace(stack, name=f"{stack.name}, split root", fsdp_root="split")
        notes.append(f"{FSDP_SPLIT_ROOT_SETS[r['set']]} wraps tok_embeddings and [norm, output] apart from the root "
                     "(torchtitan#1094): FSDP2 keeps only [norm, output] unsharded")
    if int(r["tp"]) > 1 and r["async_tp"] != "1":
        stack = replace(stack, name=f"{stack.name}, async TP off", tp_overlap="none", tp_overlap_share=0.0)
        notes.append(f"async TP off: stack {stack.name.split(',')[0]} with tp_overlap none")
    if r["float8"] and r["fp8_allgather"] != "1" and stack.fp8_allgather:
        stack = replace(stack, name=f"{stack.name}, bf16 FSDP gathers", fp8_allgather=False)
        notes.append("enable_fsdp_float8_all_gather off: FSDP gathers bf16 weights")
    return stack, notes


def community_layout(r: dict[str, str], model: ModelSpec) -> tuple[Layout, list[str]]:
    fsdp, tp, local, seq = int(r["fsdp"]), int(r["tp"]), int(r["local_batch"]), int(r["seq"])
    notes: list[str] = []
    recompute, layers = {"selective": ("selective", 0), "full": ("full", 0), "none": ("none", 0),
                         AC_EVERY_OTHER: ("full", model.n_layers // AC_LAYER_FREQUENCY)}[r["ac"]]
    if layers:
        notes.append(f"selective layer AC: {layers} of {model.n_layers} blocks fully recomputed (every second block)")
    if r["float8"] == "rowwise" and tp > 1:
        notes.append("the source's note: low float8 rowwise vanilla-TP throughput, being addressed in "
                     "pytorch/torchtitan#1207 (published rowwise ~ bf16); the model prices rowwise's fp8 GEMMs")
    if r["variant"] == "mxfp8_cublas_rceil":
        notes.append("mxfp8_cublas_rceil differs from mxfp8_cublas only in the scale's rounding mode: priced alike")
    layout = Layout(dp=fsdp, tp=tp, zero=3, mbs=local, gbs=local * fsdp, seq=seq, recompute=recompute,
                    recompute_layers=layers, precision="fp8" if r["float8"] else "bf16", flash_attn=True)
    return layout, notes


def community_cluster(r: dict[str, str]) -> tuple[Cluster, list[str]]:
    node, gpus = r["node"], int(r["gpus"])
    base = load_cluster(f"{node}:1")
    per_node = base.groups[0].gpus_per_node
    if not r["power_cap_w"]:
        return load_cluster(f"{node}:{gpus // per_node}"), [f"power limit not published: {base.groups[0].gpu.name} "
                                                            f"at its {base.groups[0].gpu.tdp_w:g} W TDP"]
    cap = float(r["power_cap_w"])
    notes = [POWER_CAP_INFERRED[r["set"]]] if r["set"] in POWER_CAP_INFERRED else []
    return cluster_from_dict({"groups": [{"node": node, "count": gpus // per_node, "power_cap_w": cap}]},
                             where=f"{node}:{gpus // per_node} at {cap:g} W"), notes


def community_rows() -> list[CommunityRow]:
    out = []
    for r in read_rows(COMMUNITY_CSV):
        model = load_model(r["model"])
        gpus = int(r["gpus"])
        cluster, cluster_notes = community_cluster(r)
        layout, notes = community_layout(r, model)
        stack, stack_notes = community_stack(r)
        est = estimate(model, cluster, layout, stack=stack, fp8_recipe=r["float8"] or None)
        js = est.to_json()
        out.append(CommunityRow(set=r["set"], model=r["model"], gpus=gpus, node=r["node"], techniques=techniques(r),
                                stack=stack.name, layout=layout, notes=tuple(cluster_notes + stack_notes + notes),
                                published_tokens_per_s=float(r["tokens_per_s_per_gpu"]),
                                published_memory_gib=float(r["memory_gib"]) if r["memory_gib"] else None,
                                predicted_tokens_per_s=js["tokens_per_s"] / gpus,
                                predicted_memory_gib=js["memory"]["peak_gib"],
                                refused=refusal(est)))
    return out


@dataclass(frozen=True)
class Summary:
    """Median and max |error| over the rows that compare tokens/s, and over those that publish memory."""

    rows: int
    time_rows: int
    time_median: float | None
    time_max: float | None
    memory_rows: int
    memory_median: float | None
    memory_max: float | None


def summary(rows: list[CommunityRow]) -> Summary:
    times = [abs(r.error) for r in rows if r.time_compared]
    mems = [abs(e) for r in rows if (e := r.memory_error) is not None]
    return Summary(len(rows), len(times), median(times) if times else None, max(times) if times else None,
                   len(mems), median(mems) if mems else None, max(mems) if mems else None)


def _summary_line(rows: list[CommunityRow]) -> str:
    s = summary(rows)
    time = (f"tokens/s ({s.time_rows} rows) median |error| {s.time_median:.1%}, max {s.time_max:.1%}"
            if s.time_median is not None and s.time_max is not None else "tokens/s not compared")
    memory = (f"peak memory ({s.memory_rows} rows) median |error| {s.memory_median:.1%}, max {s.memory_max:.1%}"
              if s.memory_median is not None and s.memory_max is not None else "peak memory not published")
    why = [TIME_NOT_COMPARED[r.set] for r in rows[:1] if not r.time_compared]
    return (f"{s.rows} rows: {time}; {memory} (issue #13 held-out target: time {TARGET_TIME_MEDIAN:.0%} median / "
            f"{TARGET_TIME_MAX:.0%} max, memory {TARGET_MEMORY:.0%})" + (f"; {why[0]}" if why else ""))


def by_set(rows: list[CommunityRow]) -> dict[str, list[CommunityRow]]:
    return {s: [r for r in rows if r.set == s] for s in SETS if any(r.set == s for r in rows)}


def _memory_cells(r: CommunityRow) -> tuple[str, str]:
    if r.published_memory_gib is None or r.memory_error is None:
        return "-", "-"
    return f"{r.published_memory_gib:.1f}", f"{r.memory_error:+.1%}"


COLUMNS: list[Column] = [("model", "l"), ("GPUs", "r"), ("node", "l"), ("techniques", "l"), ("stack", "l"),
                         ("layout", "l"), ("tokens/s/GPU published", "r"), ("predicted", "r"), ("error", "r"),
                         ("peak GiB published", "r"), ("predicted", "r"), ("error", "r"), ("notes", "l")]


def table_cells(part: list[CommunityRow]) -> list[list[str]]:
    """Each row's cells under COLUMNS, its notes last: what markdown_table and print_table show."""
    return [[r.model, f"{r.gpus}", r.node, r.techniques, r.stack, layout_text(r.layout),
             f"{r.published_tokens_per_s:.0f}", f"{r.predicted_tokens_per_s:.0f}", f"{r.error:+.1%}",
             *_memory_cells(r)[:1], f"{r.predicted_memory_gib:.1f}", *_memory_cells(r)[1:],
             notes_cell(row_notes(r.notes, r.refused))] for r in part]


def print_table(rows: list[CommunityRow]) -> None:
    for s, part in by_set(rows).items():
        print_rows(f"{SETS[s]}: tokens/s and peak memory per GPU", COLUMNS, table_cells(part),
                   [r.label for r in part], [_summary_line(part)])
    print("\ntorchtitan runs published but not expressed:")
    for what, why in UNEXPRESSED:
        print(f"  {what}: {why}")


def markdown_table(rows: list[CommunityRow]) -> str:
    lines: list[str] = []
    for s, part in by_set(rows).items():
        lines += [f"{SETS[s]}:", "", *markdown_rows(COLUMNS, table_cells(part)), "", _summary_line(part) + ".", ""]
    lines += ["Published but not expressed:", ""] + [f"- {what}: {why}" for what, why in UNEXPRESSED]
    return "\n".join(lines)
