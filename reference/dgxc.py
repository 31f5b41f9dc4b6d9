"""Our predictions against NVIDIA's DGX Cloud Benchmarking recipes (data/dgxc_benchmarking.csv): pre-training step
times NVIDIA published per recipe release, with the layout, for Llama 3.1 8B / 70B / 405B, Nemotron-4 15B / 340B,
GPT-3 175B, Grok-1 314B, DeepSeek-V3 and Llama 4 Maverick on 8 to 2,048 H100 and 128 to 512 GB200.

A held-out check set for issue #13 (published runs: tokens/s within 10 % median, 20 % max). Each row runs `estimate`
with the megatron-core stack at the published layout; what the README tables leave unsaid follows the NeMo commit the
recipe's setup.sh pins, as read for each workload (RECIPES, research/dgxc-recipes.md): fp8 rows run Transformer
Engine's delayed scaling with fp8 parameters (NeMo bf16_with_fp8_mixed / the NeMo 1.0 launcher's fp8_hybrid, the only
recipe any of these releases passes), gradients reduced in bf16 on fp8 rows and where a bf16 recipe says so, else in
fp32 (NeMo 2.0's bf16_mixed default, grad_reduce_in_fp32 = True), sequence parallelism with tp > 1, no recompute
unless named. Rows the CLI cannot express are listed with the reason, never dropped. No constant is fitted to these rows and
no per-row factor exists.

    python -m clusterplan.reference            # prints every reference table, this one included
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.estimate import estimate, precision_problems
from clusterplan.models.training.layout import CudaGraphs, Layout, layout_problems, stack_problems
from clusterplan.reference import bridge
from clusterplan.reference.nemo import nemo_gpt3
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

DGXC_CSV = "dgxc_benchmarking.csv"
STACK = "megatron-core"
"""Every recipe here runs Megatron-Core with Transformer Engine: the NeMo 1.0 launcher (mcore_gpt) or NeMo 2.0's
performance scripts."""
SYSTEMS = {"H100": ("dgx-h100", 8), "GB200": ("gb200-nvl72", 4)}
"""CSV system -> (node preset, GPUs per preset unit): GB200 counted in 4-GPU NVL72 compute trays."""
FP8_RECIPE = "delayed"
"""NeMo 2.0 bf16_with_fp8_mixed (fp8 "hybrid", amax history 1024, max) and the launcher's fp8_hybrid; the llmb-era
scripts' fp8_recipe argument defaults to it and no DGXC launch passes another (research/dgxc-recipes.md)."""
NOT_EXPRESSIBLE: dict[str, str] = {}
"""Models whose rows the CLI cannot express, with why (Nemotron-H 56B left it when hybrid Mamba blocks were priced)."""


def dgxc_model(name: str) -> ModelSpec:
    """The model a dgxc row names: a preset, or NeMo's GPT-3 175B built here."""
    if name == "gpt3-175b":
        # NeMo's GPT-3 175B (launcher conf/training/gpt3/175b.yaml: GPT-2 BPE vocabulary, seq 2048, biases).
        return nemo_gpt3("nemo-gpt3-175b", 96, 12288, 96)
    return load_model({"grok1-314b": "grok-1"}.get(name, name))


@dataclass(frozen=True)
class Recipe:
    """What a (model, system) recipe sets beyond the published columns, and where that comes from."""

    source: str
    recompute: str = "none"
    recompute_modules: str = ""
    token_drop: bool = False
    """MegatronTokenDropCallback: capacity factor 1.0 with padding (the drop-and-pad path)."""
    cuda_graphs: CudaGraphs = "none"
    pipeline_split: str = ""
    """"" = even; "deepseek" = the script's first / last stage sizes 64 / pp - 1 and 64 / pp - 2; "bridge" =
    embedding and loss counted as layers (bridge.stage_split)."""
    bf16_grad_reduce: bool = False
    """The recipe reduces a bf16 run's gradients in bf16 (grad_reduce_in_fp32 = False); else NeMo 2.0's bf16_mixed
    default, fp32 (Layout.fp32_grads). fp8 rows reduce in bf16 in every script (bf16_with_fp8_mixed, then
    grad_reduce_in_fp32 = False)."""


