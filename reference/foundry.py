"""Our predictions against MosaicML llm-foundry's published MPT training benchmarks (data/llmfoundry_mpt.csv):
scripts/train/benchmarking/README.md in mosaicml/llm-foundry, tables "H100 80GB BF16", "H100 80GB FP8", "A100 80GB"
and "A100 40GB", Composer + PyTorch FSDP1 (FULL_SHARD) runs of MPT 125m .. 70b at 512 .. 65536 tokens on 8 .. 128 GPUs.

A held-out check set for issue #13 (published H100-era runs: tokens/s within 10 % median, 20 % max). Each row runs
`estimate` with the llm-foundry stack (hardware_db/data/stacks.yaml) at the published micro-batch, batch, activation
checkpointing and precision on DGX nodes of the row's GPU; MPT models are built here from llm-foundry's yamls
(mpt_model). No constant is fitted to these rows and no per-row factor exists; what the README leaves unsaid is
assumed below and stated per row.

    python -m clusterplan.reference            # prints every reference table, this one included
"""

from __future__ import annotations

from dataclasses import dataclass

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.cluster import Cluster, load_cluster
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout
from clusterplan.reference.bridge import layout_text
from clusterplan.reference.report import (
    TARGET_TIME_MAX,
    TARGET_TIME_MEDIAN,
    Column,
    markdown_rows,
    notes_cell,
    print_rows,
    read_rows,
    refusal,
    row_notes,
    summary,
)

FOUNDRY_CSV = "llmfoundry_mpt.csv"
STACK = "llm-foundry"
MPT_VOCAB = 50368
"""scripts/train/yamls/pretrain/mpt-*.yaml: vocab_size 50368 (the GPT-NeoX-20B tokenizer padded to a multiple of 64)."""
MPT_EXPANSION_RATIO = 4
"""mpt-*.yaml expansion_ratio 4: ffn = 4 d_model, one up and one down projection with GELU (not gated)."""

MPT_SIZES: dict[str, tuple[int, int, int]] = {
    "125m": (768, 12, 12),
    "350m": (1024, 16, 24),
    "760m": (1536, 12, 24),
    "1b": (2048, 16, 24),
    "3b": (2560, 20, 32),
    "7b": (4096, 32, 32),
    "13b": (5120, 40, 40),
    "30b": (7168, 56, 48),
    "70b": (8192, 64, 80),
}
"""(d_model, n_heads, n_layers) of llm-foundry scripts/train/yamls/pretrain/mpt-<size>.yaml (mpt-7b.yaml: d_model 4096,
n_heads 32, n_layers 32); every row's published NumParams is reproduced from them exactly (test_reference_foundry)."""

SECTIONS = {
    "h100_bf16": ("dgx-h100", "H100 80GB BF16"),
    "h100_fp8": ("dgx-h100", "H100 80GB FP8"),
    "a100_80gb": ("dgx-a100-80g", "A100 80GB, 1600 Gb/s RoCE"),
    "a100_40gb": ("dgx-a100-40g", "A100 40GB, 1600 Gb/s RoCE"),
}
"""README section -> (node preset, title). A100: the README's 1600 Gbps node-to-node = 8 x 200 Gb/s per node, the
DGX A100 presets' 8 HDR NICs. H100: the README names no interconnect; DGX H100 (8 x 400 Gb/s) is assumed (8-GPU rows
do not leave the node)."""
FP8_RECIPE = "delayed"
"""Composer amp_fp8: te.fp8_autocast with DelayedScaling (Format.HYBRID) over llm-foundry's te.Linear layers."""

README_PEAK_FLOPS = {"h100_bf16": 1.979e15 / 2, "h100_fp8": 3.958e15 / 2, "a100_80gb": 312e12, "a100_40gb": 312e12}
"""GPU_AVAILABLE_FLOPS the README's MFU divides by (Composer callbacks/speed_monitor.py: H100 SXM bf16 1.979e15 / 2,
fp8 3.958e15 / 2, the datasheets' dense rates; A100 312e12); checked against every published MFU in the tests."""


