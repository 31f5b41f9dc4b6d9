"""Failure rates of large training fleets and checkpoint/restart defaults (data/failures.yaml), with sources.

    from clusterplan.hardware_db.failures import failure_rates, resilience_defaults
    failure_rates().per_gpu_hour      # GPU-caused interruptions per GPU-hour (Llama 3 405B run)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from clusterplan.errors import BadInputError
from clusterplan.hardware_db.catalog import _read

UNITS = ("gpu", "node", "link", "software")
"""What a root cause scales with: GPUs, hosts (per node), scale-out links (per node's NICs and cables), or the
software stack (per node: one more process group member, one more place for a hang)."""
HOURS_PER_DAY = 24.0
CHECKPOINT_MODES = ("sync", "async", "in-memory")


@dataclass(frozen=True, kw_only=True, slots=True)
class FailureRates:
    """Unexpected interruptions per unit-hour, by the unit they scale with; planned ones per node-hour."""

    per_gpu_hour: float
    per_node_hour: float
    per_link_node_hour: float
    per_software_node_hour: float
    planned_per_node_hour: float
    source: str

    def job_rate_per_hour(self, gpus: int, nodes: int) -> float:
        """Unexpected interruptions per hour of a synchronous job on `gpus` GPUs in `nodes` nodes (any one stops it)."""
        return gpus * self.per_gpu_hour + nodes * (self.per_node_hour + self.per_link_node_hour
                                                   + self.per_software_node_hour)

    def hardware_share(self, gpus: int, nodes: int) -> float:
        """Share of interruptions that take a node out (GPU, host or link faults; software faults restart in place)."""
        total = self.job_rate_per_hour(gpus, nodes)
        return 0.0 if total == 0 else 1 - nodes * self.per_software_node_hour / total


@dataclass(frozen=True, kw_only=True, slots=True)
class Fleet:
    name: str
    description: str
    gpus: int
    gpus_per_node: int
    days: float
    planned: int
    unexpected: Mapping[str, tuple[int, str]]
    """root cause -> (count, unit)."""
    effective_training_time_min: float | None
    source: str

    @property
    def nodes(self) -> int:
        return self.gpus // self.gpus_per_node

    @property
    def hours(self) -> float:
        return self.days * HOURS_PER_DAY

    def count(self, unit: str) -> int:
        return sum(c for c, u in self.unexpected.values() if u == unit)

    def rates(self) -> FailureRates:
        """Counts over exposure: a cause of unit `gpu` per GPU-hour, the others per node-hour."""
        node_hours = self.nodes * self.hours
        return FailureRates(per_gpu_hour=self.count("gpu") / (self.gpus * self.hours),
                            per_node_hour=self.count("node") / node_hours,
                            per_link_node_hour=self.count("link") / node_hours,
                            per_software_node_hour=self.count("software") / node_hours,
                            planned_per_node_hour=self.planned / node_hours,
                            source=f"{self.name}: {self.source}")


@dataclass(frozen=True, kw_only=True, slots=True)
class StorageAndRestart:
    """Where checkpoints go and how long a restart takes: the numbers failures.yaml's `resilience` defaults give and
    a cluster file's `resilience:` section may override (models/hardware/resilience.py)."""

    storage_write_gb_per_s_aggregate: float
    storage_read_gb_per_s_aggregate: float
    storage_write_gb_per_s_per_node: float
    storage_read_gb_per_s_per_node: float
    host_copy_gb_per_s_per_gpu: float
    restart_s: float
    """Detection, rescheduling and re-rendezvous of the whole job after an interruption (checkpoint load apart)."""
    node_repair_s: float


@dataclass(frozen=True, kw_only=True, slots=True)
class ResilienceDefaults(StorageAndRestart):
    checkpoint: str
    sources: Mapping[str, str]


NUMBER_KEYS = tuple(f.name for f in fields(StorageAndRestart))


def _fleet(name: str, raw: Mapping[str, Any]) -> Fleet:
    where = f"failures.yaml: fleets.{name}"
    if not str(raw.get("source", "")).strip():
        raise BadInputError(f"{where}: numbers without a source")
    unexpected = {}
    for cause, item in (raw.get("unexpected") or {}).items():
        if item.get("unit") not in UNITS or not isinstance(item.get("count"), int) or item["count"] < 0:
            raise BadInputError(f"{where}.unexpected.{cause}: needs count >= 0 and unit in {UNITS}")
        unexpected[str(cause)] = (int(item["count"]), str(item["unit"]))
    etr = raw.get("effective_training_time_min")
    return Fleet(name=name, description=str(raw.get("description", "")), gpus=int(raw["gpus"]),
                 gpus_per_node=int(raw["gpus_per_node"]), days=float(raw["days"]), planned=int(raw.get("planned", 0)),
                 unexpected=MappingProxyType(unexpected),
                 effective_training_time_min=float(etr) if etr is not None else None, source=str(raw["source"]))


@lru_cache(maxsize=1)
def _data() -> Mapping[str, Any]:
    return _read("failures.yaml")


def fleets() -> dict[str, Fleet]:
    return {name: _fleet(name, raw) for name, raw in _data()["fleets"].items()}


def get_fleet(name: str | None = None) -> Fleet:
    from clusterplan.hardware_db.catalog import find_name

    return find_name("failure fleet", name or _data()["default_fleet"], fleets(), list_cmd="hw list")


def failure_rates(fleet: str | None = None) -> FailureRates:
    """Per-unit interruption rates of a published fleet (default: the Llama 3 405B run)."""
    return get_fleet(fleet).rates()


def mttf_checks() -> list[dict[str, Any]]:
    return [dict(item) for item in _data().get("mttf_checks", [])]


def resilience_defaults() -> ResilienceDefaults:
    raw = _data()["defaults"]
    sources = raw.get("sources") or {}
    missing = [k for k in (*NUMBER_KEYS, "checkpoint") if not str(sources.get(k, "")).strip()]
    if missing:
        raise BadInputError(f"failures.yaml: defaults without a source: {', '.join(missing)}")
    if raw["checkpoint"] not in CHECKPOINT_MODES:
        raise BadInputError(f"failures.yaml: defaults.checkpoint must be one of {CHECKPOINT_MODES}")
    return ResilienceDefaults(**{k: float(raw[k]) for k in NUMBER_KEYS}, checkpoint=str(raw["checkpoint"]),
                              sources=MappingProxyType(dict(sources)))
