"""fp8-only parameters (Layout.fp8_params; Megatron-LM --fp8-param-gather, Transformer Engine fp8_model_init), as
worked examples.

Megatron-Core stores such a parameter in a uint8 buffer (param_and_grad_buffer.py): no bf16 copy beside Transformer
Engine's fp8 one. On Hopper the fp8 data keeps its transpose (TE creates it after each all-gather: an fp8 GEMM takes
only the TN layout), on Blackwell it does not; MXFP8 keeps its row- and column-wise block-scaled copies. The
distributed optimizer keeps a full fp32 master shard (remainders need a bf16 parameter) and all-gathers the
requantised weights in fp8 (MXFP8: in bf16, through the gradient buffer). Every Megatron-Bridge fp8 recipe sets it
(mixed_precision.py: current scaling, delayed, MXFP8; the blockwise one does not).
"""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.errors import BadInputError
from clusterplan.frameworks import export_plan, read_config
from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.estimate import remainders as estimate_remainders
from clusterplan.models.training.layout import Layout, layout_problems, stack_problems
from clusterplan.models.training.memory import (
    bytes_per_param,
    fp8_weight_copy_bytes,
    fsdp_fp8_allgather,
    param_gather_bytes,
)
from clusterplan.models.training.rules import RuleCode
from clusterplan.solver.search import search

GIB = 2**30


def _arrays(**kw: object) -> LayoutArrays:
    return LayoutArrays.from_layouts([Layout(**kw)])


@pytest.mark.parametrize(("recipe", "blackwell", "without", "with_"), [
    ("tensorwise", False, 2 + 2, 2),            # Hopper: bf16 + fp8 + transpose -> fp8 + transpose
    ("delayed", False, 2 + 2, 2),
    ("tensorwise", True, 2 + 1, 1),             # Blackwell: no transpose
    ("mxfp8", True, 2 + 2 * (1 + 1 / 32), 2 * (1 + 1 / 32)),  # row- and column-wise data, an E8M0 scale per 32
])
def test_weights_lose_the_bf16_copy(recipe, blackwell, without, with_):
    copy = fp8_weight_copy_bytes(recipe, blackwell)
    remainders = estimate_remainders(get_stack("megatron-core"), recipe)  # as estimate() prices the recipe
    off = bytes_per_param(_arrays(precision="fp8", dp=8, gbs=8), copy, param_remainders=remainders,
                          fp8_param_bytes=copy)
    on = bytes_per_param(_arrays(precision="fp8", dp=8, gbs=8, fp8_params=True), copy, param_remainders=remainders,
                         fp8_param_bytes=copy)
    assert float(off[0][0]) == pytest.approx(without) and float(on[0][0]) == pytest.approx(with_)
    # fp8-only parameters keep a full fp32 master shard: 4 + 8 B of Adam state; beside bf16 parameters the
    # remainders' 2 + 8 only under delayed scaling (Megatron-Core use_precision_aware_optimizer_no_fp8_or_ds_fp8)
    assert float(off[2][0]) == (10.0 if recipe == "delayed" else 12.0) and float(on[2][0]) == 12.0
    assert float(off[1][0]) == float(on[1][0]) == 4.0  # the main-gradient buffer does not change


def test_weight_gather_moves_fp8_under_per_tensor_scaling_and_bf16_under_mxfp8():
    on, off = _arrays(precision="fp8", dp=8, gbs=8, fp8_params=True), _arrays(precision="fp8", dp=8, gbs=8)
    assert float(param_gather_bytes(on, False, "tensorwise")[0]) == 1.0
    assert float(param_gather_bytes(on, False, "delayed")[0]) == 1.0
    assert float(param_gather_bytes(on, False, "mxfp8")[0]) == 2.0
    assert float(param_gather_bytes(off, False, "tensorwise")[0]) == 2.0
    # torchao's float8 all-gather (FSDP2, tensorwise, dp_shard > 1) gathers fp8 in time as it does in memory.
    fsdp = _arrays(precision="fp8", dp=8, gbs=8, zero=3)
    for recipe, gathered in (("tensorwise", 1.0), ("rowwise", 2.0)):
        assert float(param_gather_bytes(fsdp, fsdp_fp8_allgather(True, recipe), recipe)[0]) == gathered


