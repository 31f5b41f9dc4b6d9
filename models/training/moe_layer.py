"""Per-micro-batch costs of a MoE layer's token routing that the expert GEMMs do not carry: the router's score,
top-k and routing-map kernels over tokens x experts, and the memory-bound token permute / chunk sort / unpermute
kernels over tokens x top_k x hidden around the expert-parallel all-to-alls (Megatron-Core MoEAlltoAllTokenDispatcher
with moe_permute_fusion, Transformer Engine's fused permute/unpermute). Also how a rank's local experts' GEMMs share
the GPU: Transformer Engine's GroupedLinear issues one cuBLAS GEMM per expert over a pool of compute streams.

Everything here is priced from bytes moved at the GPU's achieved HBM rate (a memory-bound kernel's roofline,
Williams et al. 2009); nothing is fitted. Vectorised over LayoutArrays.
"""

from __future__ import annotations

from functools import lru_cache
from math import comb

import numpy as np

from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.gemm import OUTPUT_BYTES
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.normal import expected_max_standard_normal
from clusterplan.models.training.batch import LayoutArrays

ROUTED_BYTES_PER_ELEMENT = 2.0
"""Tokens are dispatched, sorted and combined in the 16-bit compute dtype (Megatron-Core quantises to fp8 only inside
the expert GEMMs' input cast, which compute.fp8_cast_times prices)."""

ROUTER_BYTES_PER_TOKEN_EXPERT = 4.0 + 4.0 + 4.0 + 4.0 + 1.0
"""Router kernels per token and expert, fp32 logits: the score function (softmax / sigmoid) reads the logits and
writes the scores (4 + 4), top-k reads the scores (4), and Megatron-Core's topk_softmax_with_capacity writes a dense
routing_probs [tokens, experts] fp32 map (4) and a boolean routing_map (1)."""

GROUPED_GEMM_STREAMS = 4
"""Transformer Engine runs GroupedLinear (Megatron-Core TEGroupedMLP, moe_grouped_gemm) as one cuBLAS GEMM per local
expert over nvte_get_num_compute_streams() = 4 streams (transformer_engine/common/util/multi_stream.cpp): at most four
experts' tiles share a wave of the SMs; the rest follow in turn."""


def rank_tokens(L: LayoutArrays) -> np.ndarray:
    """Tokens one rank routes per micro-batch: its 1/tp share of the micro-batch's tokens (Megatron-Core splits a tp
    group's tokens over its ranks before dispatch), over cp."""
    return L.seq * L.mbs / L.cp / L.tp


def expert_capacity(shapes: ModelShapes, L: LayoutArrays) -> np.ndarray:
    """Rows each expert takes from one rank per micro-batch on the drop-and-pad path (Layout.moe_capacity_factor C):
    Megatron-Core moe_utils.get_capacity(num_tokens = t x top_k, num_experts, C) = ceil(t x top_k / n_experts x C),
    t = the rank's tokens (MoEAlltoAllTokenDispatcher.preprocess with drop_and_pad: routing_map rows x
    moe_router_topk); 0 where dropless. At most t: a larger capacity (C > n_experts / top_k) cannot run (torch.topk
    over the rank's t tokens) and the TOKEN_DROP rule refuses it by name; the clamp keeps its price finite (an
    overflowing factor would otherwise end in NaN before the rule is shown)."""
    t = rank_tokens(L)
    per_expert = t * shapes.top_k / max(shapes.n_experts, 1)
    return np.where(L.token_drop, np.minimum(np.ceil(per_expert * L.moe_capacity_factor), t), 0.0)


def routed_tokens(shapes: ModelShapes, L: LayoutArrays) -> np.ndarray:
    """Token-expert rows a rank sends (and, balanced, receives) per micro-batch: dropless, its tokens (rank_tokens)
    times top_k; on
    the drop-and-pad path exactly capacity x n_experts, padded or dropped to it (MoEAlltoAllTokenDispatcher.preprocess:
    num_out_tokens = capacity x num_experts, every split equal), whatever the routing."""
    dropless = rank_tokens(L) * shapes.top_k
    return np.where(L.token_drop, expert_capacity(shapes, L) * shapes.n_experts, dropless)


def capacity_ratio(shapes: ModelShapes, L: LayoutArrays) -> np.ndarray:
    """Rows the experts process over the routed token-expert pairs: 1 dropless; capacity x n_experts /
    (t x top_k) on the drop-and-pad path (C, rounded up to whole rows per expert). Scales every per-routed-row
    term: expert GEMMs, activations, all-to-all bytes, permutes."""
    dropless = rank_tokens(L) * shapes.top_k
    return np.where(L.token_drop, routed_tokens(shapes, L) / np.maximum(dropless, 1e-30), 1.0)


