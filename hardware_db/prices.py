"""GPU prices as data (data/prices.yaml or a user's file): provider, region, pricing model, date and source per row.

One rule prices a GPU in every command, training (plan, estimate, pareto, the cost objectives, mixed clusters) and
serving (serve-plan) alike: each GPU type at its cheapest row of the pricing asked (`--pricing`, default on_demand)
across providers (`--provider cheapest`, the default; `any` is its alias). Rows of a dated catalog (the table's
`dated_catalogs`: a paper's worked example, a repository's 2024 constants) count only for a GPU and pricing no other
provider prices. `--provider NAME` takes that provider's rows only; `--prices FILE` replaces the table.

Why this rule: the same GPU gets the same price in every command, and a GPU type's price depends on nothing but its own
rows, so adding a GPU type to a request (`serve-plan --gpus`, a mixed cluster) can never make another type dearer (a
rule that picked one provider for the whole request could switch provider when a type was added). A GPU without a row
at the pricing asked has no price: it is left out (serving) or the plan has no $ (training), with the fix said.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from clusterplan.errors import BadInputError
from clusterplan.hardware_db.catalog import DATA_DIR, get_gpu
from clusterplan.hardware_db.schema import PriceRow

__all__ = ["CHEAPEST", "DEFAULT_PRICING", "PRICINGS", "PriceChoice", "PriceRow", "PriceRule", "PriceTable",
           "choose_prices", "load_prices", "price_rule"]

PRICINGS = ("on_demand", "spot", "reserved", "capacity_block")
DEFAULT_PRICING = "on_demand"
CHEAPEST = "cheapest"
"""--provider cheapest (the default): each GPU type at its cheapest row of the pricing asked, across providers."""
PROVIDER_ALIASES = MappingProxyType({"any": CHEAPEST})
"""`any`, serve-plan's name for the cheapest rule before it became the default, is still accepted."""
PACKAGED = "prices.yaml"
"""How answers name the packaged table (hardware_db/data/prices.yaml)."""
ROW_KEYS = ("gpu", "provider", "pricing", "usd_per_gpu_hour", "date", "source")
"""The keys every row must carry (region and instance are optional)."""
MAX_USD_PER_GPU_HOUR = 1e6
"""A price above $1M per GPU-hour is a typo (a price per year, or cents)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PriceTable:
    """The rows of one price table, its snapshot label and the providers that are dated catalogs."""

    rows: tuple[PriceRow, ...]
    snapshot: str
    dated_catalogs: frozenset[str]
    where: str
    """How answers name the table: "prices.yaml" (packaged) or the --prices path."""

    @property
    def providers(self) -> tuple[str, ...]:
        return tuple(sorted({r.provider for r in self.rows}))


@dataclass(frozen=True, kw_only=True, slots=True)
class PriceRule:
    """Which rows price a GPU: `provider` (CHEAPEST or one provider's name), `pricing`, and the table (`path`; None:
    the packaged prices.yaml). Build it with price_rule(), which checks the names against the table."""

    provider: str = CHEAPEST
    pricing: str = DEFAULT_PRICING
    path: str | None = None

    def choose(self, gpu_names: Iterable[str]) -> PriceChoice:
        return choose_prices(tuple(gpu_names), self.provider, self.pricing, self.path)


@dataclass(frozen=True, kw_only=True, slots=True)
class PriceChoice:
    """The prices one answer uses: the row that prices each requested GPU under one rule, and what is missing."""

    provider: str
    """CHEAPEST, or the one provider whose rows were asked for."""
    pricing: str
    rows: Mapping[str, PriceRow]
    """GPU name -> the row that prices it."""
    missing: tuple[str, ...]
    """Requested GPUs with no row under the rule (no price: left out of a serving plan, no $ in training)."""
    snapshot: str
    table: str
    """The table's name: "prices.yaml" or the --prices path."""
    fixes: Mapping[str, str]
    """Missing GPU name -> the options that would price it (other pricings, other providers, --prices FILE)."""

    @property
    def from_whom(self) -> str:
        """Whose rows the rule reads, as the missing-price messages say it."""
        return "from any provider" if self.provider == CHEAPEST else f"from provider {self.provider}"

    def why_missing(self, gpu: str) -> str:
        """Why `gpu` has no price under this rule, and the options that would give it one."""
        return f"no {self.pricing} price for {gpu} {self.from_whom} in {self.table}; {self.fixes.get(gpu, '--prices FILE')}"

    def to_json(self) -> dict[str, Any]:
        return {"provider": self.provider, "pricing": self.pricing, "table": self.table, "snapshot": self.snapshot,
                "rows": {g: row_json(r) for g, r in sorted(self.rows.items())}, "missing": list(self.missing)}


