"""Megatron's hierarchical context parallelism (--cp-comm-type a2a+p2p --hierarchical-context-parallel-sizes A cp/A;
Layout cp_kind=a2a+p2p with cp_a2a=A), as worked examples.

Megatron-Core (parallel_state.create_hierarchical_groups) builds the level-1 (all-to-all) groups from adjacent CP ranks
and the level-2 (p2p ring) groups at stride A; Transformer Engine first runs the all-to-alls of Ulysses inside each
level-1 group (sequence- to head-sharded), then its KV P2P ring across the level-2 groups. Priced as
step.hierarchical_cp_s (the all-to-alls: ulysses_cp_s on A ranks; the ring: ring_cp_s on cp / A ranks, the same K/V
bytes per rank as a plain ring's) and, for the attention core, cp / A load-balanced ring calls
(compute.cp_block_core_times).
"""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.errors import BadInputError
from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware import comm
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.collectives import activation_bytes
from clusterplan.models.training.compute import cp_block_core_times, layer_time
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout, layout_problems
from clusterplan.models.training.rules import RuleCode
from clusterplan.models.training.step import Group, _collective, hierarchical_cp_s, ring_cp_s, ulysses_cp_s
from clusterplan.models.training.topology import Axis

MODEL = load_model("llama3.1-8b")  # 32 heads, 8 kv heads, head dim 128
CLUSTER = load_cluster("dgx-h100:16")  # 128 GPUs, 8 per NVLink domain
HW = HardwareRates.of(CLUSTER)
HIER = Layout(tp=2, cp=16, dp=4, cp_kind="a2a+p2p", cp_a2a=4, mbs=1, gbs=8, seq=131072, recompute="none")


def test_groups_and_exposed_time_worked_example():
    """tp 2, cp 16 = 4 x 4: each all-to-all group is 4 CP ranks at stride tp = 2, the 8 GPUs of one node; the ring
    runs over 4 such groups at stride 8, one per node, so every ring step crosses nodes (n_out = 4). Per rank 8,192
    tokens (131,072 / 16) of K and V at 8 kv heads x 128 x 2 / tp 2 = 1,024 bf16 values each: 16 MiB, the plain
    ring's block, sent in 3 steps instead of 15."""
    L = LayoutArrays.from_layouts([HIER])
    shapes = ModelShapes.of(MODEL)
    assert float(L.cp_ring[0]) == 4.0
    tokens = L.seq * L.mbs / L.cp
    kv_bytes = activation_bytes(L) * tokens * shapes.kv_dim / L.tp
    assert float(kv_bytes[0]) == 8192 * 1024 * 2 == 16 * 2**20
    cp_group = Group.of(L, Axis.CP)
    assert float(cp_group.size[0]) == 16 and float(cp_group.stride[0]) == 2
    a2a = Group(size=np.array([4.0]), stride=cp_group.stride, axis=Axis.CP)
    n_in, n_out = comm.split_group(np.array([4.0]), cp_group.stride * 4, HW.domain)
    assert (float(n_in[0]), float(n_out[0])) == (1.0, 4.0)
    core_f = np.array([0.05])
    full = np.zeros(1)
    # Ulysses' 4 + 4 all-to-alls, one more in backward (the output beside dout: TE AttnFuncWithCPAndKVP2P.backward),
    # and the ring
    out_back = _collective("all_to_all", activation_bytes(L) / L.tp * tokens * shapes.v_dim, a2a, HW)
    expected = (ulysses_cp_s(shapes, L, tokens, a2a, HW) + out_back
                + ring_cp_s(kv_bytes, np.array([4.0]), n_out, core_f, full, HW))
    got = hierarchical_cp_s(shapes, L, tokens, cp_group, core_f, full, HW)
    assert float(got[0]) == pytest.approx(float(expected[0]), rel=1e-12)
    # the all-to-all stays inside the node: no scale-out latency in it
    assert float(comm.split_group(a2a.size, a2a.stride, HW.domain)[1][0]) == 1.0


def test_core_runs_cp_over_a2a_ring_calls():
    """The attention core: after the all-to-all a rank holds its group's 4 chunks on a quarter of the heads, so the
    ring runs 4 load-balanced calls of 1/4 of the rank's work (c = seq / 8 tokens), not 16 of 1/16 (c = seq / 32).
    The first is the causal diagonal at 2c, so a quarter of the work runs at the causal rate instead of a sixteenth:
    here the longer calls do not make up for it (7.58 against 7.29 ms forward)."""
    shapes = ModelShapes.of(MODEL)
    stack = get_stack("megatron-core")
    hier = layer_time(shapes, LayoutArrays.from_layouts([HIER]), HW, False, stack)
    ring = layer_time(shapes, LayoutArrays.from_layouts([HIER.with_(cp_kind="ring", cp_a2a=1)]), HW, False, stack)
    att = HW.attention
    flops = 0.5 * 2 * 131072 * 131072 * (shapes.q_dim + shapes.v_dim) / (16 * 2)  # this rank's causal half
    head_dim = (shapes.q_dim + shapes.v_dim) / (2 * shapes.n_heads)
    f4, _ = cp_block_core_times(att, stack.attention_kernel, np.array([flops]), np.array([131072.0]), np.array([4.0]),
                                head_dim, 2.5)
    f16, _ = cp_block_core_times(att, stack.attention_kernel, np.array([flops]), np.array([131072.0]),
                                 np.array([16.0]), head_dim, 2.5)
    assert float(hier.core_forward_s[0]) == pytest.approx(float(f4[0]), rel=1e-9)
    assert float(ring.core_forward_s[0]) == pytest.approx(float(f16[0]), rel=1e-9)
    assert float(f4[0]) > float(f16[0])


