"""`export --to megatron-bridge`: a plan as ConfigContainer overrides on a Megatron-Bridge recipe, run by
scripts/training/run_recipe.py.

The script is run here with a stand-in `torchrun` that prints the arguments it gets: what bash hands over is what
Megatron-Bridge receives. Each override is parsed by Hydra's own override parser (Megatron-Bridge
training/utils/omegaconf_utils.py parse_hydra_overrides) and must mean what `check` reads from it (frameworks/bridge.py);
the round trip itself (check reads back the layout Megatron-Core runs) is tests/test_roundtrip.py's law over every plan.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from clusterplan.fileio import loads_yaml
from clusterplan.frameworks import export_plan, read_config, runs_as
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.layout import Layout

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

PLANS = [
    # model, cluster, layout: uneven ends vpp does not divide (the layout string, quoted for Hydra), CUDA graphs of the
    # attention block, bf16 Adam moments, MXFP8 parameters, activation offloading, a dispatcher backend, a hybrid
    ("llama3.1-70b", "dgx-h100:8", {"tp": 8, "pp": 4, "vpp": 2, "mbs": 1, "gbs": 512, "seq": 8192, "sp": True,
                                    "schedule": "interleaved-1f1b", "first_stage_layers": 19, "last_stage_layers": 17,
                                    "cuda_graphs": "attn", "bf16_moments": True, "zero": 1}),
    ("llama3.1-8b", "dgx-b200:1", {"mbs": 1, "gbs": 64, "seq": 8192, "zero": 1, "fp8_recipe": "mxfp8",
                                   "fp8_params": True, "offload_layers": 4, "recompute": "selective",
                                   "recompute_modules": "core_attn+mlp"}),
    ("qwen3-30b-a3b", "dgx-h100:2", {"ep": 8, "mbs": 1, "gbs": 128, "seq": 4096, "zero": 1,
                                     "moe_dispatcher": "deepep", "moe_a2a_overlap": True}),
    ("qwen3-30b-a3b", "dgx-h100:2", {"ep": 8, "mbs": 1, "gbs": 128, "seq": 4096, "zero": 1, "cuda_graphs": "full",
                                     "moe_capacity_factor": 1.0}),
    ("nemotron-h-56b", "dgx-h100:4", {"tp": 8, "mbs": 1, "gbs": 96, "seq": 8192, "sp": True, "precision": "fp8",
                                      "fp8_params": True, "recompute": "none", "zero": 1}),
]


def _fake_torchrun(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "torchrun"
    fake.write_text('#!/bin/bash\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def _run(tmp_path: Path, model: str, cluster: str, layout: dict, env: dict[str, str]) -> tuple[str, list[str]]:
    text = export_plan("megatron-bridge", load_model(model), load_cluster(cluster),
                       Layout.from_dict(layout, world=load_cluster(cluster).world_size)).text
    script = tmp_path / f"{model}.sh"
    script.write_text(text)
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    return text, done.stdout.splitlines()


@pytest.mark.parametrize(("model", "cluster", "layout"), PLANS)
def test_what_bash_hands_to_the_runner_is_what_check_reads(tmp_path, model, cluster, layout):
    env = {**_fake_torchrun(tmp_path), "RECIPE": "my_recipe_config"}
    text, argv = _run(tmp_path, model, cluster, layout, env)
    assert argv[argv.index("--recipe") + 1] == ("my_recipe_config")
    assert argv[argv.index("--nproc-per-node") + 1] == str(load_cluster(cluster).primary.gpus_per_node)
    overrides = [a for a in argv if "=" in a and "." in a.partition("=")[0]]
    assert overrides, argv
    # check reads the script itself back as the layout Megatron-Core runs
    read = read_config(tmp_path / f"{model}.sh", load_model(model), load_cluster(cluster).world_size)
    spec = load_model(model)
    assert read.layout == runs_as("megatron-bridge", spec, Layout.from_dict(layout, world=read.layout.world))
    assert read.mismatches == () and read.kind == "megatron-bridge"
    # Hydra parses each override to the value our reader takes from it
    parser = pytest.importorskip("hydra.core.override_parser.overrides_parser").OverridesParser.create()
    for parsed, raw in zip(parser.parse_overrides(overrides), overrides, strict=True):
        ours = loads_yaml(raw.partition("=")[2], raw)
        assert parsed.value() == ours, raw


def test_the_quoting_that_needs_it(tmp_path):
    env = {**_fake_torchrun(tmp_path), "RECIPE": "x"}
    _, argv = _run(tmp_path, *PLANS[0], env)
    # the per-chunk layout keeps Hydra's quotes through bash; a list stays one word (no glob, no splitting)
    assert any(a.startswith("model.pipeline_model_parallel_layout='Et*") and a.endswith("L'") for a in argv)
    assert "model.cuda_graph_scope=[attn]" in argv
    assert "optimizer.exp_avg_dtype=torch.bfloat16" in argv


def test_a_model_without_a_known_recipe_stops_before_launch(tmp_path):
    env = _fake_torchrun(tmp_path)
    env.pop("RECIPE", None)
    text = export_plan("megatron-bridge", load_model("mixtral-8x7b"), load_cluster("dgx-h100:1"),
                       Layout(ep=8, dp=8, mbs=1, gbs=64, seq=4096, zero=1)).text
    script = tmp_path / "run.sh"
    script.write_text(text)
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, check=False)
    assert done.returncode != 0 and "set RECIPE to the Megatron-Bridge pre-training recipe of mixtral-8x7b" in \
        done.stderr
    # a preset with a recipe names it (and RECIPE still overrides it)
    text = export_plan("megatron-bridge", load_model("llama3.1-8b"), load_cluster("dgx-h100:1"),
                       Layout(dp=8, mbs=1, gbs=64, seq=8192, zero=1)).text
    assert 'RECIPE="${RECIPE:-llama31_8b_pretrain_config}"' in text


@pytest.mark.parametrize(("model", "cluster", "layout"), PLANS)
def test_the_overrides_merge_onto_a_recipe_whose_mixed_precision_is_a_name(tmp_path, model, cluster, layout):
    # Megatron-Bridge recipes such as llama31_8b_pretrain_config keep mixed_precision as the name "bf16_mixed", and
    # run_recipe.py applies overrides in struct mode (omegaconf_utils.parse_hydra_overrides): a
    # `mixed_precision.<field>=` override would fail there ("Could not override"), so only the name is written.
    omegaconf = pytest.importorskip("omegaconf")
    loader = pytest.importorskip("hydra._internal.config_loader_impl").ConfigLoaderImpl
    parser = pytest.importorskip("hydra.core.override_parser.overrides_parser").OverridesParser.create()
    env = {**_fake_torchrun(tmp_path), "RECIPE": "x"}
    _, argv = _run(tmp_path, model, cluster, layout, env)
    overrides = [a for a in argv if "=" in a and a.partition("=")[0].split(".")[0] in (
        "model", "train", "dataset", "ddp", "optimizer", "dist", "mixed_precision")]
    base: dict = {"mixed_precision": "bf16_mixed"}
    for o in overrides:
        key = o.partition("=")[0]
        if "." in key:
            section, field = key.split(".", 1)
            base.setdefault(section, {})[field] = None
    cfg = omegaconf.OmegaConf.create(base)
    omegaconf.OmegaConf.set_struct(cfg, True)
    loader._apply_overrides_to_config(overrides=parser.parse_overrides(overrides), cfg=cfg)
    assert isinstance(cfg.mixed_precision, str)


def test_a_bf16_plan_runs_a_full_fp32_master_under_bridge(tmp_path):
    # bf16_mixed hands its fp8_recipe ("tensorwise") to the optimizer config (MixedPrecisionConfig.setup), and
    # Megatron-Core keeps 2-byte master remainders only for fp8_recipe None or delayed: the export runs (and check
    # reads) a full fp32 master; the Megatron-LM export of the same plan keeps the remainders it was priced with
    model, cluster = load_model("llama3.1-8b"), load_cluster("dgx-h100:1")
    layout = Layout(dp=8, zero=1, mbs=1, gbs=64, seq=8192)
    assert runs_as("megatron-bridge", model, layout).precision_aware is False
    assert runs_as("megatron", model, layout).precision_aware is True
    path = tmp_path / "run.sh"
    path.write_text(export_plan("megatron-bridge", model, cluster, layout).text, encoding="utf-8")
    assert read_config(path, model, 8).layout.precision_aware is False


def test_the_export_says_when_bridge_runs_a_full_master(tmp_path):
    model, cluster = load_model("llama3.1-8b"), load_cluster("dgx-h100:1")
    out = export_plan("megatron-bridge", model, cluster, Layout(dp=8, zero=1, mbs=1, gbs=64, seq=8192))
    assert any(n.field == "precision_aware" and "full fp32 master" in n.text for n in out.noted)
    fp8 = export_plan("megatron-bridge", model, cluster, Layout(dp=8, zero=1, mbs=1, gbs=64, seq=8192,
                                                                precision="fp8", fp8_params=True))
    assert not any(n.field == "precision_aware" for n in fp8.noted)  # fp8-only parameters keep a full master anyway
