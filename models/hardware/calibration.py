"""Calibration: measured efficiencies that replace hardware_db defaults in every cost model.

`clusterplan profile` writes the file; `--calibration FILE` loads it. Format (JSON, versioned):

    {"format": "clusterplan-calibration", "version": 1,
     "meta": {"device_name": "NVIDIA H100 80GB HBM3", "device_count": 8, "backend": "nccl",
              "torch_version": "...", "driver": "...", "hostname_sha256": "...", "created_utc": "..."},
     "gemm": {"bf16": {"max_tflops": 760.0, "half_flops": 3.0e9}},        # fitted curve, see gemm_tflops
     "memory": {"copy_bytes_per_s": 2.9e12},
     "attention": {"bf16": {"max_tflops": 500.0, "half_flops": 2.0e9, "bwd_over_fwd": 2.6}},
     "collectives": {"all_reduce": {"scale_up": {"latency_s": 1.2e-5, "busbw_bytes_per_s": 3.6e11}}},
     "overlap": {"scale_up": {"comm_compute_overlap": 0.93}},
     "layer": {"time_factor": 1.4, "tp_overhead_s": 0.012},              # eager layers (validate's runs only)
     "serving": {"decode_step_overhead_s": 0.004},
     "raw": {...}}                                                         # the measurements themselves

Every section is optional; what a file does not give falls back to the hardware_db defaults.
Meaning of the measured numbers (as `clusterplan profile` writes them):
- collectives latency_s: per algorithm step, as models/hardware/comm.py multiplies it back (ring all_reduce 2(n-1) steps,
  all_gather / reduce_scatter / all_to_all n-1, send_recv 1); busbw_bytes_per_s: nccl-tests busbw.
  scale_up = the ranks of one node; scale_out = the whole world over all nodes (the nccl-tests multi-node busbw).
- attention: causal scaled_dot_product_attention forward on the GemmCurve form in its FLOPs (2 b h s^2 d, the
  causal half), and backward time over forward time at the longest measured sequence.
- memory copy_bytes_per_s: bytes read + written per second by a large device copy (comparable to HBM peak).
- overlap comm_compute_overlap: share of the shorter of an all-reduce and a GEMM loop hidden when both run at
  once (profiler/overlap.py): about 1 with NCCL on GPUs, 0 or below (the two slow each other) with gloo on busy
  CPU cores.
- layer time_factor: an eager PyTorch layer's measured forward + backward over the cost model's compute for it
  (unfused elementwise kernels, autograd); tp_overhead_s: seconds per layer and micro-batch a tensor-parallel
  eager layer adds beyond that and its all-reduces (DTensor dispatch). Only `validate` applies them: its runs are
  eager PyTorch, while plan/estimate price the fused kernels of Megatron-LM-class frameworks.
- serving decode_step_overhead_s: one eager decode step of a tiny model with the target's layers per stage
  (launch-bound: the fixed per-step cost of an engine without CUDA graphs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from clusterplan.errors import BadInputError
from clusterplan.fileio import load_mapping

FORMAT = "clusterplan-calibration"
VERSION = 1
COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")
LEVELS = ("scale_up", "scale_out")


@dataclass(frozen=True, kw_only=True, slots=True)
class GemmCurve:
    """Achieved GEMM rate in FLOPs of one GEMM F: max_tflops * F / (F + half_flops).

    A saturating curve in problem size, as Calculon's size-dependent efficiency tables (research/training-models.md 2.7);
    half_flops is the GEMM size that reaches half of max_tflops.
    """

    max_tflops: float
    half_flops: float


@dataclass(frozen=True, kw_only=True, slots=True)
class AttentionFit:
    """Causal flash attention: forward rate max_tflops * F / (F + half_flops), backward bwd_over_fwd x forward."""

    max_tflops: float
    half_flops: float
    bwd_over_fwd: float


@dataclass(frozen=True, kw_only=True, slots=True)
class CollectiveFit:
    latency_s: float
    busbw_bytes_per_s: float


@dataclass(frozen=True, kw_only=True, slots=True)
class Calibration:
    path: str = ""
    meta: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    gemm: Mapping[str, GemmCurve] = field(default_factory=lambda: MappingProxyType({}))
    copy_bytes_per_s: float | None = None
    collectives: Mapping[tuple[str, str], CollectiveFit] = field(default_factory=lambda: MappingProxyType({}))
    decode_step_overhead_s: float | None = None
    overlap: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    """comm_compute_overlap per link level."""
    attention: Mapping[str, AttentionFit] = field(default_factory=lambda: MappingProxyType({}))
    eager_layer_time_factor: float | None = None
    eager_tp_overhead_s: float | None = None

    def gemm_curve(self, dtype: str) -> GemmCurve | None:
        return self.gemm.get(dtype) or (self.gemm.get("bf16") if dtype in ("fp16", "bf16") else None)

    def attention_fit(self) -> AttentionFit | None:
        """The measured attention kernel: bf16's (what training runs on GPUs), else the one dtype measured."""
        return self.attention.get("bf16") or next(iter(self.attention.values()), None)

    def collective(self, op: str, level: str) -> CollectiveFit | None:
        return self.collectives.get((op, level))

    def comm_overlap(self) -> float:
        """The measured comm/compute overlap of the worst link level; 1 (fully hidden) when not measured."""
        return min(self.overlap.values(), default=1.0)

    def host_oversubscription(self) -> float:
        """Rank threads per CPU core during a CPU (gloo) profile, at least 1; 1 on GPUs or when the file predates it."""
        meta = self.meta
        try:
            if meta.get("backend") != "gloo":
                return 1.0
            threads = float(meta["local_world_size"]) * float(meta.get("cpu_threads", 1))
            return max(1.0, threads / float(meta["host_cpus"]))
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            return 1.0