def mpt_model(size: str, seq: int) -> ModelSpec:
    """MPT as llm-foundry builds it (llmfoundry/models/mpt/configuration_mpt.py defaults, no overrides in the
    pretrain yamls): learned position embedding of max_seq_len rows (learned_pos_emb True, no ALiBi), biases on every
    linear (no_bias False), LayerNorm with bias, GELU MLP of expansion_ratio x d_model, tied LM head, no dropout
    (attn/resid/emb pdrop 0). max_seq_len = the row's sequence length (submit_benchmarks.py sets it), so the
    parameter count grows by seq x d_model with the sequence length, as the published NumParams do."""
    d_model, heads, layers = MPT_SIZES[size]
    return ModelSpec(name=f"mpt-{size}", family="mpt", n_layers=layers, hidden=d_model, n_heads=heads,
                     ffn_hidden=MPT_EXPANSION_RATIO * d_model, gated_ffn=False, vocab=MPT_VOCAB, tied_embeddings=True,
                     norm="layernorm", position="learned", max_positions=seq, attn_bias=True, linear_bias=True,
                     dropout=False, source=f"llm-foundry scripts/train/yamls/pretrain/mpt-{size}.yaml")


def readme_flops_per_token(model: ModelSpec, seq: int) -> float:
    """The README's MFU numerator per token: 3 x (2 x n_params + n_layers x 2 x 2 x d_model x seq) (README "MFU":
    flops_per_seq = 2 n_params seq, attn_flops_per_seq = n_layers 2 2 d_model seq^2, times 3 for forward +
    backward), the attention counted over the full s x s scores."""
    return 3.0 * (2.0 * model.total_params() + 4.0 * model.n_layers * model.hidden * seq)


@dataclass(frozen=True)
class FoundryRow:
    """One CSV row, how we run it, and what we predict."""

    section: str
    size: str
    seq: int
    gpus: int
    mbs: int
    layout: Layout
    notes: tuple[str, ...]
    published_tokens_per_s: float
    published_mfu: float
    """README MFU as a fraction."""
    published_params: int
    model_params: int
    readme_flops_per_token: float
    predicted_tokens_per_s: float
    refused: str = ""
    """The estimate's own reasons (e.g. out of memory) when it refuses the layout; time still compared."""
    reason: str = ""
    """Why the CLI cannot express the row ('' when it can; every row here can)."""

    @property
    def label(self) -> str:
        ckpt = "+ckpt" if self.layout.recompute == "full" else ""
        return f"{self.section} {self.size} s{self.seq} g{self.gpus} mbs{self.mbs}{ckpt}"

    @property
    def expressible(self) -> bool:
        return not self.reason

    @property
    def error(self) -> float:
        """Predicted over published tokens/s per GPU, minus 1."""
        return self.predicted_tokens_per_s / self.published_tokens_per_s - 1

    @property
    def predicted_mfu(self) -> float:
        """The README's MFU of our predicted tokens/s (same FLOP count and peak as the published column)."""
        return self.predicted_tokens_per_s * self.readme_flops_per_token / README_PEAK_FLOPS[self.section]


def foundry_layout(r: dict[str, str]) -> tuple[Layout, list[str]]:
    gpus, mbs, gbs, seq = int(r["gpus"]), int(r["mbs"]), int(r["gbs"]), int(r["seq"])
    notes: list[str] = []
    precision = {"amp_bf16": "bf16", "bf16": "bf16", "amp_fp8": "fp8"}[r["precision"]]
    # Composer get_mixed_precision: DEFAULT reduces gradients in fp32, PURE in the compute dtype.
    fp32_grads = r["mp_mode"] == "DEFAULT"
    if r["mp_mode"] == "PURE":
        notes.append("FSDP PURE: bf16 reduce-scatter")
    if r["precision"] == "bf16":
        notes.append("precision bf16 (not amp) priced as bf16")
    if precision == "fp8":
        notes.append("fp8 delayed scaling (te.Linear)")
    layout = Layout(dp=gpus, zero=3, mbs=mbs, gbs=gbs, seq=seq, recompute="full" if r["act_ckpt"] == "True" else "none",
                    precision=precision, flash_attn=True, fp32_grads=fp32_grads)
    return layout, notes


