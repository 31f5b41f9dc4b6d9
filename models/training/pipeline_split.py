"""How a stack splits the transformer layers over pipeline ranks when the layout gives no split of its own.

even: n_layers / pp per rank (first/last_stage_layers where given): Megatron-Core, torchtitan (our exports write
their module lists), DeepSpeed's uniform partition. cost_balanced: nanotron's build_model (models/base.py), which
walks the model's pipeline blocks in order and moves to the next rank once the cumulative block cost reaches that
rank's share (research/nanotron-memory.md).
"""

from __future__ import annotations

from dataclasses import replace

from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.training.layout import Layout


def cost_balanced_ranks(model: ModelSpec, pp: int, ties_advance: bool = True) -> list[tuple[int, bool]]:
    """(decoder layers, holds the LM head) of each pipeline rank as nanotron splits the model: its pipeline blocks
    [embedding, decoder x n, final norm, LM head, fp32 cast, loss] with costs 4 h^2 + 3 h I per decoder layer and V h
    for the LM head (LlamaForTraining.get_block_compute_costs), each block on the current rank, which advances once
    the cumulative cost reaches (rank + 1) x total / pp (nanotron models/base.py build_model). build_model's test
    reads "exceeds", but the Ultra-Scale sweep's logged per-rank parameter counts put a tie on the next rank
    (reference/ultrascale.py): `ties_advance` True gives that, False build_model's "exceeds". Integer arithmetic, so
    a tie is a tie."""
    layer = 4 * model.hidden * model.hidden + 3 * model.ffn_hidden * model.hidden
    blocks = ["embedding", *(["decoder"] * model.n_layers), "norm", "head", "cast", "loss"]
    costs = [0, *([layer] * model.n_layers), 0, model.vocab * model.hidden, 0, 0]
    total = sum(costs)
    stages: list[list[str]] = [[] for _ in range(pp)]
    rank, cumulative = 0, 0
    for block, cost in zip(blocks, costs, strict=True):
        cumulative += cost
        stages[rank].append(block)
        reached = cumulative * pp >= total * (rank + 1) if ties_advance else cumulative * pp > total * (rank + 1)
        if reached and rank < pp - 1:
            rank += 1
    return [(s.count("decoder"), "head" in s) for s in stages]


def stack_pp_layers(model: ModelSpec, pp: int, split: str) -> tuple[int, ...]:
    """Layout.pp_layers of a stack whose pipeline split is `split` (ExecutionStack.pp_split), () for even.

    A cost-balanced split is returned where the model can price it as it runs: the LM head on the last rank and
    every middle rank holding a layer. Past that (many ranks for the layers: Llama 3.1 8B at pp 16 puts the head on
    rank 14 beside 2 layers and leaves the last rank the fp32 cast and the loss; at pp >= 22 middle ranks get none)
    it is () and the even split is priced: its last rank holds n / pp layers and the head, which is what the head's
    rank holds there (2 + the head at pp 16)."""
    if split != "cost_balanced" or pp < 2 or pp > model.n_layers:
        return ()
    ranks = cost_balanced_ranks(model, pp)
    if not ranks[-1][1] or min(n for n, _ in ranks[1:-1] or [(1, False)]) < 1:
        return ()
    return tuple(n for n, _ in ranks)


def split_to_price(model: ModelSpec, pp: int, split: str, pp_layers: tuple[int, ...] = (),
                   pinned_ends: bool = False) -> tuple[int, ...]:
    """The per-rank list a pipeline of `pp` ranks runs: a pinned `pp_layers` wins; pinned first/last stage sizes
    (`pinned_ends`) keep the even split with those ends (()); else the stack's own split (stack_pp_layers)."""
    if pp < 2:
        return ()
    if pp_layers:
        return tuple(pp_layers)
    return () if pinned_ends else stack_pp_layers(model, pp, split)


def with_stack_split(model: ModelSpec, layout: Layout, split: str) -> Layout:
    """`layout` with the stack's own pipeline split where it gives none of its own (split_to_price); else unchanged."""
    ranks = split_to_price(model, layout.pp, split, layout.pp_layers,
                           pinned_ends=bool(layout.first_stage_layers or layout.last_stage_layers))
    return replace(layout, pp_layers=ranks) if ranks != layout.pp_layers else layout
