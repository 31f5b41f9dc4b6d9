"""ModelSpec: a decoder-only transformer described completely enough for compute, memory and
communication models, with exact parameter counts (total and active per token).

Counts follow the modules of the Hugging Face implementations (attention projections, gated or plain
MLP, router and experts, norms, embeddings, LM head); Narayanan et al. 2021 Eq. 2 is the special case
of a GPT with biases, learned positions and tied embeddings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, get_args

from clusterplan.errors import BadInputError

NormKind = Literal["rmsnorm", "layernorm"]
PositionKind = Literal["rope", "learned", "alibi", "none"]
LocalAttentionKind = Literal["sliding", "chunked"]
ActivationKind = Literal["", "silu", "gelu", "relu", "relu2", "quick_gelu"]
ACTIVATIONS: tuple[str, ...] = get_args(ActivationKind)
"""The MLP's activation function: silu (SwiGLU when gated), gelu (exact or tanh-approximated: the same kernel cost;
GeGLU when gated), relu (OPT), relu2 (squared ReLU, Nemotron), quick_gelu (x * sigmoid(1.702 x), GPT-OSS's gated
form); "" = the family default, silu when gated, gelu when not. It changes neither parameters nor FLOPs; exports
name it (frameworks/megatron.py)."""


def default_activation(gated: bool) -> str:
    """The activation an MLP of this kind has when nothing names another: SiLU gated (SwiGLU), GELU plain."""
    return "silu" if gated else "gelu"


MAX_LAYERS = 10_000
"""Largest n_layers accepted: far above any published model, low enough that per-layer loops stay fast."""
MAX_DIM = 10**9
"""Largest size of any dimension (products of several still fit a float)."""
_OPTIONAL_POSITIVE_INTS = ("n_kv_heads", "head_dim", "sliding_window")
_NON_NEGATIVE_INTS = ("n_experts", "top_k", "n_shared_experts", "expert_ffn_hidden", "shared_expert_ffn_hidden",
                      "first_dense_layers", "moe_every", "expert_groups_per_token", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
                      "qk_rope_head_dim", "v_head_dim", "full_attention_every", "mtp_layers", "full_attention_first_layers",
                      "moe_latent")
_BOOLS = ("gated_ffn", "tied_embeddings", "attn_bias", "linear_bias", "embed_norm", "qk_norm", "shared_expert_gate",
          "dropout", "attn_sinks", "qk_norm_full_width", "router_expert_bias", "router_renormalize", "norm_zero_centered",
          "mtp_shared", "parallel_block", "lm_head_bias")
_POSITIVE_FLOATS = ("rope_theta", "rope_scaling_factor", "router_topk_scaling")
_MAMBA_SIZES = ("mamba_heads", "mamba_head_dim", "mamba_groups", "mamba_state_dim")
"""The Mamba-2 mixer's sizes a pattern with an `M` needs (0 = not given): H, P, G, N of research/hybrid-mamba.md."""
HYBRID_BLOCKS = {"M": "Mamba-2 mixer", "*": "attention", "-": "MLP", "E": "MoE"}
"""Megatron-Core's hybrid_override_pattern symbols (ssm/mamba_hybrid_layer_allocation.py `Symbols`), in the order
counts are shown: each character is one residual block with its own pre-norm."""
_OMITTED_AT_DEFAULT = ("norms_per_layer", "parallel_block", "attn_out_bias", "lm_head_bias", "qk_norm_full_width", "local_attention", "full_attention_first_layers",
                       "rope_theta", "rope_scaling", "rope_scaling_factor", "rope_mscale_all_dim", "router_score", "router_expert_bias",
                       "router_topk_scaling", "router_renormalize", "activation_clamp", "activation", "rotary_fraction",
                       "norm_zero_centered", "moe_latent", "mtp_shared", "hybrid_pattern", "mamba_heads", "mamba_head_dim", "mamba_groups",
                       "mamba_state_dim", "mamba_conv_kernel", "mamba_chunk")
