"""Cluster: groups of nodes (possibly of different GPU types) and the links between ranks.

`--cluster dgx-h100:64` is shorthand for one group of 64 DGX H100 nodes; a YAML file describes
anything else (see README "Cluster files"). Ranks are numbered node by node, GPU by GPU.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from clusterplan.errors import BadInputError
from clusterplan.fileio import load_mapping, path_exists, show
from clusterplan.hardware_db import GPU, Link, get_gpu, get_link, get_node
from clusterplan.hardware_db.prices import MAX_USD_PER_GPU_HOUR, PriceChoice, PriceRule
from clusterplan.hardware_db.schema import GIVEN_PROVIDER, PriceRow
from clusterplan.models.hardware.power import STATIC_POWER_SHARE
from clusterplan.models.hardware.resilience import Resilience, resilience_from_dict


@dataclass(frozen=True, kw_only=True, slots=True)
class LinkLevel:
    """The link a group of ranks crosses, as the collective model needs it."""

    name: str
    level: str
    """`self` (one rank), `scale_up` (inside a scale-up domain) or `scale_out` (across nodes)."""
    busbw_bytes_per_s: float
    """Achieved bus bandwidth per GPU per direction (nccl-tests definition) at large messages."""
    latency_s: float


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeGroup:
    preset: str
    gpu: GPU
    count: int
    gpus_per_node: int
    scale_up: Link
    scale_up_domain: int
    nic: Link
    nics_per_node: int
    scale_up_busbw_gb_per_s: float
    """Achieved scale-up bus bandwidth per GPU (link line rate x busbw fraction unless overridden)."""
    scale_out_busbw_gb_per_s: float
    """Achieved scale-out bandwidth per GPU: node NICs x achieved rate / GPUs per node (rail-optimised)."""
    power_cap_w: float | None = None
    """Per-GPU power limit (`nvidia-smi -pl`) below the GPU's TDP; None runs at TDP. Scales the tensor-core clock
    (models/hardware/power.py power_clock_scale)."""
    price: PriceRow | None = None
    """What one of its GPUs costs per hour: the cluster file's own `usd_per_gpu_hour` (PriceRow.given), else the price
    table's row under the answer's rule (price_cluster); None: no price (no $ in the answer)."""

    @property
    def job_domain(self) -> int:
        """GPUs of this group's job that share one scale-up domain: the node's own for one-node domains (a DGX's 8),
        else the trays of one placement segment (segment_nodes): 64 of an NVL72 rack's 72 GPUs for a 64-tray job."""
        if self.scale_up_domain <= self.gpus_per_node:
            return self.scale_up_domain
        return segment_nodes(self.scale_up_domain // self.gpus_per_node, self.count) * self.gpus_per_node


def segment_nodes(nodes_per_domain: int, nodes: int) -> int:
    """Nodes of a job placed together in one multi-node scale-up domain (an NVL72 rack's trays): all of them when
    they fit in one, else the largest divisor of the job's node count that does. This is Slurm's `--segment` as
    Megatron-Bridge's launcher sets it for 4-GPU trays (scripts/performance/utils/executors.py slurm_executor), so
    every segment lies in one rack and equal power-of-two mesh groups never straddle two racks: a 64-tray job runs
    as 4 x 16 trays (64-GPU NVLink domains), a 36-tray job as 2 full racks."""
    if nodes <= nodes_per_domain:
        return nodes
    return next(d for d in range(nodes_per_domain, 0, -1) if nodes % d == 0)


@dataclass(frozen=True, kw_only=True, slots=True)
class Cluster:
    name: str
    groups: tuple[NodeGroup, ...]
    node_bandwidth_gb_per_s: tuple[tuple[float, ...], ...] | None = None
    """Optional measured node-to-node bandwidth matrix (GB/s per direction, whole node), for uneven links."""
    resilience: Resilience | None = None
    """The cluster file's `resilience:` section (failure rates, storage, checkpointing); None: published defaults."""
    prices: PriceChoice | None = None
    """The rule and table rows that priced the groups (price_cluster); None: priced by hand (NodeGroup.price)."""

    @property
    def reliability(self) -> Resilience:
        return self.resilience or Resilience.default()

    # ---- shape ------------------------------------------------------------------------------
    @property
    def n_nodes(self) -> int:
        return sum(g.count for g in self.groups)

    @property
    def world_size(self) -> int:
        return sum(g.count * g.gpus_per_node for g in self.groups)

    @property
    def is_homogeneous(self) -> bool:
        return len({g.gpu.name for g in self.groups}) == 1 and len({g.gpus_per_node for g in self.groups}) == 1

    @property
    def primary(self) -> NodeGroup:
        """The first (for a homogeneous cluster, the only) kind of node."""
        return self.groups[0]

    @property
    def gpu(self) -> GPU:
        return self.primary.gpu

    @property
    def min_memory_bytes(self) -> float:
        """Memory of the smallest GPU: what every rank's peak must fit in (a uniform layout)."""
        return min(g.gpu.memory_bytes for g in self.groups)

    def node_of(self, rank: int) -> int:
        if not 0 <= rank < self.world_size:
            raise BadInputError(f"rank {rank} outside the cluster's world size {self.world_size}")
        node = 0
        for g in self.groups:
            span = g.count * g.gpus_per_node
            if rank < span:
                return node + rank // g.gpus_per_node
            rank -= span
            node += g.count
        raise AssertionError("unreachable")

    def group_of_node(self, node: int) -> NodeGroup:
        for g in self.groups:
            if node < g.count:
                return g
            node -= g.count
        raise BadInputError(f"node {node} outside the cluster's {self.n_nodes} nodes")

    def gpu_of(self, rank: int) -> GPU:
        return self.group_of_node(self.node_of(rank)).gpu

    # ---- links ------------------------------------------------------------------------------
    def link_for(self, ranks: Sequence[int]) -> LinkLevel:
        """Which link level a collective among `ranks` crosses, and its achieved bandwidth per GPU."""
        ranks = sorted(set(ranks))
        if len(ranks) <= 1:
            return LinkLevel(name="self", level="self", busbw_bytes_per_s=float("inf"), latency_s=0.0)
        nodes = sorted({self.node_of(r) for r in ranks})
        groups = [self.group_of_node(n) for n in nodes]
        if len(nodes) == 1 or self._same_scale_up_domain(nodes):
            bw = min(g.scale_up_busbw_gb_per_s for g in groups)
            slowest = min(groups, key=lambda g: g.scale_up_busbw_gb_per_s)
            return LinkLevel(name=slowest.scale_up.name, level="scale_up", busbw_bytes_per_s=bw * 1e9,
                             latency_s=slowest.scale_up.latency_us * 1e-6)
        slowest = min(groups, key=lambda g: g.scale_out_busbw_gb_per_s)
        bw = slowest.scale_out_busbw_gb_per_s
        if self.node_bandwidth_gb_per_s is not None:
            # A ring through these nodes is bound by its slowest hop (Pipette's measured-link view).
            pair_bw = min(self.node_bandwidth_gb_per_s[a][b] for a in nodes for b in nodes if a != b)
            bw = min(bw, pair_bw / slowest.gpus_per_node)
        return LinkLevel(name=slowest.nic.name, level="scale_out", busbw_bytes_per_s=bw * 1e9,
                         latency_s=slowest.nic.latency_us * 1e-6)

    def _same_scale_up_domain(self, nodes: Sequence[int]) -> bool:
        g = self.group_of_node(nodes[0])
        if g.scale_up_domain <= g.gpus_per_node:
            return False
        per_domain = g.job_domain // g.gpus_per_node
        return len({n // per_domain for n in nodes}) == 1 and all(self.group_of_node(n) is g for n in nodes)

    def describe(self) -> str:
        parts = [f"{g.count} x {g.preset} ({_used_of(g)}{g.gpu.name})" for g in self.groups]
        return " + ".join(parts) + f" = {self.world_size} GPUs"


def preset_ref(group: NodeGroup, count: int) -> str:
    """The --cluster shorthand of `count` of the group's nodes: PRESET:NODES, or PRESET:NODESxGPUS on part of each."""
    if group.gpus_per_node < get_node(group.preset).gpus_per_node:
        return f"{group.preset}:{count}x{group.gpus_per_node}"
    return f"{group.preset}:{count}"


def _used_of(group: NodeGroup) -> str:
    """"4 of 8 x " for a job on part of each node, "8 x " for whole nodes (and for a cluster file's own machine)."""
    node_gpus = get_node(group.preset).gpus_per_node
    if group.gpus_per_node < node_gpus:
        return f"{group.gpus_per_node} of {node_gpus} x "
    return f"{group.gpus_per_node} x "


MAX_COUNT = 10**9
"""Most GPUs/NICs per node accepted; beyond it float arithmetic overflows."""
MAX_NODES = 2**17
"""Most nodes in a cluster (all groups): 131,072 nodes is 1 M GPUs at 8 per node, 5x the largest cluster built
(xAI Colossus, about 200 k GPUs in 2025). The planner keeps per-node tables (placement, node order), so a
billion nodes would exhaust memory before any arithmetic overflowed."""
MAX_WORLD = 2**24
"""Most GPUs in a cluster: 16.7 M, 80x the largest built; per-rank loops (placement, expert maps) stay bounded."""


def _finite(value: float) -> bool:
    """NaN and infinity are not bandwidths; an int of any size is finite (math.isfinite would overflow)."""
    return isinstance(value, int) or math.isfinite(value)


def _positive_int(overrides: dict[str, Any], key: str, default: int, where: str) -> int:
    value = overrides.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_COUNT:
        raise BadInputError(f"{where}: {key} must be a positive integer up to {MAX_COUNT:,}, got {value!r}")
    return value


def partial_node_shares(node_gpus: int, node_nics: int, node_domain: int, gpus_used: int) -> tuple[int, int]:
    """NICs and scale-up domain (GPUs) of a node of which a job uses `gpus_used` of its `node_gpus` GPUs.

    A job on part of each node (torchrun --nproc-per-node 4 on an 8-GPU node) keeps each GPU's own share of the
    node's NICs (rail-optimised nodes give every GPU the NICs on its PCIe switch: ceil, so a node's one NIC serves
    its used GPUs) and spans the same number of nodes per NVLink domain as the whole node did: an 8-GPU DGX's domain
    becomes the used GPUs, an NVL72 tray's 18 trays stay one domain (72 x used / 4 GPUs). A node described with
    more GPUs than its preset (a cluster file's other machine) keeps the preset's NICs and domain as given."""
    if gpus_used >= node_gpus:
        return node_nics, node_domain
    nics = -(-node_nics * gpus_used // node_gpus)
    if node_domain <= node_gpus:
        return nics, min(node_domain, gpus_used)
    return nics, node_domain // node_gpus * gpus_used


def _group(preset: str, count: int, overrides: dict[str, Any], where: str) -> NodeGroup:
    node = get_node(preset)
    if not isinstance(count, int) or isinstance(count, bool) or not 0 < count <= MAX_NODES:
        shown = count if not isinstance(count, int) or count < 10**30 else f"a {len(str(count))}-digit number"
        raise BadInputError(f"{where}: node count must be a positive integer up to {MAX_NODES:,}, got {shown!r}")
    gpu = get_gpu(str(overrides.get("gpu", node.gpu)))
    gpus_per_node = _positive_int(overrides, "gpus_per_node", node.gpus_per_node, where)
    scale_up = get_link(str(overrides.get("scale_up_link", node.scale_up_link)))
    nic = get_link(str(overrides.get("nic_link", node.nic_link)))
    nics_used, domain_used = partial_node_shares(node.gpus_per_node, node.nics_per_node, node.scale_up_domain,
                                                 gpus_per_node)
    nics = _positive_int(overrides, "nics_per_node", nics_used, where)
    domain = _positive_int(overrides, "scale_up_domain", domain_used, where)
    up_bw = overrides.get("scale_up_busbw_gb_per_s", scale_up.achieved_bytes_per_s / 1e9)
    out_bw = overrides.get("scale_out_busbw_gb_per_s", nics * nic.achieved_bytes_per_s / 1e9 / gpus_per_node)
    for key, value in (("gpus_per_node", gpus_per_node), ("nics_per_node", nics), ("scale_up_domain", domain),
                       ("scale_up_busbw_gb_per_s", up_bw), ("scale_out_busbw_gb_per_s", out_bw)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0 or not _finite(value):
            raise BadInputError(f"{where}: {key} must be > 0, got {value!r}")
        if key.endswith("_gb_per_s") and not BUSBW_GB_PER_S[0] <= value <= BUSBW_GB_PER_S[1]:
            raise BadInputError(f"{where}: {key} must be a bandwidth in GB/s from {BUSBW_GB_PER_S[0]:g} (1 kB/s) to "
                                f"{BUSBW_GB_PER_S[1]:g} (1 PB/s), got {value!r}")
    usd = overrides.get("usd_per_gpu_hour")
    price = None
    if usd is not None:  # the user's own price (a contract, a reservation) wins over the price table's rows
        if not isinstance(usd, (int, float)) or isinstance(usd, bool) or not _finite(usd) or not 0 < usd < MAX_USD_PER_GPU_HOUR:
            raise BadInputError(f"{where}: usd_per_gpu_hour must be a price in US dollars per GPU-hour > 0, got "
                                f"{usd!r}")
        price = PriceRow(gpu=gpu.name, provider=GIVEN_PROVIDER, region="", pricing="given", usd_per_gpu_hour=float(usd),
                         instance="", date="", source=f"{where} usd_per_gpu_hour")
    cap = overrides.get("power_cap_w")
    floor_w = STATIC_POWER_SHARE * gpu.tdp_w
    if cap is not None and (not isinstance(cap, (int, float)) or isinstance(cap, bool) or not _finite(cap)
                            or not floor_w < cap <= gpu.tdp_w):
        raise BadInputError(f"{where}: power_cap_w must be a number of watts in ({floor_w:g}, {gpu.tdp_w:g}] "
                            f"(above the {STATIC_POWER_SHARE:.0%} of {gpu.name}'s TDP that does not follow the clock, "
                            f"up to its TDP), got {cap!r}")
    return NodeGroup(preset=node.name, gpu=gpu, count=count, gpus_per_node=gpus_per_node, scale_up=scale_up,
                     scale_up_domain=domain, nic=nic, nics_per_node=nics,
                     scale_up_busbw_gb_per_s=float(up_bw), scale_out_busbw_gb_per_s=float(out_bw),
                     power_cap_w=None if cap is None else float(cap), price=price)


GROUP_KEYS = {"node", "count", "gpu", "gpus_per_node", "scale_up_link", "nic_link", "nics_per_node",
              "scale_up_domain", "scale_up_busbw_gb_per_s", "scale_out_busbw_gb_per_s", "power_cap_w",
              "usd_per_gpu_hour"}


CLUSTER_KEYS = frozenset({"name", "groups", "node_bandwidth_gb_per_s", "pods", "resilience"})
"""The keys of a cluster file (a `cluster:` wrapper is unwrapped before): an unknown one, a misspelt bandwidth matrix
say, is refused rather than ignored."""
BUSBW_GB_PER_S = (1e-6, 1e6)
"""A cluster file's bandwidths in GB/s: 1 kB/s .. 1 PB/s, the range calibration files hold measured ones to
(calibration.RANGES busbw_bytes_per_s); outside it a step time overflows into hundreds of digits."""


def price_cluster(cluster: Cluster, rule: PriceRule) -> Cluster:
    """`cluster` with every group priced under `rule` (hardware_db/prices.py: by default each GPU type's cheapest
    on-demand row across providers); a group with the cluster file's own price keeps it (it wins over the table)."""
    choice = rule.choose(g.gpu.name for g in cluster.groups if g.price is None or not g.price.given)
    groups = tuple(g if g.price is not None and g.price.given else replace(g, price=choice.rows.get(g.gpu.name))
                   for g in cluster.groups)
    return replace(cluster, groups=groups, prices=choice)


def cluster_from_dict(data: dict[str, Any], *, where: str = "cluster", prices: PriceRule | None = None) -> Cluster:
    """A cluster file's mapping, priced under `prices` (None: the default rule, price_cluster)."""
    unknown = set(data) - CLUSTER_KEYS
    if unknown:
        raise BadInputError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; known: "
                            f"{', '.join(sorted(CLUSTER_KEYS))}")
    raw_groups = data.get("groups")
    if not isinstance(raw_groups, list) or not raw_groups:
        raise BadInputError(f"{where}: needs `groups:`, a list of {{node: PRESET, count: N}}")
    groups = []
    for i, raw in enumerate(raw_groups):
        if not isinstance(raw, dict) or "node" not in raw or "count" not in raw:
            raise BadInputError(f"{where}: groups[{i}] needs `node` and `count`")
        unknown = set(raw) - GROUP_KEYS
        if unknown:
            raise BadInputError(f"{where}: groups[{i}] unknown key(s) {', '.join(sorted(unknown))}; known: "
                                f"{', '.join(sorted(GROUP_KEYS))}")
        groups.append(_group(str(raw["node"]), raw["count"], raw, f"{where}: groups[{i}]"))
    matrix = data.get("node_bandwidth_gb_per_s")
    n_nodes = sum(g.count for g in groups)
    _check_size(groups, where)
    if "pods" in data:
        if matrix is not None:
            raise BadInputError(f"{where}: give node_bandwidth_gb_per_s or pods, not both")
        matrix = _pods_matrix(data["pods"], n_nodes, where)
    if matrix is not None:
        low, high = BUSBW_GB_PER_S
        ok = isinstance(matrix, list) and len(matrix) == n_nodes and all(
            isinstance(row, list) and len(row) == n_nodes and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and _finite(v) and v >= 0
                and (low <= v <= high or (v == 0 and i == j))
                for j, v in enumerate(row))
            for i, row in enumerate(matrix))
        if not ok:
            raise BadInputError(f"{where}: node_bandwidth_gb_per_s must be a {n_nodes}x{n_nodes} matrix of GB/s, "
                                f"{low:g} .. {high:g} between different nodes (0 allowed on the diagonal)")
        matrix = tuple(tuple(float(v) for v in row) for row in matrix)
    resilience = resilience_from_dict(data["resilience"], where) if "resilience" in data else None
    return price_cluster(Cluster(name=str(data.get("name", where)), groups=tuple(groups),
                                 node_bandwidth_gb_per_s=matrix, resilience=resilience), prices or PriceRule())


POD_KEYS = {"nodes", "inside_gb_per_s", "between_gb_per_s"}
MAX_POD_NODES = 1024
"""Most nodes a `pods:` description expands to a full matrix for (a million entries; the node-order ILP itself
stops at 64 nodes)."""


def _pods_matrix(pods: Any, n_nodes: int, where: str) -> list[list[float]]:
    """The node-to-node matrix of a cluster described by pods: `nodes` lists each pod's node indices (every node
    once), `inside_gb_per_s` links nodes of one pod, `between_gb_per_s` nodes of different pods (GB/s per direction,
    whole node, as node_bandwidth_gb_per_s)."""
    usage = (f"{where}: pods must be {{nodes: [[0, 1, ...], [...]], inside_gb_per_s: N, between_gb_per_s: N}} "
             f"with each of the {n_nodes} node indices in exactly one pod")
    if not isinstance(pods, dict) or set(pods) != POD_KEYS:
        raise BadInputError(usage)
    if n_nodes > MAX_POD_NODES:
        raise BadInputError(f"{where}: pods describe up to {MAX_POD_NODES:,} nodes, this cluster has {n_nodes:,}")
    members = pods["nodes"]
    if not isinstance(members, list) or not all(isinstance(m, list) and m for m in members):
        raise BadInputError(usage)
    flat = [i for m in members for i in m]
    if any(not isinstance(i, int) or isinstance(i, bool) for i in flat) or sorted(flat) != list(range(n_nodes)):
        raise BadInputError(usage)
    speeds = (pods["inside_gb_per_s"], pods["between_gb_per_s"])
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and _finite(v)
               and BUSBW_GB_PER_S[0] <= v <= BUSBW_GB_PER_S[1] for v in speeds):
        raise BadInputError(f"{where}: pods inside_gb_per_s and between_gb_per_s must be GB/s from "
                            f"{BUSBW_GB_PER_S[0]:g} to {BUSBW_GB_PER_S[1]:g}, got {speeds[0]!r} and {speeds[1]!r}")
    pod = {i: k for k, m in enumerate(members) for i in m}
    return [[0.0 if i == j else float(speeds[0] if pod[i] == pod[j] else speeds[1]) for j in range(n_nodes)]
            for i in range(n_nodes)]


def _check_size(groups: Sequence[NodeGroup], where: str) -> None:
    nodes = sum(g.count for g in groups)
    gpus = sum(g.count * g.gpus_per_node for g in groups)
    if nodes > MAX_NODES or gpus > MAX_WORLD:
        raise BadInputError(f"{where}: {nodes:,} nodes with {gpus:,} GPUs; clusterplan plans up to {MAX_NODES:,} "
                            f"nodes and {MAX_WORLD:,} GPUs")


SHORTHAND = re.compile(r"^(?P<preset>[\w.\-]+):(?P<count>\d+)(?:[xX](?P<gpus>\d+))?$")
"""PRESET:NODES, or PRESET:NODESxGPUS for a job on GPUS of each node's GPUs (dgx-h100:1x4)."""


def _shorthand_int(digits: str, what: str, ref: str, most: int) -> int:
    digits = digits.lstrip("0")
    if len(digits) > 12:  # no int() of a 5,000-digit count
        raise BadInputError(f"--cluster {ref[:40]}: {what} must be a positive integer up to {most:,}, got a "
                            f"{len(digits)}-digit number")
    return int(digits or "0")


def load_cluster(ref: str, prices: PriceRule | None = None) -> Cluster:
    """`PRESET:NODES` (e.g. `dgx-h100:64`), `PRESET:NODESxGPUS` (GPUS of each node's GPUs: `dgx-h100:1x4`) or the
    path of a cluster YAML/JSON file, its GPUs priced under `prices` (None: the default rule, price_cluster)."""
    m = SHORTHAND.match(ref.strip())
    exists = bool(ref.strip()) and path_exists(ref)
    if m and not exists:
        count = _shorthand_int(m["count"], "node count", ref, MAX_NODES)
        overrides: dict[str, Any] = {}
        if m["gpus"] is not None:
            node_gpus = get_node(m["preset"]).gpus_per_node
            used = _shorthand_int(m["gpus"], "GPUs per node", ref, node_gpus)
            if not 0 < used <= node_gpus:
                raise BadInputError(f"--cluster {ref}: {m['preset']} has {node_gpus} GPUs per node, so a job uses 1 "
                                    f"to {node_gpus} of them (e.g. {m['preset']}:{count or 1}x{max(1, node_gpus // 2)}); "
                                    f"got {used}")
            overrides["gpus_per_node"] = used
        group = _group(m["preset"], count, overrides, f"--cluster {ref}")
        _check_size((group,), f"--cluster {ref}")
        return price_cluster(Cluster(name=ref, groups=(group,)), prices or PriceRule())
    if exists:
        data = load_mapping(ref)
        inner = data.get("cluster", data)
        if not isinstance(inner, dict):
            raise BadInputError(f"{show(ref)}: `cluster:` must be a mapping with `groups:`, got {type(inner).__name__}")
        return cluster_from_dict(inner, where=show(ref), prices=prices)
    if ref.lower().endswith((".yaml", ".yml", ".json")) or "/" in ref:
        raise BadInputError(f"--cluster {ref!r}: no such file; give the path of a cluster YAML file, or PRESET:NODES "
                            "(e.g. dgx-h100:8; `clusterplan hw list` shows presets)")
    raise BadInputError(f"--cluster {ref!r}: give PRESET:NODES (e.g. dgx-h100:8; `clusterplan hw list` shows presets), "
                        "PRESET:NODESxGPUS for GPUS of each node (dgx-h100:1x4) or the path of a cluster YAML file")
