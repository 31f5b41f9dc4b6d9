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
            "--method", "both", "--engine", "chained", "--time-limit", "60", "--format", "json",
            "--out", str(out_file))
    code, out, err = run_cli(*args)
    assert code == 0, err
    data = json.loads(out)
    assert data["num_gpus"] == 16 and data["slots_per_gpu"] == 1  # 8 experts < 16 GPUs: one slot each
    assert data["dispatch_rule"]["name"] == "chained" and data["solver"]["optimiser"] == "ilp"
    eplb, chosen = data["methods"]["eplb-global"]["summary"], data["methods"]["chosen"]["summary"]
    assert "eplb-hierarchical" not in data["methods"]  # Mixtral has no expert groups
    assert chosen["max_over_mean_worst"] <= eplb["max_over_mean_worst"]
    assert chosen["all_to_all_s"] <= eplb["all_to_all_s"]
    assert len(data["methods"]["ilp"]["layers"]) == 3
    placement = json.loads(out_file.read_text())
    phy2log = np.array(placement["physical_to_logical_map"])
    assert placement["method"] == "ilp+eplb-global" and placement["dispatch_rule"] == "chained"
    assert phy2log.shape == (3, 16)
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


def test_engine_placement_files(tmp_path, run_cli):
    # DeepSeek-V3 has 3 dense layers then 58 MoE layers. SGLang indexes its map by model layer (61 rows);
    # TensorRT-LLM keys assignments by MoE layer index (3..60). Layers the statistics do not cover (here all
    # but the first two MoE layers) get the trivial map slot % 256, as SGLang's default placement.
    stats = tmp_path / "ds.npz"
    assert run_cli("experts", "synth", "--model", "deepseek-v3", "--layers", "2", "--tokens", "4096",
                   "--out", str(stats))[0] == 0
    common = ("experts", "--model", "deepseek-v3", "--cluster", "dgx-h100:8", "--stats", str(stats),
              "--method", "eplb")
    ours, sglang, trtllm = tmp_path / "p.json", tmp_path / "sglang.json", tmp_path / "trtllm.yaml"
    assert run_cli(*common, "--out", str(ours))[0] == 0
    assert run_cli(*common, "--out", str(sglang), "--out-format", "sglang")[0] == 0
    assert run_cli(*common, "--out", str(trtllm), "--out-format", "trtllm")[0] == 0
    placed = json.loads(ours.read_text())["physical_to_logical_map"]
    assert np.array(placed).shape == (2, 320)  # 256 experts + 64 spare slots (5 per GPU)
    sg = json.loads(sglang.read_text())
    assert list(sg) == ["physical_to_logical_map"] and len(sg["physical_to_logical_map"]) == 61
    assert sg["physical_to_logical_map"][3:5] == placed
    assert sg["physical_to_logical_map"][0] == [s % 256 for s in range(320)]
    import yaml

    trt = yaml.safe_load(trtllm.read_text())
    assert trt["num_slots"] == 320 and trt["layer_updates_per_iter"] == 0
    assert sorted(trt["initial_global_assignments"]) == list(range(3, 61))
    assert [trt["initial_global_assignments"][3], trt["initial_global_assignments"][4]] == placed


def test_tokens_per_step_scales_traffic(run_cli, mixtral_stats):
    # The statistics hold 2000 tokens per layer; --tokens-per-step 4000 doubles every token and byte count.
    common = ("experts", "--model", "mixtral-8x7b", "--cluster", "dgx-h100:2", "--stats", str(mixtral_stats),
              "--method", "eplb", "--format", "json")
    one = json.loads(run_cli(*common)[1])["methods"]["eplb-global"]["summary"]
    two = json.loads(run_cli(*common, "--tokens-per-step", "4000")[1])["methods"]["eplb-global"]["summary"]
    assert two["cross_node_bytes"] == pytest.approx(2 * one["cross_node_bytes"])
    assert two["expert_compute_s"] == pytest.approx(2 * one["expert_compute_s"])
    assert two["max_over_mean_worst"] == pytest.approx(one["max_over_mean_worst"])
