"""Model presets and loading a model from a preset name, our YAML, or a Hugging Face config.json."""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from clusterplan.errors import BadInputError
from clusterplan.fileio import is_dir, is_file, load_mapping, load_shipped_yaml, show
from clusterplan.models.architecture.mcore import looks_like_mcore, spec_from_mcore
from clusterplan.models.architecture.spec import ModelSpec

PRESET_DIR = Path(__file__).parent / "presets"


@lru_cache(maxsize=1)
def _raw_presets() -> tuple[tuple[str, str, Mapping[str, Any]], ...]:
    """(file name, preset name, raw entry) of every shipped preset, parsed once for _presets() and _hf_repos()."""
    return tuple((path.name, name, MappingProxyType(dict(raw or {})))
                 for path in sorted(PRESET_DIR.glob("*.yaml")) for name, raw in (load_shipped_yaml(path) or {}).items())


@lru_cache(maxsize=1)
def _presets() -> tuple[Mapping[str, ModelSpec], Mapping[str, str]]:
    specs: dict[str, ModelSpec] = {}
    aliases: dict[str, str] = {}
    for file_name, name, entry in _raw_presets():
        raw = dict(entry)
        for alias in raw.pop("aliases", []) or []:
            aliases[alias] = name
        repo = raw.pop("hf_repo", None)  # serving metadata, read by hf_repo(); its id names the preset too
        if repo:
            for alias in repo_aliases(str(repo)):
                aliases.setdefault(alias, name)
        specs[name] = ModelSpec.from_dict({"name": name, **raw}, where=f"{file_name}: {name}")
    return MappingProxyType(specs), MappingProxyType(aliases)


CHAT_RELEASE = re.compile(r"-(?:Instruct|instruct|Chat|chat|it)(?=$|-v[\d.]+$|-hf$)")
"""The chat / instruct tag of a Hugging Face release id (Llama-3.1-8B-Instruct, Mixtral-8x7B-Instruct-v0.1,
Llama-2-7b-chat-hf, gemma-2-9b-it); the base release (the tag dropped) has the same architecture (config.json)."""
DATED_INSTRUCT = re.compile(r"-Instruct(?=-\d{4}$)")
"""Mistral's dated releases name the base weights -Base- where the instruct ones say -Instruct- (Mistral-Nemo-Base-2407)."""


def repo_aliases(repo: str) -> tuple[str, ...]:
    """The Hugging Face ids a preset answers to: its hf_repo and, for a chat / instruct release, the base one's."""
    base = DATED_INSTRUCT.sub("-Base", CHAT_RELEASE.sub("", repo, count=1), count=1)
    return (repo,) if base == repo else (repo, base)


@lru_cache(maxsize=1)
def _hf_repos() -> Mapping[str, str]:
    return MappingProxyType({name: str(entry["hf_repo"]) for _, name, entry in _raw_presets() if entry.get("hf_repo")})


def hf_repo(name: str) -> str | None:
    """The Hugging Face repository id an engine loads for a preset (the instruct/chat release where one exists)."""
    return _hf_repos().get(name)


def presets() -> Mapping[str, ModelSpec]:
    return _presets()[0]


def load_model(ref: str) -> ModelSpec:
    """A preset name (case-insensitive, aliases allowed), a YAML file of ours, a config.json (file or dir), or a
    Megatron-Bridge ConfigContainer YAML (its `model` section of Megatron-Core TransformerConfig fields)."""
    from clusterplan.hardware_db.catalog import find_name

    path = Path(ref)
    if is_dir(path) and is_file(path / "config.json"):
        path = path / "config.json"
    if path.suffix in (".json", ".yaml", ".yml") or is_file(path):
        data = load_mapping(path)
        if "model_type" in data or "architectures" in data:
            from clusterplan.models.architecture.hf import spec_from_hf

            name = path.parent.name if path.name == "config.json" else path.stem
            return spec_from_hf(data, name=name or "model", where=show(path))
        inner = data.get("model", data)
        if not isinstance(inner, dict):
            raise BadInputError(f"{show(path)}: `model:` must be a mapping of model fields, got {type(inner).__name__}")
        if looks_like_mcore(inner):  # Megatron-Core TransformerConfig names: a Megatron-Bridge ConfigContainer
            return spec_from_mcore(inner, name=path.stem, where=show(path))
        data = dict(inner)
        data.pop("aliases", None)
        data.setdefault("name", path.stem)
        return ModelSpec.from_dict(data, where=show(path))
    if ref.startswith(("/", "./", "../", "~")) and not is_dir(path):  # a path, not a name: never a preset's letters
        raise BadInputError(f"{show(ref)}: no such file or directory; give a config.json (or its folder), a model "
                            "YAML or a preset (`clusterplan models list`)")
    specs, aliases = _presets()
    try:
        return find_name("model (preset name, or path of a config.json / YAML file)", ref, specs, aliases, "models list")
    except BadInputError:
        if ref.strip() not in ("", ".") and is_dir(path):
            raise BadInputError(f"{show(ref)}: a directory without config.json; give a Hugging Face model directory, a "
                                "config.json, a model YAML or a preset (`clusterplan models list`)") from None
        raise
