"""Our predictions against NVIDIA's published Megatron-Bridge pre-training throughput of the hybrid Mamba-2 / attention
/ MoE model Nemotron 3 Nano 30B-A3B (releases 26.04, 26.06; data/megatron_bridge_hybrid.csv) on 8 GB300 / GB200 /
B300 and 16 H100, each row priced as bridge.py prices the 25.11 rows, with the settings the performance recipes
set (research/nemotron3-nano-recipes.md) and Megatron-Bridge's own hybrid FLOP count for the TFLOP/s column
(bridge.bridge_hybrid_flops_per_token). Held out: no constant is fitted to these rows.

    python -m clusterplan.reference            # prints every reference table, this one included
"""

from __future__ import annotations

from clusterplan.reference.bridge import BridgeRow, bridge_rows, print_release_table, release_markdown

HYBRID_CSV = "megatron_bridge_hybrid.csv"
TITLE = ("Megatron-Bridge hybrid Mamba / MoE pre-training, Nemotron 3 Nano 30B-A3B (performance summaries 26.04, "
         "26.06): tokens/s and model TFLOP/s per GPU")


def hybrid_rows() -> list[BridgeRow]:
    return bridge_rows(HYBRID_CSV)


def print_table(rows: list[BridgeRow]) -> None:
    print_release_table(TITLE, rows)


def markdown_table(rows: list[BridgeRow]) -> str:
    return release_markdown(rows)
