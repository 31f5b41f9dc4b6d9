"""Our predictions against Megatron-Core's published Mixtral throughput (data/mixtral_runs.csv): the MCore MoE README's
Mixtral 8x7B on 64 H100 (v0.8 and v0.9), the Megatron-MoE-ModelZoo's Mixtral 8x22B on 128 H100 (dropless,
force-balanced, token-dropping, blockwise fp8) and the NeMo 25.04 performance summary's Mixtral 8x7B on 64 GB200.

A held-out check for issue #13 (published H100-era runs: tokens/s within 10 % median, 20 % max) of the megatron-core
stack on MoE layers that hold one expert per GPU (8 experts over ep 8): each row runs `estimate` on its system's
preset (dgx-h100, gb200-nvl72) with the layout its source gives, and the published TFLOP/s become tokens/s through the FLOP count Megatron-LM used when the
figure was written (the CSV header says which and why). Where a source leaves the virtual-pipeline reading open, the
row is priced at the reading its header gives and the other reading's error is shown beside it. Nothing is fitted.

    python -m clusterplan.reference            # prints every reference table, this one included
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout
from clusterplan.reference import bridge, mcore_moe
from clusterplan.reference.report import (
    TARGET_TIME_MAX,
    TARGET_TIME_MEDIAN,
    Column,
    PricedRow,
    markdown_rows,
    notes_cell,
    print_rows,
    read_rows,
    refusal,
    summary,
)

MIXTRAL_CSV = "mixtral_runs.csv"
STACK = "megatron-core"
FP8_RECIPES = {**bridge.FP8_RECIPES, **mcore_moe.FP8_RECIPES}
"""The fp8 recipe per CSV precision: FP8-CS per-tensor current scaling (Megatron-Bridge's map), FP8-BLK the
ModelZoo's blockwise recipe on Hopper (mcore_moe's)."""
GPUS_PER_NODE = {"dgx-h100": 8, "gb200-nvl72": 4}
"""GPUs per node preset: the sources' "8xH100 80GB HBM3" servers; a GB200 NVL72 compute tray holds 4."""
# The README and ModelZoo rows run Megatron-LM's pretrain_gpt.py with --bf16: gradients accumulated and reduced in fp32
# (mcore_moe.FP32_GRADS_SOURCE), the ModelZoo fp8 row's fp8-only parameters and bf16 Adam moments as
# mcore_moe.FP8_PARAMS_SOURCE and mcore_moe.BF16_MOMENTS_SOURCE (sbatch_benchmarking.sh PR=fp8); the NeMo row as its
# CSV header reads NeMo 2.0's defaults (fp32 gradients and moments, fp8 parameters).
FP8_NOTES = {
    "zoo": ("fp8-only parameters and bf16 Adam moments: sbatch_benchmarking.sh PR=fp8 (mcore_moe.FP8_PARAMS_SOURCE, "
            "mcore_moe.BF16_MOMENTS_SOURCE)", "--moe-router-padding-for-fp8 not expressible: Transformer Engine's fp8 "
            "padding copies are priced"),
    "nemo": ("fp8-only parameters assumed (NeMo 2.0's fp8 perf recipes set fp8_param_gather), fp32 Adam moments",),
}
"""Each source family's fp8 settings, as the row's notes say them."""
COUNT_NAMES = {"readme": "Megatron-LM's", "zoo": "Megatron-LM's", "nemo": "NeMo's mixtral()"}
"""Whose FLOP formula each source family's TFLOP/s used (the CSV header)."""
ROUTING_NOTES = {
    ("readme", "dropless"): "the router's own routing, its imbalance not published (nor whether the README's run "
                            "loaded a checkpoint): priced balanced, an upper bound on throughput",
    ("zoo", "dropless"): "the router's own routing from a trained checkpoint (runtime.conf PRETRAIN=0), its imbalance "
                         "not published: priced balanced, an upper bound on throughput (the source's own dropless "
                         "and force-balanced figures differ by 4 %)",
    ("zoo", "forced"): "force-balanced (--moe-router-force-load-balancing)",
    ("zoo", "drop"): "token drop: capacity factor 1.0, padded",
    ("nemo", "drop"): "token drop at capacity 1.0, padded, with CUDA graphs: read from NeMo's main-branch perf "
                      "scripts, not stated for this release",
}
"""Each row's routing, keyed (source family, routing)."""
FLOP_COUNTS = ("causal", "full")