RANGES: Mapping[str, tuple[float, float]] = MappingProxyType({
    # Physical ranges of what a profile can measure; outside them a time or rate in the cost models could
    # overflow to infinity (1e308 s of latency, 1e-300 B/s), so the file is refused where it is read.
    "max_tflops": (1e-6, 1e6),  # 1 MFLOP/s (any CPU) .. 1 EFLOP/s (50x a B200's sparse FP4 peak)
    "half_flops": (1e-6, 1e18),  # a GEMM of 1e18 FLOPs takes minutes on any chip
    "bwd_over_fwd": (1e-3, 1e3),
    "latency_s": (0.0, 10.0),  # a collective step over 10 s is a hang, not a latency
    "busbw_bytes_per_s": (1e3, 1e15),  # 1 kB/s .. 1 PB/s (500x NVLink 5)
    "copy_bytes_per_s": (1e3, 1e15),
    "decode_step_overhead_s": (0.0, 10.0),
    "time_factor": (1e-3, 1e3),
    "tp_overhead_s": (0.0, 10.0),
})


def _positive(where: str, raw: Mapping[str, Any], key: str, *, zero_ok: bool = False) -> float:
    value = raw.get(key)
    low, high = RANGES.get(key, (0.0, 1e300))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, int) and value > 1e300) \
            or not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        raise BadInputError(f"{where}: {key} must be a number {'>=' if zero_ok else '>'} 0, got {value!r}; "
                            "re-run `clusterplan profile`")
    if not (low <= value <= high or (value == 0 and zero_ok)):
        raise BadInputError(f"{where}: {key} {value!r} is outside the measurable range {low:g}..{high:g}; "
                            "re-run `clusterplan profile`")
    return float(value)


