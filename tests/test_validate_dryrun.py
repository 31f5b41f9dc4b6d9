"""`validate --dry-run`: full-size models at full world size in one process (fake process group, meta device).

Per-rank parameter, gradient and optimizer bytes from torch's own shard shapes equal the memory model's to 1%.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from clusterplan.models.architecture.catalog import load_model  # noqa: E402
from clusterplan.models.training.layout import Layout  # noqa: E402
from clusterplan.validate.dryrun import dry_run  # noqa: E402

FIX = Path(__file__).parent / "fixtures" / "validate"


def _errors(positions):
    return {(p["position"], term): v["error_pct"] for p in positions for term, v in p["terms"].items()}


@pytest.mark.parametrize("zero", [1, 3])
def test_llama70b_on_256_ranks(zero):
    layout = Layout.parse(f"tp=8,pp=4,dp=8,zero={zero},mbs=1,gbs=512,seq=8192,sp=1")
    positions = dry_run(load_model("llama3.1-70b"), layout)
    assert [p["rank"] for p in positions] == [0, 64, 192]  # first, middle, last pipeline stage
    assert all(abs(e) <= 1.0 for e in _errors(positions).values())
    first = positions[0]
    # 70.55e9 params: stage 0 holds the embedding + 20 layers, split 8 ways by tp (norms replicated).
    assert first["elements"]["dense"] == 2_270_756_864
    if zero == 3:  # FSDP2 shards the rest over the 8 data-parallel ranks
        assert first["elements"]["fsdp_shard"] == 2_270_756_864 / 8


@pytest.mark.parametrize("zero", [1, 3])
def test_mixtral_with_expert_parallel(zero):
    # ep=8 folds over dp_shard(8) x tp(2): experts split 8 ways, expert-data-parallel 2 ways under FSDP.
    layout = Layout.parse(f"tp=2,pp=4,dp=8,ep=8,zero={zero},mbs=1,gbs=512,seq=4096")
    positions = dry_run(load_model("mixtral-8x7b"), layout)
    assert all(abs(e) <= 1.0 for e in _errors(positions).values())
    assert positions[0]["elements"]["expert"] == 8 * 3 * 4096 * 14336 * 8 / 8  # 8 layers x 8 experts / ep 8


def test_cli_dry_run_json(run_cli):
    code, out, _ = run_cli("validate", str(FIX / "mixtral_tp2_pp4_dp8_ep8.yaml"), "--dry-run", "--format", "json",
                           "--tolerance", "1")
    result = json.loads(out)
    assert code == 0 and result["ok"] and result["world"] == 64
    assert result["rejected"] == [] and result["max_state_error_pct"] <= 1.0


def test_runtime_rejection_is_reported_and_fails(run_cli):
    # ep=3 cannot fold over dp_shard(8) x tp(2) = 16 ranks: torch's mesh unflatten refuses, on every stage.
    code, out, _ = run_cli("validate", str(FIX / "mixtral_ep3_rejected.yaml"), "--dry-run", "--format", "json")
    result = json.loads(out)
    assert code == 1 and not result["ok"]
    assert len(result["rejected"]) == 3 and "(5, 3, 1) is 15" in result["rejected"][0]
    assert "ep(3) * etp(1) must divide dp_shard(8) * cp(1) * tp(2) = 16" in result["layout_problems"]


def test_a_rejected_sharding_prints_no_empty_table(run_cli):
    # Rejected at every stage, the run has no bytes to compare: stdout stays empty (no header-only table, no "0.00 %"
    # error), stderr says what torch refused, exit 1.
    code, out, err = run_cli("validate", str(FIX / "mixtral_ep3_rejected.yaml"), "--dry-run")
    assert code == 1 and out == "" and "runtime rejected the sharding" in err
