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