def row_json(row: PriceRow) -> dict[str, Any]:
    """A row as an answer's JSON carries it (the GPU name is the key around it)."""
    return {"provider": row.provider, "region": row.region, "pricing": row.pricing,
            "usd_per_gpu_hour": row.usd_per_gpu_hour, "instance": row.instance, "date": row.date, "source": row.source}


def load_prices(path: str | Path | None = None) -> PriceTable:
    """The packaged table (None) or a user's YAML/JSON file of the same shape."""
    return _packaged() if path is None else _load(path)


@lru_cache(maxsize=1)
def _packaged() -> PriceTable:
    return _load(None)


def _load(path: str | Path | None) -> PriceTable:
    from clusterplan.fileio import load_document, load_mapping

    where = str(path) if path else PACKAGED
    source = path if path else DATA_DIR / PACKAGED
    doc = load_document(source)
    if isinstance(doc, list):  # a bare list of rows is the likeliest slip: say where the rows go
        raise BadInputError(f"{where}: put the rows under a `prices:` key (prices: [{{gpu, provider, region, "
                            "pricing, usd_per_gpu_hour, date, source}, ...]), not at the top level")
    data: Any = doc if isinstance(doc, dict) else load_mapping(source)  # load_mapping's one-line errors
    raw = data.get("prices") if isinstance(data, dict) else None
    if not isinstance(raw, list) or not raw:
        raise BadInputError(f"{where}: needs a `prices:` list of rows (gpu, provider, region, pricing, "
                            "usd_per_gpu_hour, date, source)")
    dated = data.get("dated_catalogs", [])
    if not isinstance(dated, list) or not all(isinstance(p, str) for p in dated):
        raise BadInputError(f"{where}: dated_catalogs must be a list of provider names")
    rows = []
    for i, r in enumerate(raw):
        if not isinstance(r, dict):
            raise BadInputError(f"{where}: row {i + 1} must be a mapping")
        missing = [k for k in ROW_KEYS if r.get(k) in (None, "")]
        if missing:
            raise BadInputError(f"{where}: row {i + 1} lacks {', '.join(missing)}; every price needs its date and source")
        if r["pricing"] not in PRICINGS:
            raise BadInputError(f"{where}: row {i + 1} pricing {r['pricing']!r}; use one of {', '.join(PRICINGS)}")
        if str(r["provider"]) in (CHEAPEST, *PROVIDER_ALIASES):
            raise BadInputError(f"{where}: row {i + 1} provider {r['provider']!r} names the default rule; give the "
                                "provider's own name")
        usd = r["usd_per_gpu_hour"]
        if isinstance(usd, bool) or not isinstance(usd, (int, float)) or not 0 < usd < MAX_USD_PER_GPU_HOUR:
            raise BadInputError(f"{where}: row {i + 1} usd_per_gpu_hour must be a number > 0, got {usd!r}")
        rows.append(PriceRow(gpu=get_gpu(str(r["gpu"])).name, provider=str(r["provider"]), region=str(r.get("region", "")),
                             pricing=str(r["pricing"]), usd_per_gpu_hour=float(usd), instance=str(r.get("instance", "")),
                             date=str(r["date"]), source=str(r["source"])))
    return PriceTable(rows=tuple(rows), snapshot=str(data.get("snapshot", "")), dated_catalogs=frozenset(dated),
                      where=where)


