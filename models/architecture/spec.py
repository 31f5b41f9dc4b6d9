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
PositionKind = Literal["rope", "learned", "alibi"]
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
                      "qk_rope_head_dim", "v_head_dim", "full_attention_every", "mtp_layers", "full_attention_first_layers")
_BOOLS = ("gated_ffn", "tied_embeddings", "attn_bias", "linear_bias", "embed_norm", "qk_norm", "shared_expert_gate",
          "dropout", "attn_sinks", "qk_norm_full_width", "router_expert_bias", "router_renormalize", "norm_zero_centered")
_POSITIVE_FLOATS = ("rope_theta", "rope_scaling_factor", "router_topk_scaling")
_OMITTED_AT_DEFAULT = ("norms_per_layer", "qk_norm_full_width", "local_attention", "full_attention_first_layers",
                       "rope_theta", "rope_scaling", "rope_scaling_factor", "rope_mscale_all_dim", "router_score", "router_expert_bias",
                       "router_topk_scaling", "router_renormalize", "activation_clamp", "activation", "rotary_fraction",
                       "norm_zero_centered")
"""Fields added for Gemma 2/3, OLMo 2, Llama 4 and Qwen2's windowed layers, and the RoPE / router / activation
settings that exports carry: to_dict leaves them out while they hold their default, so a model whose settings are
the defaults serialises as before; those that are not carry them (since stop 37: the activation of Nemotron, Gemma,
Grok-1, GPT-OSS, OPT, the rotary share of Nemotron, GLM-4.5, Pythia and the zero-centred norms of Nemotron, Gemma)."""
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
    embed_norm: bool = False
    """A norm right after the token embedding (BLOOM)."""
    qk_norm: bool = False
    """RMSNorm on queries and keys: one head_dim vector shared by the heads (Qwen3, Gemma 3)."""
    qk_norm_full_width: bool = False
    """With qk_norm: the q/k norms span all heads' width, RMSNorm(n_heads * head_dim) and RMSNorm(n_kv_heads *
    head_dim) (OLMo 2's q_norm / k_norm)."""
    norms_per_layer: int = 2
    """Norm modules per layer: 2 (pre-attention, pre-MLP; OLMo 2's two post-norms count the same); 4 with Gemma 2/3's
    extra post-attention and post-feedforward norms."""
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
                or self.norms_per_layer not in (2, 4):
            raise BadInputError(f"model {self.name}: norms_per_layer must be 2 or 4, got {self.norms_per_layer!r}")
        if self.qk_norm_full_width and not self.qk_norm:
            raise BadInputError(f"model {self.name}: qk_norm_full_width needs qk_norm: true")
        for f in ("full_attention_every", "full_attention_first_layers"):
            if getattr(self, f) and self.sliding_window is None:
                raise BadInputError(f"model {self.name}: {f} needs sliding_window (the window of the other layers)")
        if self.is_mla and min(self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim) <= 0:
            raise BadInputError(f"model {self.name}: MLA needs qk_nope_head_dim, qk_rope_head_dim, v_head_dim > 0")

    def _check_field_types(self) -> None:
        """One-line errors for wrongly typed fields (a string where a number belongs, a negative count)."""
        for f in _OPTIONAL_POSITIVE_INTS:
            value = getattr(self, f)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise BadInputError(f"model {self.name}: {f} must be a positive integer or left out, got {value!r}")
        for f in _NON_NEGATIVE_INTS:
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
        for f, allowed in (("norm", ("rmsnorm", "layernorm")), ("position", ("rope", "learned", "alibi")),
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
    def n_moe_layers(self) -> int:
        if not self.is_moe:
            return 0
        return len([i for i in range(self.first_dense_layers, self.n_layers) if self.is_moe_layer(i)])

    def is_sliding_layer(self, index: int) -> bool:
        """Whether layer `index` attends over the sliding window only (HF `layer_types` "sliding_attention")."""
        if self.sliding_window is None or index < self.full_attention_first_layers:
            return False
        return not self.full_attention_every or index % self.full_attention_every != self.full_attention_every - 1

    def is_moe_layer(self, index: int) -> bool:
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
        if self.linear_bias:
            params += h
        if self.qk_norm:
            params += q_out + kv_out if self.qk_norm_full_width else 2 * d
        if self.attn_sinks:
            params += self.n_heads
        return params

    def mlp_params(self, ffn: int) -> int:
        h = self.hidden
        params = (3 if self.gated_ffn else 2) * h * ffn
        if self.linear_bias:
            params += (2 if self.gated_ffn else 1) * ffn + h
        return params

    def norm_params(self) -> int:
        return self.hidden * (2 if self.norm == "layernorm" else 1)

    def router_params(self) -> int:
        """The router's linear layer (hidden x n_experts), with a bias when the model's linears have them (GPT-OSS)."""
        return self.hidden * self.n_experts + (self.n_experts if self.linear_bias else 0)

    def moe_params(self, active: bool = False) -> int:
        """Router, routed experts (all, or top_k when `active`), shared experts of one MoE layer."""
        experts = self.top_k if active else self.n_experts
        params = self.router_params() + experts * self.mlp_params(self.expert_ffn_hidden)
        if self.shared_ffn:
            params += self.mlp_params(self.shared_ffn)
        if self.shared_expert_gate:
            params += self.hidden
        return params

    def layer_params(self, index: int, active: bool = False) -> int:
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
        return self.norm_params() + (0 if self.tied_embeddings else self.vocab * self.hidden)

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
        return sum(self.layer_params(self.n_layers + k) + 2 * self.hidden * self.hidden + 3 * self.norm_params()
                   for k in range(self.mtp_layers))

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
