"""`check train.sh --cluster ...` without --model: the model a Megatron-LM script's own flags build
(frameworks/read.py megatron_model_fields -> Megatron-Core TransformerConfig fields -> models/architecture/mcore.py).

Worked example over every preset: the Megatron-LM export of the preset, read back as a model, has the preset's exact
parameter count, except where pretrain_gpt.py cannot train the preset's own architecture (four norms per layer,
q/k norms over all heads, ALiBi), which the export itself notes; there the script's model is what runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clusterplan.errors import BadInputError
from clusterplan.frameworks import export_plan
from clusterplan.frameworks.read import megatron_model_fields
from clusterplan.models.architecture.catalog import _presets, load_model
from clusterplan.models.architecture.mcore import spec_from_mcore
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.layout import Layout

PRESETS = sorted(_presets()[0])


def _export(tmp_path: Path, name: str) -> tuple[Path, tuple[str, ...]]:
    model = load_model(name)
    layout = Layout(dp=512, mbs=1, gbs=512, seq=min(4096, model.max_positions), zero=1, ep=8 if model.is_moe else 1)
    out = export_plan("megatron", model, load_cluster("dgx-h100:64"), layout)
    path = tmp_path / f"{name}.sh"
    path.write_text(out.text, encoding="utf-8")
    return path, out.notes


@pytest.mark.parametrize("name", PRESETS)
def test_the_script_builds_the_preset(tmp_path, name):
    model = load_model(name)
    path, notes = _export(tmp_path, name)
    spec = spec_from_mcore(megatron_model_fields(path), name=name, where=str(path))
    inexpressible = model.norms_per_layer == 4 or model.qk_norm_full_width or model.position == "alibi"
    if inexpressible:  # the export says what pretrain_gpt.py trains instead
        assert notes and spec.total_params() != model.total_params(), name
    else:
        assert spec.total_params() == model.total_params(), name
        assert spec.active_params() == model.active_params(), name


def test_check_prices_the_scripts_own_model(tmp_path, run_cli):
    path, _ = _export(tmp_path, "mixtral-8x7b")
    code, out, err = run_cli("check", str(path), "--cluster", "dgx-h100:64", "--format", "json")
    assert code == 0, err
    code, with_model, _ = run_cli("check", str(path), "--model", "mixtral-8x7b", "--cluster", "dgx-h100:64",
                                  "--format", "json")
    assert code == 0 and '"peak_gib"' in out
    assert json.loads(out)["estimate"]["memory"] == json.loads(with_model)["estimate"]["memory"]


def test_a_script_without_its_vocabulary_needs_the_model(tmp_path):
    path, _ = _export(tmp_path, "llama3.1-8b")
    path.write_text(path.read_text().replace("--vocab-size", "--tokenizer-model"), encoding="utf-8")
    with pytest.raises(BadInputError, match="names no --vocab-size"):
        megatron_model_fields(path)


def test_a_torchtitan_toml_names_its_model(run_cli):
    # [model] name "llama3" flavor "70B": the preset torchtitan's flavor is (frameworks/read.py TORCHTITAN_MODELS)
    toml = Path(__file__).parent / "fixtures" / "check" / "good_torchtitan.toml"
    code, out, err = run_cli("check", str(toml), "--cluster", "dgx-h100:32")
    assert code == 0 and "llama3.1-70b, tp8 pp4v2" in out, err


def test_an_unknown_torchtitan_flavor_needs_the_model(tmp_path, run_cli):
    path = tmp_path / "job.toml"
    path.write_text('[model]\nname = "llama3"\nflavor = "debugmodel"\n', encoding="utf-8")
    code, out, err = run_cli("check", str(path), "--cluster", "dgx-h100:1")
    assert code == 2 and "give --model" in err and out == ""
