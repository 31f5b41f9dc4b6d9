"""Our predictions against NVIDIA's NeMo Framework performance summaries on DGX-H100 other than 25.11
(data/nemo_h100_2409_2602.csv: NeMo 24.09 (NeMo 1.0), the NeMo 2.0 table of 24.12, 25.02, Megatron-Bridge 25.09 and,
later than the 25.11 set, 26.02).

A held-out check set for issue #13 (published H100-era runs: tokens/s within 10 % median, 20 % max). Each row runs
`estimate` with the megatron-core stack on dgx-h100 nodes at the published layout; what the tables leave unsaid
(recompute, fp8 recipe, stage split) follows the recipe files of that release where they were readable (RECIPES,
per row), else the Megatron-Core defaults, and every row says which. Rows the CLI cannot express are listed with the
reason, never dropped. No constant is fitted to these rows and no per-row factor exists.

    python -m clusterplan.reference            # prints every reference table, this one included
"""

from __future__ import annotations

from dataclasses import dataclass

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.estimate import estimate, precision_problems
from clusterplan.models.training.layout import Layout, layout_problems, stack_problems
from clusterplan.reference.bridge import bridge_flops_per_token, layout_text, stage_split
from clusterplan.reference.report import (
    Column,
    held_out_line,
    markdown_rows,
    notes_cell,
    print_rows,
    read_rows,
    row_notes,
)

NEMO_CSV = "nemo_h100_2409_2602.csv"
STACK = "megatron-core"
"""Every release here runs Megatron-Core with Transformer Engine: NeMo 1.0 with mcore_gpt: True and
transformer_engine: True (NeMo-Framework-Launcher conf/training/*), NeMo 2.0 and Megatron-Bridge natively."""
NODE = "dgx-h100"
GPUS_PER_NODE = 8

FP8_RECIPES = {"FP8-DS": "delayed", "FP8-CS": "tensorwise", "BF16": None}
"""FP8-DS: the NeMo 1.0 / 2.0 recipes before 25.04 (fp8_hybrid, fp8_amax_history_len 1024, fp8_amax_compute_algo max:
launcher conf/training/nemotron/nemotron_8b.yaml and the others); FP8-CS: per-tensor current scaling."""

FP8_PARAMS_UNKNOWN = frozenset({"24.09"})
"""Releases whose fp8 rows keep bf16 parameters beside TE's fp8 copies (Layout.fp8_params off) because what their
configs set is not read: the NeMo 1.0 launcher's. NeMo 2.0 (24.12, 25.02) runs its fp8 plugins, whose
bf16_with_fp8_mixed / current-scaling recipes set fp8_param_gather = True (nemo/collections/llm/recipes/precision/
mixed_precision.py; the performance scripts' helpers.py use them unchanged); Megatron-Bridge (25.09, 26.02) likewise
(bridge.FP8_PARAMS_RECIPES)."""

NEMO_GPT3_VOCAB = 50257
"""GPT2BPETokenizer (launcher conf/training/gpt3/*.yaml tokenizer type), padded by Megatron to 128 x tp."""
NEMOTRON_VOCAB = 256000
"""Nemotron's 256k SentencePiece tokenizer (launcher conf/training/nemotron/nemotron_340b.yaml: nemotron_2_256k)."""


def nemo_gpt3(name: str, layers: int, hidden: int, heads: int) -> ModelSpec:
    """NeMo's GPT-3 (launcher conf/training/gpt3/{5b,20b,175b}.yaml): ffn 4h, GELU, biases, LayerNorm, learned
    positions, tied embeddings, hidden/attention dropout 0.1, seq 2048."""
    return ModelSpec(name=name, family="gpt2", n_layers=layers, hidden=hidden, n_heads=heads, ffn_hidden=4 * hidden,
                     gated_ffn=False, vocab=NEMO_GPT3_VOCAB, tied_embeddings=True, norm="layernorm",
                     position="learned", max_positions=2048, attn_bias=True, linear_bias=True, dropout=True,
                     source=f"NeMo-Framework-Launcher conf/training/gpt3 ({name})")


def nemotron(name: str, layers: int, hidden: int, ffn: int, heads: int, kv_heads: int | None) -> ModelSpec:
    """Nemotron-3/4 (NeMo nemo/collections/llm/gpt/model/nemotron.py NemotronConfig; launcher conf/training/nemotron):
    squared-ReLU MLP (not gated), LayerNorm1p, no biases, RoPE on half the head, untied embeddings, no dropout."""
    return ModelSpec(name=name, family="nemotron", n_layers=layers, hidden=hidden, n_heads=heads, n_kv_heads=kv_heads,
                     ffn_hidden=ffn, gated_ffn=False, activation="relu2", vocab=NEMOTRON_VOCAB, tied_embeddings=False,
                     norm="layernorm", norm_zero_centered=True, position="rope", rotary_fraction=0.5, max_positions=4096,
                     source=f"NeMo NemotronConfig / launcher ({name})")


