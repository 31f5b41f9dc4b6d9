"""`clusterplan experts` and `clusterplan experts synth` end to end, including the placement file."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture
def mixtral_stats(tmp_path, run_cli):
    path = tmp_path / "mixtral.json"
    code, out, _ = run_cli("experts", "synth", "--model", "mixtral-8x7b", "--layers", "3", "--tokens", "2000",
                           "--seed", "4", "--out", str(path), "--format", "json")
    assert code == 0 and json.loads(out)["files"] == [str(path)]
    return path


def test_synth_is_deterministic(tmp_path, run_cli):
    for name in ("a.npz", "b.npz"):
        assert run_cli("experts", "synth", "--experts", "16", "--top-k", "2", "--layers", "2", "--seed", "9",
                       "--out", str(tmp_path / name))[0] == 0
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_place_json_and_placement_file(tmp_path, run_cli, mixtral_stats):
    out_file = tmp_path / "placement.json"
    args = ("experts", "--model", "mixtral-8x7b", "--cluster", "dgx-h100:2", "--stats", str(mixtral_stats),
            "--method", "both", "--time-limit", "60", "--format", "json", "--out", str(out_file))
    code, out, err = run_cli(*args)
    assert code == 0, err
    data = json.loads(out)
    assert data["num_gpus"] == 16 and data["slots_per_gpu"] == 1  # 8 experts < 16 GPUs: one slot each
    eplb, ilp = data["methods"]["eplb"]["summary"], data["methods"]["ilp"]["summary"]
    assert ilp["max_over_mean_worst"] <= eplb["max_over_mean_worst"]
    assert ilp["cross_node_bytes"] <= eplb["cross_node_bytes"]
    assert len(data["methods"]["ilp"]["layers"]) == 3
    placement = json.loads(out_file.read_text())
    phy2log = np.array(placement["physical_to_logical_map"])
    assert placement["method"] == "ilp" and phy2log.shape == (3, 16)
    assert placement["moe_layers"] == [0, 1, 2]
    for layer in range(3):  # every expert has a slot; replica counts match the map
        counts = np.bincount(phy2log[layer], minlength=8)
        assert counts.min() >= 1 and counts.tolist() == placement["logical_replica_count"][layer]
    # Same inputs, same answer (CBC single-threaded, seeded, node-limited).
    code, again, _ = run_cli(*args[:-2], "--out", str(tmp_path / "again.json"))
    assert code == 0 and again == out
    assert (tmp_path / "again.json").read_text() == out_file.read_text()


def test_place_table_eplb_only(run_cli, mixtral_stats):
    code, out, _ = run_cli("experts", "--model", "mixtral-8x7b", "--cluster", "dgx-h100:2", "--stats",
                           str(mixtral_stats), "--method", "eplb")
    assert code == 0
    assert "eplb" in out and "cross-node GB" in out and "ilp " not in out


@pytest.mark.parametrize("args, message", [
    (("--model", "llama3.1-8b", "--cluster", "dgx-h100:1"), "dense"),
    (("--model", "deepseek-v3", "--cluster", "dgx-h100:1"), "256 routed experts"),
    (("--model", "mixtral-8x7b", "--cluster", "dgx-h100:1", "--slots-per-gpu", "0"), "--slots-per-gpu"),
    (("--model", "mixtral-8x7b", "--cluster", "dgx-h100:2", "--expert-groups", "3"), "expert groups"),
])
def test_bad_input_is_one_line_exit_2(run_cli, mixtral_stats, args, message):
    code, out, err = run_cli("experts", "--stats", str(mixtral_stats), *args)
    assert code == 2 and out == ""
    assert message in err and err.strip().count("\n") == 0 and "Traceback" not in err


def test_missing_stats_flag(run_cli):
    code, _, err = run_cli("experts", "--model", "mixtral-8x7b", "--cluster", "dgx-h100:1")
    assert code == 2 and "missing --stats" in err
