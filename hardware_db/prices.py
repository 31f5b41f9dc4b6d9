"""GPU prices as data (data/prices.yaml or a user's file): provider, region, pricing model, date and source per row."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from clusterplan.errors import BadInputError
from clusterplan.hardware_db.catalog import DATA_DIR, get_gpu

PRICINGS = ("on_demand", "spot", "reserved", "capacity_block")
ANY_PROVIDER = "any"
"""--provider any: each GPU at its cheapest row of the pricing model, providers mixed (the answer says so)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PriceRow:
    gpu: str
    """Canonical GPU name (hardware_db gpus.yaml)."""
    provider: str
    region: str
    pricing: str
    usd_per_gpu_hour: float
    instance: str
    date: str
    source: str


@dataclass(frozen=True, kw_only=True, slots=True)
class PriceChoice:
    """The prices one answer uses: one provider's rows (or the cheapest per GPU when mixing was asked for)."""

    provider: str
    pricing: str
    rows: Mapping[str, PriceRow]
    """GPU name -> the row that prices it."""
    missing: tuple[str, ...]
    """Requested GPUs this provider does not price (left out of the plan)."""
    snapshot: str


def load_prices(path: str | Path | None = None) -> tuple[tuple[PriceRow, ...], str]:
    """Rows of the packaged table (None) or of a user's YAML/JSON file of the same shape, and its snapshot label."""
    from clusterplan.fileio import load_document, load_mapping

    where = str(path) if path else "prices.yaml"
    source = path if path else DATA_DIR / "prices.yaml"
    doc = load_document(source)
    if isinstance(doc, list):  # a bare list of rows is the likeliest slip: say where the rows go
        raise BadInputError(f"{where}: put the rows under a `prices:` key (prices: [{{gpu, provider, region, "
                            "pricing, usd_per_gpu_hour, date, source}, ...]), not at the top level")
    data: Any = doc if isinstance(doc, dict) else load_mapping(source)  # load_mapping's one-line errors
    raw = data.get("prices") if isinstance(data, dict) else None
    if not isinstance(raw, list) or not raw:
        raise BadInputError(f"{where}: needs a `prices:` list of rows (gpu, provider, region, pricing, "
                            "usd_per_gpu_hour, date, source)")
    rows = []
    for i, r in enumerate(raw):
        if not isinstance(r, dict):
            raise BadInputError(f"{where}: row {i + 1} must be a mapping")
        missing = [k for k in ("gpu", "provider", "pricing", "usd_per_gpu_hour", "date", "source") if r.get(k) in (None, "")]
        if missing:
            raise BadInputError(f"{where}: row {i + 1} lacks {', '.join(missing)}; every price needs its date and source")
        if r["pricing"] not in PRICINGS:
            raise BadInputError(f"{where}: row {i + 1} pricing {r['pricing']!r}; use one of {', '.join(PRICINGS)}")
        usd = r["usd_per_gpu_hour"]
        if isinstance(usd, bool) or not isinstance(usd, (int, float)) or not 0 < usd < 1e6:
            raise BadInputError(f"{where}: row {i + 1} usd_per_gpu_hour must be a number > 0, got {usd!r}")
        rows.append(PriceRow(gpu=get_gpu(str(r["gpu"])).name, provider=str(r["provider"]), region=str(r.get("region", "")),
                             pricing=str(r["pricing"]), usd_per_gpu_hour=float(usd), instance=str(r.get("instance", "")),
                             date=str(r["date"]), source=str(r["source"])))
    return tuple(rows), str(data.get("snapshot", ""))


def choose_prices(gpu_names: tuple[str, ...], provider: str | None = None, pricing: str = "on_demand",
                  path: str | Path | None = None) -> PriceChoice:
    """The prices of the requested GPUs from ONE provider: `provider`, or the one that prices most of them
    (ties: alphabetical). `provider` "any" takes each GPU's cheapest row instead and says so in the result."""
    if pricing not in PRICINGS:
        raise BadInputError(f"--pricing {pricing!r}: use one of {', '.join(PRICINGS)}")
    rows, snapshot = load_prices(path)
    names = tuple(dict.fromkeys(get_gpu(n).name for n in gpu_names))
    usable = [r for r in rows if r.pricing == pricing and r.gpu in names]
    providers = sorted({r.provider for r in rows})
    if provider and provider != ANY_PROVIDER and provider not in providers:
        raise BadInputError(f"--provider {provider!r} is not in the price table; use one of {', '.join(providers)} "
                            f"or {ANY_PROVIDER} (give your own table with --prices FILE)")
    if provider == ANY_PROVIDER:
        chosen: dict[str, PriceRow] = {}
        for r in sorted(usable, key=lambda r: (r.usd_per_gpu_hour, r.provider)):
            chosen.setdefault(r.gpu, r)
        label = ANY_PROVIDER
    else:
        if provider is None:
            counts = {p: len({r.gpu for r in usable if r.provider == p}) for p in providers}
            if not usable:
                raise BadInputError(f"no {pricing} price for any of {', '.join(names)}; try --pricing spot or "
                                    "--provider any, or give --prices FILE")
            provider = min(counts, key=lambda p: (-counts[p], p))
        chosen = {}
        for r in sorted((r for r in usable if r.provider == provider), key=lambda r: (r.usd_per_gpu_hour, r.region)):
            chosen.setdefault(r.gpu, r)
        label = provider
    missing = tuple(n for n in names if n not in chosen)
    return PriceChoice(provider=label, pricing=pricing, rows=MappingProxyType(chosen), missing=missing,
                       snapshot=snapshot)
