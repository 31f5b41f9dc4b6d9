"""Worked examples of the day-one commands: hw and models, and one-line errors with exit code 2."""

from __future__ import annotations

import json

import pytest


def test_hw_list_json_lists_gpus_links_nodes(run_cli):
    code, out, _ = run_cli("hw", "list", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["gpus"]["H100-SXM5-80GB"]["peak_tflops"]["bf16"] == 989.4
    assert data["links"]["nvlink4"]["gb_per_s"] == 450
    assert data["nodes"]["dgx-h100"]["gpus_per_node"] == 8


def test_hw_show_by_alias(run_cli):
    code, out, _ = run_cli("hw", "show", "A100-80GB", "--format", "json")
    assert code == 0
    assert json.loads(out)["name"] == "A100-SXM4-80GB"


def test_unknown_model_far_from_every_preset_points_to_the_list(run_cli):
    """Nothing close to 'falcon-40b' among ~90 presets: one short line naming the list command, not every preset."""
    code, out, err = run_cli("models", "show", "falcon-40b")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "no name is close" in err and "models list" in err
    assert "llama3.1-8b" not in err and len(err) < 200


def test_unknown_gpu_is_one_line_exit_2(run_cli):
    code, out, err = run_cli("hw", "show", "H1OO-SXM")
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and "did you mean" in err and "Traceback" not in err


def test_models_show_counts_params(run_cli):
    code, out, _ = run_cli("models", "show", "llama3.1-8b", "--format", "json")
    assert code == 0
    assert abs(json.loads(out)["total_params"] / 8.03e9 - 1) < 0.005


def test_unknown_model_exit_2(run_cli):
    code, _, err = run_cli("models", "show", "no-such-model")
    assert code == 2 and "unknown model" in err and err.count("\n") == 1


def _node_rows(out: str) -> list[str]:
    lines = out.splitlines()
    start = lines.index("Node presets (--cluster NAME:NODES)") + 2  # past the title and the header
    end = lines.index("", start)
    return lines[start:end]


def test_hw_list_shows_node_preset_names_whole_so_they_can_be_copied(run_cli, monkeypatch):
    # Before, the long description column squeezed the name to "hgx…"; the description now wraps instead.
    from clusterplan.cli.console import console
    from clusterplan.hardware_db import load_db

    names = set(load_db().nodes)
    for width in (250, 100):  # 250: a pipe (console.py); 100: a narrow terminal
        monkeypatch.setattr(console.out, "width", width)
        code, out, _ = run_cli("hw", "list")
        assert code == 0 and "…" not in "".join(_node_rows(out))
        first_words = {row.split()[0] for row in _node_rows(out) if not row.startswith(" ")}
        assert first_words == names


@pytest.mark.parametrize("name", ["mi325x-8", "MI300X", "infinity-fabric-mi300"])
def test_hw_show_keeps_field_names_and_sources_whole(run_cli, monkeypatch, name):
    # A long source squeezed the field column to "gpus_pe…" and cut the source itself; the value column now wraps.
    from clusterplan.cli.console import console

    code, out, _ = run_cli("hw", "show", name, "--format", "json")
    data = json.loads(out)
    for width in (250, 100):
        monkeypatch.setattr(console.out, "width", width)
        code, out, _ = run_cli("hw", "show", name)
        assert code == 0 and "…" not in out
        fields = {line.split()[0] for line in out.splitlines()[1:] if line and not line.startswith(" ")}
        assert {k for k, v in data.items() if not isinstance(v, dict)} <= fields
        assert " ".join(str(data["source"] if "source" in data else "").split()) in " ".join(out.split())


def test_hw_show_gpu_includes_its_gemm_shape_model_with_sources(run_cli):
    # gemm.yaml belongs to the GPU: its tile, MAMF shape and k-depth constants are shown with their sources.
    code, out, _ = run_cli("hw", "show", "B200", "--format", "json")
    gemm = json.loads(out)["gemm"]
    assert code == 0 and gemm["sm_count"] == 148 and gemm["bf16_k_overhead"] == 190 and gemm["fp8_k_overhead"] == 577
    assert "OpenXLA" in gemm["sources"]["k_depth_bf16"]
    code, out, _ = run_cli("hw", "show", "B200")
    assert code == 0 and "gemm.bf16_k_overhead" in out and "gemm.sources.k_depth_bf16" in out
    code, out, _ = run_cli("hw", "show", "nvlink4", "--format", "json")  # links and nodes have none
    assert code == 0 and "gemm" not in json.loads(out)


def test_hw_lists_and_shows_the_execution_stacks_with_their_sources(run_cli):
    # The fourth input, as data: `hw list` has a line per stack, `hw show NAME` every field and its source.
    code, out, _ = run_cli("hw", "list", "--format", "json")
    stacks = json.loads(out)["stacks"]
    assert code == 0 and {"megatron-core", "torchtitan", "deepspeed", "nanotron"} <= set(stacks)
    assert stacks["nanotron"]["dense_host"]["forward"]["tp2"]["kernel_op"] == 24
    code, out, _ = run_cli("hw", "list")
    row = next(line for line in out.splitlines() if line.startswith("nanotron "))
    assert code == 0 and row.split()[1:4] == ["fa2", "local_shard", "0,1"] and row.split()[-1] == "dense"
    code, out, _ = run_cli("hw", "show", "nanotron", "--format", "json")
    data = json.loads(out)
    assert code == 0 and data["tp_gather_buffers"] == 2 and "TransformerEngine#2053" in data["dense_host"]["sources"]["call_s"]
    assert "moe_host" not in data  # a stack without MoE host data shows no empty record
    code, out, _ = run_cli("hw", "show", "nanotron")
    assert code == 0 and "dense_host.call_s.x86.triton_launch" in out and "sources.tp_gather_buffers" in out


def test_a_calibration_of_another_gpu_is_named_on_stderr(run_cli):
    """Our H200 profile applied to a DGX H100 cluster: the rates are used (a user may mean it) and stderr says they
    were measured elsewhere; on an H200 cluster nothing is said."""
    cal = "hardware_db/data/calibration/nvidia-h200-x1-2026-12-04.json"
    args = ("estimate", "--model", "llama3.1-8b", "--layout", "tp=8,gbs=8,seq=4096", "--calibration", cal)
    code, _, err = run_cli(*args, "--cluster", "dgx-h100:1")
    assert code == 0 and "measured on NVIDIA H200 (H200-SXM-141GB), not on this cluster's H100-SXM5-80GB" in err
    code, _, err = run_cli(*args, "--cluster", "hgx-h200:1")
    assert code == 0 and "measured on" not in err
