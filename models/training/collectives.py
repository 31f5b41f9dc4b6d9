"""The collectives a training layout issues, counted: per transformer layer and micro-batch (TP, SP, EP, FSDP/HSDP)
and per pipeline boundary and micro-batch (PP), each as (mesh axis, kind, calls, bytes per call).

Sizes follow nccl-tests (models/hardware/comm.py): an all-reduce's buffer, an all-gather's or reduce-scatter's full
gathered size, the bytes one rank sends in an all-to-all or a send. step.py prices exactly these lists (it cannot
drift from them), and tests/test_validate_collectives.py counts what torch issues for runtime/'s decoder and asserts
the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.training.batch import PREC_FP8, PREC_FP32, LayoutArrays
from clusterplan.models.training.memory import bytes_per_param, selective_module
from clusterplan.models.training.moe_layer import imbalance, routed_tokens

FP8_BYTES = 1.0
"""Bytes per fp8 (e4m3 / e5m2) element."""
EP_ALL_TO_ALLS_PER_LAYER = 4
"""Dispatch and combine forward, and their mirror images backward (Lepikhin 2020; Megatron-Core token dispatcher)."""

ALL_REDUCE, ALL_GATHER, REDUCE_SCATTER, ALL_TO_ALL, SEND_RECV = (
    "all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")


@dataclass(frozen=True, slots=True)
class Collectives:
    """`calls` collectives of one kind over one mesh axis, each moving `size_bytes` (arrays over layouts)."""

    axis: str
    kind: str
    calls: np.ndarray
    size_bytes: np.ndarray


def activation_bytes(L: LayoutArrays) -> np.ndarray:
    """Bytes per activation element that TP/CP/EP/PP send: the compute dtype (fp32 runs send fp32, others 16-bit)."""
    return np.where(L.precision == PREC_FP32, 4.0, 2.0)


def tp_collectives(shapes: ModelShapes, L: LayoutArrays, fp8_allgather: bool = False) -> tuple[Collectives, ...]:
    """Megatron tensor parallelism (Shoeybi et al. 2019): one all-reduce of b*s*h after the attention and one after
    the MLP forward, and one of each block's input gradient backward: 4 per layer (+2 with full recompute). With
    sequence parallelism each all-reduce becomes an all-gather + reduce-scatter of the same size (Korthikanti 2022).
    `fp8_allgather`: fp8 layouts all-gather fp8 data, 1 B per element (torchao's float8 TP styles cast a block's
    input, and the row-parallel output's gradient, before the gather); the reduce-scatters stay in the compute
    dtype (they sum GEMM outputs)."""
    tokens = L.seq * L.mbs / L.cp
    size = activation_bytes(L) * tokens * shapes.hidden
    gathered = np.where((L.precision == PREC_FP8) & fp8_allgather, FP8_BYTES * tokens * shapes.hidden, size)
    # Full recompute runs each recomputed layer's forward again in backward, with its forward collectives
    # (Korthikanti 2022): recompute_layers of a rank's layers only (LayoutArrays.full_recompute_share).
    # (one pair per residual block: 2 per transformer layer, 1 per hybrid block)
    calls = np.where(L.tp > 1, (2.0 + L.full_recompute_share(shapes.n_layers)) * shapes.blocks_per_layer, 0.0)
    sp = L.sp.astype(bool)
    return (Collectives("tp", ALL_REDUCE, np.where(sp, 0.0, calls), size),
            Collectives("tp", ALL_GATHER, np.where(sp, calls, 0.0), gathered),
            Collectives("tp", REDUCE_SCATTER, np.where(sp, calls, 0.0), size))


def ep_collectives(shapes: ModelShapes, L: LayoutArrays) -> Collectives:
    """A MoE layer's token dispatch and combine all-to-alls forward and their gradients backward: 4 (+2 with full
    recompute or the selective `moe` module, whose backward reruns the forward's two) of tokens/tp x top_k x h per
    rank (Lepikhin et al. 2020; Megatron-Core's alltoall dispatcher); on the drop-and-pad path capacity x n_experts
    rows, padding included (moe_layer.routed_tokens: equal splits)."""
    # Imbalanced dropless routing: the collective ends when the busiest rank has its rows (moe_layer.imbalance).
    size = activation_bytes(L) * routed_tokens(shapes, L) * imbalance(shapes, L) * shapes.routed_width
    # Megatron-Core's selective `moe` module checkpoints MoELayer's whole custom_forward (router, dispatch with its
    # sync, experts, combine: moe_layer.py moe_layer_recompute), so its backward re-issues the two as well
    moe_module = np.where(selective_module(L, L.recompute, "moe"), 1.0, 0.0)
    rerun = L.full_recompute_share(shapes.n_layers) + moe_module
    calls = np.where(L.ep > 1, EP_ALL_TO_ALLS_PER_LAYER * (1.0 + rerun / 2), 0.0)
    return Collectives("ep", ALL_TO_ALL, calls, size)


def fsdp_collectives(shapes: ModelShapes, L: LayoutArrays) -> tuple[Collectives, ...]:
    """ZeRO-3 / FSDP2 with one unit per transformer block (torchtitan): per layer and micro-batch an all-gather of its
    weights in the compute dtype before forward and again before backward, a reduce-scatter of its gradients after
    backward, and under HSDP an all-reduce of the gradient shard across replicas (dense, non-expert parameters)."""
    weight_b = activation_bytes(L)
    _, grad_b, _ = bytes_per_param(L)
    moe_share = shapes.moe_fraction
    layer = (shapes.attn_params + (1 - moe_share) * shapes.dense_mlp_params
             + moe_share * shapes.moe_dense_part_params) / L.tp + shapes.norm_params + moe_share * shapes.latent_params
    sharded = (L.zero == 3) & (L.dp_shard * L.cp > 1)
    one = np.where(sharded, 1.0, 0.0)
    hsdp = np.where(sharded & (L.dp_replicate > 1), 1.0, 0.0)
    return (Collectives("dp_shard", ALL_GATHER, 2.0 * one, layer * weight_b),
            Collectives("dp_shard", REDUCE_SCATTER, one, layer * grad_b),
            Collectives("dp_replicate", ALL_REDUCE, hsdp, layer * grad_b / (L.dp_shard * L.cp)))


def pipeline_p2p(shapes: ModelShapes, L: LayoutArrays) -> Collectives:
    """Per pipeline boundary and micro-batch: the activation sent forward and its gradient sent back, b*s*h each,
    split over tp (Narayanan et al. 2021 section 4.1's scatter/gather; with sequence parallelism the boundary tensor
    is the sequence shard itself)."""
    size = activation_bytes(L) * L.seq * L.mbs / L.cp * shapes.hidden / L.tp
    return Collectives("pp", SEND_RECV, np.where(L.pp > 1, 2.0, 0.0), size)


def layer_collectives(shapes: ModelShapes, L: LayoutArrays) -> tuple[Collectives, ...]:
    """Every collective one transformer layer issues per micro-batch (MoE layers' all-to-alls when ep > 1)."""
    return (*tp_collectives(shapes, L), ep_collectives(shapes, L), *fsdp_collectives(shapes, L))
