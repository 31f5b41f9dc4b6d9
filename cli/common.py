"""Loading the three inputs from command-line values (one place, so every command words errors alike)."""

from __future__ import annotations

import click

from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.calibration import Calibration, load_calibration
from clusterplan.models.hardware.cluster import Cluster, load_cluster

model_option = click.option("--model", "model_ref", required=True,
                            help="Preset name (`clusterplan models list`), config.json path, or model YAML.")
cluster_option = click.option("--cluster", "cluster_ref", required=True,
                              help="PRESET:NODES (e.g. dgx-h100:8), PRESET:NODESxGPUS for GPUS of each node (dgx-h100:1x4) or a cluster YAML file.")
calibration_option = click.option("--calibration", "calibration_path", type=click.Path(dir_okay=False),
                                  default=None, help="Calibration file from `clusterplan profile`.")


def load_inputs(model_ref: str, cluster_ref: str, calibration_path: str | None
                ) -> tuple[ModelSpec, Cluster, Calibration | None]:
    return load_model(model_ref), load_cluster(cluster_ref), load_calibration(calibration_path)
