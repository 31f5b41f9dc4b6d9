"""Our predictions against NVIDIA's published Megatron-Bridge NVFP4 pre-training throughput (releases 26.02, 26.04,
26.06; data/megatron_bridge_nvfp4.csv): Llama 3 70B on 64 and Llama 3.1 405B on 256 GB300 / GB200, each row priced
as bridge.py prices the 25.11 rows (same model presets, clusters, stage splits and recipe defaults), with the NVFP4
recipe (Layout.fp8_recipe nvfp4: gemm.yaml nvfp4_gemm_time_ratio, compute.FP8_QUANT_BYTES_PER_ELEMENT) and TP
communication overlap off as those recipes run it. Held out: no constant is fitted to these rows.

    python -m clusterplan.reference            # prints every reference table, this one included
"""

from __future__ import annotations

from clusterplan.reference.bridge import BridgeRow, bridge_rows, print_release_table, release_markdown

NVFP4_CSV = "megatron_bridge_nvfp4.csv"
TITLE = ("Megatron-Bridge NVFP4 pre-training (performance summaries 26.02, 26.04, 26.06): tokens/s and model TFLOP/s "
         "per GPU")


def nvfp4_rows() -> list[BridgeRow]:
    return bridge_rows(NVFP4_CSV)


def print_table(rows: list[BridgeRow]) -> None:
    print_release_table(TITLE, rows)


def markdown_table(rows: list[BridgeRow]) -> str:
    return release_markdown(rows)
