"""serve-estimate against published engine benchmarks with their full setup (reference/data/serving_published.csv).

Stated tolerances, no per-row tuning: over the rows NOT used to fit the engine constants (held out), the median
|error| of TTFT and of TPOT is within 15 % (issue 15's target); every row, fitted or held out, is within 40 %.
Measured today (python -m clusterplan.reference.serving): held-out TTFT median 11.8 % (max 33 %, the L4 sweep at
16 clients on a 4-vCPU host), TPOT median 6.1 % (max 9.8 %), end-to-end median 4.0 %.
"""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.reference.serving import read_serving_rows, serving_comparisons

ROWS = serving_comparisons()


@pytest.mark.parametrize("metric", ["ttft_ms", "tpot_ms"])
def test_held_out_median_error_within_15_percent(metric: str) -> None:
    held = [abs(c.error) for c in ROWS if c.metric == metric and not c.fitted]
    assert len(held) >= 10
    assert np.median(held) < 0.15


def test_every_row_within_40_percent() -> None:
    worst = max(ROWS, key=lambda c: abs(c.error))
    assert abs(worst.error) < 0.40, worst


def test_more_rows_held_out_than_fitted() -> None:
    fitted = {c.label for c in ROWS if c.fitted}
    held = {c.label for c in ROWS if not c.fitted}
    assert len(held) > len(fitted) and len(fitted) + len(held) == len(read_serving_rows())


def test_saturated_closed_loop_queues_on_kv_capacity() -> None:
    # NIM 70B fp8 at 100-250 clients: the KV cache holds ~70 requests of 5500 tokens, the rest queue, so TTFT
    # grows linearly with the clients beyond capacity while TPOT stays flat (93 ms measured at 100-250).
    nim = {c.label.split()[6]: c for c in ROWS if c.label.startswith("nim-1.8.0") and "5000/500" in c.label
           and c.metric == "ttft_ms"}
    assert nim["250"].predicted > 2.2 * nim["150"].predicted > 2.2 * 4 * nim["50"].predicted
