"""The calibration document being measured: raw records appended as they come, fits, atomic saves, --resume.

The file is models/hardware/calibration.py's format at every moment (an interrupted run leaves a loadable file with
meta.complete = false); "raw" keeps every measurement with its key, so --resume skips what is already there.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from clusterplan.errors import BadInputError, ClusterplanError
from clusterplan.fileio import dumps_json, load_mapping, write_atomic
from clusterplan.models.hardware.calibration import FORMAT, VERSION, calibration_from_dict
from clusterplan.profiler.fit import fit_alpha_beta, fit_gemm

RAW_SECTIONS = ("gemm", "attention", "memory", "decode", "collectives", "overlap", "layer")
RESUME_KEYS = ("device_name", "backend", "world_size", "local_world_size", "quick", "model", "layout")


def new_document(meta: dict[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "meta": {**meta, "complete": False},
            "raw": {section: [] for section in RAW_SECTIONS}}


def done_keys(doc: dict[str, Any]) -> set[str]:
    return {rec["key"] for section in RAW_SECTIONS for rec in doc["raw"].get(section, [])}


def add_record(doc: dict[str, Any], kind: str, record: dict[str, Any]) -> None:
    section = "collectives" if kind == "collective" else kind
    doc["raw"][section].append(record)


def _curves_by_dtype(records: list[dict[str, Any]], flops_key: str, tflops_key: str) -> dict[str, tuple[Any, list]]:
    """Per dtype, the saturating curve fitted to (FLOPs, achieved TFLOP/s) and its records; dtypes with fewer
    than two sizes so far are left out."""
    by_dtype: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        by_dtype[rec["dtype"]].append(rec)
    out = {}
    for dtype, recs in sorted(by_dtype.items()):
        try:
            out[dtype] = (fit_gemm([r[flops_key] for r in recs], [r[tflops_key] for r in recs]), recs)
        except ClusterplanError:
            continue
    return out


def _gemm_fits(records: list[dict[str, Any]], min_dim: int) -> dict[str, Any]:
    """GemmCurve per dtype over the compute-bound GEMMs: skinny ones (a side below min_dim, e.g. decode's few
    tokens) are bandwidth-bound, priced by the memory roofline instead, and stay in raw only."""
    square = [r for r in records if min(r["m"], r["n"], r["k"]) >= min_dim]
    return {dtype: {"max_tflops": fit.max_tflops, "half_flops": fit.half_flops, "rms_log_error": fit.rms_log_error,
                    "points": fit.points}
            for dtype, (fit, _) in _curves_by_dtype(square, "flops", "tflops").items()}


def _attention_fits(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per dtype: the causal SDPA forward on the GEMM curve's form in its FLOPs (F = 2 b h s^2 d, the causal half),
    and backward over forward time at the longest sequence (FlashAttention-2's convention is 2.5)."""
    out = {}
    for dtype, (fit, recs) in _curves_by_dtype(records, "fwd_flops", "fwd_tflops").items():
        longest = max(recs, key=lambda r: r["fwd_flops"])
        fwd_s, both_s = longest["fwd"]["median_s"], longest["fwd_bwd"]["median_s"]
        out[dtype] = {"max_tflops": fit.max_tflops, "half_flops": fit.half_flops, "points": fit.points,
                      "bwd_over_fwd": max(0.5, (both_s - fwd_s) / fwd_s), "rms_log_error": fit.rms_log_error}
    return out


def _collective_fits(records: list[dict[str, Any]]) -> dict[str, Any]:
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        groups[(rec["op"], rec["level"], rec["n_ranks"])].append(rec)
    out: dict[str, dict[str, Any]] = defaultdict(dict)
    for (op, level, n), recs in sorted(groups.items()):
        try:
            fit = fit_alpha_beta(op, n, [r["size_bytes"] for r in recs], [r["median_s"] for r in recs])
        except ClusterplanError:
            continue
        out[op][level] = {"latency_s": fit.latency_s, "latency_total_s": fit.latency_total_s,
                          "busbw_bytes_per_s": fit.busbw_bytes_per_s, "n_ranks": n,
                          "rms_rel_error": fit.rms_rel_error, "points": fit.points}
    return dict(out)


def refit(doc: dict[str, Any]) -> None:
    """Recompute the fitted sections from the raw records."""
    raw = doc["raw"]
    doc["gemm"] = _gemm_fits(raw["gemm"], int(doc["meta"].get("gemm_fit_min_dim", 1)))
    doc["collectives"] = _collective_fits(raw["collectives"])
    if raw["memory"]:
        # The largest buffer is furthest from caches: its rate is the streaming bandwidth.
        largest = max(raw["memory"], key=lambda r: (r["buffer_bytes"], r["bytes_per_s"]))
        doc["memory"] = {"copy_bytes_per_s": largest["bytes_per_s"]}
    attention = _attention_fits(raw["attention"])
    if attention:
        doc["attention"] = attention
    if raw["overlap"]:
        # One record per level (the last, when a resumed run measured it twice).
        doc["overlap"] = {r["level"]: {"comm_compute_overlap": r["overlap"], "n_ranks": r["n_ranks"]}
                          for r in raw["overlap"]}
    if raw["decode"]:
        doc["serving"] = {"decode_step_overhead_s": raw["decode"][-1]["median_s"]}
    layer = _layer_fit(doc)
    if layer is not None:
        doc["layer"] = layer


