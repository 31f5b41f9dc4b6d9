"""Measured against the datasheet: the hardware_db GPU a calibration was measured on, and achieved fractions.

The fractions are what research/hardware.md section 3 tabulates from others' runs (H100 bf16 GEMM 80 % of
dense peak by MAMF, HBM 80-90 %, NVLink4 ring busbw ~82 % of 450 GB/s); here they come from your machine.
"""

from __future__ import annotations

import re
from typing import Any

from clusterplan.hardware_db import GPU, load_db


def _tokens(name: str) -> set[str]:
    # "NVIDIA H100 80GB HBM3" -> {nvidia, h100, 80g, hbm3}: "80GB" and "80G" name the same memory size.
    return {re.sub(r"(\d+g)b$", r"\1", t) for t in re.split(r"[^a-z0-9]+", name.lower()) if t}


def match_gpu(device_name: str) -> GPU | None:
    """The hardware_db GPU whose name or alias has the most tokens, all found in torch's device name."""
    have = _tokens(device_name)
    best: tuple[int, GPU | None] = (0, None)
    for gpu in load_db().gpus.values():
        for candidate in (gpu.name, *gpu.aliases):
            want = _tokens(candidate)
            if want <= have and len(want) > best[0]:
                best = (len(want), gpu)
    return best[1]


def compare(doc: dict[str, Any], gpu: GPU) -> dict[str, dict[str, float]]:
    """Measured value, datasheet value and their ratio, per quantity the datasheet has."""
    rows: dict[str, dict[str, float]] = {}
    for dtype, curve in sorted((doc.get("gemm") or {}).items()):
        if dtype in gpu.peak_tflops:
            peak = gpu.peak_tflops[dtype]
            rows[f"gemm_{dtype}_tflops"] = {"measured": curve["max_tflops"], "datasheet": peak,
                                            "fraction": curve["max_tflops"] / peak}
    copy = (doc.get("memory") or {}).get("copy_bytes_per_s")
    if copy:
        rows["hbm_bytes_per_s"] = {"measured": copy, "datasheet": gpu.hbm_bytes_per_s,
                                   "fraction": copy / gpu.hbm_bytes_per_s}
    up = ((doc.get("collectives") or {}).get("all_reduce") or {}).get("scale_up")
    if up:
        line_rate = gpu.scale_up_gb_per_s * 1e9
        rows["scale_up_busbw_bytes_per_s"] = {"measured": up["busbw_bytes_per_s"], "datasheet": line_rate,
                                              "fraction": up["busbw_bytes_per_s"] / line_rate}
    return rows