def price_rule(provider: str | None = None, pricing: str | None = None, path: str | None = None) -> PriceRule:
    """The rule of --provider / --pricing / --prices, checked against the table: an unknown provider or pricing is
    bad input (one line naming the choices). None: the default (cheapest, on_demand, the packaged table)."""
    return _checked_rule(provider, _pricing(pricing), path, load_prices(path))  # the pricing before the file


def _pricing(pricing: str | None) -> str:
    """--pricing, checked (None: DEFAULT_PRICING)."""
    pricing = pricing or DEFAULT_PRICING
    if pricing not in PRICINGS:
        raise BadInputError(f"--pricing {pricing!r}: use one of {', '.join(PRICINGS)}")
    return pricing


def _checked_rule(provider: str | None, pricing: str, path: str | None, table: PriceTable) -> PriceRule:
    """price_rule with a checked `pricing`, against an already loaded `table`."""
    name = PROVIDER_ALIASES.get(provider or CHEAPEST, provider or CHEAPEST)
    if name != CHEAPEST and name not in table.providers:
        raise BadInputError(f"--provider {provider!r} is not in {table.where}; use {CHEAPEST} (the default: each GPU's "
                            f"cheapest row; `any` is the same) or one of {', '.join(table.providers)} (or give your "
                            "own table with --prices FILE)")
    return PriceRule(provider=name, pricing=pricing, path=path)


def choose_prices(gpu_names: tuple[str, ...], provider: str | None = None, pricing: str | None = None,
                  path: str | Path | None = None) -> PriceChoice:
    """The row that prices each of `gpu_names` (names or aliases): by default its cheapest row at `pricing` across
    providers, a dated catalog's only where no other provider prices it (module docstring); with `provider` that
    provider's cheapest row (its regions). Ties go to the newer observation, then to the provider's name, so the same
    table always gives the same answer."""
    pricing = _pricing(pricing)
    table = load_prices(path)  # read once: the rule is checked against it
    rule = _checked_rule(provider, pricing, None if path is None else str(path), table)
    names = tuple(dict.fromkeys(get_gpu(n).name for n in gpu_names))
    chosen: dict[str, PriceRow] = {}
    for gpu in names:
        rows = [r for r in table.rows if r.gpu == gpu and r.pricing == rule.pricing]
        if rule.provider == CHEAPEST:
            current = [r for r in rows if r.provider not in table.dated_catalogs]
            rows = current or rows
        else:
            rows = [r for r in rows if r.provider == rule.provider]
        if rows:
            chosen[gpu] = min(rows, key=_order)
    missing = tuple(n for n in names if n not in chosen)
    return PriceChoice(provider=rule.provider, pricing=rule.pricing, rows=MappingProxyType(chosen), missing=missing,
                       snapshot=table.snapshot, table=table.where,
                       fixes=MappingProxyType({g: _fix(table, g, rule) for g in missing}))


def _order(row: PriceRow) -> tuple[float, tuple[int, ...], str, str]:
    """Cheapest first; at one price the newest observation (dates compared field by field), then by name."""
    newest_first = tuple(-int(part) for part in row.date.split("-") if part.isdigit())
    return (row.usd_per_gpu_hour, newest_first, row.provider, row.region)


def _fix(table: PriceTable, gpu: str, rule: PriceRule) -> str:
    """The options that would price `gpu`: the pricings its rows have, the providers that price it at this pricing."""
    rows = [r for r in table.rows if r.gpu == gpu]
    options = []
    others = sorted({r.provider for r in rows if r.pricing == rule.pricing})
    if rule.provider != CHEAPEST and others:
        options.append(f"--provider {CHEAPEST} (or one of {', '.join(others)})")
    pricings = [p for p in PRICINGS if p != rule.pricing and any(r.pricing == p for r in rows)]
    if pricings:
        options.append(f"--pricing {' or '.join(pricings)}")
    own = "--prices FILE with your price"
    if not options:
        return f"no row prices it: give {own}"
    return f"try {'; '.join(options)}, or {own}"
