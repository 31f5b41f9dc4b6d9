"""Token-dropping MoE (Layout.moe_capacity_factor, Megatron-Core's drop-and-pad path): worked examples by hand.

Qwen3-30B-A3B throughout: hidden 2048, expert FFN 768 (gated), 128 experts, top-8. At seq 4096, mbs 1, tp 1, cp 1 a
rank holds t = 4096 tokens, t x k = 32,768 routed rows, t x k / n_experts = 256 rows per expert.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from clusterplan.errors import BadInputError
from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.collectives import ep_collectives
from clusterplan.models.training.compute import layer_flops, layer_linears
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.host import MoeGpuTimes, moe_host_exposed_s, phase_ops
from clusterplan.models.training.layout import Layout, layout_problems, stack_problems
from clusterplan.models.training.memory import layer_activation_bytes
from clusterplan.models.training.moe_layer import (
    ROUTER_BYTES_PER_TOKEN_EXPERT,
    ROUTER_CAPACITY_BYTES_PER_TOKEN_EXPERT,
    capacity_ratio,
    expert_capacity,
    fp8_align_rows,
    fp8_padding_bytes,
    fp8_padding_skipped,
    imbalance,
    routed_tokens,
    router_bytes,
)
from clusterplan.models.training.rules import RuleCode

QWEN = "tp=1,ep=8,mbs=1,gbs=512,seq=4096,recompute=none"
SHAPES = ModelShapes.of(load_model("qwen3-30b-a3b"))


def _arrays(text: str, world: int = 8) -> LayoutArrays:
    return LayoutArrays.from_layouts([Layout.parse(text, world=world)])


def test_layout_field_parses_validates_and_round_trips():
    L = Layout.parse(QWEN + ",moe_capacity_factor=1.25", world=8)
    assert L.moe_capacity_factor == 1.25 and "drop1.25" in L.short()
    assert Layout.from_dict(L.to_dict()) == L
    assert "moe_capacity_factor" not in Layout.parse(QWEN, world=8).to_dict()  # dropless: left out, JSON unchanged
    assert Layout(moe_capacity_factor=1).moe_capacity_factor == 1.0  # a JSON integer reads as the float
    arrays = LayoutArrays.from_layouts([L, Layout.parse(QWEN, world=8)])
    assert arrays.layout(0) == L and arrays.layout(1).moe_capacity_factor is None
    for bad in ("0", "-1", "nan", "inf", "x"):
        with pytest.raises(BadInputError, match="moe_capacity_factor"):
            Layout.parse(QWEN + f",moe_capacity_factor={bad}", world=8)
    with pytest.raises(BadInputError, match="moe_capacity_factor"):
        Layout(moe_capacity_factor=True)


def test_rules_dense_model_flex_dispatcher_capacity_bound_and_stack():
    qwen = load_model("qwen3-30b-a3b")
    codes = lambda model, text: [p.code for p in layout_problems(model, Layout.parse(text, world=8), 8)]  # noqa: E731
    assert codes(qwen, QWEN + ",moe_capacity_factor=1") == []
    assert RuleCode.MOE_FIELDS_DENSE in codes(load_model("llama3.1-8b"), "tp=1,gbs=64,moe_capacity_factor=1")
    # Megatron-Core: "Flex token dispatcher does not support moe_pad_expert_input_to_capacity".
    assert RuleCode.TOKEN_DROP in codes(qwen, QWEN + ",moe_capacity_factor=1,moe_dispatcher=deepep")
    # torch.topk(k=capacity) over the rank's tokens: C <= n_experts / top_k = 128 / 8 = 16.
    assert codes(qwen, QWEN + ",moe_capacity_factor=16") == []
    assert RuleCode.TOKEN_DROP in codes(qwen, QWEN + ",moe_capacity_factor=16.5")
    L = Layout.parse(QWEN + ",moe_capacity_factor=1", world=8)
    assert stack_problems(L, get_stack("megatron-core")) == []
    assert "moe_capacity_factor" in [p.field for p in stack_problems(L, get_stack("torchtitan"))]
    assert "moe_capacity_factor" not in [p.field for p in stack_problems(L.with_(moe_capacity_factor=None),
                                                                         get_stack("torchtitan"))]


def test_capacity_rows_by_hand():
    # C = 1: ceil(256 x 1.0) = 256 per expert, 256 x 128 = 32,768 rows = the routed count (ratio 1).
    one = _arrays(QWEN + ",moe_capacity_factor=1")
    assert expert_capacity(SHAPES, one)[0] == 256 and routed_tokens(SHAPES, one)[0] == 32768
    assert capacity_ratio(SHAPES, one)[0] == 1.0
    # C = 1.1: ceil(281.6) = 282 per expert, 36,096 rows, ratio 36096 / 32768 = 1.1015625.
    more = _arrays(QWEN + ",moe_capacity_factor=1.1")
    assert expert_capacity(SHAPES, more)[0] == 282 and routed_tokens(SHAPES, more)[0] == 36096
    assert capacity_ratio(SHAPES, more)[0] == pytest.approx(1.1015625)
    # tp 2 halves the rank's tokens before the capacity: ceil(128 x 1.1) = 141.
    assert expert_capacity(SHAPES, _arrays(QWEN.replace("tp=1", "tp=2") + ",moe_capacity_factor=1.1"))[0] == 141
    dropless = _arrays(QWEN)
    assert expert_capacity(SHAPES, dropless)[0] == 0 and routed_tokens(SHAPES, dropless)[0] == 32768
    assert capacity_ratio(SHAPES, dropless)[0] == 1.0


def _busiest() -> float:
    """Dropless, forced balancing: the busiest expert-parallel rank's rows over the mean (moe_layer.imbalance, a
    little above 1: tests/test_moe_forced_balance.py); the drop-and-pad path pads every expert to exactly its
    capacity, so none of this applies there."""
    busiest = float(imbalance(SHAPES, _arrays(QWEN))[0])
    assert 1.0 < busiest < 1.02 and float(imbalance(SHAPES, _arrays(QWEN + ",moe_capacity_factor=1"))[0]) == 1.0
    return busiest


def test_expert_gemms_and_executed_flops_run_the_padded_rows():
    # Each local expert's GEMM has capacity x ep rows: 282 x 8 = 2,256 (dropless 256 x 8 = 2,048); the 16 local
    # experts (layer_linears [2:4]).
    padded = layer_linears(SHAPES, _arrays(QWEN + ",moe_capacity_factor=1.1"), True)[2]
    assert padded.tokens[0] == pytest.approx(2256) and padded.count[0] == pytest.approx(16)
    assert layer_linears(SHAPES, _arrays(QWEN), True)[2].tokens[0] == pytest.approx(2048 * _busiest())
    # Executed routed FLOPs: 2 x 4096 x 8 x expert_params x 1.1015625 (forward); model FLOPs (MFU) count top_k only.
    f_drop = layer_flops(SHAPES, _arrays(QWEN + ",moe_capacity_factor=1.1"), True)[0][0]
    f_less = layer_flops(SHAPES, _arrays(QWEN), True)[0][0]
    assert f_drop - f_less == pytest.approx(2 * 4096 * 8 * SHAPES.expert_params * 0.1015625)


def test_all_to_all_bytes_on_the_padded_rows():
    # bf16: 2 B x capacity x n_experts x hidden per all-to-all: C = 2 -> 2 x 512 x 128 x 2048 = 268,435,456.
    colls = ep_collectives(SHAPES, _arrays(QWEN + ",moe_capacity_factor=2"))
    assert colls.size_bytes[0] == 2 * 512 * 128 * 2048
    assert ep_collectives(SHAPES, _arrays(QWEN)).size_bytes[0] == pytest.approx(2 * 32768 * 2048 * _busiest())


def test_expert_activations_on_the_padded_rows():
    # bf16, no recompute: per routed row the grouped fc1 keeps its input (2 B x 2048), the fused SwiGLU its input
    # (2 widths x 2 B x 768) and fc2 its input (2 B x 768): 4,096 + 3,072 + 1,536 = 8,704 B. C = 2 keeps 32,768 rows
    # more than C = 1 (256 rows per expert, no padding; dropless keeps the busiest rank's rows, _busiest() x those).
    def kept(text: str) -> float:
        L = _arrays(text)
        return float(layer_activation_bytes(SHAPES, L, True, L.recompute)[0])
    assert kept(QWEN) - kept(QWEN + ",moe_capacity_factor=1") == pytest.approx(32768 * 8704 * (_busiest() - 1))
    assert kept(QWEN + ",moe_capacity_factor=2") - kept(QWEN + ",moe_capacity_factor=1") == 32768 * 8704


def test_router_capacity_step_bytes():
    # 4096 tokens x 128 experts x (17 + 22) B with a capacity factor, x 17 B dropless.
    assert ROUTER_CAPACITY_BYTES_PER_TOKEN_EXPERT == 22.0 and ROUTER_BYTES_PER_TOKEN_EXPERT == 17.0
    assert router_bytes(SHAPES, _arrays(QWEN + ",moe_capacity_factor=1"))[0] == 4096 * 128 * 39
    assert router_bytes(SHAPES, _arrays(QWEN))[0] == 4096 * 128 * 17


def test_fp8_padding_copies_vanish_when_capacity_rows_are_aligned():
    fp8 = QWEN + ",precision=fp8"
    # Dropless: 2 copies x (read + write 2 B) x 32,768 x 2048 + the probs' 4 B x 32,768.
    dropless = 2 * 4 * 32768 * 2048 + 4 * 32768
    assert fp8_padding_bytes(SHAPES, _arrays(fp8))[0] == pytest.approx(dropless * _busiest())
    # C = 1: 256 x ep 8 = 2,048 rows per local expert, a multiple of 16 (and of MXFP8's 32): no copy.
    assert fp8_padding_bytes(SHAPES, _arrays(fp8 + ",moe_capacity_factor=1"))[0] == 0.0
    assert fp8_padding_bytes(SHAPES, _arrays(fp8 + ",moe_capacity_factor=1"), 32)[0] == 0.0
    # C = 1.05: ceil(268.8) = 269 x 8 = 2,152 rows, 2152 % 16 = 8: Fp8Padding copies the 269 x 128 = 34,432 rows.
    assert fp8_padding_bytes(SHAPES, _arrays(fp8 + ",moe_capacity_factor=1.05"))[0] == 2 * 4 * 34432 * 2048 + 4 * 34432


def test_fp8_padding_alignment_counts_the_expert_tp_rows_and_the_recipe_block():
    fp8 = QWEN + ",precision=fp8"
    # C = 1.005: ceil(257.28) = 258 x ep 8 = 2,064 rows per local expert: 2064 % 16 = 0 (per-tensor fp8: no copy),
    # 2064 % 32 = 16 (MXFP8's 32-row blocks: Fp8Padding copies the 258 x 128 = 33,024 rows).
    assert fp8_align_rows("tensorwise") == 16 and fp8_align_rows(None) == 16 and fp8_align_rows("mxfp8") == 32
    L = _arrays(fp8 + ",moe_capacity_factor=1.005")
    assert fp8_padding_bytes(SHAPES, L, fp8_align_rows("tensorwise"))[0] == 0.0
    assert fp8_padding_bytes(SHAPES, L, fp8_align_rows("mxfp8"))[0] == 2 * 4 * 33024 * 2048 + 4 * 33024
    # tp 2, etp 2, ep 4: t = 2,048 tokens, 128 rows per expert; C = 1.01: ceil(129.28) = 130. Each local expert gets
    # 130 x ep 4 x etp 2 = 1,040 rows (the expert-TP group's tokens gathered too): 1040 % 16 = 0, no copy; without
    # etp it would be 520 (% 16 = 8).
    etp = _arrays("tp=2,etp=2,ep=4,mbs=1,gbs=512,seq=4096,recompute=none,precision=fp8,moe_capacity_factor=1.01")
    assert expert_capacity(SHAPES, etp)[0] == 130
    assert fp8_padding_skipped(SHAPES, etp)[0] and fp8_padding_bytes(SHAPES, etp)[0] == 0.0


def test_drop_and_pad_has_no_dispatcher_sync():
    """The host phases of tests/test_moe_host.py::test_exposed_host_by_hand: on the drop-and-pad path the forward
    is the no-sync case, the host's excess over the GPU only: forward 2 d + xf + r - 1.2e-3, backward
    2 d + xb + r - 1.9e-3 (recompute none). B200, the stack's tensorwise recipe: experts forward 146.76 generic ops
    + 3 per split x 32 = 242.76 (tests/test_moe_host.py), backward 243.76 + 96 = 339.76; at C = 1 the splits are
    aligned (2,048 rows), so the fp8 padding calls go: forward - 7 = 235.76, backward - (8 + 2 x 16) = 299.76."""
    stack = get_stack("megatron-core")
    text = QWEN.replace("recompute=none", "recompute=none,precision=fp8")
    hw = replace(estimate(load_model("qwen3-30b-a3b"), load_cluster("dgx-b200:1"),
                          Layout.parse(text, world=8)).evaluation.hw)
    gpu = MoeGpuTimes(experts_forward_s=np.array([0.1e-3]), experts_backward_s=np.array([0.3e-3]),
                      rest_forward_s=np.array([0.5e-3]), rest_backward_s=np.array([1.0e-3]),
                      all_to_all_s=np.array([0.3e-3]))
    op = 13.48e-6
    d, xf, xb, r = 5 * op, 235.76 * op, 299.76 * op, 62.28 * op
    want = max(0.0, 2 * d + xf + r - 1.2e-3) + max(0.0, 2 * d + xb + r - 1.9e-3)
    got = moe_host_exposed_s(SHAPES, _arrays(text + ",moe_capacity_factor=1"), hw, stack, gpu)[0]
    assert got == pytest.approx(want)
    assert moe_host_exposed_s(SHAPES, _arrays(text), hw, stack, gpu)[0] > got  # dropless waits at its sync
    h = stack.moe_host
    ops = phase_ops(h, SHAPES, _arrays(text + ",moe_capacity_factor=1"), "tensorwise", True)
    assert ops["experts_forward"][0] == pytest.approx(235.76) and ops["experts_backward"][0] == pytest.approx(299.76)
    unaligned = phase_ops(h, SHAPES, _arrays(text + ",moe_capacity_factor=1.05"), "tensorwise", True)
    assert unaligned["experts_forward"][0] == pytest.approx(242.76)  # 2,152 rows per expert: padded, as dropless


def test_estimate_json_carries_the_field_and_prices_faster_at_aligned_capacity():
    model, cluster = load_model("qwen3-30b-a3b"), load_cluster("dgx-b200:1")
    text = QWEN + ",precision=fp8"
    drop = estimate(model, cluster, Layout.parse(text + ",moe_capacity_factor=1", world=8)).to_json()
    less = estimate(model, cluster, Layout.parse(text, world=8)).to_json()
    assert drop["layout"]["moe_capacity_factor"] == 1.0 and "moe_capacity_factor" not in less["layout"]
    # C = 1 runs the dropless row count without the fp8 padding copies and without the sync.
    assert drop["step_time_s"] < less["step_time_s"]


def test_megatron_export_writes_and_reads_back_the_capacity_flags(tmp_path):
    from clusterplan.frameworks.megatron import moe_args
    from clusterplan.frameworks.read import megatron_config

    model = load_model("qwen3-30b-a3b")
    L = Layout.parse(QWEN + ",moe_capacity_factor=1.25", world=8)
    args = moe_args(model, L)
    i = args.index("--moe-expert-capacity-factor")
    assert args[i + 1] == "1.25" and "--moe-pad-expert-input-to-capacity" in args
    assert "--moe-expert-capacity-factor" not in moe_args(model, Layout.parse(QWEN, world=8))
    script = tmp_path / "run.sh"
    base = "--micro-batch-size 1 --global-batch-size 512 --seq-length 4096 --expert-model-parallel-size 8 "
    script.write_text(f"torchrun pretrain_gpt.py {base}{' '.join(args)}\n")
    assert megatron_config(script, model, 8).layout.moe_capacity_factor == 1.25
    script.write_text(f"torchrun pretrain_gpt.py {base}--moe-expert-capacity-factor 1.0\n")
    read = megatron_config(script, model, 8)
    assert read.layout.moe_capacity_factor is None and any("without --moe-pad" in n for n in read.notes)
    script.write_text(f"torchrun pretrain_gpt.py {base}--moe-pad-expert-input-to-capacity\n")
    with pytest.raises(BadInputError, match="needs --moe-expert-capacity-factor"):
        megatron_config(script, model, 8)


def test_other_frameworks_say_what_they_run():
    from clusterplan.frameworks import deepspeed, torchtitan

    model = load_model("qwen3-30b-a3b")
    L = Layout.parse(QWEN + ",moe_capacity_factor=1", world=8)
    assert any(n.field == "moe_capacity_factor" and "dropless" in n.text for n in torchtitan.notes(model, L))
    assert any("capacity_factor=1, drop_tokens=True" in n.text for n in deepspeed.notes(model, L))
    assert any("drop_tokens=False" in n.text for n in deepspeed.notes(model, Layout.parse(QWEN, world=8)))


def test_plan_prices_a_pinned_capacity_factor_and_never_searches_one():
    from clusterplan.cli.plan import parse_fix
    from clusterplan.solver.search import TOKEN_DROP_NOTE, search

    model, cluster = load_model("qwen3-30b-a3b"), load_cluster("dgx-b200:1")
    free = search(model, cluster, 512, 4096, fixed=parse_fix("ep=8,mbs=1", 8), top=3)
    assert all(p.layout.moe_capacity_factor is None for p in free.plans) and TOKEN_DROP_NOTE in free.notes
    pinned = search(model, cluster, 512, 4096, fixed=parse_fix("ep=8,mbs=1,moe_capacity_factor=1", 8), top=3)
    assert all(p.layout.moe_capacity_factor == 1.0 for p in pinned.plans) and TOKEN_DROP_NOTE not in pinned.notes
    with pytest.raises(BadInputError, match="no token-dropping MoE"):
        search(model, cluster, 512, 4096, fixed=parse_fix("ep=8,moe_capacity_factor=1", 8), top=1,
               stack=get_stack("torchtitan"))


def test_validation_runs_the_plan_dropless():
    from clusterplan.validate.rules import executed_layout

    # The torch runtime's expert dispatch is dropless: the executed (and re-predicted) layout has no capacity factor.
    assert executed_layout(Layout.parse(QWEN + ",moe_capacity_factor=1", world=8)).moe_capacity_factor is None


def test_plan_file_round_trip(tmp_path):
    from clusterplan.models.training.planfile import read_plan, write_plan

    L = Layout.parse(QWEN + ",moe_capacity_factor=1.5", world=8)
    path = tmp_path / "plan.yaml"
    write_plan(path, model_ref="qwen3-30b-a3b", cluster_ref="dgx-b200:1", layout=L)
    assert "moe_capacity_factor: 1.5" in path.read_text()
    assert read_plan(path).layout == L


ESTIMATE_QWEN = ("estimate", "--model", "qwen3-30b-a3b", "--cluster", "dgx-h100:1", "--format", "json", "--layout")


@pytest.mark.parametrize("bad", ["nan", "-1", "0", "x", "inf", "1e400"])
def test_cli_bad_capacity_factor_is_one_line_exit_2(run_cli, bad):
    code, out, err = run_cli(*ESTIMATE_QWEN, QWEN + f",moe_capacity_factor={bad}")
    assert code == 2 and out == "" and err.count("\n") == 1 and "moe_capacity_factor" in err, err
    assert "Traceback" not in err
    code, out, err = run_cli("plan", "--model", "qwen3-30b-a3b", "--cluster", "dgx-h100:1", "--gbs", "512", "--seq",
                             "4096", "--fix", f"moe_capacity_factor={bad}")
    assert code == 2 and out == "" and err.count("\n") == 1 and "moe_capacity_factor" in err, err


@pytest.mark.parametrize("flags", ["--moe-expert-capacity-factor nan --moe-pad-expert-input-to-capacity",
                                   "--moe-expert-capacity-factor abc --moe-pad-expert-input-to-capacity",
                                   "--moe-expert-capacity-factor -0.5 --moe-pad-expert-input-to-capacity",
                                   "--moe-expert-capacity-factor inf --moe-pad-expert-input-to-capacity",
                                   "--moe-expert-capacity-factor --moe-pad-expert-input-to-capacity",
                                   "--moe-pad-expert-input-to-capacity",
                                   "--moe-expert-capacity-factor $CF --moe-pad-expert-input-to-capacity"])
def test_megatron_read_back_of_odd_capacity_flags_is_one_line_exit_2(run_cli, tmp_path, flags):
    script = tmp_path / "run.sh"
    script.write_text("torchrun pretrain_gpt.py --micro-batch-size 1 --global-batch-size 512 --seq-length 4096 "
                      f"--expert-model-parallel-size 8 --num-experts 128 --moe-router-topk 8 --bf16 {flags}\n")
    code, out, err = run_cli("check", str(script), "--model", "qwen3-30b-a3b", "--cluster", "dgx-h100:1")
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "--moe-expert-capacity-factor" in err and "Traceback" not in err


def test_megatron_read_back_beyond_the_capacity_bound_is_a_failed_check(run_cli, tmp_path):
    # C = 1e300 reads (a finite number > 0) and fails the TOKEN_DROP rule C <= n_experts / top_k = 16 by name.
    script = tmp_path / "run.sh"
    script.write_text("torchrun pretrain_gpt.py --micro-batch-size 1 --global-batch-size 512 --seq-length 4096 "
                      "--expert-model-parallel-size 8 --num-experts 128 --moe-router-topk 8 --bf16 "
                      "--moe-expert-capacity-factor 1e300 --moe-pad-expert-input-to-capacity\n")
    code, out, err = run_cli("check", str(script), "--model", "qwen3-30b-a3b", "--cluster", "dgx-h100:1")
    assert code == 1 and "exceeds n_experts(128) / top_k(8) = 16" in out, (out, err)


def test_json_with_a_capacity_factor_is_byte_identical_across_processes():
    # Two interpreters with different hash seeds (set / dict iteration order): estimate and plan JSON byte-identical.
    import os
    import subprocess
    import sys

    runs = {"estimate": [*ESTIMATE_QWEN, QWEN + ",precision=fp8,moe_capacity_factor=1.1"],
            "plan": ["plan", "--model", "qwen3-30b-a3b", "--cluster", "dgx-h100:2", "--gbs", "512", "--seq", "4096",
                     "--fix", "moe_capacity_factor=1.25", "--format", "json", "--top", "2"]}
    for name, args in runs.items():
        outs = []
        for seed in ("1", "2"):
            proc = subprocess.run([sys.executable, "-m", "clusterplan", *args], capture_output=True, text=True,
                                  env={**os.environ, "PYTHONHASHSEED": seed}, timeout=600)
            assert proc.returncode in (0, 1), proc.stderr  # 1: estimate's infeasible (out of memory at 8 GPUs)
            outs.append(proc.stdout)
        assert outs[0] == outs[1] and "moe_capacity_factor" in outs[0], name


def test_capacity_beyond_the_ranks_tokens_is_clamped_and_refused_by_name(run_cli):
    # C = 16 = n_experts / top_k: ceil(256 x 16) = 4,096 = t, the largest runnable capacity. Beyond it the capacity
    # is held at t (the price stays finite) and the TOKEN_DROP rule refuses the layout, up to C = 1e300.
    for factor in ("16", "17", "1e300"):
        assert expert_capacity(SHAPES, _arrays(QWEN + f",moe_capacity_factor={factor}"))[0] == 4096
    code, out, err = run_cli(*ESTIMATE_QWEN, QWEN + ",moe_capacity_factor=1e300")
    # stderr: the one infeasible line (no warning of an overflowed number, no traceback)
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: infeasible: moe_capacity_factor"), err
    doc = json.loads(out)
    assert doc["feasible"] is False and any("exceeds n_experts(128) / top_k(8) = 16" in r for r in doc["reasons"])
