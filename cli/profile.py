"""`clusterplan profile`: measure GEMM, attention, memory and collectives here; write a calibration file."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from clusterplan.cli.console import console
from clusterplan.cli.options import format_option, output_path, quiet_option
from clusterplan.errors import BadInputError


def _precheck(model: str | None, layout: str | None, out: Path, resume: bool) -> None:
    """Fail fast, before any worker starts, on inputs the workers would reject."""
    from clusterplan.models.hardware.calibration import calibration_from_dict
    from clusterplan.models.training.layout import Layout

    if layout and not model:
        raise BadInputError("--layout needs --model (the layout shapes that model's GEMMs)")
    if model:
        from clusterplan.models.architecture.catalog import load_model

        load_model(model)
    if layout:
        Layout.parse(layout)
    existing = next(p for p in (out.parent, *out.parent.parents) if p.exists())
    if not existing.is_dir():  # the workers would fail making `OUT.logs` next to it
        raise BadInputError(f"{out}: cannot write ({existing} is a file, not a folder); give a path in a writable folder")
    if resume and out.exists():
        from clusterplan.fileio import load_mapping

        calibration_from_dict(load_mapping(out), path=str(out))
    elif resume:
        console.info(f"{out}: nothing to resume yet; starting a new run")


def _worker_args(out: Path, model: str | None, layout: str | None, quick: bool, resume: bool,
                 device: str) -> list[str]:
    args = ["--out", str(out), "--device", device]
    args += ["--model", model] if model else []
    args += ["--layout", layout] if layout else []
    args += ["--quick"] if quick else []
    args += ["--resume"] if resume and out.exists() else []
    return args


def _summary_rows(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    for dtype, g in sorted((data.get("gemm") or {}).items()):
        rows.append((f"GEMM {dtype}", f"{g['max_tflops']:.4g} TFLOP/s max", f"half of it at {g['half_flops']:.3g} FLOPs"))
    if "copy_bytes_per_s" in (data.get("memory") or {}):
        rows.append(("memory copy", f"{data['memory']['copy_bytes_per_s'] / 1e9:.4g} GB/s", "read + write"))
    for op, levels in sorted((data.get("collectives") or {}).items()):
        for level, c in sorted(levels.items()):
            rows.append((f"{op} {level}", f"{c['busbw_bytes_per_s'] / 1e9:.4g} GB/s busbw",
                         f"{c['latency_s'] * 1e6:.3g} us per step, {c['n_ranks']} ranks"))
    return rows


def _run(nproc: int, nodes: int, timeout_s: float, out: Path, worker_args: list[str]) -> None:
    """Launch the workers; the bar follows the slowest rank's measurement (phase and shape)."""
    from clusterplan.profiler.runner import launch

    with console.progress("profile") as progress:
        launch(worker_args, nproc=nproc, timeout_s=timeout_s, out=str(out), on_progress=progress, nodes=nodes)


@click.command()
@click.option("--nproc", type=click.IntRange(1, 4096), default=None,
              help="Worker processes on this machine [default: the GPUs torch sees, or 2 on CPU].")
@click.option("--model", help="Measure this model's GEMM shapes too (preset, YAML or config.json).")
@click.option("--layout", help='Layout for the model shapes, e.g. "tp=8,mbs=1,seq=8192".')
@click.option("--quick", is_flag=True, help="Reduced sweep (CI: under a minute on CPU).")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=Path("calibration.json"), callback=output_path,
              help="Calibration file to write; rewritten atomically after every measurement.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run recorded in --out.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1.0), default=300.0,
              help="Seconds without progress after which a rank counts as hung and the run stops.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              help="cuda (NCCL) when torch sees GPUs, else cpu (gloo).")
@click.option("--fake-nodes", type=click.IntRange(1, 64), default=1,
              help="Split the CPU processes into this many pretend nodes (tries the scale_out level on one machine).")
@quiet_option
@format_option
def profile(nproc: int | None, model: str | None, layout: str | None, quick: bool, out: Path, resume: bool,
            timeout_s: float, device: str, fake_nodes: int, fmt: str) -> None:
    """Measure GEMM, attention, memory and collectives with torch.distributed; write a calibration.

    Many machines: run `torchrun ... -m clusterplan.profiler.worker --out FILE` on each (see README).
    """
    from clusterplan.fileio import load_mapping
    from clusterplan.profiler.datasheet import compare, match_gpu
    from clusterplan.profiler.runner import cuda_devices

    if not timeout_s < math.inf:  # FloatRange lets NaN and inf through
        raise BadInputError(f"--timeout {timeout_s:g}: give a finite number of seconds")
    _precheck(model, layout, out, resume)
    gpus = cuda_devices() if device != "cpu" else 0
    if device == "cuda" and not gpus:
        raise BadInputError("--device cuda but torch sees no CUDA device; use --device cpu")
    nproc = nproc or gpus or 2
    if gpus and device != "cpu" and nproc > gpus:
        raise BadInputError(f"--nproc {nproc} but this machine has {gpus} GPUs; use --nproc {gpus} or fewer")
    if fake_nodes > 1 and (gpus or nproc % fake_nodes):
        raise BadInputError(f"--fake-nodes {fake_nodes} needs --device cpu and --nproc a multiple of it "
                            f"(got --nproc {nproc}); on real nodes use torchrun (see README)")
    if nproc == 1:
        console.warn("--nproc 1: no collectives to measure (give --nproc 2 or more)")
    _run(nproc, fake_nodes, timeout_s, out, _worker_args(out, model, layout, quick, resume, device))
    data = load_mapping(out)
    gpu = match_gpu(data["meta"]["device_name"])
    versus = compare(data, gpu) if gpu else {}
    if fmt == "json":
        sections = {k: data[k] for k in ("meta", "gemm", "memory", "collectives", "serving") if k in data}
        console.json({"out": str(out), **sections, "datasheet": {"gpu": gpu.name if gpu else None, **versus}})
        return
    meta = data["meta"]
    console.info(f"wrote {out}: {meta['device_name']} x{meta['device_count']} ({meta['backend']})")
    console.table(None, ["measured", "value", "note"], _summary_rows(data), justify_right=[False, True, False])
    if versus:
        console.text("")
        console.table(f"against the {gpu.name} datasheet (hw show {gpu.name})", ["quantity", "measured", "datasheet",
                      "fraction"], [(k, f"{v['measured']:.4g}", f"{v['datasheet']:.4g}", f"{v['fraction']:.1%}")
                                    for k, v in versus.items()])