def nemo_models() -> dict[str, ModelSpec]:
    return {
        "GPT3-5B": nemo_gpt3("nemo-gpt3-5b", 24, 4096, 32),
        "GPT3-20B": nemo_gpt3("nemo-gpt3-20b", 44, 6144, 48),
        "GPT3-175B": nemo_gpt3("nemo-gpt3-175b", 96, 12288, 96),
        "LLAMA2-7B": load_model("llama2-7b"),
        "LLAMA2-13B": load_model("llama2-13b"),
        "LLAMA2-70B": load_model("llama2-70b"),
        # Nemotron3Config8B (MHA); Nemotron4Config15B / 340B (8 query groups); the 22B is MHA in both the launcher's
        # nemotron_22b.yaml (num_query_groups null) and NeMo 2.0's Nemotron3Config22B (num_query_groups None); the
        # published TFLOP/s / tokens/s of both 22B rows equal the MHA count within 0.1 %.
        "Nemotron-8B": nemotron("nemotron3-8b", 32, 4096, 16384, 32, None),
        "Nemotron-15B": load_model("nemotron4-15b"),
        "Nemotron-22B": nemotron("nemotron-22b", 40, 6144, 24576, 48, None),
        "Nemotron-340B": load_model("nemotron4-340b"),
        # Llama 3 8B / 70B have the Llama 3.1 dimensions (only the RoPE scaling differs; reference/bridge.py).
        "LLAMA3-8B": load_model("llama3.1-8b"),
        "LLAMA3-70B": load_model("llama3.1-70b"),
        "LLAMA3-405B": load_model("llama3.1-405b"),
        "LLAMA3_8B": load_model("llama3.1-8b"),
        "LLAMA3_70B": load_model("llama3.1-70b"),
        "LLAMA3.1_405B": load_model("llama3.1-405b"),
        "DeepSeekV3": load_model("deepseek-v3"),
        "GPT_OSS_120B": load_model("gpt-oss-120b"),
        "Qwen3_30B_a3B": load_model("qwen3-30b-a3b"),
        "Qwen3_235B_a22B": load_model("qwen3-235b-a22b"),
    }


@dataclass(frozen=True)
class Recipe:
    """What a row's recipe sets beyond the published columns, and where that comes from."""

    recompute: str
    recompute_modules: str
    source: str
    moe_dispatcher: str = "alltoall"
    moe_a2a_overlap: bool = False


BRIDGE_RELEASES = frozenset({"25.09", "26.02"})
"""Megatron-Bridge releases: their recipes' stage split (bridge.stage_split) and FLOP count (bridge_flops_per_token)."""
_LAUNCHER = "NeMo-Framework-Launcher launcher_scripts/conf/training"
_NONE_NEMO1 = Recipe("none", "", f"{_LAUNCHER}: activations_checkpoint_granularity null, ub_tp_comm_overlap, "
                                 "overlap_p2p_comm, distributed_fused_adam with overlapped grad/param sync")
_NONE_NEMO2 = Recipe("none", "", "NeMo 2.0 nemo/collections/llm/recipes (read: gpt3_175b pretrain_recipe_performance, "
                                 "nemotron4_340b via scripts/llm/performance/pretrain_nemotron4_340b.py): no recompute, "
                                 "MegatronCommOverlapCallback (TP overlap, deferred embedding wgrad), bf16 grad reduce")