def _layer_fit(doc: dict[str, Any]) -> dict[str, Any] | None:
    """Eager layers measured against the cost model priced at this file's own fits (models/training/step.py layer_cost):
    time_factor = measured / modelled compute of a tp-1 layer; tp_overhead_s = what a tp-2 layer takes beyond
    time_factor x its modelled compute and its modelled TP all-reduces (DTensor dispatch, redistribution)."""
    from clusterplan.models.architecture.shapes import ModelShapes
    from clusterplan.models.architecture.spec import ModelSpec
    from clusterplan.models.hardware.rates import HardwareRates
    from clusterplan.models.training.autocast import accumulate_s, layer_matmul_params
    from clusterplan.models.training.batch import LayoutArrays
    from clusterplan.models.training.layout import Layout
    from clusterplan.models.training.step import layer_cost
    from clusterplan.runtime.stack import runtime_stack

    recs = {r["tp"]: r for r in doc["raw"]["layer"]}
    if 1 not in recs:
        return None
    ref = recs[1]
    fitted = {k: v for k, v in doc.items() if k not in ("raw", "layer")}  # the fits the model prices it with
    hw = HardwareRates.measured(calibration_from_dict(fitted), dtype=ref["dtype"],
                                domain=max(2, int(doc["meta"].get("local_world_size", 2))))
    if hw is None:
        return None
    shapes = ModelShapes.of(ModelSpec(name="layer-ref", n_layers=1, hidden=ref["hidden"], n_heads=ref["n_heads"],
                                      n_kv_heads=ref["n_kv_heads"], ffn_hidden=ref["ffn_hidden"], vocab=128))
    precision = "fp32" if ref["dtype"] == "fp32" else "bf16"

    def modelled(tp: int) -> tuple[float, float]:
        layout = Layout(tp=tp, mbs=ref["mbs"], gbs=ref["mbs"], seq=ref["seq"], precision=precision, recompute="none")
        arrays = LayoutArrays.from_layouts([layout])
        # The layers validate runs, as validate prices them (plain PyTorch layers under torch.autocast over fp32
        # parameters on GPU: validate.predict.runtime_stack). Each timed call is one micro-batch in its own autocast
        # region whose gradients add to the last call's: its weights are cast (a one-micro-batch step) and their
        # gradients accumulated every call.
        cost = layer_cost(shapes, arrays, hw, runtime_stack())
        accumulate = 0.0
        if precision != "fp32":
            accumulate = float(accumulate_s(layer_matmul_params(shapes, arrays, False), hw)[0])
        return float(cost.compute_s[0]) + accumulate, float(cost.tp_s[0])

    compute1, _ = modelled(1)
    factor = ref["median_s"] / compute1
    out: dict[str, Any] = {"time_factor": factor, "reference": {k: ref[k] for k in ("hidden", "seq", "dtype")},
                           "tp1_measured_s": ref["median_s"], "tp1_model_s": compute1}
    if 2 in recs:
        compute2, comm2 = modelled(2)
        out.update(tp_overhead_s=max(0.0, recs[2]["median_s"] - factor * compute2 - comm2),
                   tp2_measured_s=recs[2]["median_s"], tp2_model_compute_s=compute2, tp2_model_comm_s=comm2)
    return out


def save(path: str | Path, doc: dict[str, Any], *, complete: bool = False) -> None:
    doc["meta"]["complete"] = complete
    write_atomic(path, dumps_json(doc))


def load_for_resume(path: str | Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The partial document at `path`, checked to come from the same kind of run as `meta`."""
    doc = load_mapping(path)
    calibration_from_dict(doc, path=str(path))  # format, version and values
    raw = doc.get("raw")
    if not isinstance(raw, dict) or not all(isinstance(raw.get(s, []), list) for s in RAW_SECTIONS):
        raise BadInputError(f"{path}: no raw measurements to resume from; run without --resume to start over")
    for section in RAW_SECTIONS:
        raw.setdefault(section, [])
    old = doc.get("meta") or {}
    for key in RESUME_KEYS:
        if old.get(key) != meta.get(key):
            raise BadInputError(f"{path}: was measured with {key}={old.get(key)!r}, this run has {meta.get(key)!r}; "
                                "run without --resume (or with another --out) to start over")
    doc["meta"] = {**old, **{k: v for k, v in meta.items() if k not in ("created_utc",)}, "resumed": True}
    return doc
