"""Loading the three inputs from command-line values (one place, so every command words errors alike)."""

from __future__ import annotations

import click

from clusterplan.cli.console import console
from clusterplan.hardware_db.prices import PriceRule
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.calibration import Calibration, load_calibration
from clusterplan.models.hardware.cluster import Cluster, load_cluster
from clusterplan.profiler.datasheet import match_gpu

model_option = click.option("--model", "model_ref", required=True,
                            help="Preset name (`clusterplan models list`), config.json path, or model YAML.")
cluster_option = click.option("--cluster", "cluster_ref", required=True,
                              help="PRESET:NODES (e.g. dgx-h100:8), PRESET:NODESxGPUS for GPUS of each node (dgx-h100:1x4) or a cluster YAML file.")
calibration_option = click.option("--calibration", "calibration_path", type=click.Path(dir_okay=False),
                                  default=None, help="Calibration file from `clusterplan profile`.")


def load_inputs(model_ref: str, cluster_ref: str, calibration_path: str | None, prices: PriceRule | None = None
                ) -> tuple[ModelSpec, Cluster, Calibration | None]:
    """The model, the cluster (its GPUs priced under `prices`; None: the default rule) and the calibration."""
    model, cluster = load_model(model_ref), load_cluster(cluster_ref, prices)
    calibration = load_calibration(calibration_path)
    warn_foreign_calibration(calibration, cluster, calibration_path)
    return model, cluster, calibration


def warn_foreign_calibration(calibration: Calibration | None, cluster: Cluster, path: str | None) -> None:
    """Say so when a calibration was measured on another device than the cluster's GPUs: its measured rates replace
    the datasheet's all the same (a CPU profile priced as an H100 gives hours per step)."""
    device = str((calibration.meta if calibration is not None else {}).get("device_name", ""))
    if not device:
        return
    measured = match_gpu(device)
    gpus = sorted({g.gpu.name for g in cluster.groups})
    if measured is None or measured.name not in gpus:
        console.warn(f"--calibration {path}: measured on {device}"
                     + (f" ({measured.name})" if measured is not None else "")
                     + f", not on this cluster's {', '.join(gpus)}; its rates are used all the same (profile the "
                     "cluster's own GPUs for rates that price it)")