def test_mlperf_gpt3_layout_fits_with_fp8_params():
    """MLPerf Training v4.0, GPT-3 175B on 512 H100 (tp4 pp8 vp4, mbs 2, fp8; config_common.sh FP8_PARAMS=True):
    with a bf16 copy beside the fp8 one the first stage needs 85.5 GiB > 79.6 and estimate refuses a run that
    ran; fp8-only parameters halve its weights (4 -> 2 B on Hopper): 20.86 -> 10.43 GiB, and it fits."""
    model, cluster, stack = load_model("gpt3-175b"), load_cluster("dgx-h100:64"), get_stack("megatron-core")
    layout = Layout(tp=4, pp=8, vpp=4, dp=16, mbs=2, gbs=2304, seq=2048, precision="fp8", recompute="none",
                    schedule="interleaved-1f1b")
    off = estimate(model, cluster, layout, stack=stack, fp8_recipe="delayed")
    on = estimate(model, cluster, layout.with_(fp8_params=True), stack=stack, fp8_recipe="delayed")
    w_off, w_on = (float(e.evaluation.memory.by_position[0, 0, 0]) for e in (off, on))
    assert w_on == pytest.approx(w_off / 2, rel=1e-12)
    assert w_off / GIB == pytest.approx(20.86, abs=0.01)
    assert any(r.code == RuleCode.OUT_OF_MEMORY for r in off.reasons) and not on.reasons
    # The distributed optimizer's weight all-gather moves half the bytes: the step is no slower.
    assert float(on.evaluation.time.dp_comm_s[0]) < float(off.evaluation.time.dp_comm_s[0])


def test_rules_and_stacks():
    model = load_model("llama3.1-8b")
    ok = Layout(dp=8, gbs=8, precision="fp8", fp8_params=True)
    assert not layout_problems(model, ok, 8) and not stack_problems(ok, get_stack("megatron-core"))
    for bad in (ok.with_(precision="bf16"), ok.with_(zero=0), ok.with_(optimizer="sgd"), ok.with_(optimizer="adam")):
        assert [r.code for r in layout_problems(model, bad, 8)] == [RuleCode.FP8_PARAMS]
    assert [r.field for r in stack_problems(ok.with_(zero=3), get_stack("torchtitan"))] == ["fp8_params"]
    assert Layout.parse("fp8_params=1,precision=fp8", world=8).fp8_params is True
    assert "fp8_params" not in Layout(dp=8).to_dict() and Layout(dp=8, fp8_params=True).to_dict()["fp8_params"]
    with pytest.raises(BadInputError):
        Layout(fp8_params="yes")  # type: ignore[arg-type]


def test_plan_keeps_fp8_parameters_where_the_stack_has_them():
    model, cluster = load_model("llama3.1-8b"), load_cluster("dgx-h100:1")
    fixed = {"precision": "fp8", "tp": 1, "pp": 1}
    plans = search(model, cluster, 64, 4096, fixed=fixed, top=3).plans
    assert all(p.estimate.layout.fp8_params == (p.estimate.layout.zero >= 1) for p in plans)
    pinned = search(model, cluster, 64, 4096, fixed={**fixed, "fp8_params": False}, top=3).plans
    assert not any(p.estimate.layout.fp8_params for p in pinned)
    titan = search(model, cluster, 64, 4096, fixed=fixed, top=3, stack=get_stack("torchtitan")).plans
    assert not any(p.estimate.layout.fp8_params for p in titan)
    with pytest.raises(BadInputError):
        search(model, cluster, 64, 4096, fixed={**fixed, "fp8_params": True}, stack=get_stack("torchtitan"))