def test_rules_and_bad_input():
    ok = layout_problems(MODEL, HIER, 128)
    assert not ok
    # a group that does not divide cp, one as wide as cp, heads 32 % (8 x 8), and llama3.1-8b's 8 kv heads over tp 4
    # (2 per rank) split into 4 (Transformer Engine's all-to-all views k and v as cp_a2a head groups)
    for bad in (HIER.with_(cp_a2a=3), HIER.with_(cp_a2a=16), HIER.with_(tp=8, dp=1, cp=16, cp_a2a=8),
                HIER.with_(tp=4, dp=2, cp=16, cp_a2a=4)):
        assert any(p.code == RuleCode.CP_HIERARCHY for p in layout_problems(MODEL, bad, 128)), bad.short()
    with pytest.raises(BadInputError, match="cp_kind=a2a\\+p2p"):
        Layout(cp=4, cp_a2a=2)
    assert HIER.short().startswith("tp2 pp1 dp4 cp16a2a4+p2p4")
    assert "cp_a2a" not in Layout().to_dict() and HIER.to_dict()["cp_a2a"] == 4


def test_nearest_options_unpin_the_exchange_with_its_group(run_cli):
    # Nothing fits on one node; the nearest options unpin cp_kind and cp_a2a together (pinned both or neither).
    code, out, err = run_cli("plan", "--model", "llama3.1-70b", "--cluster", "dgx-h100:1", "--gbs", "8", "--seq",
                             "131072", "--fix", "cp_kind=a2a+p2p,cp_a2a=2")
    assert code == 1 and "nearest options that fit" in out and "pin both or neither" not in err


def test_plan_prices_it_when_pinned_with_its_group(run_cli):
    base = ["plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100:16", "--gbs", "8", "--seq", "131072"]
    code, out, err = run_cli(*base, "--fix", "cp_kind=a2a+p2p")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cp_a2a" in err
    code, out, _ = run_cli(*base, "--fix", "tp=2,cp=16,cp_kind=a2a+p2p,cp_a2a=4", "--format", "json")
    assert code == 0 and '"cp_a2a": 4' in out and '"cp_kind": "a2a+p2p"' in out
    est = estimate(MODEL, CLUSTER, HIER).to_json()
    assert est["feasible"] and est["time"]["cp_comm_s"] > 0


def test_megatron_export_and_read_back(tmp_path):
    from clusterplan.frameworks import export_plan
    from clusterplan.frameworks.read import read_config

    text = export_plan("megatron", MODEL, CLUSTER, HIER).text
    assert "--cp-comm-type a2a+p2p" in text and "--hierarchical-context-parallel-sizes 4 4" in text
    path = tmp_path / "train.sh"
    path.write_text(text)
    read = read_config(path, MODEL, 128)
    assert read.layout.cp_kind == "a2a+p2p" and read.layout.cp_a2a == 4
    bad = tmp_path / "bad.sh"
    bad.write_text(text.replace("--hierarchical-context-parallel-sizes 4 4", ""))
    with pytest.raises(BadInputError, match="needs --hierarchical-context-parallel-sizes"):
        read_config(bad, MODEL, 128)
    one = tmp_path / "one.sh"  # a level of one rank: Transformer Engine runs the other level alone
    one.write_text(text.replace("--hierarchical-context-parallel-sizes 4 4", "--hierarchical-context-parallel-sizes 1 16"))
    read = read_config(one, MODEL, 128)
    assert read.layout.cp_kind == "ring" and any("p2p alone" in n for n in read.notes)
    bad = tmp_path / "product.sh"
    bad.write_text(text.replace("--hierarchical-context-parallel-sizes 4 4", "--hierarchical-context-parallel-sizes 2 4"))
    with pytest.raises(BadInputError, match="product 8 != --context-parallel-size 16"):
        read_config(bad, MODEL, 128)


def test_placement_sees_all_pairs_inside_the_groups_and_a_ring_across():
    # tp 1, cp 32 = 16 x 2 on 4 DGX nodes: the all-to-all groups are ranks 0-15 (nodes 0, 1) and 16-31 (nodes 2, 3);
    # the ring pairs rank r with r + 16 (node 0 with 2, 1 with 3). A plain ring of 32 would pair 0-1, 1-2, 2-3, 3-0.
    from clusterplan.models.training.topology import communicating_node_pairs

    layout = Layout(cp=32, cp_kind="a2a+p2p", cp_a2a=16, mbs=1, gbs=8, seq=131072)
    pairs = communicating_node_pairs(layout, load_cluster("dgx-h100:4"))
    assert pairs["cp"] == {(0, 1), (2, 3), (0, 2), (1, 3)}


