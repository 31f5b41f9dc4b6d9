"""Per-layer sizes of a ModelSpec that the cost models need: matmul parameters, widths and counts.

Computed once per model (scalars), then combined with layout arrays in compute.py and memory.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from clusterplan.errors import BadInputError
from clusterplan.models.architecture.spec import ModelSpec

BlockKind = Literal["layer", "attention", "mlp", "mamba", "moe"]
"""What one layer of a ModelShapes is: a transformer layer (attention + MLP, or attention + MoE), or one block of a
hybrid pattern (ModelSpec.hybrid_pattern `*`, `-`, `M`, `E`), each a residual block with its own pre-norm."""
HYBRID_BLOCK_KINDS: dict[str, BlockKind] = {"M": "mamba", "*": "attention", "-": "mlp", "E": "moe"}
"""The hybrid pattern's symbols (Megatron-Core ssm/mamba_hybrid_layer_allocation.py Symbols) -> BlockKind."""
MAMBA_TENSORS = 9
"""Parameter tensors of one Mamba block: in_proj with its fused norm weight (2), conv1d weight and bias, dt_bias,
A_log, D, the gated norm's weight, out_proj (Megatron-Core ssm/mamba_mixer.py)."""


def require_priced(m: ModelSpec, serving: bool = False) -> None:
    """Refuse, in one line, a model whose blocks the cost models cannot price yet: in serving, a hybrid stack without
    attention blocks (the serving model sizes batches by KV tokens). The serving models (via ServingInstance, `serving`), the
    training models (via ModelShapes.of), `check` (solver.check.check_config, before its layout rules) and `export`
    (frameworks.export_plan, before a framework's notes) call it, so each stops here instead of pricing a block as
    something it is not."""
    if m.is_hybrid and serving and not m.n_attention_layers:
        counts = m.block_counts
        raise BadInputError(
            f"model {m.name}: a hybrid stack without attention blocks (pattern {'/'.join(counts)}: "
            f"{'/'.join(str(n) for n in counts.values())} blocks) has no KV cache to size serving by; "
            "`clusterplan models show` gives its sizes")


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelShapes:
    n_layers: int
    n_moe_layers: int
    hidden: int
    n_heads: int
    kv_heads: int
    q_dim: int
    """All query heads' width (score GEMM inner size x heads)."""
    kv_dim: int
    """Width of K plus V per token as stored for attention (GQA: 2 * kv_heads * head_dim; MLA: latent + rope)."""
    v_dim: int
    vocab: int
    attn_params: float
    """Attention parameters of one layer (matmuls + biases + qk norms)."""
    dense_mlp_params: float
    """Dense MLP parameters of one dense layer."""
    ffn: int
    expert_ffn: int
    shared_ffn: int
    expert_params: int
    """Parameters of one routed expert."""
    moe_dense_part_params: int
    """Per MoE layer: router + shared experts (+ gate), which are not expert-parallel."""
    n_experts: int
    top_k: int
    norm_params: float
    """Norm parameters of one layer (its norms_per_layer norms)."""
    embed_params: int
    head_params: int
    """LM head matrix plus final norm (0 matrix when tied and pp == 1; see memory.py)."""
    tied: bool
    gated: bool
    dropout: bool
    total_params: int
    active_params: int
    tensors_per_layer: float
    """Parameter tensors of one layer (weights, biases, norm scales): ZeRO-3 gathers them one by one."""
    mla_latent: int = 0
    """MLA (DeepSeek-V2/V3) per-token widths of the low-rank intermediates a training layer keeps, not split over
    tp (Megatron-Core builds the down projections duplicated): q_a and its norm (2 q_lora_rank), kv_a with the rope
    key (kv_lora_rank + qk_rope_head_dim) and its norm (kv_lora_rank). 0 without MLA."""
    mla_up_proj: tuple[tuple[int, int], ...] = ()
    """MLA's up projections as (in, out) features (DeepSeek-V2/V3 q_b: q_lora_rank -> heads x (nope + rope); kv_b:
    kv_lora_rank -> heads x (nope + v)); out is split over tp. What Megatron's `mla_up_proj` recompute module reruns."""
    sliding_window: int = 0
    """Keys a query sees in the sliding-window layers (0: none)."""
    n_sliding_layers: int = 0
    """Layers that attend over the sliding window only (ModelSpec.is_sliding_layer)."""
    chunked_attention: bool = False
    """The windowed layers attend within aligned chunks of sliding_window tokens (Llama 4) instead of a sliding
    window."""
    mtp_layers: int = 0
    """Multi-token-prediction modules on the last pipeline stage (ModelSpec.mtp_layers)."""
    mtp_layer_moe: bool = False
    """The MTP modules' transformer block has an MoE MLP (it continues the layer pattern: DeepSeek-V3)."""
    rms_norm: bool = False
    """The layer norms are RMSNorm (a stack without a fused RMSNorm runs them as several eager kernels)."""
    rope: bool = False
    """Rotary position embedding on q and k (a stack without a fused RoPE runs it as several eager kernels)."""
    activation_clamp: float = 0.0
    """Clamp of the gated activation's inputs (ModelSpec.activation_clamp; GPT-OSS 7.0); 0 = none."""
    qk_norm: bool = False
    """Norms on q and k before attention (Qwen3; ModelSpec.qk_norm)."""
    expert_bias: bool = False
    """The routed experts' linears carry biases (an MoE model with ModelSpec.linear_bias: GPT-OSS)."""
    expert_groups: int = 1
    """Groups the routed experts are split into for group-limited routing (ModelSpec.expert_groups; 1 = none)."""
    expert_groups_per_token: int = 0
    """Groups a token's experts may come from (ModelSpec.expert_groups_per_token; 0 = no limit)."""
    pattern: str = ""
    """A hybrid's blocks in order (ModelSpec.hybrid_pattern): which kinds each pipeline stage holds."""
    mtp_shared: bool = False
    """The MTP depths share one module's parameters (ModelSpec.mtp_shared)."""
    mtp_layer: ModelShapes | None = None
    """A hybrid's MTP block as one transformer layer (attention + its MoE or MLP block; ModelSpec.mtp_block_params):
    what each MTP depth costs. None outside hybrids (their MTP depth costs one of their layers)."""
    moe_latent: int = 0
    """Width the routed experts run and travel at (ModelSpec.moe_latent); 0 = hidden."""
    latent_params: int = 0
    """Per MoE layer: the h <-> latent projections (ModelSpec.latent_projection_params), duplicated over tp."""
    block: BlockKind = "layer"
    """What one of the n_layers is (BlockKind): a transformer layer, or one hybrid block, whose shapes then hold only
    that block's parts (attention: no MLP; mlp and mamba: no attention; mamba: in_proj / out_proj as its two
    linears, ffn = the inner width d_in)."""
    blocks: tuple[tuple[float, ModelShapes], ...] = ()
    """A hybrid stack: each block kind's share of the n_layers and its shapes (block set). The cost models price a
    hybrid's average layer as these blocks mixed by share; of the hybrid's own scalar fields, attn_params,
    dense_mlp_params (over the non-MoE share), norm_params and tensors_per_layer are per-layer averages over the
    blocks, for the parameter, optimizer-state and collective terms; the others are the model's."""
    parallel_block: bool = False
    """Attention and MLP read the same layer input (ModelSpec.parallel_block): one residual input kept for both
    norms' backward."""
    shared_norm: bool = False
    """In a parallel block, one norm feeds both branches (ModelSpec.norms_per_layer 1): one norm kernel per layer,
    one norm output kept for both the qkv and the MLP input."""
    mamba_inner: int = 0
    """Mamba-2 inner width d_in = heads x head_dim (ModelSpec.mamba_inner); 0 outside a mamba block."""
    mamba_heads: int = 0
    mamba_groups: int = 0
    mamba_state: int = 0
    mamba_chunk: int = 0

    @property
    def routed_width(self) -> int:
        """Elements per routed token: what the dispatch moves and the experts read (the latent width, or hidden)."""
        return self.moe_latent or self.hidden

    @property
    def has_attention(self) -> bool:
        """Its layer holds an attention block (a transformer layer, or a hybrid's `*` block)."""
        return self.block in ("layer", "attention")

    @property
    def blocks_per_layer(self) -> int:
        """Residual blocks, each with a residual add and (under TP) a gather / scatter pair, in one of its layers: 2
        in a transformer layer (a parallel one too: its stacks gather each branch's input and reduce each branch's
        output on their own, and add the two to the residual in two adds), 1 in a hybrid block."""
        return 2 if self.block == "layer" else 1

    @property
    def norms_run(self) -> int:
        """Norm kernels one layer runs: one per residual block, one in a parallel layer whose norm is shared."""
        return 1 if self.shared_norm else self.blocks_per_layer

    @property
    def norm_inputs_kept(self) -> int:
        """Norm inputs one layer keeps for backward: one per residual block, one in a parallel layer (both norms
        read the layer input)."""
        return 1 if self.parallel_block else self.blocks_per_layer

    @classmethod
    def of(cls, m: ModelSpec) -> ModelShapes:
        require_priced(m)
        layer = cls._of_layers(m)
        return hybrid_shapes(m, layer) if m.is_hybrid else layer

    @classmethod
    def _of_layers(cls, m: ModelSpec) -> ModelShapes:
        kv_dim = (m.kv_lora_rank + m.qk_rope_head_dim) if m.is_mla else 2 * m.kv_heads * m.dim_head
        moe_dense = 0
        if m.is_moe:
            moe_dense = m.router_params() + (m.mlp_params(m.shared_ffn) if m.shared_ffn else 0)
            moe_dense += m.hidden if m.shared_expert_gate else 0
        return cls(
            n_layers=m.n_layers, n_moe_layers=m.n_moe_layers, hidden=m.hidden, n_heads=m.n_heads,
            kv_heads=m.kv_heads, q_dim=m.q_dim, kv_dim=kv_dim, v_dim=m.v_dim, vocab=m.vocab,
            attn_params=m.attention_params(), dense_mlp_params=m.mlp_params(m.ffn_hidden), ffn=m.ffn_hidden,
            expert_ffn=m.expert_ffn_hidden, shared_ffn=m.shared_ffn,
            expert_params=m.expert_params() if m.is_moe else 0, moe_latent=m.moe_latent,
            latent_params=m.latent_projection_params(),
            moe_dense_part_params=moe_dense, n_experts=m.n_experts, top_k=m.top_k,
            norm_params=m.norms_per_layer * m.norm_params(), embed_params=m.embedding_params(),
            head_params=m.vocab * m.hidden + m.norm_params() + (m.vocab if m.lm_head_bias else 0),
            tied=m.tied_embeddings, gated=m.gated_ffn,
            dropout=m.dropout, total_params=m.total_params(), active_params=m.active_params(),
            tensors_per_layer=_tensors_per_layer(m), sliding_window=m.sliding_window or 0,
            mla_latent=(2 * m.q_lora_rank + m.kv_lora_rank + m.qk_rope_head_dim + m.kv_lora_rank) if m.is_mla else 0,
            mla_up_proj=tuple(p for p in ((m.q_lora_rank, m.n_heads * (m.qk_nope_head_dim + m.qk_rope_head_dim)),
                                          (m.kv_lora_rank, m.n_heads * (m.qk_nope_head_dim + m.v_head_dim)))
                              if p[0]) if m.is_mla else (),
            n_sliding_layers=sum(m.is_sliding_layer(i) for i in range(m.n_layers)),
            chunked_attention=m.local_attention == "chunked",
            mtp_layers=m.mtp_layers, mtp_layer_moe=m.is_moe_layer(m.n_layers) or (m.is_hybrid and m.is_moe),
            mtp_shared=m.mtp_shared,
            rms_norm=m.norm == "rmsnorm", rope=m.position == "rope", activation_clamp=m.activation_clamp,
            qk_norm=m.qk_norm, expert_bias=m.is_moe and m.linear_bias, expert_groups=m.expert_groups,
            parallel_block=m.parallel_block, shared_norm=m.parallel_block and m.norms_per_layer == 1,
            expert_groups_per_token=m.expert_groups_per_token,
        )

    @property
    def moe_fraction(self) -> float:
        """Share of layers that are MoE (the rest have a dense MLP)."""
        return self.n_moe_layers / self.n_layers


