"""Plan files: the three inputs (model, cluster, layout) in one YAML, as `plan --out` writes them and
`check`, `validate` and `export` read them.

    format: clusterplan-plan
    version: 1
    model: llama3.1-70b          # a preset, a path, or an inline ModelSpec mapping
    cluster: dgx-h100:8          # PRESET:NODES, a path, or an inline cluster mapping
    layout: {tp: 8, pp: 4, dp: 2, mbs: 1, gbs: 512, seq: 8192, recompute: selective, sp: true}
    prediction: {...}            # estimate's JSON when written by `plan`; informational
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clusterplan.errors import BadInputError
from clusterplan.fileio import load_mapping, write_atomic
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.cluster import Cluster, cluster_from_dict, load_cluster
from clusterplan.models.training.layout import Layout

FORMAT = "clusterplan-plan"
VERSION = 1


@dataclass(frozen=True, kw_only=True, slots=True)
class PlanFile:
    model: ModelSpec
    cluster: Cluster
    layout: Layout
    model_ref: Any
    cluster_ref: Any
    prediction: dict[str, Any] | None = None


def _model(ref: Any, where: str) -> ModelSpec:
    if isinstance(ref, str):
        return load_model(ref)
    if isinstance(ref, dict):
        data = dict(ref)
        data.pop("aliases", None)
        return ModelSpec.from_dict(data, where=f"{where}: model")
    raise BadInputError(f"{where}: model must be a preset name, a path or a mapping")


def _cluster(ref: Any, where: str) -> Cluster:
    if isinstance(ref, str):
        return load_cluster(ref)
    if isinstance(ref, dict):
        return cluster_from_dict(ref, where=f"{where}: cluster")
    raise BadInputError(f"{where}: cluster must be PRESET:NODES, a path or a mapping")


def read_plan(path: str | Path) -> PlanFile:
    where = str(path)
    if Path(path).suffix.lower() in (".toml", ".txt", ".sh", ".py"):
        raise BadInputError(f"{where}: expected a clusterplan plan file (YAML from `clusterplan plan --out plan.yaml`), "
                            "not a launch config; `clusterplan check` reads torchtitan and Megatron-LM configs")
    data = load_mapping(path)
    if data.get("format") != FORMAT:
        raise BadInputError(f"{where}: not a clusterplan plan file (format {data.get('format')!r}); "
                            "write one with `clusterplan plan --out plan.yaml`")
    if data.get("version") != VERSION:
        raise BadInputError(f"{where}: plan version {data.get('version')!r} unsupported (expected {VERSION})")
    for key in ("model", "cluster", "layout"):
        if key not in data:
            raise BadInputError(f"{where}: missing `{key}:`")
    model = _model(data["model"], where)
    cluster = _cluster(data["cluster"], where)
    if not isinstance(data["layout"], dict):
        raise BadInputError(f"{where}: layout must be a mapping of layout keys")
    layout = Layout.from_dict(data["layout"], world=cluster.world_size, where=f"{where}: layout")
    return PlanFile(model=model, cluster=cluster, layout=layout, model_ref=data["model"],
                    cluster_ref=data["cluster"], prediction=data.get("prediction"))


def write_plan(path: str | Path, *, model_ref: Any, cluster_ref: Any, layout: Layout,
               prediction: dict[str, Any] | None = None) -> None:
    import yaml

    doc = {"format": FORMAT, "version": VERSION, "model": model_ref, "cluster": cluster_ref,
           "layout": layout.to_dict()}
    if prediction is not None:
        doc["prediction"] = prediction
    write_atomic(path, yaml.safe_dump(doc, sort_keys=False))