RECIPES = {
    ("24.09", "GPT3-5B"): Recipe("none", "", f"{_LAUNCHER}/gpt3/5b.yaml: activations_checkpoint_granularity null"),
    ("24.09", "GPT3-20B"): Recipe("selective", "", f"{_LAUNCHER}/gpt3/20b.yaml: activations_checkpoint_granularity "
                                                   "selective (core attention)"),
    ("24.09", "GPT3-175B"): Recipe("selective", "", f"{_LAUNCHER}/gpt3/175b.yaml: activations_checkpoint_granularity "
                                                    "selective (core attention)"),
    ("24.09", "LLAMA2-70B"): Recipe("none", "", f"{_LAUNCHER}/llama/llama2_70b.yaml: activations_checkpoint_"
                                                "granularity null"),
    ("24.09", "Nemotron-8B"): Recipe("none", "", f"{_LAUNCHER}/nemotron/nemotron_8b.yaml: no recompute, TP overlap"),
    ("24.09", "Nemotron-22B"): Recipe("none", "", f"{_LAUNCHER}/nemotron/nemotron_22b.yaml: no recompute, TP overlap"),
    ("24.09", "Nemotron-340B"): Recipe("none", "", f"{_LAUNCHER}/nemotron/nemotron_340b.yaml: no recompute, TP "
                                                   "overlap, defer_embedding_wgrad_compute"),
    # Megatron-Bridge 25.09: as the 25.11 H100 rows at the same layouts (reference/bridge.py ROW_SOURCES); DeepSeek-V3
    # the perf recipe's default selective ["mla_up_proj"] (bridge.py RECOMPUTE_MODULES note).
    # Its dispatcher: Megatron-Bridge scripts/performance deepseek_v3 deepseek_v3_h100_1024gpus_fp8_config (the
    # row's tp2 pp8 vp4 ep64 gbs 8192): enable_deepep and moe_a2a (1F1B all-to-all overlap) default True, force-
    # balanced routing when not token-dropping.
    ("25.09", "DeepSeekV3"): Recipe("selective", "mla_up_proj", "Megatron-Bridge deepseek_v3 perf recipe default "
                                                                "recompute_modules [mla_up_proj]; no CUDA graphs; "
                                                                "DeepEP + 1F1B all-to-all overlap (H100 1024-GPU perf "
                                                                "config: enable_deepep, moe_a2a default True)",
                                    moe_dispatcher="deepep", moe_a2a_overlap=True),
    # 26.02: GPT-OSS-120B on H100 as bridge.py's 25.11 row (gpt_oss workload base configs: recompute_modules
    # [layernorm, moe_act], no CUDA graphs on H100).
    ("26.02", "GPT_OSS_120B"): Recipe("selective", "layernorm+moe_act", "Megatron-Bridge gpt_oss H100 workload "
                                                                        "configs (bridge.py): recompute [layernorm, "
                                                                        "moe_act], no CUDA graphs"),
}
"""Per (release, model) row group. Rows not named: the launcher's llama/nemotron defaults for 24.09 (_NONE_NEMO1),
the NeMo 2.0 defaults for 24.12 / 25.02 (_NONE_NEMO2), bridge.py's H100 settings for 25.09 dense rows."""


def row_recipe(release: str, model: str) -> Recipe:
    recipe = RECIPES.get((release, model))
    if recipe is not None:
        return recipe
    if release == "24.09":
        return _NONE_NEMO1
    if release in BRIDGE_RELEASES and model.startswith("Qwen3"):
        return Recipe("none", "", "Megatron-Bridge qwen3 perf configs as for 25.11 H100 (bridge.py): no recompute")
    if release in BRIDGE_RELEASES:
        return Recipe("none", "", "Megatron-Bridge llama3 / llama31 perf configs as for 25.11 H100 (bridge.py): no "
                                  "recompute, no CUDA graphs")
    return _NONE_NEMO2


@dataclass(frozen=True)
class NemoRow:
    """One CSV row, how we run it, and what we predict (None where the row cannot be expressed)."""

    release: str
    model: str
    gpus: int
    precision: str
    layout: Layout
    notes: tuple[str, ...]
    reason: str
    """Why the CLI cannot express the row ('' when it can)."""
    published_tokens_per_s: float
    published_tflops: float
    megatron_gflops_per_token: float
    """Megatron's model FLOPs per token (bridge.bridge_flops_per_token) for this row's model, seq and tp."""
    release_gflops_per_token: float
    """The release's own count: nemo_flops_per_token for NEMO_COUNT_RELEASES, Megatron-Bridge's for 25.09 / 26.02."""
    predicted_tokens_per_s: float | None = None
    model_tflops: float | None = None
    """Our estimate's tflops_per_gpu (MFU basis: FLOPs as executed)."""
    refused: str = ""

    @property
    def label(self) -> str:
        return f"{self.release} {self.model} {self.gpus}"

    @property
    def expressible(self) -> bool:
        return not self.reason

    @property
    def published_gflops_per_token(self) -> float:
        """The FLOPs per token the published pair implies (TFLOP/s over tokens/s)."""
        return self.published_tflops * 1e3 / self.published_tokens_per_s

    @property
    def predicted_tflops(self) -> float | None:
        """Predicted tokens/s x the release's own FLOPs per token: the published column's convention."""
        if self.predicted_tokens_per_s is None:
            return None
        return self.predicted_tokens_per_s * self.release_gflops_per_token / 1e3

    @property
    def error(self) -> float:
        """Predicted over published tokens/s per GPU, minus 1."""
        if self.predicted_tokens_per_s is None:
            raise ValueError(f"{self.label}: not expressible ({self.reason})")
        return self.predicted_tokens_per_s / self.published_tokens_per_s - 1


