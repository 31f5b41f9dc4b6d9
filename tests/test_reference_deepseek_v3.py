"""The DeepSeek-V3 pre-training run (tests/reference/deepseek_v3_pretrain.csv; DeepSeek-AI 2024, arXiv 2412.19437)
against `estimate` on the hgx-h800 preset with the layout the report states (reference/deepseek_v3.py).

A held-out row: nothing is fitted to it. The published rate is 180K H800 GPU-hours per trillion tokens = 1e12 /
(180e3 x 3600) = 1543.2 tokens/s per GPU, a whole-run average. The row is asserted against the error it reached when
this test landed plus 3 points, at least 20 % (issue #13: bounds of held-out sets), so it fails when a change moves
it the wrong way; tighten BOUND as the model improves (a deliberate model change that moves the row past it updates
BOUND with the reason in its commit message).
Measured when this set landed: -21.7 % (1208 of 1543 tokens/s per GPU) with each (token, expert) copy priced over IB
as NCCL's all-to-all sends it; with the deepep dispatcher (one IB copy per destination node, NVLink forwarding)
-9.0 %; with node-limited routing capping the nodes at 4 (of the EP group's 8) -3.7 % (1486): the step is 86 %
compute, 8 % DualPipe bubble, 5 % expert-parallel all-to-all left exposed or slowing the compute beside it.
"""

from __future__ import annotations

import pytest

from clusterplan.reference import deepseek_v3
from clusterplan.reference.report import TARGET_TIME_MAX, read_rows

BOUND = 0.20  # achieved -3.7 % + 3 points, floor 20 %
PUBLISHED_TOKENS_PER_S = 1e12 / (180e3 * 3600)


@pytest.fixture(scope="module")
def rows() -> list[deepseek_v3.DeepSeekRow]:
    return deepseek_v3.deepseek_rows()


def test_published_numbers_agree():
    """Table 1's 2664K GPU-hours over section 4.1's 14.8T tokens = section 1's 180K per trillion; the csv's
    tokens/s per GPU is that rate; the degrees multiply to the 2,048 GPUs."""
    (raw,) = read_rows(deepseek_v3.DEEPSEEK_CSV)
    assert float(raw["pretrain_gpu_hours"]) / float(raw["pretrain_tokens_trillions"]) == pytest.approx(
        float(raw["gpu_hours_per_trillion_tokens"]), rel=1e-3)
    assert float(raw["tokens_per_s_per_gpu"]) == pytest.approx(PUBLISHED_TOKENS_PER_S, abs=0.05)
    assert int(raw["pp"]) * int(raw["dp"]) * int(raw["tp"]) == int(raw["gpus"]) == 2048


def test_row_runs_the_published_layout(rows):
    (r,) = rows
    L = r.layout
    assert (L.world, L.pp, L.ep, L.tp, L.dp, L.zero, L.seq, L.gbs) == (2048, 16, 64, 1, 128, 1, 4096, 15360)
    assert L.schedule == "dualpipe" and L.precision == "fp8" and r.stack == "hai-llm" and L.moe_dispatcher == "deepep"
    assert L.recompute_modules == "layernorm+mla_up_proj"
    assert r.published_tokens_per_s == pytest.approx(PUBLISHED_TOKENS_PER_S)


def test_row_within_bound(rows):
    (r,) = rows
    assert BOUND >= TARGET_TIME_MAX
    assert abs(r.error) <= BOUND, (f"predicted {r.predicted_tokens_per_s:.1f} tokens/s/GPU vs "
                                   f"{r.published_tokens_per_s:.1f} ({r.error:+.1%}), bound {BOUND:.0%}")