def test_plain_all_to_all_cp_needs_the_local_kv_heads_to_split_too():
    # llama3.1-8b: 8 kv heads; tp 2 leaves 4 per rank, which cp 8 cannot split (TE flash_attn_a2a_communicate views
    # k and v as cp head groups); cp 4 can.
    bad = Layout(tp=2, cp=8, dp=1, cp_kind="a2a", mbs=1, gbs=8, seq=65536)
    assert any(p.code == RuleCode.A2A_HEADS for p in layout_problems(MODEL, bad, 16))
    assert not layout_problems(MODEL, bad.with_(cp=4, dp=2), 16)


def test_sliding_windows_run_ring_cp_nowhere_in_megatron(run_cli):
    """Transformer Engine's attn_forward_func_with_cp: "The context parallel running configs cannot support sliding
    window attention!" unless cp_comm_type is a2a (or all_gather on flash-attn). GPT-OSS alternates windowed layers:
    estimate refuses ring CP for it on megatron-core, plan searches a2a only and says why; torchtitan's own CP is not
    Transformer Engine's, so the rule is megatron-core's."""
    from clusterplan.models.training.estimate import cp_window_problems

    gpt_oss = load_model("gpt-oss-120b")
    ring = Layout(tp=4, cp=2, dp=8, ep=8, mbs=1, gbs=64, seq=32768)
    assert [p.code for p in cp_window_problems(gpt_oss, ring, get_stack("megatron-core"))] == [RuleCode.CP_WINDOW]
    assert not cp_window_problems(gpt_oss, ring.with_(cp_kind="a2a"), get_stack("megatron-core"))
    # all_gather only on flash-attn; megatron-core runs cuDNN's FusedAttention
    assert cp_window_problems(gpt_oss, ring.with_(cp_kind="allgather"), get_stack("megatron-core"))
    assert not cp_window_problems(MODEL, ring, get_stack("megatron-core"))  # no windows
    assert not cp_window_problems(gpt_oss, ring, get_stack("torchtitan"))
    code, out, err = run_cli("plan", "--model", "gpt-oss-120b", "--cluster", "dgx-h100:8", "--gbs", "64", "--seq",
                             "65536", "--top", "3", "--format", "json")
    import json

    plans = json.loads(out)["plans"]
    assert code == 0 and all(p["layout"]["cp_kind"] == "a2a" for p in plans if p["layout"]["cp"] > 1)
    assert any(p["layout"]["cp"] > 1 for p in plans)


def test_a_pinned_cp_kind_that_cannot_run_windows_is_rejected_by_the_rule_not_priced(run_cli):
    """plan --fix cp_kind=ring (or a2a+p2p) on GPT-OSS under megatron-core: every structure with cp > 1 breaks
    CP_WINDOW, counted under that rule (not as 'left out', not priced), and the nearest option turns cp_kind to a2a;
    a2a+p2p is refused by the same rule, which is the stack's: layout_problems (stack-free) no longer has it."""
    import json

    for pins in ("cp=4,cp_kind=ring", "cp=4,cp_kind=a2a+p2p,cp_a2a=2"):
        code, out, err = run_cli("plan", "--model", "gpt-oss-120b", "--cluster", "dgx-h100:8", "--gbs", "256", "--seq",
                                 "32768", "--top", "2", "--fix", pins, "--format", "json")
        doc = json.loads(out)
        assert not doc["feasible"] and not doc["plans"], pins
        rejected = doc["search"]["rejected"]
        assert rejected[RuleCode.CP_WINDOW.value] > 0, pins
        first = doc["nearest_feasible"]["options"][0]
        assert first["changes"] == [{"knob": "cp_kind", "from": pins.split("cp_kind=")[1].split(",")[0], "to": "a2a",
                                     "steps": 1}], pins
    gpt_oss = load_model("gpt-oss-120b")
    hier = Layout(tp=2, cp=4, cp_kind="a2a+p2p", cp_a2a=2, dp=8, ep=8, mbs=1, gbs=64, seq=32768)
    assert not layout_problems(gpt_oss, hier, 64)  # the window rule is the stack's (estimate.cp_window_problems)


def test_export_warns_when_the_config_runs_ring_cp_under_windows(run_cli, tmp_path):
    from clusterplan.models.training.planfile import write_plan

    plan = tmp_path / "plan.yaml"
    write_plan(plan, model_ref="gpt-oss-120b", cluster_ref="dgx-h100:8",
               layout=Layout(tp=4, cp=2, dp=8, ep=8, mbs=1, gbs=64, seq=32768, recompute="full"),
               stack="megatron-core")
    code, _, err = run_cli("export", str(plan), "--to", "megatron")
    assert code == 0 and "runs under a2a only, not cp_kind=ring" in err