def nemo_layout(r: dict[str, str], model: ModelSpec) -> tuple[Layout, list[str]]:
    tp, pp, cp, ep, vp = int(r["tp"]), int(r["pp"]), int(r["cp"]), int(r["ep"]), int(r["vp"])
    gpus, fsdp = int(r["gpus"]), int(r["fsdp"])
    recipe = row_recipe(r["release"], r["model"])
    notes = [recipe.source]
    first = last = 0
    if r["release"] in BRIDGE_RELEASES:  # Megatron-Bridge recipes: uneven first/last stages (bridge.stage_split)
        first, last, split_note = stage_split(model, pp, vp)
        if split_note:
            notes.append(split_note)
    layout = Layout(tp=tp, pp=pp, cp=cp, dp=gpus // (tp * pp * cp), vpp=vp, ep=ep, etp=1, mbs=int(r["mbs"]),
                    gbs=int(r["gbs"]), seq=int(r["seq"]), sp=tp > 1, zero=3 if fsdp else 1,
                    recompute=recipe.recompute, recompute_modules=recipe.recompute_modules,
                    schedule="interleaved-1f1b" if vp > 1 else "1f1b",
                    precision="bf16" if r["precision"] == "BF16" else "fp8", flash_attn=True,
                    first_stage_layers=first, last_stage_layers=last, fp32_grads=False,
                    moe_dispatcher=recipe.moe_dispatcher, moe_a2a_overlap=recipe.moe_a2a_overlap,
                    fp8_params=r["precision"] != "BF16" and r["release"] not in FP8_PARAMS_UNKNOWN)
    if FP8_RECIPES[r["precision"]]:
        notes.append(f"fp8 recipe {FP8_RECIPES[r['precision']]}")
    if r["ga"] and int(r["gbs"]) != int(r["mbs"]) * int(r["ga"]) * layout.dp:
        notes.append(f"gbs {r['gbs']} != mbs x ga x dp = {int(r['mbs']) * int(r['ga']) * layout.dp}: gbs used")
    return layout, notes


CONVENTION_TOLERANCE = 0.01
"""Published TFLOP/s and tokens/s are rounded; beyond 1 % the row's TFLOP/s were counted another way."""

NEMO_COUNT_RELEASES = frozenset({"24.09", "24.12", "25.02"})
"""Releases whose published TFLOP/s count the attention scores without the causal half (nemo_flops_per_token)."""


def nemo_flops_per_token(model: ModelSpec, seq: int, tp: int) -> float:
    """Model FLOPs per token as the NeMo 24.x / 25.02 tables count them: Megatron's count (bridge_flops_per_token)
    with the core attention taken over the full s x s score matrix instead of its causal half, i.e. plus
    6 s q_dim per layer (3 passes x 2 FLOPs x the s q_dim / 2 multiply-adds of QK^T and PV each that the causal count
    leaves out). Checked, not fitted: it reproduces every such row's published TFLOP/s / tokens/s within 1 %
    (test_reference_nemo.py)."""
    return bridge_flops_per_token(model, seq, tp) + 6 * model.n_layers * seq * model.q_dim


TOKEN_DROP_CAPACITY_FACTOR = 1.0
"""The 25.09 table's "tokendrop" MoE rows: Megatron-Bridge's token-drop switch (scripts/performance --use_tokendrop;
qwen3_30b_a3b_llm_pretrain.py@4054233a sets use_tokendrop on by default) calls apply_moe_token_drop with its
defaults, moe_expert_capacity_factor 1.0 and moe_pad_expert_input_to_capacity True (the drop-and-pad path)."""
TOKEN_DROP_NOTE = ("token-dropping MoE as the table labels it: capacity factor 1.0 with padding (Megatron-Bridge "
                   "apply_moe_token_drop defaults)")