_NEMO2_LLAMA = "NeMo scripts/performance/llm/pretrain_llama31.py with the llama31 recipes (NeMo 2.2-2.3)"
_TOKEN_DROP = "MegatronTokenDropCallback: capacity 1.0 with padding (token drop)"
RECIPES = {
    ("llama3.1-8b", "H100"): Recipe(f"{_NEMO2_LLAMA}: no recompute, no TP overlap (tp 1)"),
    ("llama3.1-70b", "H100"): Recipe(f"{_NEMO2_LLAMA}: no recompute, TP overlap (userbuffers h8192 tp4)"),
    ("llama3.1-405b", "H100"): Recipe(f"{_NEMO2_LLAMA}: no recompute, TP overlap (userbuffers h16384 tp8 cp2), "
                                      "account_for_embedding / loss_in_pipeline_split, grad_reduce_in_fp32 False", pipeline_split="bridge",
                                      bf16_grad_reduce=True),
    ("llama3.1-405b", "GB200"): Recipe(f"{_NEMO2_LLAMA}: no recompute, TP overlap (userbuffers b200 h16384 tp4 cp2), "
                                       "account_for_embedding / loss_in_pipeline_split, grad_reduce_in_fp32 False", pipeline_split="bridge",
                                       bf16_grad_reduce=True),
    ("nemotron4-15b", "H100"): Recipe("NeMo pretrain_nemotron4_15b.py (DGXC gsw_nemo.patch, NeMo @d2b21556): no "
                                      "recompute, TP overlap (TE default userbuffers)"),
    ("nemotron4-340b", "H100"): Recipe("NeMo pretrain_nemotron4_340b.py (@d2b21556): no recompute, TP overlap (TE "
                                       "default), deferred embedding wgrad"),
    ("nemotron4-340b", "GB200"): Recipe("NeMo pretrain_nemotron4_340b.py @b4148d21: no recompute, TP overlap "
                                        "(userbuffers b200 h18432 tp8), per-layer CUDA graphs (--cuda_graphs true; "
                                        "a dense model has no MoE host time to remove)"),
    ("gpt3-175b", "H100"): Recipe("NeMo-Framework-Launcher gpt3 175b (DGXC gpt3_175b_hydra.yaml, NeMo 24.05): no "
                                  "recompute, TP overlap, overlap_p2p_comm, distributed_fused_adam grad_sync_dtype bf16",
                                  bf16_grad_reduce=True),
    ("nemotron-h-56b", "H100"): Recipe("NeMo scripts/performance/llm/pretrain_nemotronh_56b.py with recipes/"
                                       "nemotronh_56b.py pretrain_recipe(performance_mode=True): no recompute, TP "
                                       "overlap (MegatronCommOverlapCallback), overlap_param_gather False (priced "
                                       "overlapped)"),
    ("deepseek-v3", "H100"): Recipe(f"NeMo pretrain_deepseek_v3.py @7a8f1cc7: recompute_modules [mla_up_proj], "
                                    f"alltoall, {_TOKEN_DROP}, 1 MTP layer, no TP overlap",
                                    recompute="selective", recompute_modules="mla_up_proj", token_drop=True,
                                    pipeline_split="deepseek"),
    ("deepseek-v3", "GB200"): Recipe(f"NeMo pretrain_deepseek_v3.py @7a8f1cc7: recompute_modules [core_attn], "
                                     f"alltoall, {_TOKEN_DROP}, 1 MTP layer, no TP overlap",
                                     recompute="selective", recompute_modules="core_attn", token_drop=True,
                                     pipeline_split="deepseek"),
    ("grok1-314b", "H100"): Recipe(f"NeMo pretrain_grok1_314b.py (@6f2c6fda): no recompute, alltoall, {_TOKEN_DROP}",
                                   token_drop=True),
    ("grok1-314b", "GB200"): Recipe(f"NeMo pretrain_grok1_314b.py (@6f2c6fda): no recompute, alltoall, {_TOKEN_DROP}, "
                                    "per-layer CUDA graphs (grok1/launch.sh CUDA_GRAPH=true)", token_drop=True,
                                    cuda_graphs="full"),
    ("llama4-maverick-17b-128e", "H100"): Recipe(f"NeMo pretrain_llama4_e128.py @7a8f1cc7: no recompute, alltoall, "
                                                 f"{_TOKEN_DROP}, TP overlap (TE default), grad_reduce_in_fp32 False",
                                                 token_drop=True, bf16_grad_reduce=True),
    ("llama4-maverick-17b-128e", "GB200"): Recipe(f"NeMo pretrain_llama4_e128.py @7a8f1cc7: no recompute, alltoall, "
                                                  f"{_TOKEN_DROP}, grad_reduce_in_fp32 False", token_drop=True,
                                                  bf16_grad_reduce=True),
}
"""Per (model, system). CUDA graphs "full" stands for Megatron-Core's per-layer graphs of a token-dropping MoE model:
each layer is one graph launch with no host sync, so its host time is what a full-iteration capture leaves (none).
Llama 4 Maverick's fp8 rows on H100 turn the same per-layer graphs on (llama4/launch.sh: CUDA_GRAPH=true for fp8):
FP8_CUDA_GRAPHS."""
FP8_CUDA_GRAPHS = frozenset({("llama4-maverick-17b-128e", "H100")})
TOKEN_DROP_CAPACITY_FACTOR = 1.0


