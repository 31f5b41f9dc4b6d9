"""torchtitan shards wk / wv by heads and has no path that replicates them: its decoder raises
'tensor_parallel_degree (16) must divide n_kv_heads (8)' (torchtitan 0.3.0 models/common/decoder.py), where
Megatron-Core replicates K/V heads when tp is a multiple of them. A new user's pass exported tp 16 for Llama-3.1-70B
(8 kv heads) to torchtitan and `check` said ok."""

from __future__ import annotations

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.estimate import rule_problems
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.rules import RuleCode
from clusterplan.solver.search import search

MODEL, CLUSTER = load_model("llama3.1-70b"), load_cluster("dgx-h100:8")
TP16 = Layout(tp=16, dp=4, gbs=512, seq=8192, zero=3)


def test_torchtitan_refuses_tp_beyond_the_kv_heads_megatron_core_replicates_them():
    codes = [r.code for r in rule_problems(MODEL, CLUSTER, TP16, get_stack("torchtitan"))]
    assert codes == [RuleCode.STACK]
    assert rule_problems(MODEL, CLUSTER, TP16, get_stack("megatron-core")) == []
    assert rule_problems(MODEL, CLUSTER, Layout(tp=8, dp=8, gbs=512, seq=8192, zero=3), get_stack("torchtitan")) == []


def test_the_torchtitan_search_keeps_tp_to_divisors_of_the_kv_heads(run_cli):
    result = search(MODEL, CLUSTER, 512, 8192, fixed={"pp": 1, "cp": 1}, top=50, stack=get_stack("torchtitan"))
    assert result.plans and all(MODEL.kv_heads % p.layout.tp == 0 for p in result.plans)
    code, out, err = run_cli("plan", "--model", "llama3.1-70b", "--cluster", "dgx-h100:8", "--gbs", "512", "--seq",
                             "8192", "--fix", "tp=16", "--stack", "torchtitan")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "stack torchtitan needs tp to divide the 8 kv heads" in err
