"""`clusterplan hw list|show`: the hardware database."""

from __future__ import annotations

from dataclasses import fields, is_dataclass

import click

from clusterplan.cli.console import console
from clusterplan.cli.options import format_option
from clusterplan.errors import BadInputError
from clusterplan.hardware_db import get_gemm_tiling, get_gpu, get_link, get_node, load_db


@click.group()
def hw() -> None:
    """GPUs, links and node presets, each number with its source."""


def _jsonable(record: object) -> dict:
    """A record as plain JSON types (mappings become dicts, nested records dicts, tuples lists)."""
    out = {}
    for f in fields(record):  # type: ignore[arg-type]
        value = getattr(record, f.name)
        if hasattr(value, "items"):
            value = dict(value)
        elif is_dataclass(value):
            value = _jsonable(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


@hw.command("list")
@format_option
def hw_list(fmt: str) -> None:
    """List GPUs, links and node presets."""
    db = load_db()
    if fmt == "json":
        console.json({"gpus": {n: _jsonable(g) for n, g in db.gpus.items()},
                      "links": {n: _jsonable(x) for n, x in db.links.items()},
                      "nodes": {n: _jsonable(x) for n, x in db.nodes.items()}})
        return
    console.table("GPUs", ["name", "bf16 TFLOP/s", "fp8 TFLOP/s", "memory GiB", "HBM TB/s", "scale-up", "$/GPU-h"], [
        (g.name, f"{g.tflops('bf16'):g}", f"{g.peak_tflops['fp8']:g}" if "fp8" in g.peak_tflops else "-",
         f"{g.memory_gib:g}", f"{g.memory_tb_per_s:g}", f"{g.scale_up_link} {g.scale_up_gb_per_s:g} GB/s x{g.scale_up_domain}",
         f"{g.price.usd_per_gpu_hour:.2f}" if g.price else "-") for g in db.gpus.values()])
    console.text("")
    console.table("Node presets (--cluster NAME:NODES)", ["name", "GPUs", "scale-up", "NICs", "description"], [
        (n.name, f"{n.gpus_per_node} x {n.gpu}", f"{n.scale_up_link} x{n.scale_up_domain}",
         f"{n.nics_per_node} x {n.nic_link}", n.description) for n in db.nodes.values()],
        justify_right=[False] * 5, wrap=[False, False, False, False, True])
    console.text("")
    console.table("Links", ["name", "kind", "GB/s/dir", "latency us", "busbw fraction"], [
        (x.name, x.kind, f"{x.gb_per_s:g}", f"{x.latency_us:g}", f"{x.busbw_fraction:g}") for x in db.links.values()])


@hw.command("show")
@click.argument("name")
@format_option
def hw_show(name: str, fmt: str) -> None:
    """Show one GPU, link or node preset with the source of every number."""
    record = None
    for getter in (get_gpu, get_node, get_link):
        try:
            record = getter(name)
            break
        except BadInputError:
            continue
    if record is None:
        get_gpu(name)  # raises with suggestions
    data = _jsonable(record)
    tiling = get_gemm_tiling(record.name) if getter is get_gpu else None
    if tiling is not None:
        # gemm.yaml: the GEMM shape model's tiles, MAMF shape, fp8 fraction, k-depth k_0 and slowdowns, with sources
        data["gemm"] = {k: v for k, v in _jsonable(tiling).items() if k != "gpu"}
    if fmt == "json":
        console.json(data)
        return
    rows = []

    def flatten(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                flatten(f"{prefix}.{k}" if prefix else k, v)
        else:
            rows.append((prefix, value))

    flatten("", data)
    console.table(None, ["field", "value"], rows, justify_right=[False, False], wrap=[False, True])
