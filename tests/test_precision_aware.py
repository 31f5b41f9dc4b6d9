"""Layout.precision_aware: Megatron-Core keeps the distributed optimizer's fp32 master weights as 2-byte remainders
beside bf16 parameters only under the precision-aware optimizer (megatron/core/optimizer/__init__.py passes
store_param_remainders to Transformer Engine's FusedAdam inside `if config.use_precision_aware_optimizer`).

Worked example, Llama 3.1 8B (8,030,261,248 parameters) on one DGX H100, dp 8, ZeRO 1, bf16: the optimizer shard is
8.03e9 x (2 + 8) / 8 B = 9.35 GiB with it and 8.03e9 x (4 + 8) / 8 B = 11.22 GiB without (1.87 GiB apart); at 4,864
tokens per sequence that is the difference between 77.8 GiB (fits in 79.6) and 79.7 GiB (does not).
"""

from __future__ import annotations

import pytest

from clusterplan.frameworks import export_plan, read_config
from clusterplan.hardware_db.stacks import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout
from clusterplan.solver.feasible import nearest_layout

GIB = 2**30
MODEL, CLUSTER = load_model("llama3.1-8b"), load_cluster("dgx-h100:1")
BORDER = dict(dp=8, zero=1, gbs=64, seq=4864, mbs=1, recompute="selective")


def _optimizer_gib(**kw) -> float:
    return estimate(MODEL, CLUSTER, Layout(**kw)).to_json()["memory"]["optimizer_gib"]


def test_remainders_by_hand():
    n = MODEL.total_params()
    assert n == 8_030_261_248
    assert _optimizer_gib(**BORDER) == pytest.approx(n * 10 / 8 / GIB, rel=1e-5)  # the JSON keeps 6 figures
    assert _optimizer_gib(**BORDER, precision_aware=False) == pytest.approx(n * 12 / 8 / GIB, rel=1e-5)  # the JSON keeps 6 figures
    # no effect where Megatron-Core has no remainders: ZeRO 0 (DDP), Megatron-FSDP (ZeRO 2 / 3), fp8-only parameters
    for other in (dict(zero=0), dict(zero=2), dict(zero=3), dict(precision="fp8", fp8_params=True)):
        kw = {**BORDER, **other}
        assert _optimizer_gib(**kw) == _optimizer_gib(**kw, precision_aware=False), other


def test_the_border_and_its_fix():
    fits = estimate(MODEL, CLUSTER, Layout(**BORDER)).to_json()
    assert fits["feasible"] and fits["memory"]["peak_gib"] == pytest.approx(77.8, abs=0.05)
    over = estimate(MODEL, CLUSTER, Layout(**BORDER, precision_aware=False))
    assert not over.feasible
    oom = next(r for r in over.reasons if r.code.name == "OUT_OF_MEMORY")
    assert "precision_aware=1" in oom.fix
    options = nearest_layout(MODEL, CLUSTER, over, None, get_stack()).options
    assert any([c.knob for c in o.changes] == ["precision_aware"] for o in options)


def test_exported_scripts_carry_it_and_check_reads_it(tmp_path):
    for aware in (True, False):
        text = export_plan("megatron", MODEL, CLUSTER, Layout(**BORDER, precision_aware=aware)).text
        assert ("--use-precision-aware-optimizer" in text) is aware
        path = tmp_path / f"run_{aware}.sh"
        path.write_text(text, encoding="utf-8")
        assert read_config(path, MODEL, 8).layout.precision_aware is aware


def test_bf16_moments_need_it():
    from clusterplan.errors import BadInputError

    with pytest.raises(BadInputError, match="bf16_moments needs precision_aware=1"):
        Layout(**BORDER, bf16_moments=True, precision_aware=False)


def test_megatron_lm_copies_its_fp8_recipe_to_the_optimizer_whatever_the_precision(tmp_path):
    # Megatron-LM's get_megatron_optimizer_config copies --fp8-recipe (default delayed) into OptimizerConfig: a bf16
    # script that also passes --fp8-recipe tensorwise (a shared block that toggles --fp8-format) gets no remainders.
    text = export_plan("megatron", MODEL, CLUSTER, Layout(**BORDER)).text
    assert "--use-precision-aware-optimizer" in text and "--fp8-format" not in text
    plain = tmp_path / "bf16.sh"
    plain.write_text(text, encoding="utf-8")
    assert read_config(plain, MODEL, 8).layout.precision_aware is True
    tensorwise = tmp_path / "bf16_tensorwise.sh"
    tensorwise.write_text(text.replace("--use-precision-aware-optimizer",
                                       "--use-precision-aware-optimizer --fp8-recipe tensorwise"), encoding="utf-8")
    assert read_config(tensorwise, MODEL, 8).layout.precision_aware is False
    delayed = tmp_path / "bf16_delayed.sh"
    delayed.write_text(text.replace("--use-precision-aware-optimizer",
                                    "--use-precision-aware-optimizer --fp8-recipe delayed"), encoding="utf-8")
    assert read_config(delayed, MODEL, 8).layout.precision_aware is True
