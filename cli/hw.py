"""`clusterplan hw list|show`: the hardware database and the execution stacks."""

from __future__ import annotations

from dataclasses import fields, is_dataclass

import click

from clusterplan.cli.console import console
from clusterplan.cli.options import format_option
from clusterplan.errors import BadInputError
from clusterplan.hardware_db import (
    get_gemm_tiling,
    get_gpu,
    get_link,
    get_node,
    get_stack,
    list_stacks,
    load_db,
)
from clusterplan.hardware_db.catalog import unknown_record
from clusterplan.hardware_db.prices import (
    CHEAPEST,
    DEFAULT_PRICING,
    PRICINGS,
    choose_prices,
    load_prices,
    row_json,
)
from clusterplan.hardware_db.schema import PriceRow
from clusterplan.hardware_db.stacks import ExecutionStack


@click.group()
def hw() -> None:
    """GPUs, links, node presets and execution stacks, each number with its source."""


def _plain(value: object) -> object:
    """A value as plain JSON types, at any depth: mappings become dicts, records dicts, tuples and frozensets lists."""
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}  # type: ignore[union-attr]
    if is_dataclass(value):
        return _jsonable(value)
    if isinstance(value, (tuple, frozenset)):
        return [_plain(v) for v in (sorted(value) if isinstance(value, frozenset) else value)]
    return value


def _jsonable(record: object) -> dict:
    """A record as plain JSON types (mappings become dicts, nested records dicts, tuples lists)."""
    return {f.name: _plain(getattr(record, f.name)) for f in fields(record)}  # type: ignore[arg-type]


@hw.command("list")
@format_option
def hw_list(fmt: str) -> None:
    """List GPUs, links, node presets and execution stacks."""
    db = load_db()
    stacks = [get_stack(n) for n in list_stacks()]
    prices = choose_prices(tuple(db.gpus))  # the default rule, as plan and serve-plan price each GPU
    if fmt == "json":
        console.json({"gpus": {n: _jsonable(g) | {"price": _price_json(prices.rows.get(n))} for n, g in db.gpus.items()},
                      "links": {n: _jsonable(x) for n, x in db.links.items()},
                      "nodes": {n: _jsonable(x) for n, x in db.nodes.items()},
                      "stacks": {s.name: _jsonable(s) for s in stacks}})
        return
    console.table("GPUs", ["name", "bf16 TFLOP/s", "fp8 TFLOP/s", "memory GiB", "HBM TB/s", "scale-up", "$/GPU-h",
                           "price from"], [
        (g.name, f"{g.tflops('bf16'):g}", f"{g.peak_tflops['fp8']:g}" if "fp8" in g.peak_tflops else "-",
         f"{g.memory_gib:g}", f"{g.memory_tb_per_s:g}", f"{g.scale_up_link} {g.scale_up_gb_per_s:g} GB/s x{g.scale_up_domain}",
         *_price_cells(prices.rows.get(g.name))) for g in db.gpus.values()],
        justify_right=[False, True, True, True, True, True, True, False])
    console.text(f"$/GPU-h: each GPU's cheapest {DEFAULT_PRICING} row across providers in hardware_db/data/prices.yaml "
                 f"(snapshot {prices.snapshot}), the price plan, estimate and serve-plan use unless --provider, "
                 "--pricing or --prices say otherwise; `hw show GPU` lists every row")
    console.text("")
    console.table("Node presets (--cluster NAME:NODES)", ["name", "GPUs", "scale-up", "NICs", "description"], [
        (n.name, f"{n.gpus_per_node} x {n.gpu}", f"{n.scale_up_link} x{n.scale_up_domain}",
         f"{n.nics_per_node} x {n.nic_link}", n.description) for n in db.nodes.values()],
        justify_right=[False] * 5, wrap=[False, False, False, False, True])
    console.text("")
    console.table("Links", ["name", "kind", "GB/s/dir", "latency us", "busbw fraction"], [
        (x.name, x.kind, f"{x.gb_per_s:g}", f"{x.latency_us:g}", f"{x.busbw_fraction:g}") for x in db.links.values()])
    console.text("")
    console.table("Execution stacks (--stack NAME; `hw show NAME` for every field and its source)",
                  ["name", "attention", "TP overlap", "ZeRO", "schedules", "fp8", "loss", "pp split", "host priced"],
                  [_stack_row(x) for x in stacks], justify_right=[False] * 9)


def _price_json(row: PriceRow | None) -> dict | None:
    return None if row is None else row_json(row) | {"rule": f"{CHEAPEST} {DEFAULT_PRICING}"}


def _price_cells(row: PriceRow | None) -> tuple[str, str]:
    """`hw list`'s $/GPU-h and where it comes from ("-" for a GPU without an on-demand row)."""
    return (f"{row.usd_per_gpu_hour:.2f}", f"{row.provider} {row.date}") if row is not None else ("-", "-")


def _stack_row(stack: ExecutionStack) -> tuple[str, ...]:
    """One line of `hw list`'s stack table: what the stack runs, its cross-entropy (loss_impl), how it splits layers
    over pipeline ranks (pp_split) and which layers' host time it prices."""
    host = [kind for kind, data in (("moe", stack.moe_host), ("dense", stack.dense_host)) if data is not None]
    return (stack.name, stack.attention_kernel, stack.tp_overlap, ",".join(str(z) for z in stack.zero_stages),
            ",".join(stack.schedules) or "-", ",".join(stack.fp8_recipes) or "-", stack.loss_impl, stack.pp_split,
            ",".join(host) or "-")


@hw.command("show")
@click.argument("name")
@format_option
def hw_show(name: str, fmt: str) -> None:
    """Show one GPU, link, node preset or execution stack with the source of every number."""
    record = None
    for getter in (get_gpu, get_node, get_link, get_stack):
        try:
            record = getter(name)
            break
        except BadInputError:
            continue
    if record is None:
        raise unknown_record(name, list_stacks())
    data = _jsonable(record)
    if getter is get_gpu:
        # the price the default rule gives it (plan, estimate, serve-plan), then every row the table has for it
        data["price"] = _price_json(choose_prices((record.name,)).rows.get(record.name))
        rows = [r for r in load_prices().rows if r.gpu == record.name]
        data["prices"] = {p: [row_json(r) for r in sorted(rows, key=lambda r: (r.usd_per_gpu_hour, r.provider))
                              if r.pricing == p] for p in PRICINGS if any(r.pricing == p for r in rows)}
    if getter is get_stack:
        data = {k: v for k, v in data.items() if v is not None}
    tiling = get_gemm_tiling(record.name) if getter is get_gpu else None
    if tiling is not None:
        # gemm.yaml: the GEMM shape model's tiles, MAMF shape, fp8 fraction, k-depth k_0 and slowdowns, with sources
        data["gemm"] = {k: v for k, v in _jsonable(tiling).items() if k != "gpu"}
    if fmt == "json":
        console.json(data)
        return
    if "prices" in data:  # one line per price row, cheapest first within each pricing model
        data["prices"] = {p: {str(i + 1): f"${r['usd_per_gpu_hour']:g}/GPU-h {r['provider']}"
                                          f"{' ' + r['region'] if r['region'] else ''}, {r['date']}, {r['source']}"
                              for i, r in enumerate(rows)} for p, rows in data["prices"].items()}
    rows = []

    def flatten(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                flatten(f"{prefix}.{k}" if prefix else k, v)
        else:
            rows.append((prefix, value))

    flatten("", data)
    console.table(None, ["field", "value"], rows, justify_right=[False, False], wrap=[False, True])