def test_megatron_export_passes_the_flag_and_reads_it_back(tmp_path):
    model = load_model("llama3.1-8b")
    layout = Layout(dp=8, mbs=1, gbs=64, seq=8192, precision="fp8", fp8_params=True)
    text = export_plan("megatron", model, load_cluster("dgx-h100:1"), layout).text
    assert "--fp8-param-gather" in text
    path = tmp_path / "train.sh"
    path.write_text(text, encoding="utf-8")
    assert read_config(path, model, 8).layout.fp8_params is True
    plain = export_plan("megatron", model, load_cluster("dgx-h100:1"), layout.with_(fp8_params=False)).text
    assert "--fp8-param-gather" not in plain
    # torchtitan's fp8 weights are gathered by torchao's float8 all-gather, never fp8-only parameters.
    assert "fp8_param" not in export_plan("torchtitan", model, load_cluster("dgx-h100:1"), layout).text


def test_bytes_per_param_keeps_bf16_layouts_unchanged():
    # The flag changes nothing outside fp8 (the FP8_PARAMS rule refuses it there; the arrays ignore it).
    bf16 = bytes_per_param(_arrays(dp=8, gbs=8, fp8_params=True), 2.0, param_remainders=True)
    assert [float(x[0]) for x in bf16] == [2.0, 4.0, 10.0]
    assert np.all(param_gather_bytes(_arrays(dp=8, gbs=8, fp8_params=True), False, "tensorwise") == 2.0)


def test_nearest_option_for_an_fp8_layout_that_overflows_is_fp8_params():
    # The MLPerf v4.0 layout priced with bf16 weights beside the fp8 ones (85.5 GiB > 79.6): the one-knob change that
    # fits and runs fastest is the configs' own FP8_PARAMS.
    from clusterplan.solver.feasible import nearest_layout

    model, cluster, stack = load_model("gpt3-175b"), load_cluster("dgx-h100:64"), get_stack("megatron-core")
    layout = Layout(tp=4, pp=8, vpp=4, dp=16, mbs=2, gbs=2304, seq=2048, precision="fp8", recompute="none",
                    schedule="interleaved-1f1b")
    near = nearest_layout(model, cluster, estimate(model, cluster, layout, stack=stack), None, stack)
    first = near.options[0]
    assert [str(c) for c in first.changes] == ["fp8_params 0 -> 1"] and first.layout.fp8_params
    assert "fp8_params" in near.tried


def test_check_names_the_rule_when_a_script_gathers_fp8_params_it_cannot_have(tmp_path, run_cli):
    # Megatron-LM refuses --fp8-param-gather without fp8 ("fp8_param must be used together with fp8 mode") or without
    # the distributed optimizer (arguments.py); check reads the flag as written and fails on the FP8_PARAMS rule.
    model = load_model("llama3.1-8b")
    layout = Layout(tp=2, dp=4, mbs=1, gbs=64, seq=8192, precision="fp8", fp8_params=True)
    text = export_plan("megatron", model, load_cluster("dgx-h100:1"), layout).text
    for name, edited in (("no_fp8.sh", text.replace("--fp8-format hybrid", "")),
                         ("no_distopt.sh", text.replace("--use-distributed-optimizer", ""))):
        path = tmp_path / name
        path.write_text(edited, encoding="utf-8")
        assert read_config(path, model, 8).layout.fp8_params is True
        code, out, err = run_cli("check", str(path), "--model", "llama3.1-8b", "--cluster", "dgx-h100:1")
        assert code == 1 and "fp8_params needs precision=fp8, zero >= 1" in out + err, out + err


def test_plan_refuses_contradictory_pins_in_one_line():
    model, cluster = load_model("llama3.1-8b"), load_cluster("dgx-h100:1")
    for fixed in ({"fp8_params": True, "precision": "bf16"}, {"fp8_params": True, "zero": 0},
                  {"fp8_params": True, "optimizer": "sgd"}):
        with pytest.raises(BadInputError, match="fp8_params=1 needs precision=fp8, zero >= 1"):
            search(model, cluster, 64, 4096, fixed=fixed)
    assert "fp8-params" in Layout(dp=8, fp8_params=True).short()  # a refused bf16 layout still names the key


