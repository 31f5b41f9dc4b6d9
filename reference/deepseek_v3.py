"""Our prediction against the DeepSeek-V3 pre-training run on 2,048 H800 (data/deepseek_v3_pretrain.csv): DeepSeek-AI,
"DeepSeek-V3 Technical Report", arXiv 2412.19437, Table 1, sections 1, 3.1-3.3 and 4.1-4.2.

A held-out check (issue #13: published H100-era runs): the most cited MoE pre-training run, with its layout stated in
the report. The row runs `estimate` on the hgx-h800 preset (8 H800 per node, NVLink 400 GB/s bidirectional, one CX7
400 Gb/s InfiniBand NIC per GPU) with the hai-llm stack (DualPipe, all-to-alls and pipeline sends overlapped inside
forward/backward chunk pairs, ZeRO-1, fine-grained fp8) and the layout the report gives; every setting it leaves
unsaid is an assumption noted on the row. The published number is a whole-run average (GPU-hours per trillion
tokens), so the ramp-up batches, checkpoints and evaluation are inside it and not in our steady-state step. No
constant is fitted to this row; this is a measurement.

    python -m clusterplan.reference            # prints every reference table, this one included
"""

from __future__ import annotations

from dataclasses import dataclass

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import Cluster, cluster_from_dict
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout
from clusterplan.reference.bridge import layout_text
from clusterplan.reference.report import (
    TARGET_TIME_MAX,
    Column,
    markdown_rows,
    notes_cell,
    print_rows,
    read_rows,
    refusal,
    row_notes,
)

DEEPSEEK_CSV = "deepseek_v3_pretrain.csv"
MODEL = "deepseek-v3"
NODE = "hgx-h800"
GPUS_PER_NODE = 8
STACK = "hai-llm"
SECONDS_PER_HOUR = 3600.0
MICRO_BATCH = 1
"""Sequences per micro-batch: not published; 1 assumed (deepseek-ai/DeepEP README benchmarks its kernels in 'the
DeepSeek-V3/R1 pretraining setting (4096 tokens per batch ...)': one 4K sequence per micro-batch)."""
FIRST_STAGE_LAYERS, LAST_STAGE_LAYERS = 3, 2
"""61 layers over 16 stages is not even and the split is not published: 3 + 14 x 4 + 2 assumed, the first stage
carrying the embedding, the last the MTP module and the output head (section 3.2.3: DualPipe puts the shallowest and
the deepest layers on the same rank)."""
RECOMPUTE_MODULES = "layernorm+mla_up_proj+moe_act"
"""Section 3.2.3: 'we recompute all RMSNorm operations and MLA up-projections during back-propagation'; section 3.3.3
(2): 'we cache the inputs of the SwiGLU operator and recompute its output in the backward pass' (the MoE experts'
activation: Megatron's moe_act)."""


