"""Our predictions against Hugging Face's own nanotron runs on H100 with published throughput (data/smol_nanotron.csv):
SmolLM3-3B pre-training on 384 H100 and the Smol Training Playbook's 1B ablation baseline on one node.

A held-out check for issue #13 (published H100-era runs: tokens/s within 10 % median, 20 % max) of the nanotron stack
(hardware_db/data/stacks.yaml `nanotron`), beside the Ultra-Scale Playbook sweep (reference/ultrascale.py): other
models (GQA, a 128k vocabulary), another cluster (AWS p5: EFA between nodes) and a data-parallel degree of 192. Each
row runs `estimate` on the p5 preset with the layout its config gives; what the config leaves unsaid is an assumption
noted on the row. Nothing is fitted to these rows.

    python -m clusterplan.reference            # prints every reference table, this one included
"""

from __future__ import annotations

from dataclasses import dataclass

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout
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

SMOL_CSV = "smol_nanotron.csv"
STACK = "nanotron"
SMOLLM3 = ModelSpec(name="smollm3-3b", family="llama", n_layers=36, hidden=2048, n_heads=16, n_kv_heads=4,
                    ffn_hidden=11008, vocab=128256, tied_embeddings=True)
"""huggingface/smollm text/pretraining/smollm3/stage1_8T.yaml's model (data/smol_nanotron.csv header): 3.08B
parameters."""
NOTES = {
    "smollm3-3b": ["rope on 3 of 4 layers (no_rope_layer 4): priced with rope on every layer (its elementwise share)",
                   "document masking: attention priced as full causal over 4,096 tokens (the documents' lengths are "
                   "not published; masking only removes work)",
                   "published: the playbook's steady throughput chart, 13.5k-14.0k tokens/s per GPU"],
    "llama3.2-1b": ["ZeRO 0 and no recompute assumed (not in the published config excerpt; nanotron's defaults)",
                    "published: 'about 1.5 days ... (42k tokens per second per GPU)', steady or averaged not said"],
}


def smol_model(name: str) -> ModelSpec:
    return SMOLLM3 if name == SMOLLM3.name else load_model(name)


def smol_layout(r: dict[str, str]) -> Layout:
    dp, tp, pp, mbs, ga = (int(r[k]) for k in ("dp", "tp", "pp", "mbs", "ga"))
    return Layout(dp=dp, tp=tp, pp=pp, zero=int(r["zero"]), mbs=mbs, gbs=dp * mbs * ga, seq=int(r["seq"]),
                  sp=tp > 1, recompute="none", schedule="1f1b", precision="bf16", fp32_grads=True)


@dataclass(frozen=True)
class SmolRow:
    """One run, how we run it, and what we predict."""

    label: str
    gpus: int
    cluster: str
    layout: Layout
    notes: tuple[str, ...]
    published_tokens_per_s: float
    """Per GPU."""
    predicted_tokens_per_s: float
    predicted_mfu: float
    predicted_memory_gib: float
    refused: str = ""

    @property
    def expressible(self) -> bool:
        return True  # every run here is a layout the CLI takes

    @property
    def error(self) -> float:
        return self.predicted_tokens_per_s / self.published_tokens_per_s - 1


def smol_rows() -> list[SmolRow]:
    out = []
    stack = get_stack(STACK)
    for r in read_rows(SMOL_CSV):
        gpus = int(r["gpus"])
        cluster = f"{r['node']}:{gpus // 8}"
        layout = smol_layout(r)
        est = estimate(smol_model(r["model"]), load_cluster(cluster), layout, stack=stack)
        js = est.to_json()
        out.append(SmolRow(label=f"{r['run']} {gpus} H100", gpus=gpus, cluster=cluster, layout=layout,
                           notes=tuple(NOTES[r["model"]]),
                           published_tokens_per_s=float(r["tokens_per_s_per_gpu"]),
                           predicted_tokens_per_s=js["tokens_per_s"] / gpus, predicted_mfu=js["mfu"],
                           predicted_memory_gib=js["memory"]["peak_gib"], refused=refusal(est)))
    return out


def _summary_line(rows: list[SmolRow]) -> str:
    n, median, worst = summary(rows)
    return (f"{n} rows: tokens/s median |error| {median:.1%}, max {worst:.1%} (issue #13 held-out "
            f"target: {TARGET_TIME_MEDIAN:.0%} median, {TARGET_TIME_MAX:.0%} max)")


TITLE = ("Hugging Face nanotron runs on H100 (SmolLM3 pre-training, the Smol Training Playbook's 1B baseline): "
         "tokens/s per GPU")
"""The table's heading on the console (print_table)."""


def print_table(rows: list[SmolRow]) -> None:
    columns, cells = table(rows)
    print_rows(TITLE, columns, cells, [r.label for r in rows], [_summary_line(rows)])


def table(rows: list[SmolRow]) -> tuple[list[Column], list[list[str]]]:
    """The columns, and each row's cells with its notes last: what markdown_table and print_table show."""
    columns = [("run", "l"), ("cluster", "l"), ("layout", "l"), ("tokens/s/GPU published", "r"), ("predicted", "r"),
               ("error", "r"), ("MFU predicted", "r"), ("peak GiB predicted", "r"), ("notes", "l")]
    cells = ([r.label, r.cluster, r.layout.short(), f"{r.published_tokens_per_s:,.0f}",
              f"{r.predicted_tokens_per_s:,.0f}", f"{r.error:+.1%}", f"{r.predicted_mfu:.1%}",
              f"{r.predicted_memory_gib:.1f}", notes_cell(row_notes(r.notes, r.refused))] for r in rows)
    return columns, [list(c) for c in cells]


def markdown_table(rows: list[SmolRow]) -> str:
    columns, cells = table(rows)
    return "\n".join([*markdown_rows(columns, cells), "", _summary_line(rows) + "."])
