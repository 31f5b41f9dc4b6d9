"""Adam's moments in bf16 (Layout.bf16_moments; Megatron-Core --use-precision-aware-optimizer --exp-avg-dtype bf16
--exp-avg-sq-dtype bf16 through Transformer Engine's FusedAdam; DeepSeek-V3, arXiv 2412.19437 Sec. 3.3.3), as worked
examples.

m and v take 2 B each instead of 4: the optimizer state per parameter drops by 4 B (12 -> 8 beside a full fp32
master, 10 -> 6 beside Megatron-Core's 2-B master remainders), sharded by the distributed optimizer; the fused step
reads and writes them once each, 8 B of HBM traffic less per parameter. Megatron-Core asserts adam and the
distributed optimizer (OptimizerConfig.__post_init__); only stacks with a precision-aware optimizer run it.
"""

from __future__ import annotations

import json

import pytest

from clusterplan.frameworks import export_plan, read_config
from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout, layout_problems, stack_problems
from clusterplan.models.training.memory import bytes_per_param
from clusterplan.models.training.rules import RuleCode
from clusterplan.models.training.step import optimizer_bytes_per_param

GIB = 2**30
MODEL = "llama3.1-8b"


def _arrays(**kw: object) -> LayoutArrays:
    return LayoutArrays.from_layouts([Layout(dp=8, gbs=8, **kw)])


@pytest.mark.parametrize(("kw", "remainders", "without", "with_"), [
    ({}, False, 4 + 8, 4 + 4),                              # fp32 master + m, v
    ({}, True, 2 + 8, 2 + 4),                               # Megatron-Core's master remainders + m, v
    ({"precision": "fp8", "fp8_params": True}, True, 4 + 8, 4 + 4),  # fp8-only weights keep a full master
    ({"optimizer": "adam"}, False, 8, 4),                   # plain Adam: the moments alone
    ({"optimizer": "sgd"}, False, 0, 0),                    # no moments to keep
])
def test_optimizer_state_loses_four_bytes_per_parameter(kw, remainders, without, with_):
    off = bytes_per_param(_arrays(**kw), param_remainders=remainders)[2]
    on = bytes_per_param(_arrays(bf16_moments=True, **kw), param_remainders=remainders)[2]
    assert float(off[0]) == without and float(on[0]) == with_


def test_optimizer_step_streams_eight_bytes_less():
    stack = get_stack("megatron-core")
    assert float(optimizer_bytes_per_param(_arrays(), stack)[0]) == 32.0
    assert float(optimizer_bytes_per_param(_arrays(bf16_moments=True), stack)[0]) == 24.0


def test_estimate_memory_of_an_8b_layout_by_hand():
    # Llama 3.1 8B (8.03e9 parameters) on 8 H100, tp1 dp8 ZeRO-1, megatron-core (master remainders): the optimizer
    # shard is 8.03e9 x (2 + 8) / 8 B = 9.35 GiB with fp32 moments and 8.03e9 x (2 + 4) / 8 B = 5.61 GiB with bf16 ones.
    model, cluster = load_model(MODEL), load_cluster("dgx-h100:1")
    base = Layout(dp=8, zero=1, mbs=1, gbs=64, seq=4096)
    fp32 = estimate(model, cluster, base).to_json()["memory"]
    bf16 = estimate(model, cluster, base.with_(bf16_moments=True)).to_json()["memory"]
    params = model.total_params()
    assert fp32["optimizer_gib"] == pytest.approx(params * 10 / 8 / GIB, rel=2e-3)
    assert bf16["optimizer_gib"] == pytest.approx(params * 6 / 8 / GIB, rel=2e-3)
    assert fp32["peak_gib"] - bf16["peak_gib"] == pytest.approx(params * 4 / 8 / GIB, rel=2e-3)