def deepseek_split(pp: int) -> tuple[int, int, str]:
    """NeMo's DeepSeek-V3 performance script: num_layers_in_first_pipeline_stage = 64 // pp - 1 and
    num_layers_in_last_pipeline_stage = 64 // pp - 2 (the embedding and the MTP block + loss beside them)."""
    middle = 64 // pp
    return middle - 1, middle - 2, f"stage split {middle - 1}/{middle}/.../{middle - 2} (64 // pp - 1, 64 // pp - 2)"


@dataclass(frozen=True)
class DgxcRow(PricedRow):
    """One published row: its layout as the CLI runs it, the published tokens/s per GPU and our prediction."""

    release: str
    system: str
    model: str
    precision: str
    gpus: int
    layout: Layout
    published_tokens_per_s: float
    notes: tuple[str, ...]
    reason: str = ""
    """Why the CLI cannot express the row ('' when it can)."""
    predicted_tokens_per_s: float | None = None
    refused: str = ""

    @property
    def label(self) -> str:
        return f"{self.release} {self.system} {self.model} {self.precision} {self.gpus} gbs{self.layout.gbs}"


def dgxc_layout(r: dict[str, str], model: ModelSpec, recipe: Recipe, full_layers: int) -> tuple[Layout, list[str]]:
    """The row's layout and notes; `model` may be a proxy with fewer layers than the full model's `full_layers`."""
    tp, pp, cp, vp, ep, etp = (int(r[k]) for k in ("tp", "pp", "cp", "vp", "ep", "etp"))
    gpus, fp8 = int(r["gpus"]), r["precision"] != "BF16"
    notes = [recipe.source]
    first = last = 0
    if recipe.pipeline_split == "deepseek" and pp > 1:
        first, last, note = deepseek_split(pp)
        notes.append(note)
    elif recipe.pipeline_split == "bridge":
        first, last, note = bridge.stage_split(model, pp, vp)
        if note:
            notes.append(note)
    graphs: CudaGraphs = recipe.cuda_graphs
    if fp8 and (r["model"], r["system"]) in FP8_CUDA_GRAPHS:
        graphs = "full"
        notes.append("per-layer CUDA graphs for fp8 (llama4/launch.sh), priced as no host time")
    layout = Layout(tp=tp, pp=pp, cp=cp, dp=gpus // (tp * pp * cp), vpp=vp, ep=ep, etp=etp, mbs=int(r["mbs"]),
                    gbs=int(r["gbs"]), seq=int(r["seq"]), sp=tp > 1, zero=1, recompute=recipe.recompute,
                    recompute_modules=recipe.recompute_modules,
                    schedule="interleaved-1f1b" if vp > 1 else "1f1b", precision="fp8" if fp8 else "bf16",
                    flash_attn=True, first_stage_layers=first, last_stage_layers=last,
                    fp32_grads=not fp8 and not recipe.bf16_grad_reduce,
                    fp8_params=fp8, cuda_graphs=graphs,
                    moe_capacity_factor=TOKEN_DROP_CAPACITY_FACTOR if recipe.token_drop else None)
    if fp8:
        notes.append(f"fp8 recipe {FP8_RECIPE}, fp8 parameters")
    if r["layers"]:
        notes.append(f"proxy of {r['layers']} of {full_layers} layers")
    if r["notes"]:
        notes.append(r["notes"])
    return layout, notes


