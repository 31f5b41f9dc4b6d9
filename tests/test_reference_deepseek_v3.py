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

import numpy as np
import pytest

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.memory import Fp8Saved, layer_activation_bytes, stack_fp8_saved
from clusterplan.models.training.moe_layer import busiest_rank_ratio
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
    assert set(L.recompute_modules.split("+")) == {"layernorm", "mla_up_proj", "moe_act"}  # 3.2.3 and 3.3.3 (2)
    assert r.published_tokens_per_s == pytest.approx(PUBLISHED_TOKENS_PER_S)


def test_row_within_bound(rows):
    (r,) = rows
    assert BOUND >= TARGET_TIME_MAX
    assert abs(r.error) <= BOUND, (f"predicted {r.predicted_tokens_per_s:.1f} tokens/s/GPU vs "
                                   f"{r.published_tokens_per_s:.1f} ({r.error:+.1%}), bound {BOUND:.0%}")


def test_the_run_fits_in_80_gb(rows):
    """DeepSeek trained this layout on 80 GB H800s: with the report's low-precision activation storage (3.3.3) the
    peak rank fits (95.3 GiB on the middle rank before it was priced, refused as out of memory)."""
    (r,) = rows
    assert not r.refused, r.refused
    assert r.predicted_memory_gib <= deepseek_v3.deepseek_cluster(2048).gpu.memory_gib


def test_low_precision_activation_storage_by_hand():
    """One DeepSeek-V3 MoE layer per micro-batch of 4,096 tokens (no TP, EP 64, force-balanced: 4,096 x 8 routed rows
    on each rank), what section 3.3.3 stores differently from Transformer Engine's blockwise fp8 layers (a linear's
    input saved in fp8 with an fp32 scale per 1x128 tile, 1.03125 B):
    - the SwiGLU input, 2 x 2,048 per routed row and per token for the shared expert, in that fp8 form instead of
      bf16: (32,768 + 4,096) x 4,096 x (2 - 1.03125) = 146,276,352 B;
    - the attention output, 128 heads x 128, once in E5M6 with its tile scales (1.53125 B) instead of bf16 + the
      out-projection's fp8 copy (3.03125 B): 4,096 x 16,384 x 1.5 = 100,663,296 B;
    - the SwiGLU output recomputed (moe_act): fc2's fp8 input, 32,768 x 2,048 x 1.03125 B = 69,206,016 B.
    The routed rows are the busiest rank's under forced balancing (moe_layer.busiest_rank_ratio, a little above 1:
    tests/test_moe_forced_balance.py), so each routed term carries that ratio."""
    stack = get_stack("hai-llm")
    assert stack.fp8_recipes[0] == "blockwise"
    saved = stack_fp8_saved(stack)
    tile = 1.0 + 4 / 128
    assert saved == Fp8Saved(tile, tile, 1.5 + 4 / 128)
    te_blockwise = Fp8Saved(tile)
    shapes = ModelShapes.of(load_model("deepseek-v3"))

    def layer(modules: str, fp8_saved: Fp8Saved) -> float:
        L = LayoutArrays.from_layouts([Layout(tp=1, pp=16, dp=128, ep=64, mbs=1, gbs=15360, seq=4096,
                                              recompute="selective", recompute_modules=modules, schedule="dualpipe",
                                              precision="fp8")])
        return float(layer_activation_bytes(shapes, L, True, L.recompute, fp8_saved=fp8_saved)[0])

    te, report = "layernorm+mla_up_proj", "layernorm+mla_up_proj+moe_act"
    L = LayoutArrays.from_layouts([Layout(tp=1, pp=16, dp=128, ep=64, mbs=1, gbs=15360, seq=4096, precision="fp8")])
    busiest = float(busiest_rank_ratio(shapes, L)[0])
    assert 1.0 < busiest < 1.05
    swiglu_in = (32_768 * busiest + 4_096) * 4_096 * (2 - 1.03125)  # 146,276,352 B balanced
    swiglu_out = 32_768 * busiest * 2_048 * 1.03125  # 69,206,016 B balanced
    assert np.isclose(layer(te, te_blockwise) - layer(te, saved), swiglu_in + 100_663_296)
    assert np.isclose(layer(te, saved) - layer(report, saved), swiglu_out)
    assert np.isclose(layer(te, te_blockwise) - layer(report, saved), swiglu_in + 100_663_296 + swiglu_out)