def megatron_flops_per_token(model: ModelSpec, seq: int, tp: int, count: str) -> float:
    """Megatron-LM's num_floating_point_operations per token: `causal` as Megatron-Bridge copies it (the attention
    core's causal half, bridge.bridge_flops_per_token); `full` as Megatron-LM counted it before its MLA-era rewrite,
    the whole s x s core: 6 L s q_dim FLOPs per token more (12 L h^2 (s / 2h) q_dim / h)."""
    if count not in FLOP_COUNTS:
        raise ValueError(f"FLOP count {count!r}: one of {FLOP_COUNTS}")
    causal = bridge.bridge_flops_per_token(model, seq, tp)
    return causal if count == "causal" else causal + 6 * model.n_layers * seq * model.q_dim


def mixtral_layout(r: dict[str, str], vp: int) -> Layout:
    tp, pp, ep = int(r["tp"]), int(r["pp"]), int(r["ep"])
    fp8 = r["precision"] != "BF16"
    return Layout(tp=tp, pp=pp, dp=int(r["gpus"]) // (tp * pp), vpp=vp, ep=ep, etp=1, mbs=int(r["mbs"]),
                  cuda_graphs=r["cuda_graphs"],
                  gbs=int(r["gbs"]), seq=int(r["seq"]), sp=tp > 1, zero=1, recompute="none",
                  schedule="interleaved-1f1b" if vp > 1 else "1f1b", precision="fp8" if fp8 else "bf16",
                  flash_attn=True, fp32_grads=True, moe_dispatcher="alltoall",  # mcore_moe.FP32_GRADS_SOURCE
                  moe_capacity_factor=1.0 if r["routing"] == "drop" else None, fp8_params=fp8,
                  # the ModelZoo's PR=fp8 keeps Adam's moments in bf16; NeMo's recipes leave Megatron-Core's fp32 ones
                  bf16_moments=fp8 and not r["source"].startswith("nemo"))


@dataclass(frozen=True)
class MixtralRow(PricedRow):
    """One published figure, how we run it, and what we predict."""

    reason: str
    label: str
    published_tokens_per_s: float
    predicted_tokens_per_s: float | None
    notes: tuple[str, ...]
    refused: str
    source: str
    model: str
    precision: str
    routing: str
    system: str
    """The cluster preset's node (dgx-h100, gb200-nvl72)."""
    gpus: int
    layout: Layout
    published_tflops: float
    flops_per_token: float
    other_vp: int
    other_vp_error: float


def _predicted_tokens_per_gpu(model: ModelSpec, layout: Layout, system: str, gpus: int,
                              precision: str) -> tuple[float, str]:
    est = estimate(model, load_cluster(f"{system}:{gpus // GPUS_PER_NODE[system]}"), layout, stack=get_stack(STACK),
                   fp8_recipe=FP8_RECIPES[precision])
    return est.to_json()["tokens_per_s"] / gpus, refusal(est)