def test_estimate_says_how_fp8_weights_are_kept(run_cli):
    base = "dp=8,mbs=1,gbs=64,seq=4096,precision=fp8,recompute=full"
    for flag, words in (("0", "bf16 beside Transformer Engine's fp8 copies"), ("1", "fp8 only (fp8_params=1")):
        code, out, _ = run_cli("estimate", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--layout",
                               f"{base},fp8_params={flag}")
        assert code == 0 and f"fp8 weights: {words}" in out
    code, out, _ = run_cli("estimate", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--layout", base,
                           "--stack", "torchtitan")
    assert "fp8 weights:" not in out  # torchtitan keeps no fp8-only parameters: nothing to choose


def test_megatron_scripts_carry_the_priced_fp8_recipe_and_check_prices_the_scripts_own(tmp_path, run_cli):
    # Plans are priced at the stack's first fp8 recipe (megatron-core: per-tensor current scaling); Megatron-LM's own
    # default is delayed scaling, so the export names the recipe, and check prices whatever a script names.
    model = load_model("llama3.1-8b")
    layout = Layout(dp=8, mbs=1, gbs=64, seq=4096, precision="fp8", recompute="full", fp8_params=True)
    text = export_plan("megatron", model, load_cluster("dgx-h100:1"), layout).text
    assert f"--fp8-recipe {get_stack('megatron-core').fp8_recipes[0]}" in text
    path = tmp_path / "train.sh"
    path.write_text(text, encoding="utf-8")
    assert read_config(path, model, 8).fp8_recipe == "tensorwise"
    path.write_text(text.replace("--fp8-recipe tensorwise", ""), encoding="utf-8")
    read = read_config(path, model, 8)
    assert read.fp8_recipe == "delayed" and any("Megatron-LM's default, delayed" in n for n in read.notes)
    path.write_text(text.replace("--fp8-recipe tensorwise", "--fp8-recipe mxfp8"), encoding="utf-8")
    code, out, err = run_cli("check", str(path), "--model", "llama3.1-8b", "--cluster", "dgx-h100:1")
    assert code == 1 and "MXFP8" in out + err  # H100 has no microscaling tensor cores
    path.write_text(text.replace("--fp8-recipe tensorwise", "--fp8-recipe bogus"), encoding="utf-8")
    code, out, err = run_cli("check", str(path), "--model", "llama3.1-8b", "--cluster", "dgx-h100:1")
    assert code == 2 and "--fp8-recipe 'bogus'" in err and len(err.strip().splitlines()) == 1


def test_fp8_params_need_the_fp32_master_and_fp8_hardware():
    # Megatron keeps the weights' only high-precision copy in adam-master's fp32 shard: plan leaves fp8_params off
    # under a pinned sgd / plain adam, and a pin of fp8_params on GPUs without fp8 is bad input, in one line.
    model = load_model("llama3.1-8b")
    plans = search(model, load_cluster("dgx-h100:1"), 64, 4096, fixed={"precision": "fp8", "optimizer": "sgd"},
                   top=3).plans
    assert plans and not any(p.estimate.layout.fp8_params for p in plans)
    with pytest.raises(BadInputError, match="needs fp8 training, which these GPUs or this stack cannot run"):
        search(model, load_cluster("dgx-a100-80g:1"), 64, 4096, fixed={"fp8_params": True})
    from clusterplan.models.training.estimate import memory_knobs

    fp8 = Layout(dp=8, gbs=64, precision="fp8")
    assert memory_knobs(fp8, get_stack("megatron-core"))["fp8_params_off"] is True
    for other in (fp8.with_(zero=0), fp8.with_(optimizer="sgd")):  # fp8_params would break its rule there
        assert memory_knobs(other, get_stack("megatron-core"))["fp8_params_off"] is False