"""Fields added for Gemma 2/3, OLMo 2, Llama 4 and Qwen2's windowed layers, and the RoPE / router / activation
settings that exports carry: to_dict leaves them out while they hold their default, so a model whose settings are
the defaults serialises as before; those that are not carry them (since stop 37: the activation of Nemotron, Gemma,
Grok-1, GPT-OSS, OPT, the rotary share of Nemotron, GLM-4.5, Pythia and the zero-centred norms of Nemotron, Gemma);
also the hybrid pattern and Mamba-2 sizes, so every model without Mamba blocks serialises byte-identically."""
RopeScalingKind = Literal["none", "llama3", "yarn", "linear"]
RouterScoreKind = Literal["softmax", "sigmoid"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelSpec:
    name: str
    family: str = "llama"
    """Architecture family (Hugging Face `model_type`), e.g. llama, mixtral, deepseek_v3, gpt2."""
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int | None = None
    """Key/value heads (GQA/MQA); None means n_heads (multi-head attention)."""
    head_dim: int | None = None
    """Per-head dimension; None means hidden // n_heads."""
    ffn_hidden: int
    """Intermediate size of the dense MLP."""
    gated_ffn: bool = True
    """SwiGLU-style gate (three matrices) when True, plain two-matrix MLP when False."""
    vocab: int
    tied_embeddings: bool = False
    norm: NormKind = "rmsnorm"
    norm_zero_centered: bool = False
    """The norms scale by (1 + weight), the weight stored centred on zero: Nemotron's LayerNorm1P, Gemma's RMSNorm
    (transformers NemotronLayerNorm1P, GemmaRMSNorm). The same parameters; Megatron-LM's --apply-layernorm-1p."""
    position: PositionKind = "rope"
    """How token positions enter: rope, learned absolute table, alibi, or "none" (Nemotron-H and Nemotron 3 have
    no position embedding: Megatron-Core MambaModel's position_embedding_type default "none", transformers
    NemotronHAttention applies no rotary)."""
    max_positions: int = 4096
    rope_theta: float = 10000.0
    """RoPE base (config.json `rope_theta`; Llama 3 500,000). Changes no count or time: exports carry it."""
    rotary_fraction: float = 1.0
    """Share of each head's dimensions RoPE rotates (config.json `partial_rotary_factor`, GPT-NeoX `rotary_pct`:
    Nemotron and GLM-4.5 0.5, Pythia 0.25). Changes no count or time (a fused RoPE kernel reads and writes the whole
    head either way): exports carry it."""
    rope_scaling: RopeScalingKind = "none"
    """RoPE frequency scaling for long context: "llama3" (Llama 3.1's low/high-frequency rule), "yarn" (DeepSeek-V3),
    "linear" (position interpolation); config.json `rope_scaling.rope_type`."""
    rope_scaling_factor: float = 1.0
    rope_mscale_all_dim: float = 0.0
    """YaRN's attention-scale exponent applied over all dimensions (config.json `rope_scaling.mscale_all_dim`;
    DeepSeek-V3 1.0): the softmax scale of MLA grows by (0.1 mscale_all_dim ln(factor) + 1)^2."""
    """config.json `rope_scaling.factor` (Llama 3.1: 8; DeepSeek-V3: 40)."""
    attn_bias: bool = False
    """Biases on the q/k/v projections (Qwen2, GPT-2, OPT, BLOOM)."""
    linear_bias: bool = False
    """Biases on the attention output and MLP projections (GPT-2, OPT, BLOOM, GPT-NeoX)."""
    attn_out_bias: bool | None = None
    """A bias on the attention output projection where it differs from linear_bias (GPT-J: MLP biased, out_proj
    not; Phi-3.5-MoE: o_proj biased with q/k/v, MLP not); None: as linear_bias."""
    lm_head_bias: bool = False
    """A bias on the LM head (GPT-J, Phi-3.5-MoE's lm_head_bias): vocab parameters."""
    embed_norm: bool = False
    """A norm right after the token embedding (BLOOM)."""
    qk_norm: bool = False
    """RMSNorm on queries and keys: one head_dim vector shared by the heads (Qwen3, Gemma 3)."""
    qk_norm_full_width: bool = False
    """With qk_norm: the q/k norms span all heads' width, RMSNorm(n_heads * head_dim) and RMSNorm(n_kv_heads *
    head_dim) (OLMo 2's q_norm / k_norm)."""
    norms_per_layer: int = 2
    """Norm modules per layer: 2 (pre-attention, pre-MLP; OLMo 2's two post-norms count the same); 4 with Gemma 2/3's
    extra post-attention and post-feedforward norms; 1 in a parallel block whose one norm feeds both branches
    (Falcon-7B's input_layernorm, Cohere's)."""
    parallel_block: bool = False
    """Attention and MLP read the same layer input and add their outputs to it together, x + attn(norm(x)) +
    mlp(norm'(x)), instead of one after the other (GPT-J and PaLM's parallel formulation; transformers GPTNeoXLayer
    use_parallel_residual, FalconDecoderLayer parallel_attn / new_decoder_architecture, CohereDecoderLayer): the
    same FLOPs, one residual input saved for both norms, and with norms_per_layer 1 one norm output for both."""
    dropout: bool = False
    """Dropout in training (attention probabilities and residuals), as the 2021-era Megatron GPT runs used."""
    # Local attention (GPT-OSS, Mistral 7B v0.1, Gemma 2/3)
    sliding_window: int | None = None
    """Keys each query sees in the sliding-window layers (HF `sliding_window`); None = every layer attends fully."""
    full_attention_every: int = 0
    """With sliding_window: every n-th layer (index % n == n - 1) keeps full attention (GPT-OSS 2: sliding, full,
    ...); 0 = every layer uses the window."""
    local_attention: LocalAttentionKind = "sliding"
    """How the windowed layers restrict keys: "sliding" (each query sees the last sliding_window keys; Mistral,
    Gemma, GPT-OSS) or "chunked" (each query sees the keys of its own aligned block of sliding_window tokens;
    Llama 4's attention_chunk_size)."""
    full_attention_first_layers: int = 0
    """With sliding_window: layers below this index keep full attention (Qwen2's max_window_layers)."""
    attn_sinks: bool = False
    """A learned sink logit per head in the softmax (GPT-OSS `sinks`): n_heads parameters per layer."""
    activation: ActivationKind = ""
    """The MLP's activation (ACTIVATIONS; "" = silu when gated, gelu when not): activation_fn resolves it."""
    activation_clamp: float = 0.0
    """Clamp of the gated activation's inputs (GPT-OSS config.json `swiglu_limit` 7.0: the gate half clamped to
    <= limit, the linear half to [-limit, limit] before the GLU; transformers GptOssExperts); 0 = no clamp."""
    # Mixture of experts
    n_experts: int = 0
    """Routed experts per MoE layer; 0 for a dense model."""
    top_k: int = 0
    """Routed experts per token."""
    n_shared_experts: int = 0
    expert_ffn_hidden: int = 0
    """Intermediate size of one routed expert."""
    shared_expert_ffn_hidden: int = 0
    """Intermediate size of the shared-expert block (all shared experts together); 0 means n_shared * expert size."""
    moe_latent: int = 0
    """Width the routed experts run at (Megatron-Core moe_latent_size; Nemotron 3 Super 1024): a duplicated h ->
    latent projection before the dispatch and latent -> h after the combine, so the tokens travel and the experts
    compute at this width; the router and the shared expert stay at hidden. 0 = hidden (no projections)."""
    shared_expert_gate: bool = False
    """A sigmoid gate of size hidden on the shared expert (Qwen2-MoE)."""
    first_dense_layers: int = 0
    """Leading layers with a dense MLP (DeepSeek `first_k_dense_replace`)."""
    moe_every: int = 1
    """Every n-th layer after the dense ones is MoE (1 = all)."""
    expert_groups: int = 1
    """Groups the routed experts are split into for group-limited routing (DeepSeek-V3 `n_group` = 8); 1 = none.
    EPLB's hierarchical policy packs whole groups onto nodes (deepseek-ai/EPLB)."""
    expert_groups_per_token: int = 0
    """Groups a token's experts may come from (DeepSeek-V3 `topk_group` = 4); 0 = no limit."""
    router_score: RouterScoreKind = "softmax"
    """The router's score function: softmax (Mixtral, Qwen, DeepSeek-V2) or sigmoid (DeepSeek-V3 `scoring_func`)."""
    router_expert_bias: bool = False
    """Auxiliary-loss-free balancing: a per-expert bias added to the scores for top-k selection only (DeepSeek-V3
    `topk_method: noaux_tc`, Sec. 2.1.2)."""
    router_topk_scaling: float = 1.0
    """Factor on the chosen experts' weights (DeepSeek `routed_scaling_factor`: V3 2.5)."""
    router_renormalize: bool = True
    """The chosen top-k weights are renormalised to sum to 1 (`norm_topk_prob`; equal to a softmax over the top-k
    logits); False: the softmax over all experts is kept (DeepSeek-V2, Megatron --moe-router-pre-softmax)."""
    mtp_shared: bool = False
    """The MTP depths run one shared module (Megatron-Bridge mtp_use_repeated_layer: Nemotron 3 Super): its
    parameters counted once, its compute per depth."""
    mtp_layers: int = 0
    """Multi-token-prediction modules trained beside the model (DeepSeek-V3 `num_nextn_predict_layers`, Sec. 2.2):
    each is one more transformer block, a 2h -> h projection and the shared LM head, run on the last pipeline stage.
    Their parameters are not in total_params (the published 671B excludes the MTP module, and transformers does
    not build it); mtp_params() counts them."""
    # Multi-head latent attention (DeepSeek-V2/V3)
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    """Compressed KV dimension; > 0 switches attention to MLA."""
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # Hybrid Mamba-2 / attention stacks (Nemotron-H, Nemotron Nano 2, Nemotron 3; research/hybrid-mamba.md)
    hybrid_pattern: str = ""
    """Megatron-Core's hybrid_override_pattern: one character per residual block, each with its own pre-norm
    (HYBRID_BLOCKS): `M` a Mamba-2 mixer, `*` attention only, `-` the dense MLP only, `E` the MoE MLP only; its
    length is n_layers, so a Nemotron-H "layer" is half a transformer layer. "" = an ordinary transformer whose
    every layer is attention + MLP."""
    mamba_heads: int = 0
    """Mamba-2 heads H (config.json `mamba_num_heads`); the inner width d_in is H x mamba_head_dim."""
    mamba_head_dim: int = 0
    """Mamba-2 head dimension P (`mamba_head_dim`: 64 Nemotron-H, 80 Nemotron Nano 2)."""
    mamba_groups: int = 0
    """Groups G that share one B and one C (`n_groups`; 8 in every Nemotron); also the gated norm's groups."""
    mamba_state_dim: int = 0
    """SSM state size N (`ssm_state_size`: 128, 256 in the 47B / 56B)."""
    mamba_conv_kernel: int = 4
    """Depthwise causal conv1d width K (`conv_kernel`; Megatron-Core's d_conv 4)."""
    mamba_chunk: int = 128
    """SSD chunk length (`chunk_size`; MambaMixer's default 128): no parameters, the scan's work per token."""
    source: str = ""
    """Where the dimensions come from (a config.json, a paper table)."""

    def __post_init__(self) -> None:
        self._check_field_types()
        if self.activation == default_activation(self.gated_ffn):  # the kind's default, named: one spelling
            object.__setattr__(self, "activation", "")
        for f in ("n_layers", "hidden", "n_heads", "ffn_hidden", "vocab", "max_positions"):
            value = getattr(self, f)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise BadInputError(f"model {self.name}: {f} must be a positive integer, got {value!r}")
        if self.n_layers > MAX_LAYERS:  # counts and estimates walk the layers one by one
            raise BadInputError(f"model {self.name}: n_layers({self.n_layers}) is over {MAX_LAYERS}; check the value")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int) and not isinstance(value, bool) and value > MAX_DIM:
                raise BadInputError(f"model {self.name}: {f.name}({value}) is over {MAX_DIM:,}; check the value")
        kv = self.kv_heads
        if kv <= 0 or self.n_heads % kv:
            raise BadInputError(
                f"model {self.name}: n_heads({self.n_heads}) is not a multiple of n_kv_heads({kv}); "
                "grouped-query attention needs whole groups"
            )
        if self.head_dim is None and not self.is_mla and self.hidden % self.n_heads:
            raise BadInputError(
                f"model {self.name}: hidden({self.hidden}) % n_heads({self.n_heads}) != 0; give head_dim explicitly"
            )
        if self.moe_latent and not self.n_experts:
            raise BadInputError(f"model {self.name}: moe_latent({self.moe_latent}) is the routed experts' width; it "
                                "needs n_experts > 0, or drop it")
        if not isinstance(self.expert_groups, int) or isinstance(self.expert_groups, bool) or self.expert_groups < 1:
            raise BadInputError(f"model {self.name}: expert_groups must be an integer >= 1, got {self.expert_groups!r}")
        if self.n_experts and self.n_experts % self.expert_groups:
            raise BadInputError(f"model {self.name}: {self.n_experts} experts do not split into expert_groups "
                                f"({self.expert_groups}); give a divisor")
        if self.expert_groups_per_token > self.expert_groups:
            raise BadInputError(f"model {self.name}: expert_groups_per_token({self.expert_groups_per_token}) > "
                                f"expert_groups({self.expert_groups})")
        if self.n_experts:
            if not 0 < self.top_k <= self.n_experts:
                raise BadInputError(f"model {self.name}: top_k({self.top_k}) must be in 1..n_experts({self.n_experts})")
            if self.expert_ffn_hidden <= 0:
                raise BadInputError(f"model {self.name}: MoE needs expert_ffn_hidden > 0")
            if self.moe_every < 1 or not 0 <= self.first_dense_layers <= self.n_layers:
                raise BadInputError(f"model {self.name}: moe_every >= 1 and 0 <= first_dense_layers <= n_layers")
        if not isinstance(self.norms_per_layer, int) or isinstance(self.norms_per_layer, bool) \
                or self.norms_per_layer not in (1, 2, 4):
            raise BadInputError(f"model {self.name}: norms_per_layer must be 1, 2 or 4, got {self.norms_per_layer!r}")
        if self.attn_out_bias not in (None, True, False):
            raise BadInputError(f"model {self.name}: attn_out_bias must be true, false or absent, got "
                                f"{self.attn_out_bias!r}")
        if self.norms_per_layer == 1 and not self.parallel_block:
            raise BadInputError(f"model {self.name}: norms_per_layer 1 needs parallel_block: true (one norm feeding "
                                "attention and MLP together); a sequential layer has 2")
        if self.parallel_block is True and (self.n_experts or self.hybrid_pattern or self.norms_per_layer == 4):
            raise BadInputError(f"model {self.name}: parallel_block is modelled for dense attention + MLP layers with "
                                "1 or 2 norms; not with experts, a hybrid pattern or 4 norms")
        if self.qk_norm_full_width and not self.qk_norm:
            raise BadInputError(f"model {self.name}: qk_norm_full_width needs qk_norm: true")
        for f in ("full_attention_every", "full_attention_first_layers"):
            if getattr(self, f) and self.sliding_window is None:
                raise BadInputError(f"model {self.name}: {f} needs sliding_window (the window of the other layers)")
        if self.is_mla and min(self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim) <= 0:
            raise BadInputError(f"model {self.name}: MLA needs qk_nope_head_dim, qk_rope_head_dim, v_head_dim > 0")
        self._check_hybrid()

    def _check_hybrid(self) -> None:
        """The pattern and the Mamba-2 sizes agree with each other and with the rest of the model (Megatron-Core's
        _allocate_override and MambaMixer asserts, research/hybrid-mamba.md sec. 1)."""
        pattern, name = self.hybrid_pattern, self.name
        if not isinstance(pattern, str):
            raise BadInputError(f"model {name}: hybrid_pattern must be a string such as \"M-M*-\", got {pattern!r}")
        if not pattern:
            if any(getattr(self, f) for f in _MAMBA_SIZES):
                raise BadInputError(f"model {name}: mamba_* sizes need a hybrid_pattern with M blocks; add the "
                                    "pattern or drop them")
            return
        if len(pattern) != self.n_layers:
            raise BadInputError(f"model {name}: hybrid_pattern has {len(pattern)} blocks but n_layers is "
                                f"{self.n_layers}; one character per layer (set n_layers to {len(pattern)})")
        odd = sorted(set(pattern) - set(HYBRID_BLOCKS))
        if odd:
            raise BadInputError(f"model {name}: hybrid_pattern has {''.join(odd)!r}; use only M (Mamba), * "
                                "(attention), - (MLP), E (MoE)")
        if ("E" in pattern) != self.is_moe:
            raise BadInputError(f"model {name}: E blocks need n_experts > 0 and n_experts needs E blocks; "
                                f"pattern has {pattern.count('E')} E, n_experts is {self.n_experts}")
        if self.first_dense_layers or self.moe_every != 1:
            raise BadInputError(f"model {name}: with hybrid_pattern the E blocks place the MoE layers; drop "
                                "first_dense_layers and moe_every")
        for f in ("mamba_conv_kernel", "mamba_chunk"):
            value = getattr(self, f)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise BadInputError(f"model {name}: {f} must be a positive integer, got {value!r}")
        if "M" not in pattern:
            return
        missing = [f for f in _MAMBA_SIZES if getattr(self, f) <= 0]
        if missing:
            raise BadInputError(f"model {name}: M blocks need {', '.join(missing)} > 0 (config.json mamba_num_heads, "
                                "mamba_head_dim, n_groups, ssm_state_size)")
        if self.mamba_heads % self.mamba_groups:
            raise BadInputError(f"model {name}: mamba_heads({self.mamba_heads}) % mamba_groups({self.mamba_groups}) "
                                "!= 0; each group must hold whole heads")

    def _check_field_types(self) -> None:
        """One-line errors for wrongly typed fields (a string where a number belongs, a negative count)."""
        for f in _OPTIONAL_POSITIVE_INTS:
            value = getattr(self, f)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise BadInputError(f"model {self.name}: {f} must be a positive integer or left out, got {value!r}")
        for f in (*_NON_NEGATIVE_INTS, *_MAMBA_SIZES):
            value = getattr(self, f)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise BadInputError(f"model {self.name}: {f} must be an integer >= 0, got {value!r}")
        for f in _BOOLS:
            if not isinstance(getattr(self, f), bool):
                raise BadInputError(f"model {self.name}: {f} must be true or false, got {getattr(self, f)!r}")
        for f in ("rope_mscale_all_dim", "activation_clamp"):
            value = getattr(self, f)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < float("inf"):
                raise BadInputError(f"model {self.name}: {f} must be a number >= 0, got {value!r}")
        if not isinstance(self.rotary_fraction, (int, float)) or isinstance(self.rotary_fraction, bool) \
                or not 0 < self.rotary_fraction <= 1:
            raise BadInputError(f"model {self.name}: rotary_fraction must be a number in (0, 1], got "
                                f"{self.rotary_fraction!r}")
        if self.rotary_fraction != 1 and self.position != "rope":
            raise BadInputError(f"model {self.name}: rotary_fraction needs position: rope (it is the share of each "
                                "head RoPE rotates); drop it")
        for f in _POSITIVE_FLOATS:
            value = getattr(self, f)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < float("inf"):
                raise BadInputError(f"model {self.name}: {f} must be a positive number, got {value!r}")
        for f, allowed in (("norm", ("rmsnorm", "layernorm")), ("position", ("rope", "learned", "alibi", "none")),
                           ("local_attention", ("sliding", "chunked")),
                           ("rope_scaling", ("none", "llama3", "yarn", "linear")), ("router_score", ("softmax", "sigmoid")),
                           ("activation", ACTIVATIONS)):
            if getattr(self, f) not in allowed:
                names = ", ".join(a or "'' (the default)" for a in allowed)
                raise BadInputError(f"model {self.name}: {f} must be one of {names}, got {getattr(self, f)!r}")

    # ---- derived shape -------------------------------------------------------------------------
    @property
    def activation_fn(self) -> str:
        """The MLP's activation function: `activation`, or the default of the MLP's kind (silu gated, gelu plain)."""
        return self.activation or default_activation(self.gated_ffn)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def dim_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden // self.n_heads

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def is_hybrid(self) -> bool:
        """A stack of single-purpose blocks (hybrid_pattern) rather than attention + MLP layers."""
        return bool(self.hybrid_pattern)

    @property
    def block_counts(self) -> dict[str, int]:
        """Blocks of each kind in the hybrid pattern, in HYBRID_BLOCKS order, kinds absent left out ({} for an
        ordinary transformer). Nemotron-H 56B: {"M": 54, "*": 10, "-": 54}."""
        return {c: self.hybrid_pattern.count(c) for c in HYBRID_BLOCKS if c in self.hybrid_pattern}

    @property
    def n_attention_layers(self) -> int:
        """Layers with attention (and a KV cache): every layer, or a hybrid pattern's `*` blocks."""
        return self.hybrid_pattern.count("*") if self.is_hybrid else self.n_layers

    def mamba_state_elements(self) -> int:
        """The recurrent state one sequence keeps per Mamba layer while it decodes: the SSM state H x P x N and the
        causal conv's last K - 1 inputs of x, B and C, (K - 1)(d_in + 2GN) (vLLM MambaMixer2 / mamba_ssm
        selective_state_update, causal_conv1d_update). 0 without Mamba blocks."""
        return self.mamba_ssm_state_elements() + self.mamba_conv_state_elements()

    def mamba_ssm_state_elements(self) -> int:
        """The SSM (temporal) state H x P x N of one sequence per Mamba layer: what vLLM's mamba_ssm_cache_dtype
        (SGLang --mamba-ssm-dtype) sets the dtype of. 0 without Mamba blocks."""
        return self.mamba_heads * self.mamba_head_dim * self.mamba_state_dim if "M" in self.hybrid_pattern else 0

    def mamba_conv_state_elements(self) -> int:
        """The causal conv's last K - 1 inputs of x, B and C, (K - 1)(d_in + 2GN), per sequence and Mamba layer (kept
        at mamba_cache_dtype, the model's by default). 0 without Mamba blocks."""
        if "M" not in self.hybrid_pattern:
            return 0
        return (self.mamba_conv_kernel - 1) * (self.mamba_inner + 2 * self.mamba_groups * self.mamba_state_dim)

    @property
    def mamba_inner(self) -> int:
        """The Mamba-2 mixer's inner width d_in = H x P (transformers NemotronHMamba2Mixer.intermediate_size;
        Nemotron Nano 2: 128 x 80 = 10240, not 2 x hidden)."""
        return self.mamba_heads * self.mamba_head_dim

    @property
    def n_moe_layers(self) -> int:
        if not self.is_moe:
            return 0
        return len([i for i in range(self.first_dense_layers, self.n_layers) if self.is_moe_layer(i)])

    def beyond_context(self, seq: int, what: str = "seq") -> str | None:
        """A training sequence longer than the model's context (max_positions, config.json's max_position_embeddings)
        in one line; None within it. A note, not an error: training past the published context is a context
        extension (Llama 3.1's 128K stage did so from 8K), priced as given; serving refuses such requests
        (serving.estimate.check_context). `what` names the option or key that gave seq."""
        if seq <= self.max_positions:
            return None
        return (f"{what} {seq:,} is longer than {self.name}'s context of {self.max_positions:,} tokens "
                "(max_position_embeddings); priced as given, as a context extension")

    def is_sliding_layer(self, index: int) -> bool:
        """Whether layer `index` attends over the sliding window only (HF `layer_types` "sliding_attention")."""
        if self.sliding_window is None or index < self.full_attention_first_layers:
            return False
        return not self.full_attention_every or index % self.full_attention_every != self.full_attention_every - 1

    def is_moe_layer(self, index: int) -> bool:
        if self.is_hybrid:  # the pattern's E blocks (no MTP block follows a hybrid stack here)
            return 0 <= index < self.n_layers and self.hybrid_pattern[index] == "E"
        return self.is_moe and index >= self.first_dense_layers and (index - self.first_dense_layers) % self.moe_every == 0

    @property
    def shared_ffn(self) -> int:
        return self.shared_expert_ffn_hidden or self.n_shared_experts * self.expert_ffn_hidden

    @property
    def q_dim(self) -> int:
        """Width of all query heads together (the attention-score GEMM's inner size times heads)."""
        return self.n_heads * (self.qk_nope_head_dim + self.qk_rope_head_dim if self.is_mla else self.dim_head)

    @property
    def v_dim(self) -> int:
        """Width of all value heads together (input of the output projection)."""
        return self.n_heads * (self.v_head_dim if self.is_mla else self.dim_head)

    # ---- parameter counts -----------------------------------------------------------------------
    def attention_params(self) -> int:
        h = self.hidden
        if self.is_mla:
            qk_head = self.qk_nope_head_dim + self.qk_rope_head_dim
            if self.q_lora_rank:
                q = h * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * self.n_heads * qk_head
            else:
                q = h * self.n_heads * qk_head
            kv = (
                h * (self.kv_lora_rank + self.qk_rope_head_dim)
                + self.kv_lora_rank
                + self.kv_lora_rank * self.n_heads * (self.qk_nope_head_dim + self.v_head_dim)
            )
            return q + kv + self.v_dim * h
        d = self.dim_head
        q_out, kv_out = self.n_heads * d, self.kv_heads * d
        params = h * (q_out + 2 * kv_out) + q_out * h
        if self.attn_bias:
            params += q_out + 2 * kv_out
        if self.linear_bias if self.attn_out_bias is None else self.attn_out_bias:
            params += h
        if self.qk_norm:
            params += q_out + kv_out if self.qk_norm_full_width else 2 * d
        if self.attn_sinks:
            params += self.n_heads
        return params

    def mlp_params(self, ffn: int, width: int = 0) -> int:
        """An MLP hidden -> ffn -> hidden (or `width` -> ffn -> `width`: a latent MoE's experts)."""
        h = width or self.hidden
        params = (3 if self.gated_ffn else 2) * h * ffn
        if self.linear_bias:
            params += (2 if self.gated_ffn else 1) * ffn + h
        return params

    def expert_params(self) -> int:
        """One routed expert, at the latent width where the model has one (moe_latent)."""
        return self.mlp_params(self.expert_ffn_hidden, self.moe_latent)

    def latent_projection_params(self) -> int:
        """A latent MoE layer's h -> latent and latent -> h projections (Megatron-Core MoELayer fc1_latent_proj /
        fc2_latent_proj, duplicated over tensor parallelism; with biases when the model's linears have them)."""
        if not self.moe_latent:
            return 0
        return 2 * self.hidden * self.moe_latent + ((self.moe_latent + self.hidden) if self.linear_bias else 0)

    def norm_params(self) -> int:
        return self.hidden * (2 if self.norm == "layernorm" else 1)

    def router_params(self) -> int:
        """The router's linear layer (hidden x n_experts), with a bias when the model's linears have them (GPT-OSS)."""
        return self.hidden * self.n_experts + (self.n_experts if self.linear_bias else 0)

    def moe_params(self, active: bool = False) -> int:
        """Router, routed experts (all, or top_k when `active`), shared experts of one MoE layer."""
        experts = self.top_k if active else self.n_experts
        params = self.router_params() + experts * self.expert_params() + self.latent_projection_params()
        if self.shared_ffn:
            params += self.mlp_params(self.shared_ffn)
        if self.shared_expert_gate:
            params += self.hidden
        return params

    def mamba_params(self) -> int:
        """One `M` block: the pre-norm fused into in_proj, in_proj h -> 2 d_in + 2GN + H (z, x, B, C, dt; no bias),
        the depthwise conv1d over x, B, C with bias, dt_bias / A_log / D of H each, the gated group RMSNorm of d_in
        and out_proj d_in -> h: h + h(2d_in + 2GN + H) + (d_in + 2GN)(K + 1) + 3H + d_in + d_in h (Megatron-Core
        ssm/mamba_mixer.py; transformers NemotronHMamba2Mixer; research/hybrid-mamba.md sec. 1)."""
        h, d_in, heads = self.hidden, self.mamba_inner, self.mamba_heads
        bc = 2 * self.mamba_groups * self.mamba_state_dim
        return (self.norm_params() + h * (2 * d_in + bc + heads) + (d_in + bc) * (self.mamba_conv_kernel + 1)
                + 3 * heads + d_in + d_in * h)

    def hybrid_block_params(self, kind: str, active: bool = False) -> int:
        """One block of a hybrid pattern, each with its own pre-norm (Megatron-Core mamba_stack_spec: `*` a
        TransformerLayer with self-attention only, `-` an MLPLayer, `E` a MoETransformerLayer; transformers
        NemotronHBlock: norm + mixer)."""
        if kind == "M":
            return self.mamba_params()
        body = {"*": self.attention_params, "-": lambda: self.mlp_params(self.ffn_hidden),
                "E": lambda: self.moe_params(active)}[kind]()
        return body + self.norm_params()

    def layer_params(self, index: int, active: bool = False) -> int:
        if self.is_hybrid:
            return self.hybrid_block_params(self.hybrid_pattern[index], active)
        mlp = self.moe_params(active) if self.is_moe_layer(index) else self.mlp_params(self.ffn_hidden)
        return self.attention_params() + mlp + self.norms_per_layer * self.norm_params()

    def embedding_params(self) -> int:
        params = self.vocab * self.hidden
        if self.position == "learned":
            params += self.max_positions * self.hidden
        if self.embed_norm:
            params += self.norm_params()
        return params

    def head_params(self) -> int:
        """Final norm plus the LM head (zero extra when tied to the embedding)."""
        return (self.norm_params() + (0 if self.tied_embeddings else self.vocab * self.hidden)
                + (self.vocab if self.lm_head_bias else 0))

    def total_params(self) -> int:
        layers = sum(self.layer_params(i) for i in range(self.n_layers))
        return self.embedding_params() + layers + self.head_params()

    def active_params(self) -> int:
        """Parameters touched per token (top_k routed experts instead of all)."""
        layers = sum(self.layer_params(i, active=True) for i in range(self.n_layers))
        return self.embedding_params() + layers + self.head_params()

    def mtp_params(self) -> int:
        """Parameters of the multi-token-prediction modules (DeepSeek-V3 Sec. 2.2, Fig. 3): each holds one more
        transformer block (a layer with index n_layers + k: MoE in DeepSeek-V3), the projection M_k of the
        concatenated [h; emb] (2h x h, no bias) and three RMSNorms (the two inputs and the shared head's norm); the
        embedding and the output head are shared with the main model, so they are not counted again."""
        depths = min(self.mtp_layers, 1) if self.mtp_shared else self.mtp_layers
        return sum(self.mtp_block_params(k) + 2 * self.hidden * self.hidden + 3 * self.norm_params()
                   for k in range(depths))

    def mtp_block_params(self, k: int) -> int:
        """The transformer block of MTP depth k: a layer with index n_layers + k, or, after a hybrid pattern, an
        attention block and the pattern's MoE (or MLP) block (Megatron-Bridge's mtp_hybrid_override_pattern "*E":
        Nemotron 3 Super)."""
        if self.is_hybrid:
            return self.hybrid_block_params("*") + self.hybrid_block_params("E" if self.is_moe else "-")
        return self.layer_params(self.n_layers + k)

    def embedding_table_params(self) -> int:
        """The input token table plus learned positions (a lookup per token, not a matmul)."""
        return self.vocab * self.hidden + (self.max_positions * self.hidden if self.position == "learned" else 0)

    def non_embedding_params(self, *, active: bool = False) -> int:
        """Total (or active) parameters without the embedding table and an untied LM head.

        The "non-embedding" count of Kaplan et al. 2020, the Pythia suite and the Qwen model cards.
        """
        head = 0 if self.tied_embeddings else self.vocab * self.hidden
        return (self.active_params() if active else self.total_params()) - self.embedding_table_params() - head

    def active_params_excluding_input_embedding(self) -> int:
        """Active parameters per token without the input embedding table; the LM head still counts.

        The convention of DeepSeek's "activated parameters" (V2: 21B, V3: 37B): only weights that take part in a
        matmul for the token; the input table is a row lookup.
        """
        return self.active_params() - self.embedding_table_params()

    # ---- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in _OMITTED_AT_DEFAULT:
            if data[name] == _DEFAULTS[name]:
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "model") -> ModelSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BadInputError(f"{where}: unknown model field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        missing = [f for f in ("name", "n_layers", "hidden", "n_heads", "ffn_hidden", "vocab") if f not in data]
        if missing:
            raise BadInputError(f"{where}: missing model field(s) {', '.join(missing)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise BadInputError(f"{where}: {exc}") from exc

    def scaled(self, **changes: Any) -> ModelSpec:
        return replace(self, **changes)


_DEFAULTS = {f.name: f.default for f in fields(ModelSpec)}