def deepseek_cluster(gpus: int) -> Cluster:
    return cluster_from_dict({"groups": [{"node": NODE, "count": gpus // GPUS_PER_NODE}]},
                             where=f"{NODE}:{gpus // GPUS_PER_NODE}")


def deepseek_layout(r: dict[str, str]) -> tuple[Layout, list[str]]:
    pp, ep, tp, dp = int(r["pp"]), int(r["ep"]), int(r["tp"]), int(r["dp"])
    seq, batch = int(r["seq"]), int(r["batch_seqs"])
    notes = [f"stack {STACK}: DualPipe with the EP all-to-alls and PP sends under the paired chunk (sec. 3.2.1), "
             "20 SMs for communication (3.2.2); kernels and DP overlap as megatron-core (HAI-LLM is not public)",
             "dispatcher deepep: one IB copy per destination node, at most 4 nodes (node-limited routing, 2.1.2), "
             "NVLink forwarding (3.2.2); dispatch priced in bf16 (DeepSeek dispatches fp8, 3.3.3: not expressible)",
             f"batch {batch} sequences (the last 14.3T of 14.8T tokens; the 3072 -> {batch} ramp over the first 469B "
             "tokens is not priced: at 3072, 24 micro-batches per pipeline are fewer than DualPipe's 2 x PP)",
             f"{batch // (dp * MICRO_BATCH)} micro-batches of {MICRO_BATCH} sequence per pipeline (not published)",
             f"{FIRST_STAGE_LAYERS}/4/{LAST_STAGE_LAYERS} layers on first/middle/last stage (not published)",
             "fp8 blockwise (1x128 activations, 128x128 weights; sec. 3.3), fp32 master weights and gradients, BF16 "
             "AdamW moments (3.3.3, Layout.bf16_moments); activations stored as 3.3.3 gives them: the SwiGLU inputs in "
             "fp8, the attention output once in E5M6 (stack hai-llm)",
             "recompute RMSNorm and MLA up-projections (3.2.3) and the MoE SwiGLU output (3.3.3); 1 MTP module (model "
             "preset)",
             "EP 64 over 8 nodes, ZeRO-1, no TP (3.2)",
             "DualPipe's gradient sum between the two copies of each stage (ranks i and pp-1-i) not priced",
             "published rate = whole-run GPU-hours (ramp, checkpoints, evaluation inside), ours a steady-state step"]
    layout = Layout(tp=tp, pp=pp, dp=dp, ep=ep, zero=1, mbs=MICRO_BATCH, gbs=batch, seq=seq, recompute="selective",
                    recompute_modules=RECOMPUTE_MODULES, schedule="dualpipe", precision="fp8", moe_dispatcher="deepep",
                    first_stage_layers=FIRST_STAGE_LAYERS, last_stage_layers=LAST_STAGE_LAYERS, bf16_moments=True)
    return layout, notes


@dataclass(frozen=True)
class DeepSeekRow:
    """The pre-training row, how we run it, and what we predict."""

    label: str
    gpus: int
    stack: str
    layout: Layout
    notes: tuple[str, ...]
    gpu_hours_per_trillion_tokens: float
    predicted_tokens_per_s: float
    """Per GPU."""
    predicted_mfu: float
    predicted_memory_gib: float
    refused: str = ""
    """The estimate's own reasons (e.g. out of memory) when it refuses the layout; the time is still compared."""

    @property
    def published_tokens_per_s(self) -> float:
        """Tokens/s per GPU the published GPU-hours per trillion tokens imply: 1e12 / (hours x 3600)."""
        return 1e12 / (self.gpu_hours_per_trillion_tokens * SECONDS_PER_HOUR)

    @property
    def error(self) -> float:
        return self.predicted_tokens_per_s / self.published_tokens_per_s - 1


def deepseek_rows() -> list[DeepSeekRow]:
    out = []
    stack = get_stack(STACK)
    model = load_model(MODEL)
    for r in read_rows(DEEPSEEK_CSV):
        gpus = int(r["gpus"])
        layout, notes = deepseek_layout(r)
        est = estimate(model, deepseek_cluster(gpus), layout, stack=stack)
        js = est.to_json()
        out.append(DeepSeekRow(label=f"{r['run']} {gpus} {r['gpu']}", gpus=gpus, stack=stack.name, layout=layout,
                               notes=tuple(notes),
                               gpu_hours_per_trillion_tokens=float(r["gpu_hours_per_trillion_tokens"]),
                               predicted_tokens_per_s=js["tokens_per_s"] / gpus, predicted_mfu=js["mfu"],
                               predicted_memory_gib=js["memory"]["peak_gib"],
                               refused=refusal(est)))
    return out


def _layout_text(L: Layout) -> str:
    return f"{layout_text(L)} {L.schedule}"


def _summary_line(rows: list[DeepSeekRow]) -> str:
    worst = max(abs(r.error) for r in rows)
    return (f"{len(rows)} row: tokens/s |error| {worst:.1%} (issue #13 held-out target: {TARGET_TIME_MAX:.0%} max per "
            "row)")


TITLE = "DeepSeek-V3 pre-training on 2,048 H800 (DeepSeek-AI 2024, arXiv 2412.19437): tokens/s per GPU"
"""The table's heading on the console (print_table)."""


def print_table(rows: list[DeepSeekRow]) -> None:
    columns, cells = table(rows)
    print_rows(TITLE, columns, cells, [r.label for r in rows], [_summary_line(rows)])


def table(rows: list[DeepSeekRow]) -> tuple[list[Column], list[list[str]]]:
    """The columns, and each row's cells with its notes last: what markdown_table and print_table show."""
    columns = [("run", "l"), ("layout", "l"), ("GPU-hours per 1T tokens published", "r"),
               ("tokens/s/GPU implied", "r"), ("predicted", "r"), ("error", "r"), ("MFU predicted", "r"),
               ("peak GiB predicted", "r"), ("notes", "l")]
    cells = ([r.label, _layout_text(r.layout), f"{r.gpu_hours_per_trillion_tokens:,.0f}",
              f"{r.published_tokens_per_s:.1f}", f"{r.predicted_tokens_per_s:.1f}", f"{r.error:+.1%}",
              f"{r.predicted_mfu:.1%}", f"{r.predicted_memory_gib:.1f}", notes_cell(row_notes(r.notes, r.refused))]
             for r in rows)
    return columns, [list(c) for c in cells]


def markdown_table(rows: list[DeepSeekRow]) -> str:
    columns, cells = table(rows)
    return "\n".join([*markdown_rows(columns, cells), "", _summary_line(rows) + "."])