def dgxc_rows() -> list[DgxcRow]:
    stack = get_stack(STACK)
    out = []
    for r in read_rows(DGXC_CSV):
        gpus = int(r["gpus"])
        published = float(r["gbs"]) * float(r["seq"]) / float(r["step_time_s"]) / gpus
        base = dict(release=r["release"], system=r["system"], model=r["model"], precision=r["precision"], gpus=gpus,
                    published_tokens_per_s=published)
        if r["model"] in NOT_EXPRESSIBLE:
            layout = Layout(tp=int(r["tp"]), dp=gpus // int(r["tp"]), mbs=int(r["mbs"]), gbs=int(r["gbs"]),
                            seq=int(r["seq"]))
            out.append(DgxcRow(layout=layout, notes=(r["notes"],), reason=NOT_EXPRESSIBLE[r["model"]], **base))
            continue
        full = dgxc_model(r["model"])
        model = replace(full, n_layers=int(r["layers"])) if r["layers"] else full
        layout, notes = dgxc_layout(r, model, RECIPES[(r["model"], r["system"])], full.n_layers)
        node, per = SYSTEMS[r["system"]]
        cluster = load_cluster(f"{node}:{gpus // per}")
        recipe = FP8_RECIPE if layout.precision == "fp8" else None
        problems = [*layout_problems(model, layout, gpus), *stack_problems(layout, stack),
                    *precision_problems(cluster, layout, stack, recipe)]
        if problems:
            out.append(DgxcRow(layout=layout, notes=tuple(notes), reason="; ".join(str(p) for p in problems), **base))
            continue
        est = estimate(model, cluster, layout, stack=stack, fp8_recipe=recipe)
        out.append(DgxcRow(layout=layout, notes=tuple(notes), predicted_tokens_per_s=est.to_json()["tokens_per_s"] / gpus,
                           refused=refusal(est), **base))
    return out


TITLE = "NVIDIA DGX Cloud Benchmarking recipes (H100, GB200): tokens/s per GPU"
"""The table's heading on the console (print_table)."""


def print_table(rows: list[DgxcRow]) -> None:
    columns, cells = table(rows)
    print_rows(TITLE, columns, cells, [r.label for r in rows], [held_out_line(rows)])


def table(rows: list[DgxcRow]) -> tuple[list[Column], list[list[str]]]:
    """The columns, and each row's cells with its notes last: what markdown_table and print_table show."""
    columns = [("release", "l"), ("system", "l"), ("model", "l"), ("precision", "l"), ("GPUs", "r"), ("layout", "l"),
               ("tokens/s/GPU published", "r"), ("predicted", "r"), ("error", "r"), ("notes", "l")]
    cells = ([r.release, r.system, r.model, r.precision, f"{r.gpus}", bridge.layout_text(r.layout),
              f"{r.published_tokens_per_s:.0f}",
              *([f"{r.predicted_tokens_per_s:.0f}", f"{r.error:+.1%}"] if r.expressible else ["-", "-"]),
              notes_cell(r.shown_notes())] for r in rows)
    return columns, [list(c) for c in cells]


def markdown_table(rows: list[DgxcRow]) -> str:
    columns, cells = table(rows)
    return "\n".join([*markdown_rows(columns, cells), "", held_out_line(rows) + "."])
