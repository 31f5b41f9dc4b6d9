"""Layers kept in bf16 under fp8 training (Layout.bf16_first_layers / bf16_last_layers; Megatron-Core
first_last_layers_bf16): which of them each pipeline rank runs, and what they add to its stage time.

Megatron-Core picks them by global layer number (fp8_utils.is_first_last_bf16_layer: layer_no < start or
layer_no >= num_layers - end), so with pipeline parallelism they sit on the ranks holding the model's first and last
chunks. Such a layer runs its GEMMs in bf16 (a null fp8 / fp4 context): no quantisation, the bf16 GEMM rate; its
FLOPs are the same."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from clusterplan.models.architecture.shapes import HYBRID_BLOCK_KINDS, ModelShapes
from clusterplan.models.training.batch import PREC_BF16, PREC_FP8, LayoutArrays
from clusterplan.models.training.layout import Layout, chunk_layer_counts, layer_split

Positions = tuple[np.ndarray, np.ndarray, np.ndarray]
"""Per row: the first, (slowest or heaviest) middle and last pipeline rank's value (memory.StageLayers' order)."""

TINY_S = 1e-30
"""Guards a division by a layer time of 0 (a model without layers of a kind)."""


def megatron_chunk_counts(n_layers: int, layout: Layout) -> list[int]:
    """Layers of each model chunk in model order as Megatron-Core runs the layout (chunk c on rank c % pp): uneven
    ends with virtual stages that divide them (--decoder-first/last-pipeline-num-layers with
    --num-virtual-stages-per-pipeline-rank, as the Megatron export writes them) split every rank's layers evenly over
    its chunks (transformer_layer.get_transformer_layer_offset); any other split is the per-chunk layout the export
    writes (layout.chunk_layer_counts)."""
    pp, vpp = layout.pp, layout.vpp
    uneven_ends = layout.first_stage_layers or layout.last_stage_layers
    if pp > 1 and vpp > 1 and uneven_ends and not layout.pp_layers and not (
            layout.first_stage_layers % vpp or layout.last_stage_layers % vpp):
        first, middle, last = layer_split(n_layers, layout)
        ranks = [first, *([middle] * (pp - 2)), last]
        return [ranks[r] // vpp for _ in range(vpp) for r in range(pp)]
    return chunk_layer_counts(n_layers, layout)


def bf16_layers_by_rank(n_layers: int, layout: Layout) -> list[tuple[int, ...]]:
    """Global indices (0-based, model order) of the layers each pipeline rank runs in bf16: the first
    bf16_first_layers and the last bf16_last_layers, found in the rank's chunks (megatron_chunk_counts: chunk c on
    rank c % pp, Megatron-LM interleaving)."""
    start, end = layout.bf16_first_layers, layout.bf16_last_layers
    ranks: list[list[int]] = [[] for _ in range(layout.pp)]
    first_index = 0
    for chunk, count in enumerate(megatron_chunk_counts(n_layers, layout)):
        ranks[chunk % layout.pp] += [i for i in range(first_index, first_index + count)
                                     if i < start or i >= n_layers - end]
        first_index += count
    return [tuple(r) for r in ranks]


def bf16_rows(L: LayoutArrays) -> np.ndarray:
    """The rows that keep any layer in bf16 under fp8."""
    return np.nonzero((L.precision == PREC_FP8) & ((L.bf16_first_layers > 0) | (L.bf16_last_layers > 0)))[0]


def _groups(L: LayoutArrays, rows: np.ndarray) -> dict[tuple, list[int]]:
    """`rows` by what places their bf16 layers (pipeline split and counts): one bf16_layers_by_rank per group."""
    groups: dict[tuple, list[int]] = {}
    for i in rows:
        key = (int(L.pp[i]), int(L.vpp[i]), int(L.first_stage_layers[i]), int(L.last_stage_layers[i]),
               tuple(L.pp_layers[i]) if L.pp_layers_listed[i] else (), int(L.bf16_first_layers[i]),
               int(L.bf16_last_layers[i]))
        groups.setdefault(key, []).append(int(i))
    return groups


def bf16_position_counts(n_layers: int, L: LayoutArrays) -> Positions | None:
    """bf16 layers on the first, the fullest middle and the last pipeline rank of each row (pp 1: all of them on
    its one rank, in every position); None where no row keeps any."""
    rows = bf16_rows(L)
    if not len(rows):
        return None
    counts = tuple(np.zeros(len(L)) for _ in range(3))
    for members in _groups(L, rows).values():
        by_rank = [len(r) for r in bf16_layers_by_rank(n_layers, L.layout(members[0]))]
        counts[0][members] = by_rank[0]
        counts[1][members] = max(by_rank[1:-1], default=by_rank[0] if len(by_rank) == 1 else 0)
        counts[2][members] = by_rank[-1]
    return counts


def bf16_stage_layers(shapes: ModelShapes, L: LayoutArrays, layers: Positions, average_s: np.ndarray,
                      kind_s: dict[str, tuple[np.ndarray, np.ndarray]]) -> Positions:
    """The first, slowest middle and last ranks' layers in units of the average fp8 layer (`average_s`), their bf16
    layers counted at their bf16 time: each adds (bf16 time - fp8 time) / average_s. `kind_s[kind]` = (fp8, bf16)
    time of one layer of that kind per row ("layer" for a model of one kind; a hybrid's block kinds, read from its
    pattern). A non-hybrid MoE model's bf16 layers are priced as its average layer (its leading dense layers are
    not told apart). The addition is in average-layer units, so the stage's terms (compute, tp, ep, host) take it
    in the fp8 layer's proportions: the step is right, its split between terms approximate. The middle ranks take the largest addition of any of them on top of the slowest middle (an
    upper bound; no middle rank holds a bf16 layer unless the ends' chunks are shorter than the counts)."""
    rows = bf16_rows(L)
    if not len(rows):
        return layers
    first, middle, last = (np.array(x, dtype=float, copy=True) for x in layers)
    symbol_kind = dict(HYBRID_BLOCK_KINDS)
    average = np.maximum(average_s, TINY_S)
    for members in _groups(L, rows).values():
        idx = np.array(members)
        by_rank = bf16_layers_by_rank(shapes.n_layers, L.layout(members[0]))
        added = []
        for indices in by_rank:
            kinds = [symbol_kind[shapes.pattern[i]] for i in indices] if shapes.pattern else ["layer"] * len(indices)
            added.append(sum((kind_s[k][1][idx] - kind_s[k][0][idx] for k in kinds), np.zeros(len(idx)))
                         / average[idx])
        if len(by_rank) == 1:  # one stage: it holds both ends
            first[idx] += added[0]
            middle[idx] += added[0]
            last[idx] += added[0]
            continue
        first[idx] += added[0]
        last[idx] += added[-1]
        if len(by_rank) > 2:
            middle[idx] += np.max(added[1:-1], axis=0)
    return first, middle, last


def as_bf16(L: LayoutArrays) -> LayoutArrays:
    """The same rows trained in bf16: what one of their bf16 layers costs (layer_cost of these rows)."""
    return replace(L, precision=np.full(len(L), int(PREC_BF16), dtype=np.int64),
                   bf16_first_layers=np.zeros(len(L)), bf16_last_layers=np.zeros(len(L)),
                   fp8_params=np.zeros(len(L)))
