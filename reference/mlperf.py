"""Our predictions against NVIDIA's MLPerf Training submissions of GPT-3 175B (v3.0-v4.1), Llama 3.1 405B (v5.0, v5.1)
and Llama 3.1 8B (v5.1) (data/mlperf_training.csv; research/mlperf-gpt3-runs.md, research/mlperf-v5-runs.md): tokens/s
per GPU of one training step, held out.

Each row runs `estimate` with the megatron-core stack at the submission's layout (TP, PP, interleaved virtual stages,
CP, micro-batch, global batch), fp8 with the row's recipe (delayed scaling, or current scaling where the config sets
FP8_RECIPE=tensorwise), fp8-only parameters and bf16 gradient reduction where the round's files say so, sequence
parallelism on with tp > 1 and no recompute (neither is stated in the files read). A pipelined row whose config sets
no virtual stages is listed as not expressible: its bubble, the largest term the layout decides, cannot be priced
without it; so are the NVFP4 rows (no fp4 pricing). No constant is fitted.

    python -m clusterplan.reference            # prints every reference table, this one included
"""

from __future__ import annotations

from dataclasses import dataclass

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout, layout_problems
from clusterplan.reference import bridge
from clusterplan.reference.report import (
    Column,
    PricedRow,
    held_out_line,
    markdown_rows,
    notes_cell,
    print_rows,
    read_rows,
    refusal,
)

MLPERF_CSV = "mlperf_training.csv"
STACK = "megatron-core"
FP8_RECIPE = "delayed"
"""config_fp8.sh: FP8=True, FP8_HYBRID=True, FP8_AMAX_HISTORY=1024, FP8_AMAX_ALGO=max: Transformer Engine's delayed
scaling (the GPT-3 rounds; the CSV's fp8_recipe column gives each row's)."""
FP8_PARAMS = {
    ("v4.0", "DGX-H100"): "FP8_PARAMS=True from a fork's copy of the round's config_common.sh (the mlcommons one is not "
                      "stored)",
    ("v4.1", "DGX-H100"): "FP8_PARAMS=True assumed: this config sources a config_common.sh that is not stored, the same "
                      "round's B200 one and v4.0's H100 one set it",
    ("v4.1", "DGX-B200"): "",
    ("v5.0", "DGX-H100"): "",
    ("v5.0", "DGX-GB200"): "",
    ("v5.1", "DGX-GB200"): "",
    ("v5.1", "DGX-GB300"): "",
}
"""Submissions whose configs keep the parameters in fp8 only (Layout.fp8_params), each with its row note (empty: read
in its own files): config_common.sh `export FP8_PARAMS=True` (v4.1 b200_n8_preview_nemo @8821c70; v5.0 llama31_405b
eos-dfw_n304_ngc25.01_nemo @0fdc28f, which the n64 config sources; v4.0 only in a fork's copy of it, @c7a8e8f8,
edited for another cluster); FP8_PARAM_GATHER=True in the v5.0 tyche (GB200) config_common.sh (@0fdc28f) and the v5.1
config_common.sh (mlcommons/training_results_v5.1 @4da2d1cd), fed to the model's fp8_params (conf/custom.yaml `fp8_params: ${oc.env:FP8_PARAMS,False}`,
Megatron-Core fp8_param_gather). v3.0 / v3.1: not found (their rows are not expressible anyway)."""
GRAD_SYNC_BF16_ROUNDS = {
    "v4.0": "gradients reduced in bf16 (distributed_fused_adam.yaml grad_sync_dtype)",
    "v5.0": "gradients reduced in bf16 (pretrain.py grad_reduce_in_fp32=False)",
}
"""Rounds whose optimizer reduces and keeps gradients in bf16 (Layout.fp32_grads off), with the row note:
v4.0 conf/optim/distributed_fused_adam.yaml `grad_sync_dtype: bf16` (mlcommons training_results_v4.0 @62f111b7, Apex
DistributedFusedAdam); v5.0 llama31_405b pretrain.py `DistributedDataParallelConfig(grad_reduce_in_fp32=False, ...)`
and `MegatronMixedPrecision(..., grad_reduce_in_fp32=False)` (prishajain1/training_results_v5.0 @0fdc28f,
eos-dfw_n64_ngc25.01_nemo). The v4.1 optimizer config is not stored."""
NVFP4_NOTE = ("NVFP4 (the config sources config_common_fp4.sh, not stored): priced as Transformer Engine's "
              "NVFP4BlockScaling defaults on every linear (RHT on wgrad operands, stochastic rounding of gradients, 2D "
              "weight blocks), bf16 parameters (fp8_params off: Megatron-Bridge refuses fp4_param); any layers the file "
              "keeps in bf16 are not priced")
"""The v5.1 Llama 3.1 405B runs' recipe (CSV fp8_recipe nvfp4): priced since stop 38 (research/nvfp4-training.md)."""
CUDA_GRAPH_NOTES = {
    "1": "LAYER_CUDA_GRAPH=1: per-layer CUDA graphs (no MoE host time to remove in a dense model)",
    "full": "FULL_CUDA_GRAPH=True: the whole iteration in CUDA graphs (no MoE host time to remove in a dense model)",
    "sourced": "config_common_cg.sh sourced (not stored): CUDA graphs of an unknown scope (no MoE host time to remove in a "
               "dense model)",
}
NO_VP = "the config sets no interleaved virtual stages (config_common.sh, which may, is not stored): the bubble of " \
        "pp {pp} over {m} micro-batches cannot be priced"


