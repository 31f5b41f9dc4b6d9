"""Predicted against measured, per rank and term: the rows `clusterplan validate` prints and its JSON."""

from __future__ import annotations

from typing import Any

from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.training.layout import Layout
from clusterplan.validate.predict import MEASURED_TERMS, position_of, predicted_bytes, rank_layout


def error_pct(predicted: float, measured: float) -> float | None:
    """(predicted - measured) / measured in percent; None when nothing was measured."""
    return None if not measured else round(100.0 * (predicted - measured) / measured, 2)


def rank_rows(model: ModelSpec, layout: Layout, ranks: list[dict[str, Any]],
              activation_layout: Layout | None = None) -> list[dict[str, Any]]:
    """For every rank: position, and per memory term predicted bytes, measured bytes and error %.

    `activation_layout` prices activations differently from the states: on GPU the run keeps fp32 parameters and
    AdamW states (precision fp32) but saves bf16 activations under autocast (precision bf16)."""
    def predicted_at(pp_rank: int) -> dict[str, dict[str, float]]:  # per-rank lists: the rank's own layers
        predicted = predicted_bytes(model, rank_layout(layout, pp_rank))
        if activation_layout is not None:
            acts = predicted_bytes(model, rank_layout(activation_layout, pp_rank))
            for pos in predicted:
                predicted[pos]["activations"] = acts[pos]["activations"]
        return predicted

    rows = []
    for r in sorted(ranks, key=lambda r: r["rank"]):
        pos = position_of(r["coords"]["pp"], layout.pp)
        predicted = predicted_at(r["coords"]["pp"])
        terms = {}
        for term in MEASURED_TERMS:
            p, m = predicted[pos][term], float(r["bytes"][term])
            terms[term] = {"predicted_bytes": round(p), "measured_bytes": round(m), "error_pct": error_pct(p, m)}
        p_total = sum(predicted[pos][t] for t in MEASURED_TERMS)
        m_total = float(sum(r["bytes"][t] for t in MEASURED_TERMS))
        terms["total"] = {"predicted_bytes": round(p_total), "measured_bytes": round(m_total),
                          "error_pct": error_pct(p_total, m_total)}
        if r.get("gpu_peak_bytes"):
            terms["gpu_peak"] = {"predicted_bytes": round(p_total), "measured_bytes": r["gpu_peak_bytes"],
                                 "error_pct": error_pct(p_total, r["gpu_peak_bytes"])}
        rows.append({"rank": r["rank"], "coords": r["coords"], "position": pos, "stages": r["stages"],
                     "memory": terms, "step_time_s": r["step_time_s"]})
    return rows


def time_row(predicted: dict[str, Any], ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """Step time: the slowest rank's median (a step ends when every rank is done) against the estimate."""
    medians = [r["step_time_s"]["median"] for r in ranks]
    measured = max(medians)
    spread = max((r["step_time_s"]["max"] - r["step_time_s"]["min"]) / r["step_time_s"]["median"] for r in ranks)
    p = predicted.get("step_time_s")
    return {"predicted_s": p, "measured_median_s": measured, "spread": round(spread, 4),
            "error_pct": error_pct(p, measured) if p is not None else None,
            "predicted_terms": predicted.get("time", {}), "hardware": predicted.get("hardware", {})}


def max_memory_error(rows: list[dict[str, Any]], term: str = "total") -> float:
    """Largest |error %| of `term` over ranks."""
    errors = [abs(r["memory"][term]["error_pct"]) for r in rows if r["memory"][term]["error_pct"] is not None]
    return max(errors, default=0.0)


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Rows of the printed table: rank, position, term, predicted MiB, measured MiB, error %."""
    out = []
    for r in rows:
        for term, v in r["memory"].items():
            err = "-" if v["error_pct"] is None else f"{v['error_pct']:+.1f}"
            out.append([str(r["rank"]), r["position"], term, f"{v['predicted_bytes'] / 2**20:.3f}",
                        f"{v['measured_bytes'] / 2**20:.3f}", err])
    return out