def nemo_rows() -> list[NemoRow]:
    models = nemo_models()
    stack = get_stack(STACK)
    out = []
    for r in read_rows(NEMO_CSV):
        model = models[r["model"]]
        gpus = int(r["gpus"])
        layout, notes = nemo_layout(r, model)
        published_tokens, published_tflops = float(r["tokens_per_s_per_gpu"]), float(r["model_tflops_per_gpu"])
        megatron = bridge_flops_per_token(model, layout.seq, layout.tp) / 1e9
        count = (nemo_flops_per_token(model, layout.seq, layout.tp) / 1e9 if r["release"] in NEMO_COUNT_RELEASES
                 else megatron)
        implied = published_tflops * 1e3 / published_tokens
        if abs(implied / count - 1) > CONVENTION_TOLERANCE:
            notes.append(f"published TFLOP/s imply {implied:.1f} GFLOP/token, the release's count {count:.1f}")
        base = dict(release=r["release"], model=r["model"], gpus=gpus, precision=r["precision"], layout=layout,
                    published_tokens_per_s=published_tokens, published_tflops=published_tflops,
                    megatron_gflops_per_token=megatron, release_gflops_per_token=count)
        if r["moe"] == "tokendrop":
            layout = layout.with_(moe_capacity_factor=TOKEN_DROP_CAPACITY_FACTOR)
            base["layout"] = layout
            notes.append(TOKEN_DROP_NOTE)
        cluster = load_cluster(f"{NODE}:{gpus // GPUS_PER_NODE}")
        recipe = FP8_RECIPES[r["precision"]]
        problems = [*layout_problems(model, layout, cluster.world_size), *stack_problems(layout, stack),
                    *precision_problems(cluster, layout, stack, recipe)]
        if problems:
            out.append(NemoRow(notes=tuple(notes), reason="; ".join(str(p) for p in problems), **base))
            continue
        js = estimate(model, cluster, layout, stack=stack, fp8_recipe=recipe).to_json()
        out.append(NemoRow(notes=tuple(notes), reason="", predicted_tokens_per_s=js["tokens_per_s"] / gpus,
                           model_tflops=js["tflops_per_gpu"], refused="; ".join(js.get("reasons", [])), **base))
    return out



TFLOPS_NOTE = ("TFLOP/s `predicted` = predicted tokens/s x the release's own FLOPs per token (24.09 / 24.12 / 25.02: "
               "nemo_flops_per_token, Megatron's count with the full s x s attention; 25.09 / 26.02: Megatron-Bridge's "
               "count, bridge_flops_per_token), so its error is the tokens/s error; `GF/tok pub` = published TFLOP/s / "
               "tokens/s; `ours` = estimate's TFLOP/s per GPU as executed (MFU basis).")


TITLE = ("NeMo Framework performance summaries on DGX-H100 (24.09, 24.12, 25.02, Megatron-Bridge 25.09, "
         "26.02): tokens/s and model TFLOP/s per GPU")
"""The table's heading on the console (print_table)."""


def print_table(rows: list[NemoRow]) -> None:
    columns, cells = table(rows)
    print_rows(TITLE, columns, cells, [r.label for r in rows], [held_out_line(rows), TFLOPS_NOTE])


def table(rows: list[NemoRow]) -> tuple[list[Column], list[list[str]]]:
    """The columns, and each row's cells with its notes last: what markdown_table and print_table show."""
    columns = [("release", "l"), ("model", "l"), ("GPUs", "r"), ("precision", "l"), ("layout", "l"),
               ("tokens/s/GPU published", "r"), ("predicted", "r"), ("error", "r"), ("TFLOP/s/GPU published", "r"),
               ("predicted", "r"), ("GFLOP/token published", "r"), ("release's count", "r"), ("ours TFLOP/s", "r"),
               ("notes", "l")]
    cells = []
    for r in rows:
        notes = ([] if r.expressible else [f"not expressible: {r.reason}"]) + row_notes(r.notes, r.refused)
        priced = ([f"{r.predicted_tokens_per_s:.0f}", f"{r.error:+.1%}", f"{r.predicted_tflops:.0f}",
                   f"{r.model_tflops:.0f}"] if r.expressible else ["-"] * 4)
        shown = layout_text(r.layout) if r.layout.world == r.gpus else "-"  # no layout published (nemo_long.py)
        cells.append([r.release, r.model, f"{r.gpus or '-'}", r.precision, shown,
                      f"{r.published_tokens_per_s:.0f}", *priced[:2], f"{r.published_tflops:.0f}", priced[2],
                      f"{r.published_gflops_per_token:.1f}", f"{r.release_gflops_per_token:.1f}", priced[3],
                      notes_cell(notes)])
    return columns, [list(c) for c in cells]


def markdown_table(rows: list[NemoRow]) -> str:
    columns, cells = table(rows)
    return "\n".join([*markdown_rows(columns, cells), "", held_out_line(rows) + ".", "", TFLOPS_NOTE])
