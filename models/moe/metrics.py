"""An expert placement (physical slot -> logical expert per MoE layer) and what it costs.

Traffic model, per MoE layer l, from the routed tokens (not a uniform formula), under the dispatch rule of the
engine that runs the placement (`DispatchRule`, `DISPATCH_RULES`):
- Which replica a token goes to: split evenly over the expert's replicas (vLLM, TensorRT-LLM, SGLang's dynamic
  dispatch: a random or rotating replica per token, even in expectation), or the nearest replica (SGLang's static
  dispatch: a replica on the token's own GPU, else one on its node, else a fair draw over all of them).
- Where a token is dispatched from: its home GPU, uniform over all GPUs (data-parallel attention; every engine
  returns tokens to their rank after combine), or, under the `chained` research model only, the GPUs of the layer
  l-1 experts it came from, weighted by transitions[l-1, i, j] (ExFlow's context-coherent expert parallelism,
  MoETuner's routing dependency). Under home origin and even split the cross-node bytes do not depend on placement.
- Dispatch sends D[s, d] = sum_e tokens[e] * origin[e, s] * share_s[e, d]; combine returns the same tokens.
- Time: the busiest GPU's NIC (cross-node bytes, rail-optimised, one NIC per GPU) plus the busiest GPU's
  NVLink (cross-GPU bytes inside a node), as in comm.hierarchical_all_to_all_s, which this reproduces for
  uniform traffic.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from clusterplan.errors import BadInputError
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.cluster import Cluster
from clusterplan.models.moe.routing import RoutingStats

BYTES_PER_ELEMENT = {"fp8": 1, "bf16": 2, "fp16": 2, "fp32": 4}
# Floor of a token-count denominator that may be 0 (no replica on the node, no transition into an expert), so the
# division stays finite where np.where then takes the fallback share (as step.py's TINY_S does for seconds).
TINY_TOKENS = 1e-300


class ReplicaChoice(Enum):
    EVEN = "even"
    """Each expert's tokens split evenly over its replicas, whatever GPU they come from."""
    NEAREST = "nearest"
    """A replica on the token's GPU, else the node's replicas evenly, else all replicas evenly."""