def _hypergeometric_mean_var(population: int, successes: int, draws: int) -> tuple[float, float]:
    """Mean and variance of the successes among `draws` taken without replacement (hypergeometric)."""
    p = successes / population
    spread = (population - draws) / (population - 1) if population > 1 else 0.0
    return draws * p, draws * p * (1.0 - p) * spread


@lru_cache(maxsize=256)
def token_rank_picks(n_experts: int, top_k: int, ep: int, groups: int = 1, groups_per_token: int = 0
                     ) -> tuple[float, float]:
    """Mean and variance of how many of one token's top_k picks land on one expert-parallel rank's n_experts / ep
    local experts when the router picks uniformly at random: Megatron-Core's moe_router_force_load_balancing replaces
    the logits by fresh Gaussian noise per token (moe_utils.RandomSTE), so the picks are a uniform k-subset
    (hypergeometric: mean k l / E, variance k (l/E)(1 - l/E)(E - k)/(E - 1)). With group-limited routing
    (groups_per_token of groups, DeepSeek-V3 4 of 8) a token first takes groups_per_token groups, then its k picks
    among their experts: a rank holding whole groups (or lying inside one) gets J of its groups picked
    (hypergeometric over groups), then a hypergeometric share of the k picks; variance by the law of total variance.
    The picks within the chosen groups are taken as uniform (Megatron's group score, the sum of each group's top
    k / groups_per_token scores, makes every chosen group hold at least one pick: the variance is an upper bound). A
    rank whose experts neither hold whole groups nor lie inside one is priced without the group limit."""
    local = n_experts // ep
    size = n_experts // groups if groups > 1 else n_experts
    if groups > 1 and 0 < groups_per_token < groups and (size % local == 0 or local % size == 0):
        per_group, owned = min(local, size), max(1, local // size)
        pool = groups_per_token * size
        mean = var_within = 0.0
        second = 0.0
        for j in range(0, min(owned, groups_per_token) + 1):
            pj = comb(owned, j) * comb(groups - owned, groups_per_token - j) / comb(groups, groups_per_token)
            m, v = _hypergeometric_mean_var(pool, per_group * j, top_k)
            mean, var_within, second = mean + pj * m, var_within + pj * v, second + pj * m * m
        return mean, var_within + second - mean * mean
    return _hypergeometric_mean_var(n_experts, local, top_k)


def forced_balance_excess(shapes: ModelShapes, L: LayoutArrays) -> np.ndarray:
    """The busiest expert-parallel rank's routed rows over the mean under force-balanced (random) routing, minus 1:
    a rank receives the picks of all ep x t tokens of its EP group (t = rank_tokens), each token independent
    (token_rank_picks), so its rows are near-normal with mean ep t m and standard deviation sqrt(ep t v); every rank
    waits for the busiest of the ep at each layer's combine. The ep loads sum to the group's fixed rows, so they are
    equicorrelated with correlation -1 / (ep - 1): such normals are sqrt(ep / (ep - 1)) x (Y_i - mean Y) of
    independent ones, and their maximum lies expected_max_standard_normal(ep) x sqrt(ep / (ep - 1)) standard
    deviations above the mean. B200 Qwen3-30B-A3B at ep 8, 4,096 tokens a rank: +0.76 %."""
    out = np.zeros(np.shape(L.ep), dtype=float)
    tokens = rank_tokens(L)
    for ep in np.unique(L.ep):
        ep = int(ep)
        if ep < 2 or shapes.n_experts < ep or shapes.n_experts % ep:  # no routed experts to share out
            continue
        mean, var = token_rank_picks(shapes.n_experts, shapes.top_k, ep, shapes.expert_groups,
                                     shapes.expert_groups_per_token)
        sigmas = expected_max_standard_normal(ep) * np.sqrt(ep / (ep - 1))
        excess = sigmas * np.sqrt(var / np.maximum(ep * tokens, 1.0)) / mean
        out = np.where(L.ep == ep, excess, out)
    return out


def imbalance(shapes: ModelShapes, L: LayoutArrays) -> np.ndarray:
    """How many times the mean routed rows the busiest expert-parallel rank receives: Layout.moe_imbalance on the
    dropless path with ep > 1, and at moe_imbalance 1 (force-balanced) the busiest rank's statistical excess
    (forced_balance_excess); 1 with one EP rank (no rank waits for another) and on the drop-and-pad path, which pads
    every expert to its capacity (capacity_ratio)."""
    forced = L.moe_imbalance == 1.0
    measured = np.where(forced, 1.0 + forced_balance_excess(shapes, L), L.moe_imbalance) if np.any(forced) \
        else L.moe_imbalance
    return np.where(L.token_drop | (L.ep < 2), 1.0, measured)


def expert_rows_sd(shapes: ModelShapes, L: LayoutArrays) -> np.ndarray:
    """Standard deviation of one local expert's routed rows per micro-batch on the dropless path: each of the EP
    group's ep x t tokens (rank_tokens) picks it with probability top_k / n_experts, independently under
    force-balanced routing (RandomSTE), so its rows are binomial, sd = sqrt(ep t p (1 - p)); a router that learns
    spreads them more, so this is a floor. 0 on the drop-and-pad path (every expert padded to its capacity). Prices
    the expected row tiles of the expert GEMMs (GemmShapeModel.wave_efficiency): an expert almost never gets a whole
    number of tiles."""
    p = shapes.top_k / max(shapes.n_experts, 1)
    sd = np.sqrt(L.ep * rank_tokens(L) * p * (1.0 - p))
    return np.where(L.token_drop, 0.0, sd)


def busiest_rank_ratio(shapes: ModelShapes, L: LayoutArrays) -> np.ndarray:
    """Rows the busiest expert-parallel rank's experts process over a rank's routed token-expert pairs:
    capacity_ratio x imbalance. Every rank waits for that rank at each MoE layer's combine all-to-all, so it prices
    what is done with the received rows: the expert GEMMs, their activation functions and saved activations, the
    sorts, padding and bias ops around them and the all-to-all's bytes. What a rank does with its own tokens (router,
    the permute before dispatch and the unpermute after combine) stays balanced, and FLOPs (MFU, HFU) count the mean
    (capacity_ratio)."""
    return capacity_ratio(shapes, L) * imbalance(shapes, L)


DROPLESS_IMBALANCE_EARLY = 1.571
"""FITTED (README "Fitted constants"): Layout.moe_imbalance of a dropless run whose router learns, at the start of
training. Fitted on the forced-balance / dropless throughput ratios of Megatron-MoE-ModelZoo's long-context Qwen3-235B
rows at 16K and 128K (256 H100, TP4 PP8 VPP4 EP8, DeepEP; best_practice/qwen3/readme.md @020b8136: "295 (forced
balance) / 237 (dropless)", "389 / 357"), checked on the same table's 32K and 64K rows (335 / 277, 368 / 320)
(reference/mcore_moe.py, tests/test_moe_imbalance.py): the golden-section refit lands on 1.5711, the four ratios
within 0.8 %. 1.571 since the forced twins are priced with the busiest rank's statistical excess
(forced_balance_excess) and the expert GEMMs with their expected row tiles and waves (expert_rows_sd): before, a
forced twin's experts got exactly 2,048 rows, a whole number of tiles, and every earlier fit (1.52, then 1.501 after
the selective `moe` module re-ran its all-to-alls, kept through DeepEP's rates and the per-expert kernel time) landed
on the wave step at 1.500 that this artefact put there. 1.51 before the rows reduced gradients in fp32 as Megatron-LM
does with --bf16 (mcore_moe.FP32_GRADS_SOURCE). A measured value for one model and EP layout early in training, not
a default: the model prices force-balanced routing (moe_imbalance 1, with its statistical excess) unless
moe_imbalance is given. Not universal: the ModelZoo's Mixtral-8x22B run script pairs about 445 dropless with 465
forced TFLOP/s (one expert per EP rank), which implies about 1.085 (research/mixtral-published-runs.md)."""


def routing_basis(moe_imbalance: float, ep: int, token_drop: bool) -> str:
    """One line on how a MoE layout's routing balance is priced (estimate's JSON `moe_routing`)."""
    if token_drop:
        return "drop-and-pad: every expert takes exactly its capacity (balanced by construction)"
    if ep < 2:
        return "one expert-parallel rank holds every expert: routing balance does not change the step"
    if moe_imbalance == 1.0:
        return (f"force-balanced (moe_imbalance 1, as NVIDIA's MoE benchmarks run); a router that learns leaves its "
                f"busiest expert-parallel rank more rows: moe_imbalance={DROPLESS_IMBALANCE_EARLY:g} matched one "
                f"dropless run early in training (moe_layer.DROPLESS_IMBALANCE_EARLY)")
    return f"the busiest expert-parallel rank receives {moe_imbalance:g} x the mean routed rows (moe_imbalance)"


def permute_bytes(shapes: ModelShapes, L: LayoutArrays) -> tuple[np.ndarray, np.ndarray]:
    """(forward, backward) HBM bytes of the dispatcher's memory-bound kernels per micro-batch on one rank.

    Forward, with T tokens of this rank, k = top_k, h = hidden, 2 B each:
      fused permute: read T h, write T k h (one copy of each token per chosen expert);
      sort_chunks_by_idxs after the dispatch all-to-all (only with several local experts and ep > 1: the received
      chunks arrive grouped by source rank and are regrouped by local expert): read + write T k h;
      its inverse before the combine all-to-all: read + write T k h;
      fused unpermute: read T k h (the experts' outputs, scaled by their probs), write T h (the k copies summed).
    Backward runs each kernel's mirror image (the same bytes) and the unpermute's prob gradient reads the experts'
    outputs once more (T k h): the probs multiply the expert outputs inside the unpermute."""
    t = rank_tokens(L)
    tk = routed_tokens(shapes, L)
    sorts = np.where((L.ep > 1) & (shapes.n_experts / L.ep > 1), 2.0, 0.0)
    # The sorts regroup the received rows (the busiest rank's: imbalance); permute and unpermute touch the own tokens.
    w = shapes.routed_width  # a latent MoE permutes after its h -> latent projection
    elements = 2 * t * w + (1.0 + 2.0 * sorts * imbalance(shapes, L) + 1.0) * tk * w
    forward = ROUTED_BYTES_PER_ELEMENT * elements
    backward = forward + ROUTED_BYTES_PER_ELEMENT * tk * w
    return forward, backward


FP8_PADDING_COPIES = 2.0
"""Copies of the routed tokens x hidden a fp8 MoE layer makes around its expert GEMMs each way (forward and
backward), when the per-expert token counts are not multiples of the fp8 GEMM alignment (16 rows; 32 for MXFP8):
Megatron-Core's TEGroupedMLP.forward pads the permuted hidden states with Transformer Engine's Fp8Padding and unpads
the fc2 output with Fp8Unpadding (megatron/core/transformer/moe/experts.py, under config.fp8); TE
pytorch/module/fp8_padding.py and fp8_unpadding.py copy the rows (tex.fused_multi_row_padding forward, torch.split +
torch.cat backward) and skip the copy only when every split is already aligned, which dropless routing leaves to
chance (each of n local experts aligned with odds 1/16)."""


FP8_ALIGN_ROWS = 16
"""Rows per expert an fp8 grouped GEMM needs a multiple of (Transformer Engine get_align_size_for_quantization:
16 for per-tensor / blockwise fp8)."""
MXFP8_ALIGN_ROWS = 32
"""The same for MXFP8 (32-element scaling blocks along the rows)."""


NVFP4_ALIGN_ROWS = 128
"""The same for NVFP4 (Megatron-Core fp4_utils.get_fp4_align_size: 128)."""


def fp8_align_rows(fp8_recipe: str | None) -> int:
    """FP8_ALIGN_ROWS, or the mxfp8 / nvfp4 recipe's own."""
    return {"mxfp8": MXFP8_ALIGN_ROWS, "nvfp4": NVFP4_ALIGN_ROWS}.get(fp8_recipe or "", FP8_ALIGN_ROWS)


def fp8_padding_skipped(shapes: ModelShapes, L: LayoutArrays, align_rows: int = FP8_ALIGN_ROWS) -> np.ndarray:
    """Rows where Transformer Engine's Fp8Padding / Fp8Unpadding copy nothing: on the drop-and-pad path every local
    expert gets capacity x ep x etp rows (MoEAlltoAllTokenDispatcher.preprocess num_tokens_per_local_expert), and
    TE returns its input when every split is already a multiple of `align_rows` (fp8_padding.py)."""
    return L.token_drop & (np.mod(expert_capacity(shapes, L) * L.ep * L.etp, align_rows) == 0)


def fp8_padding_bytes(shapes: ModelShapes, L: LayoutArrays, align_rows: int = FP8_ALIGN_ROWS) -> np.ndarray:
    """HBM bytes of one fp8 MoE layer's expert padding / unpadding per micro-batch on one rank, forward; backward
    moves the same (the gradients' mirror copies). Each copy reads and writes the rank's routed tokens x hidden
    (2 B elements: FP8_PADDING_COPIES of them) and the permuted probs, padded beside the hidden states (one 2 B
    element per routed token, read and written); the padded rows themselves (< 16 or 32 per expert) are left out.
    Nothing where the drop-and-pad splits are aligned (fp8_padding_skipped)."""
    tk = routed_tokens(shapes, L) * imbalance(shapes, L)  # the received rows, the busiest rank's
    per_copy = 2.0 * ROUTED_BYTES_PER_ELEMENT  # read + write
    return np.where(fp8_padding_skipped(shapes, L, align_rows), 0.0, FP8_PADDING_COPIES * per_copy * tk * shapes.routed_width + per_copy * tk)


EXPERT_BIAS_FORWARD_BYTES = 2.0 + (2.0 + 2.0 + 2.0) + (2.0 + 2.0)
"""HBM bytes per routed token x hidden element of Megatron-Core TEGroupedMLP._apply_bias forward (the fc2 bias,
scaled by the routing prob, added after the grouped GEMM as eager per-expert ops): b * p writes the broadcast product
(2), t + (b * p) reads both and writes the sum (2 + 2 + 2), torch.cat of the experts' pieces reads and writes it
(2 + 2); .to(dtype) is a no-op because the probs are bf16 like the activations (GPTOSSProvider leaves
moe_router_dtype unset, so the router's logits and probs are in the bf16 compute dtype; fp32 probs would promote
the sum to fp32)."""
EXPERT_BIAS_BACKWARD_BYTES = (2.0 + 2.0 + 2.0) + (2.0 + 2.0 + 2.0) + (2.0 + 2.0)
"""Its autograd backward per element: the bias gradient (g * p written, read back by sum_to_size over the tokens:
2 + 2 + 2), the prob gradient (g * b written, summed over hidden: 2 + 2 + 2) and torch.split's backward, which
concatenates the per-expert gradient pieces of the fc2 output (read + write 2 + 2); cat's and add's backward pass
views on."""


def expert_bias_bytes(shapes: ModelShapes, L: LayoutArrays) -> tuple[np.ndarray, np.ndarray]:
    """(forward, backward) HBM bytes of one MoE layer's eager expert-bias ops per micro-batch on one rank
    (EXPERT_BIAS_FORWARD_BYTES, EXPERT_BIAS_BACKWARD_BYTES over the rank's routed tokens x hidden); zero for experts
    without biases. Callers apply it where the stack runs it (ExecutionStack.eager_expert_bias)."""
    elements = routed_tokens(shapes, L) * imbalance(shapes, L) * shapes.routed_width * (1.0 if shapes.expert_bias else 0.0)
    return EXPERT_BIAS_FORWARD_BYTES * elements, EXPERT_BIAS_BACKWARD_BYTES * elements


ROUTER_CAPACITY_BYTES_PER_TOKEN_EXPERT = 4.0 + 4.0 + (4.0 + 1.0) + (4.0 + 1.0 + 4.0)
"""The capacity step's kernels per token and expert (Megatron-Core topk_softmax_with_capacity with capacity_factor,
pad_to_capacity): torch.topk over the tokens of the fp32 routing_probs map (read 4), the capacity mask (zeros_like
and scatter: write 4), its .bool() (read 4, write 1), final_probs = probs x mask (read 4 + 1, write 4)."""


def router_bytes(shapes: ModelShapes, L: LayoutArrays) -> np.ndarray:
    """HBM bytes of the router's elementwise kernels per micro-batch forward on one rank (the logits GEMM itself is
    priced with the layer's other weight GEMMs: the router matrix is part of moe_dense_part_params); with a
    capacity factor also the capacity step (ROUTER_CAPACITY_BYTES_PER_TOKEN_EXPERT)."""
    per = ROUTER_BYTES_PER_TOKEN_EXPERT + np.where(L.token_drop, ROUTER_CAPACITY_BYTES_PER_TOKEN_EXPERT, 0.0)
    return rank_tokens(L) * shapes.n_experts * per


def routing_times(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates) -> tuple[np.ndarray, np.ndarray]:
    """(forward, backward) seconds of one MoE layer's router and permute/unpermute kernels per micro-batch on one
    rank, at the achieved HBM rate. The router's backward mirrors its forward (softmax / top-k gradients over the
    same tokens x experts maps)."""
    perm_f, perm_b = permute_bytes(shapes, L)
    router = router_bytes(shapes, L)
    return (perm_f + router) / hw.hbm_bytes_per_s, (perm_b + router) / hw.hbm_bytes_per_s


def grouped_gemm_time_s(hw: HardwareRates, m: np.ndarray, n: np.ndarray | float, k: np.ndarray | float,
                        fp8: np.ndarray, local_experts: np.ndarray | float,
                        output_bytes: np.ndarray | float = OUTPUT_BYTES, m_sd: np.ndarray | float = 0.0
                        ) -> np.ndarray:
    """Seconds of a rank's `local_experts` equal GEMMs (m x n, depth k, `output_bytes` of C traffic per element)
    run as Transformer Engine runs them: GROUPED_GEMM_STREAMS at a time share the SMs' waves (one batched
    wave-quantised GEMM each turn), the remainder in a last, smaller turn. Each turn also pays one GEMM kernel's fixed
    time (GemmShapeModel.kernel_s, fitted with the k-depth term on the same sweeps: 5-6.5 us, tens of percent of a
    small expert GEMM); the concurrent kernels of a turn overlap theirs, so one per turn is a lower bound. `m_sd`: the
    spread of each expert's rows about m (expert_rows_sd), where m is the routed rows (forward, input gradient)."""
    n_local = np.asarray(local_experts, dtype=float)
    turns = np.floor(n_local / GROUPED_GEMM_STREAMS)
    rest = n_local - turns * GROUPED_GEMM_STREAMS
    full = hw.gemm_time_s(m, n, k, fp8, GROUPED_GEMM_STREAMS, output_bytes=output_bytes, m_sd=m_sd)
    last = hw.gemm_time_s(m, n, k, fp8, np.maximum(rest, 1.0), output_bytes=output_bytes, m_sd=m_sd)
    kernel = 0.0 if hw.gemm_shape is None else hw.gemm_shape.kernel_s(np.asarray(fp8, dtype=bool))
    return turns * (full + kernel) + np.where(rest > 0, last + kernel, 0.0)


def mtp_projection_s(shapes: ModelShapes, L: LayoutArrays, hw: HardwareRates) -> np.ndarray:
    """Forward + backward seconds of one multi-token-prediction module's projection M [h, 2h] of the concatenated
    (normed hidden state, normed next-token embedding) (DeepSeek-V3 Sec. 2.2), column-parallel over tp: a
    tokens x h/tp x 2h GEMM forward, its input- and weight-gradient GEMMs backward."""
    tokens = L.seq * L.mbs / L.cp
    fp8 = np.zeros_like(tokens, dtype=bool)  # Megatron-Core builds the MTP projection outside the fp8 autocast
    h, two_h = float(shapes.hidden), 2.0 * shapes.hidden
    out = h / L.tp
    return (hw.gemm_time_s(tokens, out, two_h, fp8) + hw.gemm_time_s(tokens, two_h, out, fp8)
            + hw.gemm_time_s(two_h, out, tokens, fp8))


def max_destination_nodes(shapes: ModelShapes, n_out: np.ndarray | float) -> np.ndarray:
    """Node-limited routing's cap on the nodes one token's routed experts sit on, for an EP group over `n_out` nodes.

    DeepSeek-V3 'ensure[s] that each token will be sent to at most M nodes' (M = 4; arXiv 2412.19437 section 2.1.2,
    3.2.2), which its router implements as group-limited routing: topk_group of n_group expert groups per token
    (Hugging Face DeepseekV3TopkRouter; ModelShapes.expert_groups_per_token / expert_groups), the groups being the
    nodes' expert blocks. Experts sit on the EP ranks in contiguous blocks, so with n_out dividing the groups each
    node holds whole groups and a token reaches at most min(topk_group, n_out) nodes; with n_out a multiple of them
    each group spans n_out / n_group nodes: at most topk_group x n_out / n_group. Without a group limit, or with
    groups that straddle nodes, there is no cap (inf). Only a dispatcher that sends a token once per destination node
    gains from it; an all-to-all of (token, expert) copies sends top_k copies whatever the nodes."""
    n_out = np.asarray(n_out, dtype=float)
    groups, per_token = shapes.expert_groups, shapes.expert_groups_per_token
    if groups <= 1 or per_token <= 0:
        return np.full_like(n_out, np.inf)
    spans = n_out > groups
    aligned = np.where(spans, n_out % groups == 0, groups % np.maximum(n_out, 1.0) == 0)
    cap = np.where(spans, per_token * n_out / groups, np.minimum(per_token, n_out))
    return np.where(aligned, cap, np.inf)