def hybrid_shapes(m: ModelSpec, layer: ModelShapes) -> ModelShapes:
    """A hybrid stack's shapes (ModelSpec.hybrid_pattern: research/hybrid-mamba.md sec. 1): one ModelShapes per block
    kind, each holding only its block (`layer`, the model's transformer-layer shapes, gives the attention and MLP
    sizes), and the per-layer averages the parameter terms read. A Mamba block's linears are in_proj h -> 2 d_in +
    2GN + H (its norm fused in) and out_proj d_in -> h; its conv1d, dt_bias, A_log, D and gated-norm weights are
    TP-sharded with the heads (Megatron-Core MambaMixer) and counted with the block's parameters, not its GEMMs."""
    counts, n, norm = m.block_counts, m.n_layers, m.norm_params()
    no_attention = dict(attn_params=0, q_dim=0, kv_dim=0, v_dim=0, rope=False, qk_norm=False)
    # An MTP depth's "*E" (or "*-") block: the transformer layer of this attention and MoE (or MLP).
    mtp_layer = replace(layer, n_moe_layers=layer.n_layers if m.is_moe else 0) if m.mtp_layers else None
    layer = replace(layer, n_moe_layers=0)  # only the E blocks are MoE (their kind sets it back)
    in_out = m.hidden * (2 * m.mamba_inner + 2 * m.mamba_groups * m.mamba_state_dim + m.mamba_heads) + m.mamba_inner * m.hidden
    # Parameter tensors per block (_tensors_per_layer's, split): the norm's, then the block's matrices and biases.
    norm_tensors = 2 if m.norm == "layernorm" else 1
    matrices = 3 if m.gated_ffn else 2
    kinds = {
        "attention": replace(layer, block="attention", ffn=0, dense_mlp_params=0, gated=False, norm_params=norm,
                             tensors_per_layer=2 + norm_tensors + (1 if m.attn_bias else 0) + (2 if m.qk_norm else 0)
                             + (1 if m.linear_bias else 0)),
        "mlp": replace(layer, block="mlp", norm_params=norm,
                       tensors_per_layer=matrices + norm_tensors + (matrices if m.linear_bias else 0),
                       **no_attention),
        "mamba": replace(layer, block="mamba", dense_mlp_params=in_out, ffn=m.mamba_inner, gated=False,
                         norm_params=norm, tensors_per_layer=MAMBA_TENSORS, mamba_inner=m.mamba_inner,
                         mamba_heads=m.mamba_heads, mamba_groups=m.mamba_groups, mamba_state=m.mamba_state_dim,
                         mamba_chunk=m.mamba_chunk, activation_clamp=0.0, **no_attention),
        # an MoE block: router, routed and shared experts, all of its layers MoE (moe_fraction 1)
        "moe": replace(layer, block="moe", n_moe_layers=n, norm_params=norm,
                       tensors_per_layer=norm_tensors + 1 + (matrices if m.shared_ffn else 0), **no_attention),
    }
    blocks = tuple((counts[c] / n, kinds[kind]) for c, kind in HYBRID_BLOCK_KINDS.items() if c in counts)
    share = {kind: counts.get(c, 0) / n for c, kind in HYBRID_BLOCK_KINDS.items()}
    mamba_rest = m.mamba_params() - norm - in_out if "M" in counts else 0
    # The parameter terms read (1 - moe_fraction) x dense_mlp_params + moe_fraction x the MoE block's dense part
    # (memory.stage_params): the MLP and Mamba blocks' parameters go in over the non-MoE share.
    non_moe = 1.0 - share["moe"]
    dense = share["mlp"] * layer.dense_mlp_params + share["mamba"] * (in_out + mamba_rest)
    return replace(layer, blocks=blocks, n_moe_layers=m.n_moe_layers, mtp_layer=mtp_layer, pattern=m.hybrid_pattern,
                   attn_params=share["attention"] * layer.attn_params,
                   dense_mlp_params=dense / non_moe if non_moe else 0.0,
                   norm_params=norm, tensors_per_layer=sum(s * b.tensors_per_layer for s, b in blocks))


def _tensors_per_layer(m: ModelSpec) -> int:
    """Fused qkv + out projection, 2 or 3 MLP matrices, the norms (+ their biases), and any linear biases."""
    count = 2 + (3 if m.gated_ffn else 2) + m.norms_per_layer * (2 if m.norm == "layernorm" else 1)
    count += 1 if m.attn_bias else 0
    count += (3 if m.gated_ffn else 2) + 1 if m.linear_bias else 0
    count += 2 if m.qk_norm else 0
    return count