class TokenOrigin(Enum):
    HOME = "home"
    """Tokens start every MoE layer on their own rank (returned there after combine), uniform over GPUs."""
    CHAINED = "chained"
    """Tokens start where their previous layer's experts ran (research model; no engine runs this)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DispatchRule:
    name: str
    replica: ReplicaChoice
    origin: TokenOrigin
    source: str


DISPATCH_RULES: dict[str, DispatchRule] = {rule.name: rule for rule in (
    DispatchRule(name="sglang-static", replica=ReplicaChoice.NEAREST, origin=TokenOrigin.HOME,
                 source="SGLang expert_location.py compute_logical_to_rank_dispatch_physical_map: the default "
                        "ep_dispatch_algorithm with --init-expert-location; same-GPU replica, else same node, else "
                        "a seeded fair choice; DeepEP combine returns tokens to their rank"),
    DispatchRule(name="sglang-dynamic", replica=ReplicaChoice.EVEN, origin=TokenOrigin.HOME,
                 source="SGLang --ep-dispatch-algorithm dynamic/random: a random replica per token"),
    DispatchRule(name="trtllm", replica=ReplicaChoice.EVEN, origin=TokenOrigin.HOME,
                 source="TensorRT-LLM wide-EP MoE load balancer: tokens spread over an expert's slots; combine "
                        "returns them to their rank"),
    DispatchRule(name="vllm", replica=ReplicaChoice.EVEN, origin=TokenOrigin.HOME,
                 source="vLLM EPLB (vllm/distributed/eplb): each token takes one of the expert's replicas, even in "
                        "expectation; combine returns tokens to their rank"),
    DispatchRule(name="chained", replica=ReplicaChoice.EVEN, origin=TokenOrigin.CHAINED,
                 source="research model (ExFlow, MoETuner): hidden states stay where their last experts ran"),
)}
DEFAULT_RULE_FOR_FORMAT = {"sglang": "sglang-static", "trtllm": "trtllm", "clusterplan": "vllm"}
"""The dispatch rule a placement file is judged under when --engine is not given: the engine that reads it."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Placement:
    phy2log: np.ndarray
    """[L, S] logical expert of each physical slot; slot j lives on GPU j // slots_per_gpu (EPLB layout)."""
    n_experts: int
    slots_per_gpu: int
    gpus_per_node: int

    def __post_init__(self) -> None:
        slots = self.phy2log.shape[1]
        if slots % self.slots_per_gpu or (slots // self.slots_per_gpu) % self.gpus_per_node:
            raise BadInputError(f"placement: {slots} slots do not fill whole GPUs of {self.slots_per_gpu} slots "
                                f"in nodes of {self.gpus_per_node} GPUs")
        counts = self.replica_count()
        if np.any(counts < 1):
            layer, expert = np.argwhere(counts < 1)[0]
            raise BadInputError(f"placement: layer {layer} has no slot for expert {expert}; every expert needs one")

    @property
    def n_layers(self) -> int:
        return int(self.phy2log.shape[0])

    @property
    def n_slots(self) -> int:
        return int(self.phy2log.shape[1])

    @property
    def n_gpus(self) -> int:
        return self.n_slots // self.slots_per_gpu

    @property
    def n_nodes(self) -> int:
        return self.n_gpus // self.gpus_per_node

    def replica_count(self) -> np.ndarray:
        """[L, E] replicas of each logical expert."""
        out = np.zeros((self.phy2log.shape[0], self.n_experts), dtype=np.int64)
        for layer, row in enumerate(self.phy2log):
            out[layer] = np.bincount(row, minlength=self.n_experts)[: self.n_experts]
        return out

    def per_gpu(self, layer: int) -> np.ndarray:
        """[E, G] replicas of each expert on each GPU."""
        out = np.zeros((self.n_experts, self.n_gpus), dtype=np.int64)
        np.add.at(out, (self.phy2log[layer], np.arange(self.n_slots) // self.slots_per_gpu), 1)
        return out

    def share(self, layer: int) -> np.ndarray:
        """[E, G] fraction of each expert's tokens handled by each GPU (even split over replicas)."""
        counts = self.per_gpu(layer)
        return counts / counts.sum(axis=1, keepdims=True)

    def nearest_share(self, layer: int) -> np.ndarray:
        """[G_src, E, G_dst] where GPU s sends expert e's tokens under nearest dispatch (SGLang static): its own
        replica, else its node's replicas evenly, else all replicas evenly."""
        counts = self.per_gpu(layer).astype(float)  # [E, G]
        n_gpus = counts.shape[1]
        node = np.arange(n_gpus) // self.gpus_per_node
        same_node = (node[:, None] == node[None, :]).astype(float)  # [G_src, G_dst]
        node_counts = counts[None, :, :] * same_node[:, None, :]  # [G_src, E, G_dst] replicas on s's node
        node_total = node_counts.sum(axis=2, keepdims=True)
        all_share = (counts / counts.sum(axis=1, keepdims=True))[None, :, :]
        out = np.where(node_total > 0, node_counts / np.maximum(node_total, TINY_TOKENS), all_share)
        own = counts.T > 0  # [G_src, E]: s holds a replica of e
        own_row = np.zeros((n_gpus, 1, n_gpus))
        own_row[np.arange(n_gpus), 0, np.arange(n_gpus)] = 1.0
        return np.where(own[:, :, None], own_row, out)

    def dispatch_share(self, layer: int, rule: DispatchRule) -> np.ndarray:
        """[G_src, E, G_dst] share of expert e's tokens from GPU s that GPU d handles under `rule`."""
        if rule.replica is ReplicaChoice.NEAREST:
            return self.nearest_share(layer)
        return np.broadcast_to(self.share(layer)[None, :, :], (self.n_gpus, self.n_experts, self.n_gpus))

    def handled_share(self, layer: int, rule: DispatchRule, origin_eg: np.ndarray) -> np.ndarray:
        """[E, G] share of each expert's tokens that each GPU ends up handling (where the chained model's next
        layer starts from)."""
        if rule.replica is ReplicaChoice.EVEN:
            return self.share(layer)
        return np.einsum("es,sed->ed", origin_eg, self.nearest_share(layer))

    def logical_to_physical(self) -> np.ndarray:
        """[L, E, max replicas] slot ids of each expert, padded with -1 (vLLM's logical_to_physical_map)."""
        width = int(self.replica_count().max())
        out = np.full((self.n_layers, self.n_experts, width), -1, dtype=np.int64)
        for layer, row in enumerate(self.phy2log):
            filled = np.zeros(self.n_experts, dtype=np.int64)
            for slot, expert in enumerate(row):
                out[layer, expert, filled[expert]] = slot
                filled[expert] += 1
        return out


def slots_from_counts(per_gpu: np.ndarray) -> np.ndarray:
    """[E, G] replicas per GPU -> one phy2log row, each GPU's slots in ascending expert id."""
    return np.concatenate([np.repeat(np.arange(per_gpu.shape[0]), per_gpu[:, g]) for g in range(per_gpu.shape[1])])


@dataclass(frozen=True, kw_only=True, slots=True)
class Fabric:
    """What a dispatch/combine costs on a cluster for one model."""

    n_gpus: int
    gpus_per_node: int
    scale_up_busbw_bytes_per_s: float
    scale_out_busbw_bytes_per_s: float
    scale_up_latency_s: float
    scale_out_latency_s: float
    dispatch_bytes_per_token: float
    combine_bytes_per_token: float
    expert_s_per_token: float
    """Forward time of one token through one expert at the GPU's peak rate."""

    @property
    def n_nodes(self) -> int:
        return self.n_gpus // self.gpus_per_node

    def node_of(self) -> np.ndarray:
        return np.arange(self.n_gpus) // self.gpus_per_node


def fabric_for(cluster: Cluster, model: ModelSpec, dispatch_dtype: str = "bf16") -> Fabric:
    """Fabric of a homogeneous cluster for an MoE model; combine is always BF16 (DeepSeek-V3 report 3.3)."""
    if dispatch_dtype not in BYTES_PER_ELEMENT:
        raise BadInputError(f"dispatch dtype {dispatch_dtype!r}: use one of {', '.join(BYTES_PER_ELEMENT)}")
    if not cluster.is_homogeneous:
        raise BadInputError(f"cluster {cluster.name} mixes node kinds; expert placement needs one kind of node")
    g = cluster.primary
    # 2 FLOPs per parameter per token for a forward pass (Kaplan et al. 2020).
    # a latent MoE dispatches, computes and combines at its latent width (ModelSpec.moe_latent)
    flops = 2 * model.expert_params()
    width = model.moe_latent or model.hidden
    return Fabric(
        n_gpus=cluster.world_size, gpus_per_node=g.gpus_per_node,
        scale_up_busbw_bytes_per_s=g.scale_up_busbw_gb_per_s * 1e9,
        scale_out_busbw_bytes_per_s=g.scale_out_busbw_gb_per_s * 1e9,
        scale_up_latency_s=g.scale_up.latency_us * 1e-6, scale_out_latency_s=g.nic.latency_us * 1e-6,
        dispatch_bytes_per_token=width * BYTES_PER_ELEMENT[dispatch_dtype],
        combine_bytes_per_token=width * BYTES_PER_ELEMENT["bf16"],
        expert_s_per_token=flops / (g.gpu.tflops("bf16") * 1e12),
    )


# ---- traffic ------------------------------------------------------------------------------------
def origin(prev_share: np.ndarray, transitions: np.ndarray) -> np.ndarray:
    """[E, G] where each expert's tokens come from: the previous layer's GPUs weighted by transitions.

    Experts that no recorded transition enters get a uniform origin.
    """
    n_gpus = prev_share.shape[1]
    into = transitions.sum(axis=0)  # tokens entering each expert j from any i
    # Token state sits where its layer-l experts ran (ExFlow context-coherent EP; MoETuner routing dependency).
    weighted = transitions.T @ prev_share  # [E_j, G] = sum_i T[i, j] * share_prev[i, g]
    uniform = np.full_like(weighted, 1.0 / n_gpus)
    return np.where(into[:, None] > 0, weighted / np.maximum(into, TINY_TOKENS)[:, None], uniform)


def traffic(tokens: np.ndarray, origin_eg: np.ndarray, share_eg: np.ndarray) -> np.ndarray:
    """[G, G] dispatch tokens from GPU s to GPU d: sum_e tokens[e] * origin[e, s] * share[e, d]; `share` is [E, G]
    (the same for every source: even split) or [G_src, E, G_dst] (source-dependent: nearest dispatch)."""
    if share_eg.ndim == 2:
        return (origin_eg * tokens[:, None]).T @ share_eg
    return np.einsum("es,sed->sd", origin_eg * tokens[:, None], share_eg)


@dataclass(frozen=True, kw_only=True, slots=True)
class LayerMetrics:
    max_load_tokens: float
    mean_load_tokens: float
    cross_gpu_tokens: float
    """Dispatched token copies that leave their GPU (combine returns the same number)."""
    cross_node_tokens: float
    cross_gpu_bytes: float
    """Dispatch + combine bytes between GPUs (inside and across nodes)."""
    cross_node_bytes: float
    """Dispatch + combine bytes across nodes."""
    max_nic_tokens: float
    """Busiest GPU's cross-node tokens (max of sent and received)."""
    all_to_all_s: float
    """Predicted dispatch + combine time."""
    expert_compute_s: float
    """Busiest GPU's expert forward time at peak."""

    @property
    def max_over_mean(self) -> float:
        return self.max_load_tokens / self.mean_load_tokens if self.mean_load_tokens else 1.0


def _busiest(d: np.ndarray, mask: np.ndarray) -> float:
    """Max over GPUs of tokens sent or received over the masked (remote or local) pairs."""
    m = np.where(mask, d, 0.0)
    return float(max(m.sum(axis=1).max(), m.sum(axis=0).max()))


def layer_metrics(d: np.ndarray, fabric: Fabric) -> LayerMetrics:
    node = fabric.node_of()
    remote = node[:, None] != node[None, :]
    local = ~remote & ~np.eye(fabric.n_gpus, dtype=bool)
    gpu_load = d.sum(axis=0)
    per_token = fabric.dispatch_bytes_per_token + fabric.combine_bytes_per_token
    nic, nvl = _busiest(d, remote), _busiest(d, local)
    n_in, n = fabric.gpus_per_node, fabric.n_gpus
    # Two-level all-to-all: remote share over the GPU's NIC + local share over NVLink, alpha per peer
    # (comm.hierarchical_all_to_all_s), once for dispatch and once for combine.
    lat = (n - n_in) * fabric.scale_out_latency_s * (n > n_in) + (n_in - 1) * fabric.scale_up_latency_s * (n_in > 1)
    a2a_s = per_token * (nic / fabric.scale_out_busbw_bytes_per_s + nvl / fabric.scale_up_busbw_bytes_per_s) + 2 * lat
    cross_gpu = float(d.sum() - np.trace(d))
    cross_node = float(d[remote].sum())
    return LayerMetrics(max_load_tokens=float(gpu_load.max()), mean_load_tokens=float(gpu_load.mean()),
                        cross_gpu_tokens=cross_gpu, cross_node_tokens=cross_node,
                        cross_gpu_bytes=cross_gpu * per_token, cross_node_bytes=cross_node * per_token,
                        max_nic_tokens=nic, all_to_all_s=float(a2a_s),
                        expert_compute_s=float(gpu_load.max()) * fabric.expert_s_per_token)


def layer_origin(placement: Placement, stats: RoutingStats, layer: int, prev_share: np.ndarray | None,
                 rule: DispatchRule) -> np.ndarray:
    """[E, G] where layer `layer`'s tokens of each expert start: home (uniform) or, chained, from `prev_share`."""
    trans = stats.transitions[layer - 1] if layer > 0 and stats.transitions is not None else None
    if rule.origin is TokenOrigin.HOME or trans is None or prev_share is None:
        return np.full((placement.n_experts, placement.n_gpus), 1.0 / placement.n_gpus)
    return origin(prev_share, trans)


def layer_traffic(placement: Placement, stats: RoutingStats, layer: int, prev_share: np.ndarray | None,
                  scale: float = 1.0, rule: DispatchRule | None = None) -> np.ndarray:
    rule = rule or DISPATCH_RULES["chained"]
    org = layer_origin(placement, stats, layer, prev_share, rule)
    share = placement.share(layer) if rule.replica is ReplicaChoice.EVEN else placement.nearest_share(layer)
    return traffic(stats.tokens_per_expert[layer] * scale, org, share)


def evaluate(placement: Placement, stats: RoutingStats, fabric: Fabric, scale: float = 1.0,
             rule: DispatchRule | None = None) -> list[LayerMetrics]:
    """Metrics of every layer under `rule` (default: the chained research model, even split); `scale` converts the
    statistics' token counts to one step's."""
    if placement.n_layers != stats.n_layers or placement.n_experts != stats.n_experts:
        raise BadInputError(f"placement is {placement.n_layers} layers x {placement.n_experts} experts, statistics "
                            f"{stats.n_layers} x {stats.n_experts}; give a placement made for these statistics")
    if placement.n_gpus != fabric.n_gpus:
        raise BadInputError(f"placement spans {placement.n_gpus} GPUs, the cluster has {fabric.n_gpus}")
    rule = rule or DISPATCH_RULES["chained"]
    out = []
    prev = None
    for layer in range(stats.n_layers):
        out.append(layer_metrics(layer_traffic(placement, stats, layer, prev, scale, rule), fabric))
        if rule.origin is TokenOrigin.CHAINED:
            prev = placement.handled_share(layer, rule, layer_origin(placement, stats, layer, prev, rule))
    return out


def summary(layers: list[LayerMetrics]) -> dict[str, float]:
    """Totals and worst cases over layers (deterministic plain floats for JSON)."""
    ratios = [m.max_over_mean for m in layers]
    return {
        "max_over_mean_worst": max(ratios),
        "max_over_mean_avg": float(np.mean(ratios)),
        "cross_gpu_bytes": float(sum(m.cross_gpu_bytes for m in layers)),
        "cross_node_bytes": float(sum(m.cross_node_bytes for m in layers)),
        "all_to_all_s": float(sum(m.all_to_all_s for m in layers)),
        "expert_compute_s": float(sum(m.expert_compute_s for m in layers)),
    }
