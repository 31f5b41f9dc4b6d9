"""Our predictions against the throughput OLMo-core's README publishes for its official training scripts on H100
(allenai/OLMo-core, data/olmo_core_h100.csv; research/olmo-core-throughput.md): OLMo 2 1B / 7B / 13B and Llama 3 8B at
4K context, bf16 and torchao float8, FSDP2 (HSDP) with torch.compile.

A held-out check set on a stack this project was not built on: each row runs `estimate` with torchtitan's compiled
stack whose loss is compiled with the blocks (stacks.yaml torchtitan-compile-loss: FSDP2 per block, compiled blocks,
torchao float8 with its fp8 all-gather), attention at PyTorch SDPA's published curves, as OLMo-core runs with
compile on. No constant is fitted to these rows; the node count, which the source does not give, is assumed (the
scripts' usage example, 2 nodes) and the spread over 1-8 nodes is reported.

    python -m clusterplan.reference            # prints every reference table, this one included
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from statistics import median

from clusterplan.hardware_db import get_stack
from clusterplan.hardware_db.stacks import ExecutionStack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.cluster import load_cluster
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
)
from clusterplan.reference.titan import published_sdpa

OLMO_CORE_CSV = "olmo_core_h100.csv"
TITLE = ("OLMo-core official training scripts on H100 (README at allenai/OLMo-core@a7de3f65, Nov 2024): tokens/s per "
         "GPU")
NODE = "dgx-h100"
"""H100 SXM 80 GB nodes of 8 (the source names the GPU only; AI2's clusters are 8-GPU H100 nodes with InfiniBand)."""
NODES = 2
"""Nodes each row is priced on: not published; the scripts' usage text launches --launch.num_nodes=2."""
NODE_SPREAD = (1, 2, 4, 8)
"""Node counts the report prices each row at besides NODES, to show what the unpublished count could change."""
STACK = "torchtitan-compile-loss"
OLMO_CORE_1B = dict(name="olmo-core-1b", n_layers=18, hidden=2048, n_heads=16, n_kv_heads=16, ffn_hidden=5632)
"""OLMo-core's olmo_1B / olmo2_1B factory of that period (= llama2_1B shapes on the OLMo 2 block: qk-norm, reordered
norms, vocab 100352; research/olmo-core-throughput.md sec. 3.0); not a released checkpoint's shape (OLMo-2-0425-1B
has 16 layers, SwiGLU 8192), so built here from olmo2-7b's fields."""
DOLMA2_VOCAB = 100352
"""The dolma2 tokenizer's 100,278 entries padded to a multiple of 128, as the Llama-8B script builds its model."""
UNEXPRESSED = [
    ("32B bf16 1,500 / fp8 1,800 TPS (README R4, OLMo2-32B.py)",
     "its script checkpoints every block's feed-forward only (selected_modules), which the torchtitan stacks here do "
     "not run, and its HSDP replica count (num_replicas=128 // 32) and node count are not tied to the numbers"),
    ("1B 44,000-46,000 / 7B 9,700-10,000 / 13B 4,400-4,600 TPS, 1B fp8 51,000, 7B fp8 13,000 (README R0 / R1, "
     "Sep-Oct 2024)", "earlier measurements of the same scripts before v1.6 (Triton fused loss, host syncs later "
                      "removed); superseded by the rows above"),
    ("1B variable sequence length 49,000 TPS (R1)", "a curriculum of 256-8,192-token sequences: no fixed length"),
    ("7B 64K context, 16-32 GPUs, CP / TP layouts (OLMo2-7B-long-context*.py comments)",
     "intra-document masking and GQA variants of the script, edited between runs: each comment's settings are not "
     "all stated"),
]


def olmo_core_model(name: str) -> ModelSpec:
    """The model a row's script builds (data/olmo_core_h100.csv `model`)."""
    if name == "olmo-core-1b":
        return replace(load_model("olmo2-7b"), **OLMO_CORE_1B)
    if name == "llama3-8b-dolma2":
        return replace(load_model("llama3-8b"), name=name, vocab=DOLMA2_VOCAB)
    return load_model(name)


def olmo_core_stack() -> ExecutionStack:
    return published_sdpa(get_stack(STACK))


def olmo_core_layout(r: dict[str, str], nodes: int) -> Layout:
    gpus = 8 * nodes
    return Layout(dp=gpus, dp_replicate=nodes, zero=3, mbs=int(r["rank_microbatch"]), gbs=int(r["global_batch"]),
                  seq=int(r["seq"]), recompute="none", precision="fp8" if r["precision"] == "fp8" else "bf16",
                  flash_attn=True)


@dataclass(frozen=True)
class OlmoCoreRow:
    size: str
    model: str
    precision: str
    layout: Layout
    published_tokens_per_s: float
    predicted_tokens_per_s: float
    spread: tuple[float, ...]
    """Predicted tokens/s per GPU at each of NODE_SPREAD's node counts."""
    notes: tuple[str, ...]
    refused: str = ""

    @property
    def label(self) -> str:
        return f"{self.size} {self.precision}"

    @property
    def error(self) -> float:
        return self.predicted_tokens_per_s / self.published_tokens_per_s - 1


def _predict(model: ModelSpec, r: dict[str, str], nodes: int, stack: ExecutionStack) -> tuple[float, str]:
    est = estimate(model, load_cluster(f"{NODE}:{nodes}"), olmo_core_layout(r, nodes), stack=stack)
    return est.to_json()["tokens_per_s"] / (8 * nodes), refusal(est)


def olmo_core_rows() -> list[OlmoCoreRow]:
    stack = olmo_core_stack()
    out = []
    for r in read_rows(OLMO_CORE_CSV):
        model = olmo_core_model(r["model"])
        tokens, refused = _predict(model, r, NODES, stack)
        spread = tuple(_predict(model, r, n, stack)[0] for n in NODE_SPREAD)
        notes = [f"script {r['script']}", f"nodes not published: priced at {NODES} x 8 H100 (HSDP 8 x {NODES}); "
                 f"{'/'.join(map(str, NODE_SPREAD))} nodes give "
                 + " / ".join(f"{t / float(r['tokens_per_s_per_gpu']) - 1:+.1%}" for t in spread)]
        out.append(OlmoCoreRow(size=r["size"], model=model.name, precision=r["precision"],
                               layout=olmo_core_layout(r, NODES),
                               published_tokens_per_s=float(r["tokens_per_s_per_gpu"]),
                               predicted_tokens_per_s=tokens, spread=spread, notes=tuple(notes), refused=refused))
    return out


COLUMNS: list[Column] = [("size", "l"), ("model", "l"), ("precision", "l"), ("layout", "l"),
                         ("tokens/s/GPU published", "r"), ("predicted", "r"), ("error", "r"), ("notes", "l")]


def table_cells(rows: list[OlmoCoreRow]) -> list[list[str]]:
    return [[r.size, r.model, r.precision, layout_text(r.layout), f"{r.published_tokens_per_s:.0f}",
             f"{r.predicted_tokens_per_s:.0f}", f"{r.error:+.1%}", notes_cell(row_notes(r.notes, r.refused))]
            for r in rows]


def summary_line(rows: list[OlmoCoreRow]) -> str:
    errors = [abs(r.error) for r in rows]
    return (f"{len(rows)} rows (stack {STACK}, SDPA): tokens/s median |error| {median(errors):.1%}, max "
            f"{max(errors):.1%} (issue #13 held-out target: {TARGET_TIME_MEDIAN:.0%} median, {TARGET_TIME_MAX:.0%} "
            "max)")


def print_table(rows: list[OlmoCoreRow]) -> None:
    print_rows(TITLE, COLUMNS, table_cells(rows), [r.label for r in rows], [summary_line(rows)])
    print("\nOLMo-core throughput published but not expressed:")
    for what, why in UNEXPRESSED:
        print(f"  {what}: {why}")


def markdown_table(rows: list[OlmoCoreRow]) -> str:
    lines = [*markdown_rows(COLUMNS, table_cells(rows)), "", summary_line(rows) + ".", "",
             "Published but not expressed:", ""]
    return "\n".join(lines + [f"- {what}: {why}" for what, why in UNEXPRESSED])
