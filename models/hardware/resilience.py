"""What a cluster's failures and storage cost a training run: the `resilience:` section of a cluster file.

    resilience:
      fleet: llama3-405b                 # published failure statistics to start from (hardware_db/data/failures.yaml)
      failures_per_gpu_hour: 1.3e-5      # any rate overrides the fleet's
      checkpoint: async                  # sync | async | in-memory
      storage_write_gb_per_s_aggregate: 2000
      restart_s: 600
      spare_nodes: 8                     # hot spares (paid for, idle); omitted = the scheduler's pool replaces nodes
      checkpoint_interval_s: 1800        # omitted = Young/Daly optimum

Every key is optional; defaults come from hardware_db/data/failures.yaml, each with its source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from clusterplan.errors import BadInputError
from clusterplan.hardware_db.failures import (
    CHECKPOINT_MODES,
    NUMBER_KEYS,
    FailureRates,
    StorageAndRestart,
    failure_rates,
    resilience_defaults,
)

RATE_KEYS = {"failures_per_gpu_hour": "per_gpu_hour", "failures_per_node_hour": "per_node_hour",
             "failures_per_link_node_hour": "per_link_node_hour",
             "failures_per_software_node_hour": "per_software_node_hour",
             "planned_per_node_hour": "planned_per_node_hour"}
KEYS = {"fleet", "checkpoint", "spare_nodes", "checkpoint_interval_s", *RATE_KEYS, *NUMBER_KEYS}


@dataclass(frozen=True, kw_only=True, slots=True)
class Resilience(StorageAndRestart):
    rates: FailureRates
    checkpoint: str
    """sync: training waits for the storage write; async: only for the device-to-host copy (torch DCP async_save),
    the write finishes in the background; in-memory: the copy goes to a peer node's host memory over the
    scale-out network (Gemini, Wang et al. SOSP 2023), storage is not on the restart path."""
    spare_nodes: int | None
    """Hot spares held (and paid for) beside the job; None: a replacement always comes from the scheduler's pool."""
    checkpoint_interval_s: float | None
    """Compute time between checkpoints; None: the Young/Daly optimum."""
    overridden: tuple[str, ...] = ()

    @classmethod
    def default(cls) -> Resilience:
        d = resilience_defaults()
        return cls(rates=failure_rates(), checkpoint=d.checkpoint, **{k: getattr(d, k) for k in NUMBER_KEYS},
                   spare_nodes=None, checkpoint_interval_s=None)

    def with_changes(self, **changes: Any) -> Resilience:
        return replace(self, **changes)


def _number(where: str, key: str, value: Any, *, allow_zero: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (
        value >= 0 if allow_zero else value > 0)
    if not ok:
        raise BadInputError(f"{where}: resilience.{key} must be a number {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def resilience_from_dict(raw: Any, where: str) -> Resilience:
    if not isinstance(raw, dict):
        raise BadInputError(f"{where}: `resilience:` must be a mapping (keys: {', '.join(sorted(KEYS))})")
    unknown = set(raw) - KEYS
    if unknown:
        raise BadInputError(f"{where}: resilience: unknown key(s) {', '.join(sorted(unknown))}; known: "
                            f"{', '.join(sorted(KEYS))}")
    base = Resilience.default()
    rates = failure_rates(str(raw["fleet"])) if "fleet" in raw else base.rates
    rate_changes = {field: _number(where, key, raw[key], allow_zero=True) for key, field in RATE_KEYS.items() if key in raw}
    if rate_changes:
        rates = replace(rates, **rate_changes, source=rates.source + f"; overridden in {where}: "
                        + ", ".join(k for k in RATE_KEYS if k in raw))
    changes: dict[str, Any] = {k: _number(where, k, raw[k], allow_zero=k == "restart_s") for k in NUMBER_KEYS
                               if k in raw}
    if "checkpoint" in raw:
        if raw["checkpoint"] not in CHECKPOINT_MODES:
            raise BadInputError(f"{where}: resilience.checkpoint must be one of {', '.join(CHECKPOINT_MODES)}, "
                                f"got {raw['checkpoint']!r}")
        changes["checkpoint"] = raw["checkpoint"]
    if "spare_nodes" in raw:
        value = raw["spare_nodes"]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BadInputError(f"{where}: resilience.spare_nodes must be an integer >= 0, got {value!r}")
        changes["spare_nodes"] = value
    if "checkpoint_interval_s" in raw:
        changes["checkpoint_interval_s"] = _number(where, "checkpoint_interval_s", raw["checkpoint_interval_s"],
                                                   allow_zero=False)
    return replace(base, rates=rates, overridden=tuple(sorted(raw)), **changes)