def mixtral_rows() -> list[MixtralRow]:
    out = []
    for r in read_rows(MIXTRAL_CSV):
        model, gpus = load_model(r["model"]), int(r["gpus"])
        layout = mixtral_layout(r, int(r["vp"]))
        count = megatron_flops_per_token(model, layout.seq, layout.tp, r["flops_count"])
        published = float(r["published_tflops"]) * 1e12 / count
        predicted, refused = _predicted_tokens_per_gpu(model, layout, r["system"], gpus, r["precision"])
        other_vp = int(r["other_vp"])
        other_predicted, other_refused = predicted, refused
        if other_vp != layout.vpp:
            other_predicted, other_refused = _predicted_tokens_per_gpu(model, mixtral_layout(r, other_vp), r["system"],
                                                                       gpus, r["precision"])
        family = r["source"].split("-")[0]
        notes = [ROUTING_NOTES[(family, r["routing"])], f"{COUNT_NAMES[family]} {r['flops_count']} attention count: "
                 f"{count / 1e9:.1f} GFLOP/token"]
        if r["precision"] != "BF16":
            notes.extend(FP8_NOTES[family])
        if other_refused and other_vp != layout.vpp:
            notes.append(f"at vp {other_vp} estimate refuses: {other_refused}")
        label = f"{r['source']} {r['system']} {r['model']} {r['precision']} {r['routing']}"
        out.append(MixtralRow(reason="", label=label,
                              published_tokens_per_s=published, predicted_tokens_per_s=predicted,
                              notes=tuple(notes), refused=refused, source=r["source"], model=r["model"],
                              precision=r["precision"], routing=r["routing"], system=r["system"], gpus=gpus,
                              layout=layout,
                              published_tflops=float(r["published_tflops"]), flops_per_token=count,
                              other_vp=other_vp, other_vp_error=other_predicted / published - 1))
    return out


def at_other_vp(row: MixtralRow) -> MixtralRow:
    """The row priced at the source's other virtual-pipeline reading (its error as the row's)."""
    return replace(row, predicted_tokens_per_s=row.published_tokens_per_s * (1 + row.other_vp_error),
                   layout=replace(row.layout, vpp=row.other_vp))


def _summary_line(rows: list[MixtralRow]) -> str:
    n, median, worst = summary(rows)
    _, other_median, other_worst = summary([at_other_vp(r) for r in rows])
    return (f"{n} rows: tokens/s median |error| {median:.1%}, max {worst:.1%} (at the other virtual-pipeline "
            f"reading of each source: {other_median:.1%}, {other_worst:.1%}) (issue #13 held-out target: "
            f"{TARGET_TIME_MEDIAN:.0%} median, {TARGET_TIME_MAX:.0%} max)")


TITLE = ("Megatron-Core Mixtral on H100 and GB200 (MCore MoE README 8x7B, Megatron-MoE-ModelZoo 8x22B, NeMo 25.04 "
         "GB200 8x7B): tokens/s per GPU")
"""The table's heading on the console (print_table) and in the markdown report."""


def table(rows: list[MixtralRow]) -> tuple[list[Column], list[list[str]]]:
    """The columns, and each row's cells with its notes last: what markdown_table and print_table show."""
    columns = [("source", "l"), ("model", "l"), ("precision", "l"), ("routing", "l"), ("GPUs", "r"), ("layout", "l"),
               ("TFLOP/s/GPU published", "r"), ("tokens/s/GPU published", "r"), ("predicted", "r"), ("error", "r"),
               ("error at the other VP reading", "r"), ("notes", "l")]
    cells = ([r.source, r.model, r.precision, r.routing, str(r.gpus), r.layout.short(), f"{r.published_tflops:.0f}",
              f"{r.published_tokens_per_s:,.0f}", f"{r.predicted_tokens_per_s:,.0f}", f"{r.error:+.1%}",
              f"vp{r.other_vp}: {r.other_vp_error:+.1%}" if r.other_vp != r.layout.vpp else "-",
              notes_cell(r.shown_notes())] for r in rows)
    return columns, [list(c) for c in cells]


def print_table(rows: list[MixtralRow]) -> None:
    columns, cells = table(rows)
    print_rows(TITLE, columns, cells, [r.label for r in rows], [_summary_line(rows)])


def markdown_table(rows: list[MixtralRow]) -> str:
    columns, cells = table(rows)
    return "\n".join([*markdown_rows(columns, cells), "", _summary_line(rows) + "."])
