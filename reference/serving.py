"""serve-estimate against published serving measurements (reference/data/serving_published.csv).

Every row is simulated as published (engine profile, GPU, tp, precisions, load, lengths) with no per-row tuning.
Rows whose numbers set a fitted constant in hardware_db/data/engines.yaml are marked `fitted`; the rest are
held out. tests/test_reference_serving.py asserts the tolerances; reference/report.py prints the table.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from clusterplan.hardware_db import get_gpu
from clusterplan.hardware_db.engines import get_engine
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.serving.estimate import Load, LoadKind, ServingEstimate, engine_of, estimate_serving
from clusterplan.models.serving.model import ServingInstance, knobs_for_gpu
from clusterplan.reference.report import markdown_rows

REFERENCE_DIR = Path(__file__).resolve().parent / "data"
SERVING_CSV = "serving_published.csv"
MEMORY_UTILIZATION = {"wmx-l4": 0.6}
"""Memory share the engine was given where the source states one other than 0.9 (--gpu-memory-utilization)."""
FIT_ROWS = {("nim-1.8.0", 1), ("vllm-ci-9515", "llama3.1-8b"), ("vllm-ci-9515", "llama3.1-70b"),
            ("wmx-l4", 1), ("wmx-l4", 2), ("wmx-l4", 32)}
"""Rows the engine constants were fitted on (hardware_db/data/engines.yaml sources): NIM at concurrency 1,
the two dense vLLM CI rows, the L4 sweep at concurrency 1, 2 and 32."""
CLOSED_LOOP_ROUNDS = 10
"""Requests per client simulated in a closed loop (the first quarter is warm-up)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ServingComparison:
    label: str
    metric: str
    """ttft_ms, tpot_ms or e2e_ms."""
    measured: float
    predicted: float
    fitted: bool

    @property
    def error(self) -> float:
        return self.predicted / self.measured - 1


def read_serving_rows(directory: Path = REFERENCE_DIR) -> list[dict[str, str]]:
    with open(directory / SERVING_CSV, encoding="utf-8") as fh:
        return list(csv.DictReader(line for line in fh if not line.startswith("#")))


def is_fit_row(row: dict[str, str]) -> bool:
    return (row["source"], int(row["n"])) in FIT_ROWS or (row["source"], row["model"]) in FIT_ROWS


def estimate_row(row: dict[str, str]) -> ServingEstimate:
    """serve-estimate of one published row, configured as the source states."""
    profile = get_engine(row["engine"])
    gpu, tp = get_gpu(row["gpu"]), int(row["tp"])
    knobs = replace(knobs_for_gpu(gpu, None, row["weight_dtype"], profile, tp),
                    memory_utilization=MEMORY_UTILIZATION.get(row["source"], 0.9))
    inst = ServingInstance(model=load_model(row["model"]), gpu=gpu, tp=tp, weight_dtype=row["weight_dtype"],
                           kv_dtype=row["kv_dtype"], engine=profile.name, knobs=knobs,
                           max_batched_tokens=profile.chunk_tokens)
    n = int(row["n"])
    static = row["load"] == "static"
    load = Load(kind=LoadKind.STATIC if static else LoadKind.CLOSED, clients=n,
                requests=n if static else max(CLOSED_LOOP_ROUNDS * n, 100))
    engine = engine_of(inst, max_seqs=max(profile.max_seqs, n if static else 0), chunk_tokens=profile.chunk_tokens)
    return estimate_serving(inst, engine, load, np.array([int(row["input_tokens"])]),
                            np.array([int(row["output_tokens"])]))


def serving_comparisons() -> list[ServingComparison]:
    """One comparison per published number (TTFT, TPOT/ITL, end-to-end), in the statistic the source reports."""
    out = []
    for row in read_serving_rows():
        est = estimate_row(row)
        stat = "mean" if row["stat"] == "mean" else "p50"
        label = (f"{row['source']} {row['model']} {row['gpu']} tp{row['tp']} {row['weight_dtype']} {row['load']} "
                 f"{row['n']} {row['input_tokens']}/{row['output_tokens']}")
        for metric, stats in (("ttft_ms", est.ttft_s), ("tpot_ms", est.tpot_s), ("e2e_ms", est.e2e_s)):
            if row[metric]:
                out.append(ServingComparison(label=label, metric=metric, measured=float(row[metric]),
                                             predicted=getattr(stats, stat) * 1e3, fitted=is_fit_row(row)))
    return out


def serving_table() -> list[str]:
    """The report's serving section as text lines."""
    rows = serving_comparisons()
    lines = [f"{'row':<66} {'metric':<8} {'measured':>10} {'predicted':>10} {'error':>7}  role"]
    for c in rows:
        lines.append(f"{c.label:<66} {c.metric:<8} {c.measured:>10.1f} {c.predicted:>10.1f} {c.error:>+7.1%}  "
                     f"{'fitted' if c.fitted else 'held out'}")
    for metric in ("ttft_ms", "tpot_ms", "e2e_ms"):
        held = [abs(c.error) for c in rows if c.metric == metric and not c.fitted]
        if held:
            lines.append(f"held-out {metric}: median |error| {np.median(held):.1%} over {len(held)} rows, "
                         f"max {max(held):.1%}")
    return lines


def serving_markdown() -> list[str]:
    """The serving section for `python -m clusterplan.reference --markdown` (README tables)."""
    rows = serving_comparisons()
    columns = [("row", "l"), ("metric", "l"), ("measured", "r"), ("predicted", "r"), ("error", "r"), ("role", "l")]
    cells = [[c.label, c.metric, f"{c.measured:.1f}", f"{c.predicted:.1f}", f"{c.error:+.1%}",
              "fitted" if c.fitted else "held out"] for c in rows]
    out = ["#### Serving: serve-estimate against published engine benchmarks", "", *markdown_rows(columns, cells)]
    for metric in ("ttft_ms", "tpot_ms", "e2e_ms"):
        held = [abs(c.error) for c in rows if c.metric == metric and not c.fitted]
        if held:
            out.append(f"\nHeld-out {metric}: median |error| {np.median(held):.1%} over {len(held)} rows, "
                       f"max {max(held):.1%}.")
    return [*out, ""]


def main() -> None:
    print("Serving: serve-estimate against published engine benchmarks (reference/data/serving_published.csv)")
    for line in serving_table():
        print(line)


if __name__ == "__main__":
    main()
