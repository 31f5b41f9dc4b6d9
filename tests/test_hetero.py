"""Mixed GPU types: stages on H100 and A100 nodes with layers balanced by speed under each type's memory."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.solver.hetero import _balance, hetero_plan

MIXED = str(Path(__file__).parent / "fixtures" / "clusters" / "mixed_h100_a100.yaml")


@settings(max_examples=60, deadline=None)
@given(times=st.lists(st.floats(0.5, 3.0), min_size=2, max_size=4), n=st.integers(4, 12),
       cap=st.integers(2, 8), head=st.floats(0.0, 2.0), embed=st.floats(0.0, 1.0))
def test_balance_is_the_exact_min_max_split(times, n, cap, head, embed):
    caps = [cap] * len(times)
    got = _balance(times, caps, n, head, embed)

    def slowest(split):  # the first stage also embeds, the last also runs the head
        return max(k * t + (embed if i == 0 else 0) + (head if i == len(times) - 1 else 0)
                   for i, (k, t) in enumerate(zip(split, times, strict=True)))

    best = None
    for split in itertools.product(range(1, cap + 1), repeat=len(times)):
        if sum(split) == n:
            best = slowest(split) if best is None else min(best, slowest(split))
    if best is None:
        assert got is None
    else:
        assert got is not None and sum(got) == n and all(1 <= k <= cap for k in got)
        assert abs(slowest(got) - best) < 1e-9


def test_mixed_cluster_balances_layers_and_beats_alternatives():
    plan = hetero_plan(load_model("llama3.1-70b"), load_cluster(MIXED), 256, 4096)
    bal = plan.balanced
    assert sum(bal.layers) == 80 and bal.fits
    assert all(p <= 79.6 for p in bal.peak_gib)
    # Faster GPUs carry more layers: every H100 stage holds more than every A100 stage.
    h100 = [n for g, n in zip(bal.gpu, bal.layers, strict=True) if g.startswith("H100")]
    a100 = [n for g, n in zip(bal.gpu, bal.layers, strict=True) if g.startswith("A100")]
    assert min(h100) > max(a100)
    # The naive even split of the same stages is slower or does not fit; the mix beats the H100 nodes alone.
    assert plan.even is not None and (not plan.even.fits or plan.even.step_time_s >= bal.step_time_s)
    assert plan.fastest_only_step_s is not None and plan.fastest_only_step_s > bal.step_time_s


def test_plan_cli_reports_mixed_types(run_cli):
    code, out, _ = run_cli("plan", "--model", "llama3.1-70b", "--cluster", MIXED, "--gbs", "256", "--seq", "4096",
                           "--top", "1", "--format", "json")
    assert code == 0
    mixed = json.loads(out)["mixed_gpu_types"]
    assert mixed["gain_vs_fastest_only"] > 0 and mixed["balanced"]["fits"]


def test_mixed_step_adds_sends_gradient_sync_and_optimizer_worked_example():
    """The mixed pipeline's step is its 1F1B pipeline plus what step_time adds to a homogeneous one: the
    stage-to-stage sends and, after the drain, the slowest stage's exposed gradient sync and optimizer step."""
    from clusterplan.models.architecture.shapes import ModelShapes
    from clusterplan.models.hardware.rates import HardwareRates
    from clusterplan.models.training.batch import LayoutArrays
    from clusterplan.models.training.step import cross_node_p2p_s
    from clusterplan.solver.hetero import _sub_cluster

    model, cluster = load_model("llama3.1-70b"), load_cluster(MIXED)
    plan = hetero_plan(model, cluster, 256, 4096)
    bal, lay = plan.balanced, plan.layout
    m = lay.gbs // (lay.dp * lay.mbs)
    assert bal.pipeline_s == (m + lay.pp - 1) * max(bal.stage_s)
    assert bal.step_time_s == bal.pipeline_s + bal.pp_comm_s + bal.tail_s
    # Sends (1F1B, no P2P overlap in megatron-core outside interleaving): 2 (m + pp - 1) hops, each across nodes on
    # the slower group's NICs (A100 nodes: 200 Gb/s per GPU against H100's 400).
    shapes, one = ModelShapes.of(model), LayoutArrays.from_layouts([lay])
    hops = [float(cross_node_p2p_s(shapes, one, HardwareRates.of(_sub_cluster(cluster, i)))[0]) for i in (0, 1)]
    assert bal.pp_comm_s == pytest.approx(2 * (m + lay.pp - 1) * max(hops), rel=1e-12)
    # Optimizer step by hand on the first H100 stage: its layers' parameters over tp, the norms whole, sharded over
    # dp by the distributed optimizer, 32 B each through the H100's HBM (fused Adam with fp32 master weights).
    i = bal.gpu.index("H100-SXM5-80GB")
    h100 = HardwareRates.of(_sub_cluster(cluster, [g.gpu.name for g in cluster.groups].index("H100-SXM5-80GB")))
    per_layer = (shapes.attn_params + shapes.dense_mlp_params) / lay.tp + shapes.norm_params
    assert lay.zero == 1 and lay.optimizer == "adam-master" and 0 < i < lay.pp - 1
    expected = bal.layers[i] * per_layer / lay.dp * 32.0 / h100.hbm_bytes_per_s
    assert bal.optimizer_s[i] == pytest.approx(expected, rel=1e-9)
    assert all(d >= 0 for d in bal.dp_comm_s) and bal.tail_s > 0


def test_a_stack_that_splits_by_its_own_rule_builds_no_mixed_pipeline(run_cli):
    # nanotron places layers by block cost (stacks.yaml pp_split): it cannot run a split balanced across GPU types,
    # so plan says why on stderr and keeps the plans on the cluster as one type.
    code, out, err = run_cli("plan", "--model", "llama3.1-70b", "--cluster", MIXED, "--gbs", "256", "--seq", "4096",
                             "--stack", "nanotron", "--top", "1", "--format", "json")
    assert code == 0
    assert "splits its pipeline by its own rule" in json.loads(out)["mixed_gpu_types"]["refused"]