def foundry_cluster(section: str, gpus: int) -> Cluster:
    node = SECTIONS[section][0]
    return load_cluster(f"{node}:{max(1, gpus // 8)}")


def foundry_rows() -> list[FoundryRow]:
    stack = get_stack(STACK)
    out = []
    for r in read_rows(FOUNDRY_CSV):
        section, size, seq, gpus = r["section"], r["model"], int(r["seq"]), int(r["gpus"])
        model = mpt_model(size, seq)
        layout, notes = foundry_layout(r)
        if section.startswith("h100") and gpus > 8:
            notes.append("interconnect not published: DGX H100 assumed")
        est = estimate(model, foundry_cluster(section, gpus), layout, stack=stack,
                       fp8_recipe=FP8_RECIPE if layout.precision == "fp8" else None)
        js = est.to_json()
        out.append(FoundryRow(section=section, size=size, seq=seq, gpus=gpus, mbs=int(r["mbs"]), layout=layout,
                              notes=tuple(notes), published_tokens_per_s=float(r["tokens_per_s_per_gpu"]),
                              published_mfu=float(r["mfu"]) / 100.0, published_params=int(r["num_params"]),
                              model_params=model.total_params(),
                              readme_flops_per_token=readme_flops_per_token(model, seq),
                              predicted_tokens_per_s=js["tokens_per_s"] / gpus,
                              refused=refusal(est)))
    return out


GROUPS = {"H100 bf16": ("h100_bf16",), "H100 fp8": ("h100_fp8",), "A100": ("a100_80gb", "a100_40gb")}
"""How the summary groups the sections (issue #13 reports H100 bf16, H100 fp8 and A100 apart)."""



def _summary_lines(rows: list[FoundryRow]) -> list[str]:
    out = []
    for name, sections in GROUPS.items():
        n, med, worst = summary([r for r in rows if r.section in sections])
        out.append(f"{name}: {n} rows, tokens/s median |error| {med:.1%}, max {worst:.1%}")
    n, med, worst = summary(rows)
    out.append(f"all: {n} of {len(rows)} rows, tokens/s median |error| {med:.1%}, max {worst:.1%} (issue #13 "
               f"held-out target: {TARGET_TIME_MEDIAN:.0%} median, {TARGET_TIME_MAX:.0%} max)")
    return out


TITLE = ("MosaicML llm-foundry MPT training benchmarks (scripts/train/benchmarking/README.md): tokens/s and "
         "MFU per GPU")
"""The table's heading on the console (print_table)."""


def print_table(rows: list[FoundryRow]) -> None:
    columns, cells = table(rows)
    print_rows(TITLE, columns, cells, [r.label for r in rows], _summary_lines(rows))


def table(rows: list[FoundryRow]) -> tuple[list[Column], list[list[str]]]:
    """The columns, and each row's cells with its notes last: what markdown_table and print_table show."""
    columns = [("section", "l"), ("model", "l"), ("seq", "r"), ("GPUs", "r"), ("layout", "l"),
               ("tokens/s/GPU published", "r"), ("predicted", "r"), ("error", "r"), ("MFU published", "r"),
               ("predicted", "r"), ("notes", "l")]
    cells = ([r.section, r.size, f"{r.seq}", f"{r.gpus}", layout_text(r.layout), f"{r.published_tokens_per_s:.0f}",
              f"{r.predicted_tokens_per_s:.0f}", f"{r.error:+.1%}", f"{r.published_mfu:.1%}", f"{r.predicted_mfu:.1%}",
              notes_cell(row_notes(r.notes, r.refused))] for r in rows)
    return columns, [list(c) for c in cells]


def markdown_table(rows: list[FoundryRow]) -> str:
    columns, cells = table(rows)
    lines = [*markdown_rows(columns, cells), ""] + [line + "." for line in _summary_lines(rows)]
    lines += ["", "MFU as the README counts it (readme_flops_per_token: 6 N + 12 n_layers d_model seq per token over "
                  "Composer's GPU_AVAILABLE_FLOPS); `predicted` applies it to our tokens/s."]
    return "\n".join(lines)