def test_rules_and_stacks():
    model = load_model(MODEL)
    ok = Layout(dp=8, gbs=8, zero=1, bf16_moments=True)
    assert not [p for p in layout_problems(model, ok, 8) if p.code == RuleCode.BF16_MOMENTS]
    for bad in (ok.with_(zero=0), ok.with_(optimizer="adam"), ok.with_(optimizer="sgd")):
        assert [p.code for p in layout_problems(model, bad, 8)].count(RuleCode.BF16_MOMENTS) == 1
    assert not stack_problems(ok, get_stack("megatron-core"))
    for name in ("torchtitan", "deepspeed", "llm-foundry"):
        assert "bf16_moments" in [p.field for p in stack_problems(ok, get_stack(name))]  # (zero 1 too, on some)
    assert get_stack("hai-llm").bf16_moments


def test_megatron_export_writes_the_flags_and_reads_them_back(tmp_path):
    model = load_model(MODEL)
    layout = Layout(dp=8, mbs=1, gbs=64, seq=8192, bf16_moments=True)
    text = export_plan("megatron", model, load_cluster("dgx-h100:1"), layout).text
    for flag in ("--use-precision-aware-optimizer", "--exp-avg-dtype bf16", "--exp-avg-sq-dtype bf16"):
        assert flag in " ".join(text.split())
    path = tmp_path / "train.sh"
    path.write_text(text, encoding="utf-8")
    assert read_config(path, model, 8).layout.bf16_moments is True
    plain = export_plan("megatron", model, load_cluster("dgx-h100:1"), layout.with_(bf16_moments=False)).text
    # fp32 moments: the precision-aware optimizer stays on for the 2-byte master remainders the plan was priced with
    # (megatron.keeps_remainders), its dtypes at their fp32 defaults; without the distributed optimizer it is off
    assert "--use-precision-aware-optimizer" in plain and "--exp-avg-dtype" not in plain
    zero0 = export_plan("megatron", model, load_cluster("dgx-h100:1"), layout.with_(bf16_moments=False, zero=0)).text
    assert "--use-precision-aware-optimizer" not in zero0


@pytest.mark.parametrize(("flags", "moments", "note"), [
    ("--use-precision-aware-optimizer --exp-avg-dtype bf16 --exp-avg-sq-dtype bf16", True, None),
    ("--exp-avg-dtype bf16 --exp-avg-sq-dtype bf16", False, "without --use-precision-aware-optimizer"),
    ("--use-precision-aware-optimizer --exp-avg-dtype fp8 --exp-avg-sq-dtype bf16", False, "only bf16"),
    ("--use-precision-aware-optimizer --exp-avg-dtype bf16 --exp-avg-sq-dtype bf16 --main-params-dtype fp16", True,
     "master weights fp16"),
])
def test_megatron_reader_takes_only_what_megatron_runs(tmp_path, flags, moments, note):
    model = load_model(MODEL)
    text = export_plan("megatron", model, load_cluster("dgx-h100:1"), Layout(dp=8, mbs=1, gbs=64, seq=8192)).text
    text = text.replace("    --use-precision-aware-optimizer\n", "")  # the remainders' flag: each case sets its own
    text = text.replace("--use-distributed-optimizer", "--use-distributed-optimizer " + flags, 1)
    path = tmp_path / "train.sh"
    path.write_text(text, encoding="utf-8")
    read = read_config(path, model, 8)
    assert read.layout.bf16_moments is moments
    if note:
        assert any(note in n for n in read.notes)


def test_plan_pin_and_nearest_option(run_cli):
    code, out, _ = run_cli("plan", "--model", MODEL, "--cluster", "dgx-h100:2", "--gbs", "64", "--seq", "4096",
                           "--fix", "bf16_moments=1", "--format", "json")
    assert code == 0
    plans = json.loads(out)["plans"]
    assert plans and all(p["layout"]["bf16_moments"] is True and p["layout"]["zero"] >= 1 for p in plans)
    code, _, err = run_cli("plan", "--model", MODEL, "--cluster", "dgx-h100:2", "--gbs", "64", "--seq", "4096",
                           "--fix", "bf16_moments=1", "--stack", "torchtitan")
    assert code == 2 and "torchtitan" in err and len(err.strip().splitlines()) == 1