def _mapping(where: str, value: Any) -> Mapping[str, Any]:
    """A section of the file (absent = empty); anything but a mapping is a damaged file."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise BadInputError(f"{where} must be a mapping, got {type(value).__name__}; re-run `clusterplan profile`")
    return value


def calibration_from_dict(data: Mapping[str, Any], *, path: str = "calibration") -> Calibration:
    if data.get("format") != FORMAT:
        found = f"format {data['format']!r}" if "format" in data else "no `format:` key"
        raise BadInputError(f"{path}: not a clusterplan calibration file ({found}, expected {FORMAT!r}); "
                            "write one with `clusterplan profile`")
    if data.get("version") != VERSION:
        raise BadInputError(f"{path}: calibration version {data.get('version')!r} is not supported (this clusterplan "
                            f"reads version {VERSION}); re-run `clusterplan profile`")
    gemm = {}
    for dtype, raw in _mapping(f"{path}: gemm", data.get("gemm")).items():
        where = f"{path}: gemm.{dtype}"
        raw = _mapping(where, raw)
        gemm[dtype] = GemmCurve(max_tflops=_positive(where, raw, "max_tflops"), half_flops=_positive(where, raw, "half_flops"))
    attention = {}
    for dtype, raw in _mapping(f"{path}: attention", data.get("attention")).items():
        where = f"{path}: attention.{dtype}"
        raw = _mapping(where, raw)
        attention[dtype] = AttentionFit(max_tflops=_positive(where, raw, "max_tflops"),
                                        half_flops=_positive(where, raw, "half_flops"),
                                        bwd_over_fwd=_positive(where, raw, "bwd_over_fwd"))
    collectives = {}
    for op, levels in _mapping(f"{path}: collectives", data.get("collectives")).items():
        if op not in COLLECTIVES:
            raise BadInputError(f"{path}: unknown collective {op!r}; expected one of {', '.join(COLLECTIVES)}")
        for level, raw in _mapping(f"{path}: collectives.{op}", levels).items():
            if level not in LEVELS:
                raise BadInputError(f"{path}: collectives.{op}: unknown level {level!r}; expected scale_up or scale_out")
            where = f"{path}: collectives.{op}.{level}"
            raw = _mapping(where, raw)
            collectives[(op, level)] = CollectiveFit(latency_s=_positive(where, {"latency_s": 0.0, **raw}, "latency_s",
                                                                         zero_ok=True),
                                                     busbw_bytes_per_s=_positive(where, raw, "busbw_bytes_per_s"))
    overlap = {}
    for level, raw in _mapping(f"{path}: overlap", data.get("overlap")).items():
        if level not in LEVELS:
            raise BadInputError(f"{path}: overlap: unknown level {level!r}; expected scale_up or scale_out")
        where = f"{path}: overlap.{level}"
        value = _mapping(where, raw).get("comm_compute_overlap")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1 <= value <= 1:
            raise BadInputError(f"{where}: comm_compute_overlap must be a number between -1 and 1, got {value!r}; "
                                "re-run `clusterplan profile`")
        overlap[level] = float(value)
    layer = _mapping(f"{path}: layer", data.get("layer"))
    memory = _mapping(f"{path}: memory", data.get("memory"))
    serving = _mapping(f"{path}: serving", data.get("serving"))
    return Calibration(
        path=path,
        meta=MappingProxyType(dict(_mapping(f"{path}: meta", data.get("meta")))),
        gemm=MappingProxyType(gemm),
        copy_bytes_per_s=_positive(f"{path}: memory", memory, "copy_bytes_per_s") if "copy_bytes_per_s" in memory else None,
        collectives=MappingProxyType(collectives),
        decode_step_overhead_s=_positive(f"{path}: serving", serving, "decode_step_overhead_s", zero_ok=True)
        if "decode_step_overhead_s" in serving else None,
        overlap=MappingProxyType(overlap),
        attention=MappingProxyType(attention),
        eager_layer_time_factor=_positive(f"{path}: layer", layer, "time_factor") if "time_factor" in layer else None,
        eager_tp_overhead_s=_positive(f"{path}: layer", layer, "tp_overhead_s", zero_ok=True)
        if "tp_overhead_s" in layer else None,
    )


def load_calibration(path: str | Path | None) -> Calibration | None:
    """Load and check a calibration file; None passes through (use hardware_db defaults)."""
    if path is None:
        return None
    data = load_mapping(path)
    return calibration_from_dict(data, path=str(path))
