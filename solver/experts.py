"""EPLB expert placement: DeepSeek's published load balancer (deepseek-ai/EPLB eplb.py), restated in numpy.

Written from the algorithm of eplb.py (rebalance_experts):
1. pack expert groups to nodes with balanced packing (greedy, heaviest first, equal counts per node);
2. inside each node, replicate the expert with the highest load per replica into each spare slot;
3. pack the replicas (load / replica count) onto the node's GPUs with balanced packing.
The global policy is the same with 1 group and 1 node (upstream uses it when groups do not divide over nodes).

Bit-exact with upstream on its own outputs (tests/test_experts_eplb_exact.py, recorded from eplb.py with torch
2.13 on fixed inputs): loads are float32 as upstream's weight.float(), pack weights accumulate in float32, load per
replica divides in float32, ties in the heaviest-first order follow torch's CPU sort (descending, not stable),
which is libstdc++'s std::sort introsort (`torch_sort_desc`); ties in the hottest expert take the first index, as
torch.max. Remaining difference: sums of non-integer float32 loads over an expert group may round differently
from torch's vectorised reduction (integer token counts below 2**24 sum exactly either way).
"""

from __future__ import annotations

import numpy as np

from clusterplan.errors import InfeasibleError
from clusterplan.models.moe.metrics import Placement

_INSERTION_THRESHOLD = 16
"""libstdc++ std::sort: ranges up to 16 elements are left to the final insertion sort (bits/stl_algo.h)."""


