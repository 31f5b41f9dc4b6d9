"""`check` refuses, in one line, configs the framework itself refuses at start-up, instead of passing them and pricing
another layout (they reached "ok" before):

- Megatron-LM validate_args: "number of layers per pipeline stage must be divisible number of layers per virtual
  pipeline stage" (--num-layers-per-virtual-pipeline-stage);
- Megatron-Core TransformerConfig.__post_init__: full recompute needs recompute_method block or uniform (and, in a
  Megatron-Bridge container, where recompute_num_layers defaults to None, a layer count); selective recompute takes
  no recompute_num_layers;
- torchtitan's activation checkpointing: selective_ac_option is 'op' or a positive integer.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from clusterplan.frameworks import export_plan
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.layout import Layout

MODEL, CLUSTER = load_model("llama3.1-70b"), load_cluster("dgx-h100:8")
PLAN = Layout(tp=8, pp=2, vpp=4, dp=4, zero=1, mbs=1, gbs=512, seq=8192, recompute="selective", sp=True,
              schedule="interleaved-1f1b")
BRIDGE = Path(__file__).parent / "fixtures" / "bridge" / "llama32_1b_run_config.yaml"


def _check(run_cli, path: Path, *args: str) -> tuple[int, str, str]:
    return run_cli("check", str(path), "--model", "llama3.1-70b", "--cluster", "dgx-h100:8", *args)


def _megatron(tmp_path: Path, old: str, new: str) -> Path:
    text = export_plan("megatron", MODEL, CLUSTER, PLAN).text
    assert old in text
    path = tmp_path / "train.sh"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


def test_the_exported_script_passes(run_cli, tmp_path):
    code, out, _ = _check(run_cli, _megatron(tmp_path, "--recompute-granularity selective",
                                              "--recompute-granularity selective"))
    assert code == 0 and out.startswith("ok"), out


@pytest.mark.parametrize("chunk", [7, 50])
def test_virtual_stage_layers_that_do_not_divide_a_stage(run_cli, tmp_path, chunk):
    # 80 layers over pp 2 = 40 per stage: 7 does not divide it (read as vpp 5 before), 50 exceeds it (vpp dropped).
    path = _megatron(tmp_path, "--num-layers-per-virtual-pipeline-stage 10",
                     f"--num-layers-per-virtual-pipeline-stage {chunk}")
    code, out, err = _check(run_cli, path)
    assert code == 2 and out == "" and (f"--num-layers-per-virtual-pipeline-stage {chunk} does not divide the 40 "
                                        "layers per pipeline stage") in err


def test_full_recompute_without_a_method(run_cli, tmp_path):
    path = _megatron(tmp_path, "--recompute-granularity selective", "--recompute-granularity full")
    code, _, err = _check(run_cli, path)
    assert code == 2 and "--recompute-granularity full needs --recompute-method block or uniform" in err


def test_bridge_recompute_fields_as_megatron_core_checks_them(run_cli, tmp_path):
    text = BRIDGE.read_text()
    assert "recompute_granularity: null" in text
    for granularity, extra, expect in (
            ("full", "", "e.g. recompute_method uniform, recompute_num_layers 1"),
            ("full", "\n  recompute_method: uniform", "full needs model.recompute_num_layers"),
            ("selective", "\n  recompute_num_layers: 3", "recompute_num_layers 3 with recompute_granularity selective")):
        edited = text.replace("recompute_granularity: null", f"recompute_granularity: {granularity}{extra}", 1)
        edited = edited.replace("  recompute_method: null\n", "", 1).replace("  recompute_num_layers: null\n", "", 1)
        path = tmp_path / f"{granularity}.yaml"
        path.write_text(edited, encoding="utf-8")
        code, _, err = run_cli("check", str(path), "--cluster", "dgx-h100:1")
        assert code == 2 and expect in err, (granularity, err)


@pytest.mark.parametrize("option", ["abc", "-2"])
def test_torchtitan_selective_option(run_cli, tmp_path, option):
    text = export_plan("torchtitan", load_model("llama3.1-8b"), load_cluster("dgx-h100:1"),
                       Layout(dp=8, zero=3, mbs=1, gbs=64, seq=4096, recompute="selective")).text
    assert 'selective_ac_option = "op"' in text
    path = tmp_path / "job.toml"
    path.write_text(text.replace('selective_ac_option = "op"', f'selective_ac_option = "{option}"'), encoding="utf-8")
    code, _, err = run_cli("check", str(path), "--model", "llama3.1-8b", "--cluster", "dgx-h100:1")
    assert code == 2 and f"selective_ac_option {option!r}: torchtitan takes 'op'" in err


def test_torchtitan_selective_option_zero_checkpoints_every_block(tmp_path):
    # torchtitan's layer SAC: `if not ac_freq or count % ac_freq == 0` wraps the block, so "0" wraps every one.
    from clusterplan.frameworks import read_config

    text = export_plan("torchtitan", load_model("llama3.1-8b"), load_cluster("dgx-h100:1"),
                       Layout(dp=8, zero=3, mbs=1, gbs=64, seq=4096, recompute="selective")).text
    path = tmp_path / "job.toml"
    path.write_text(text.replace('selective_ac_option = "op"', 'selective_ac_option = "0"'), encoding="utf-8")
    layout = read_config(path, load_model("llama3.1-8b"), 8).layout
    assert (layout.recompute, layout.recompute_layers) == ("full", 0)


def test_virtual_stage_flags_beside_uneven_ends(run_cli, tmp_path):
    # Megatron-LM refuses --num-layers-per-virtual-pipeline-stage with --decoder-first/last-pipeline-num-layers, and
    # Megatron-Core ends that the virtual stages do not divide.
    path = _megatron(tmp_path, "--num-layers-per-virtual-pipeline-stage 10",
                     "--num-layers-per-virtual-pipeline-stage 6 --decoder-first-pipeline-num-layers 16 "
                     "--decoder-last-pipeline-num-layers 16")
    code, _, err = _check(run_cli, path)
    assert code == 2 and "give --num-virtual-stages-per-pipeline-rank instead" in err
    path = _megatron(tmp_path, "--num-layers-per-virtual-pipeline-stage 10",
                     "--num-virtual-stages-per-pipeline-rank 4 --decoder-first-pipeline-num-layers 26 "
                     "--decoder-last-pipeline-num-layers 26")
    code, _, err = _check(run_cli, path)
    assert code == 2 and "Megatron-Core wants each a multiple of 4" in err


def test_an_uneven_layer_count_is_fixed_in_the_configs_own_flags(run_cli, tmp_path):
    # 80 layers on pp 3: the fix names Megatron-LM's flags for the split beside clusterplan's layout keys.
    path = _megatron(tmp_path, "--pipeline-model-parallel-size 2", "--pipeline-model-parallel-size 3")
    text = path.read_text()
    path.write_text("\n".join(line for line in text.splitlines() if "virtual-pipeline" not in line) + "\n",
                    encoding="utf-8")
    code, out, _ = run_cli("check", str(path), "--model", "llama3.1-70b", "--cluster", "dgx-h100:12")
    assert code == 1 and ("(in this config: --decoder-first-pipeline-num-layers 26 "
                          "--decoder-last-pipeline-num-layers 27)") in out
    # with 4 virtual stages the flags want whole chunks: 24 + 28 + 28, not 26 + 28 + 26
    from clusterplan.models.training.layout import uneven_split

    assert uneven_split(80, 3, 4) == (26, 26) and uneven_split(80, 3, 4, whole_chunks=True) == (24, 28)


def test_check_names_what_is_missing(run_cli, tmp_path):
    path = _megatron(tmp_path, "--recompute-granularity selective", "--recompute-granularity selective")
    code, _, err = run_cli("check", str(path), "--model", "llama3.1-70b")
    assert code == 2 and "give --cluster (e.g." in err
