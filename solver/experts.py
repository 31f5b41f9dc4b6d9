"""EPLB-equivalent expert placement: DeepSeek's published load balancer, restated in numpy.

Written from the algorithm description of deepseek-ai/EPLB (eplb.py at d52c72d, research/moe-placement.md 4):
1. pack expert groups to nodes with balanced packing (greedy, heaviest first, equal counts per node);
2. inside each node, replicate the expert with the highest load per replica into each spare slot;
3. pack the replicas (load / replica count) onto the node's GPUs with balanced packing.
If the expert groups do not divide over the nodes, the global policy is the same with 1 group and 1 node.
Tokens of a replicated expert are assumed to split evenly over its replicas.
"""

from __future__ import annotations

import numpy as np

from clusterplan.errors import InfeasibleError
from clusterplan.models.moe.metrics import Placement


def balanced_packing(weight: np.ndarray, n_packs: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack each row's items into `n_packs` packs of equal count, heaviest item first into the lightest open pack.

    Returns (pack index, rank in pack), both shaped like `weight` [X, n].
    """
    rows, n_items = weight.shape
    per_pack = n_items // n_packs
    if per_pack == 1:
        return np.tile(np.arange(n_items), (rows, 1)), np.zeros((rows, n_items), dtype=np.int64)
    pack = np.full((rows, n_items), -1, dtype=np.int64)
    rank = np.full((rows, n_items), -1, dtype=np.int64)
    for r in range(rows):
        pack_weight = np.zeros(n_packs)
        pack_items = np.zeros(n_packs, dtype=np.int64)
        for item in np.argsort(-weight[r], kind="stable"):
            open_packs = np.flatnonzero(pack_items < per_pack)
            target = open_packs[np.argmin(pack_weight[open_packs])]
            pack[r, item], rank[r, item] = target, pack_items[target]
            pack_weight[target] += weight[r, item]
            pack_items[target] += 1
    return pack, rank


def replicate_experts(weight: np.ndarray, n_phy: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Give each spare slot to the expert with the highest load per replica (greedy min-max per-replica load).

    Returns (phy2log [X, n_phy], replica rank [X, n_phy], replica count [X, n_log]).
    """
    rows, n_log = weight.shape
    phy2log = np.tile(np.arange(n_phy), (rows, 1))
    rank = np.zeros((rows, n_phy), dtype=np.int64)
    count = np.ones((rows, n_log), dtype=np.int64)
    row_ids = np.arange(rows)
    for slot in range(n_log, n_phy):
        hottest = np.argmax(weight / count, axis=1)
        phy2log[:, slot] = hottest
        rank[:, slot] = count[row_ids, hottest]
        count[row_ids, hottest] += 1
    return phy2log, rank, count


def _inverse(perm: np.ndarray) -> np.ndarray:
    inv = np.empty_like(perm)
    np.put_along_axis(inv, perm, np.broadcast_to(np.arange(perm.shape[1]), perm.shape), axis=1)
    return inv


def rebalance_hierarchical(weight: np.ndarray, n_phy: int, n_groups: int, n_nodes: int,
                           n_gpus: int) -> tuple[np.ndarray, np.ndarray]:
    """EPLB's hierarchical policy on [L, E] loads; returns (phy2log [L, n_phy], replica count [L, E])."""
    n_layers, n_log = weight.shape
    group_size, groups_per_node = n_log // n_groups, n_groups // n_nodes
    per_gpu = n_phy // n_gpus
    # Step 1: groups to nodes; log2mlog lays experts out node by node.
    group_pack, group_rank = balanced_packing(weight.reshape(n_layers, n_groups, group_size).sum(-1), n_nodes)
    log2mlog = (((group_pack * groups_per_node + group_rank) * group_size)[:, :, None]
                + np.arange(group_size)).reshape(n_layers, n_log)
    mlog2log = _inverse(log2mlog)
    # Step 2: replicas inside each node.
    tokens_per_mlog = np.take_along_axis(weight, mlog2log, axis=1).reshape(-1, n_log // n_nodes)
    phy2mlog, _, mlogcnt = replicate_experts(tokens_per_mlog, n_phy // n_nodes)
    # Step 3: replicas onto the node's GPUs by load per replica.
    tokens_per_phy = np.take_along_axis(tokens_per_mlog / mlogcnt, phy2mlog, axis=1)
    pack, rank = balanced_packing(tokens_per_phy, n_gpus // n_nodes)
    pphy2phy = _inverse(pack * per_gpu + rank)
    pphy2mlog = np.take_along_axis(phy2mlog, pphy2phy, axis=1)
    offsets = np.arange(0, n_log, n_log // n_nodes)[None, :, None]
    pphy2mlog = (pphy2mlog.reshape(n_layers, n_nodes, -1) + offsets).reshape(n_layers, -1)
    phy2log = np.take_along_axis(mlog2log, pphy2mlog, axis=1)
    count = np.take_along_axis(mlogcnt.reshape(n_layers, -1), log2mlog, axis=1)
    return phy2log, count


def check_shape(n_experts: int, n_slots: int, n_gpus: int, n_nodes: int, n_groups: int) -> None:
    if n_slots % n_gpus:
        raise InfeasibleError(f"{n_slots} expert slots do not divide over {n_gpus} GPUs; give whole slots per GPU")
    if n_slots < n_experts:
        raise InfeasibleError(f"{n_slots} slots cannot hold {n_experts} experts; raise --slots-per-gpu to at least "
                              f"{-(-n_experts // n_gpus)}")
    if n_groups < 1 or n_experts % n_groups:
        raise InfeasibleError(f"{n_experts} experts do not split into {n_groups} expert groups; give a divisor")
    if n_gpus % n_nodes:
        raise InfeasibleError(f"{n_gpus} GPUs do not split over {n_nodes} nodes")


def eplb_placement(tokens_per_expert: np.ndarray, *, slots_per_gpu: int, n_gpus: int, gpus_per_node: int,
                   n_groups: int) -> Placement:
    """EPLB's rebalance_experts: hierarchical when groups divide over nodes (and slots per node fit), else global."""
    n_layers, n_experts = tokens_per_expert.shape
    n_nodes, n_slots = n_gpus // gpus_per_node, slots_per_gpu * n_gpus
    check_shape(n_experts, n_slots, n_gpus, n_nodes, n_groups)
    weight = tokens_per_expert.astype(np.float32)  # eplb.py works on weight.float()
    if n_groups % n_nodes == 0:
        phy2log, _ = rebalance_hierarchical(weight, n_slots, n_groups, n_nodes, n_gpus)
    else:
        phy2log, _ = rebalance_hierarchical(weight, n_slots, 1, 1, n_gpus)
    return Placement(phy2log=phy2log.astype(np.int64), n_experts=n_experts, slots_per_gpu=slots_per_gpu,
                     gpus_per_node=gpus_per_node)