def torch_sort_desc(values: np.ndarray) -> np.ndarray:
    """Indices of `values` (float32) in descending order, ties ordered as torch.sort(descending=True) on CPU.

    torch's CPU sort (not stable) is libstdc++'s introsort on (key, index) pairs with the comparator a > b:
    median-of-three pivot moved to the front, unguarded Hoare partition, recursion on the right part, heap sort past
    depth 2*floor(log2 n), then one insertion sort over the whole range. Checked against torch on random inputs
    with many ties (tests/test_experts_eplb_exact.py).
    """
    arr = [(float(v), i) for i, v in enumerate(np.asarray(values, dtype=np.float32))]

    def before(a: tuple[float, int], b: tuple[float, int]) -> bool:
        return a[0] > b[0]

    def swap(i: int, j: int) -> None:
        arr[i], arr[j] = arr[j], arr[i]

    def median_to_first(result: int, a: int, b: int, c: int) -> None:
        if before(arr[a], arr[b]):
            if before(arr[b], arr[c]):
                swap(result, b)
            elif before(arr[a], arr[c]):
                swap(result, c)
            else:
                swap(result, a)
        elif before(arr[a], arr[c]):
            swap(result, a)
        elif before(arr[b], arr[c]):
            swap(result, c)
        else:
            swap(result, b)

    def partition(first: int, last: int, pivot: int) -> int:
        while True:
            while before(arr[first], arr[pivot]):
                first += 1
            last -= 1
            while before(arr[pivot], arr[last]):
                last -= 1
            if not first < last:
                return first
            swap(first, last)
            first += 1

    def sift_down(first: int, hole: int, length: int, value: tuple[float, int]) -> None:
        # std::__adjust_heap: move the hole to a leaf along the larger child, then push the value back up.
        top = hole
        child = hole
        while child < (length - 1) // 2:
            child = 2 * (child + 1)
            if before(arr[first + child], arr[first + child - 1]):
                child -= 1
            arr[first + hole] = arr[first + child]
            hole = child
        if (length & 1) == 0 and child == (length - 2) // 2:
            child = 2 * (child + 1)
            arr[first + hole] = arr[first + child - 1]
            hole = child - 1
        parent = (hole - 1) // 2
        while hole > top and before(arr[first + parent], value):
            arr[first + hole] = arr[first + parent]
            hole = parent
            parent = (hole - 1) // 2
        arr[first + hole] = value

    def heap_sort(first: int, last: int) -> None:
        # std::__partial_sort(first, last, last): make_heap then sort_heap.
        length = last - first
        for parent in range((length - 2) // 2, -1, -1):
            sift_down(first, parent, length, arr[first + parent])
        for end in range(last - 1, first, -1):
            value = arr[end]
            arr[end] = arr[first]
            sift_down(first, 0, end - first, value)

    def introsort(first: int, last: int, depth: int) -> None:
        while last - first > _INSERTION_THRESHOLD:
            if depth == 0:
                heap_sort(first, last)
                return
            depth -= 1
            median_to_first(first, first + 1, first + (last - first) // 2, last - 1)
            cut = partition(first + 1, last, first)
            introsort(cut, last, depth)
            last = cut

    def linear_insert(last: int) -> None:
        value = arr[last]
        while before(value, arr[last - 1]):
            arr[last] = arr[last - 1]
            last -= 1
        arr[last] = value

    def insertion_sort(first: int, last: int) -> None:
        for i in range(first + 1, last):
            if before(arr[i], arr[first]):
                arr[first + 1:i + 1], arr[first] = arr[first:i], arr[i]
            else:
                linear_insert(i)

    n = len(arr)
    if n > 1:
        introsort(0, n, 2 * (n.bit_length() - 1))
        insertion_sort(0, min(n, _INSERTION_THRESHOLD))
        for i in range(_INSERTION_THRESHOLD, n):
            linear_insert(i)
    return np.array([i for _, i in arr], dtype=np.int64)


def balanced_packing(weight: np.ndarray, n_packs: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack each row's items into `n_packs` packs of equal count, heaviest item first into the lightest open pack.

    Returns (pack index, rank in pack), both shaped like `weight` [X, n].
    """
    rows, n_items = weight.shape
    per_pack = n_items // n_packs
    if per_pack == 1:
        return np.tile(np.arange(n_items), (rows, 1)), np.zeros((rows, n_items), dtype=np.int64)
    weight = np.asarray(weight, dtype=np.float32)
    pack = np.full((rows, n_items), -1, dtype=np.int64)
    rank = np.full((rows, n_items), -1, dtype=np.int64)
    for r in range(rows):
        pack_weight = np.zeros(n_packs, dtype=np.float32)  # upstream accumulates 0-dim float32 tensors
        pack_items = np.zeros(n_packs, dtype=np.int64)
        for item in torch_sort_desc(weight[r]):
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
        hottest = np.argmax(weight / count.astype(np.float32), axis=1)  # float32 / int64 stays float32 in torch
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
    tokens_per_phy = np.take_along_axis(tokens_per_mlog / mlogcnt.astype(np.float32), phy2mlog, axis=1)
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


def eplb_policy(tokens_per_expert: np.ndarray, *, slots_per_gpu: int, n_gpus: int, gpus_per_node: int,
                n_groups: int, n_nodes: int) -> Placement:
    """One EPLB policy as asked: hierarchical with `n_groups` groups over `n_nodes` nodes, or global (1, 1)."""
    n_experts = tokens_per_expert.shape[1]
    n_slots = slots_per_gpu * n_gpus
    check_shape(n_experts, n_slots, n_gpus, n_nodes, n_groups)
    phy2log, _ = rebalance_hierarchical(tokens_per_expert.astype(np.float32), n_slots, n_groups, n_nodes, n_gpus)
    return Placement(phy2log=phy2log.astype(np.int64), n_experts=n_experts, slots_per_gpu=slots_per_gpu,
                     gpus_per_node=gpus_per_node)


def eplb_placement(tokens_per_expert: np.ndarray, *, slots_per_gpu: int, n_gpus: int, gpus_per_node: int,
                   n_groups: int) -> Placement:
    """EPLB's rebalance_experts: hierarchical when groups divide over nodes (and slots per node fit), else global."""
    n_nodes = n_gpus // gpus_per_node
    check_shape(tokens_per_expert.shape[1], slots_per_gpu * n_gpus, n_gpus, n_nodes, n_groups)
    if n_groups % n_nodes:
        n_groups, n_nodes = 1, 1
    return eplb_policy(tokens_per_expert, slots_per_gpu=slots_per_gpu, n_gpus=n_gpus, gpus_per_node=gpus_per_node,
                       n_groups=n_groups, n_nodes=n_nodes)