@dataclass(frozen=True)
class MlperfRow(PricedRow):
    """One submission: its layout as the CLI runs it, the published tokens/s per GPU and our prediction."""

    round: str
    system: str
    gpus: int
    model: str
    layout: Layout
    published_tokens_per_s: float
    notes: tuple[str, ...]
    reason: str = ""
    """Why the CLI cannot express the row ('' when it can)."""
    predicted_tokens_per_s: float | None = None
    refused: str = ""

    @property
    def label(self) -> str:
        L = self.layout
        cp = f" cp{L.cp}" if L.cp > 1 else ""
        return (f"{self.round} {self.system} {self.model} {self.gpus} tp{L.tp} pp{L.pp}v{L.vpp}{cp} mbs{L.mbs} "
                f"gbs{L.gbs}")


def mlperf_rows() -> list[MlperfRow]:
    stack = get_stack(STACK)
    out = []
    for r in read_rows(MLPERF_CSV):
        model = load_model(r["model"])
        gpus, tp, pp, cp = int(r["gpus"]), int(r["tp"]), int(r["pp"]), int(r["cp"])
        vp = int(r["vp"]) if r["vp"] else 1
        first, last, split_note = bridge.stage_split(model, pp, vp)
        dp = gpus // (tp * pp * cp)
        layout = Layout(tp=tp, pp=pp, vpp=vp, cp=cp, dp=dp, mbs=int(r["mbs"]), gbs=int(r["gbs"]), seq=int(r["seq"]),
                        sp=tp > 1, recompute="none", precision="fp8", flash_attn=True,
                        schedule="interleaved-1f1b" if vp > 1 else "1f1b",
                        first_stage_layers=first, last_stage_layers=last,
                        fp8_params=(r["round"], r["system"]) in FP8_PARAMS and r["fp8_recipe"] != "nvfp4",
                        fp32_grads=r["round"] not in GRAD_SYNC_BF16_ROUNDS, fp8_recipe=r["fp8_recipe"])
        notes = [n for n in (split_note, FP8_PARAMS.get((r["round"], r["system"]), "") if layout.fp8_params else "",
                             NVFP4_NOTE if r["fp8_recipe"] == "nvfp4" else "") if n]
        if not layout.fp32_grads:
            notes.append(GRAD_SYNC_BF16_ROUNDS[r["round"]])
        notes.append(f"{r['step_s']} s per step ({r['result']})")
        if r["cg"] in CUDA_GRAPH_NOTES:
            notes.append(CUDA_GRAPH_NOTES[r["cg"]])
        if r["note"]:
            notes.append(r["note"])
        if r["model"] == "gpt3-175b":
            notes.append("gpt3-175b preset's vocabulary 51200 (the benchmark's tokenizer has 50257, padded)")
        base = dict(round=r["round"], system=r["system"], gpus=gpus, model=r["model"], layout=layout,
                    published_tokens_per_s=float(r["tokens_per_s_per_gpu"]))
        if pp > 1 and not r["vp"]:
            m = layout.gbs // (dp * layout.mbs)
            out.append(MlperfRow(notes=tuple(notes), reason=NO_VP.format(pp=pp, m=m), **base))
            continue
        node, per_node = bridge.SYSTEMS[r["system"]]
        cluster = load_cluster(f"{node}:{gpus // per_node}")
        problems = layout_problems(model, layout, cluster.world_size)
        if problems:
            out.append(MlperfRow(notes=tuple(notes), reason="; ".join(str(p) for p in problems), **base))
            continue
        est = estimate(model, cluster, layout, stack=stack)
        out.append(MlperfRow(notes=tuple(notes), predicted_tokens_per_s=est.to_json()["tokens_per_s"] / gpus,
                             refused=refusal(est), **base))
    return out


TITLE = "MLPerf Training (NVIDIA submissions): tokens/s per GPU of one training step"
"""The table's heading on the console (print_table)."""


def print_table(rows: list[MlperfRow]) -> None:
    columns, cells = table(rows)
    print_rows(TITLE, columns, cells, [r.label for r in rows], [held_out_line(rows)])


def table(rows: list[MlperfRow]) -> tuple[list[Column], list[list[str]]]:
    """The columns, and each row's cells with its notes last: what markdown_table and print_table show."""
    columns = [("round", "l"), ("system", "l"), ("model", "l"), ("GPUs", "r"), ("layout", "l"),
               ("tokens/s/GPU published", "r"), ("predicted", "r"), ("error", "r"), ("notes", "l")]
    cells = ([r.round, r.system.removeprefix("DGX-"), r.model, f"{r.gpus}", bridge.layout_text(r.layout),
              f"{r.published_tokens_per_s:.1f}",
              *([f"{r.predicted_tokens_per_s:.1f}", f"{r.error:+.1%}"] if r.expressible else ["-", "-"]),
              notes_cell(r.shown_notes())] for r in rows)
    return columns, [list(c) for c in cells]


def markdown_table(rows: list[MlperfRow]) -> str:
    columns, cells = table(rows)
    return "\n".join([*markdown_rows(columns, cells), "", held_out_line(rows) + "."])
