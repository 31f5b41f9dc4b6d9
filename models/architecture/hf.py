"""Hugging Face `config.json` to ModelSpec, for the supported `model_type`s.

Field names and defaults follow each architecture's transformers configuration class and the modules its
modelling code builds (so the parameter counts match a loaded checkpoint); multimodal configs that nest the
language model under `text_config` are flattened first and only the language model is described (the vision or
audio towers and their projector are named in the spec's source note, not counted).
"""

from __future__ import annotations

from typing import Any

from clusterplan.errors import BadInputError, UnsupportedModelError
from clusterplan.models.architecture.spec import MAX_DIM, MAX_LAYERS, ModelSpec, default_activation

SUPPORTED = ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "deepseek_v3", "gpt2",
             "gpt_neox", "opt", "gpt_oss", "llama4", "gemma", "gemma2", "gemma3", "phi3", "olmo2", "olmoe",
             "deepseek_v2", "granite", "granitemoe", "starcoder2", "nemotron", "glm4_moe", "nemotron_h",
             "smollm3", "olmo3", "ministral", "exaone4", "seed_oss", "ernie4_5", "glm4", "phimoe", "falcon", "cohere",
             "cohere2", "gptj")
MOE_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3", "deepseek_v2", "olmoe", "granitemoe", "glm4_moe",
             "phimoe")
"""The model types whose config names routed experts (their fields: _moe_fields)."""
O_PROJ_FOLLOWS_ATTENTION_BIAS = ("llama", "qwen3", "qwen3_moe", "granite", "granitemoe", "smollm3", "nemotron")
"""Families whose attention output projection takes its bias from attention_bias (transformers modeling_*.py:
`o_proj = nn.Linear(..., bias=config.attention_bias)`); Qwen2, Mistral, Mixtral, Phi-3, GLM-4 (MoE), EXAONE 4 and
Ministral never bias it."""
TEXT_MODEL_TYPES = {"llama4_text": "llama4", "gemma3_text": "gemma3"}
"""The `model_type` of a multimodal release's nested text_config, and the family it belongs to."""
_TOWERS = ("vision_config", "audio_config")
_LOCAL_KINDS = ("sliding_attention", "chunked_attention")
_MISSING = object()


class _Config:
    """Typed, one-line-error access to the fields of one config.json."""

    def __init__(self, raw: dict[str, Any], where: str) -> None:
        self.raw = raw
        self.where = where

    def integer(self, *keys: str, default: Any = _MISSING, minimum: int = 1, maximum: int = MAX_DIM) -> int:
        """The first of `keys` that is set, as an integer in [minimum, maximum]; `default` when none is set.

        The maximum is checked here, before any loop over layers or experts (ModelSpec checks it again)."""
        for key in keys:
            value = self.raw.get(key)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
                raise BadInputError(f"{self.where}: {key} must be an integer >= {minimum} and <= {maximum:,}, got {value!r}; "
                                    "fix config.json")
            return value
        if default is _MISSING:
            raise BadInputError(f"{self.where}: config.json lacks {' / '.join(keys)}; is this a decoder LM config?")
        return default

    def flag(self, key: str, default: bool) -> bool:
        value = self.raw.get(key, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise BadInputError(f"{self.where}: {key} must be true or false, got {value!r}; fix config.json")
        return value

    def int_list(self, key: str, length: int) -> list[int] | None:
        """A list of `length` integers (per-layer flags), or None when the key is absent or empty."""
        value = self.raw.get(key)
        if value is None or value == []:
            return None
        if (not isinstance(value, list) or len(value) != length
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise BadInputError(f"{self.where}: {key} must list one integer per layer ({length}), got "
                                f"{str(value)[:80]}; fix config.json")
        return value

    def layer_kinds(self, n_layers: int) -> list[bool] | None:
        """HF `layer_types` as one flag per layer (True: windowed), or None when the config does not list them."""
        types = self.raw.get("layer_types")
        if types is None:
            return None
        if (not isinstance(types, list) or len(types) != n_layers
                or not all(t in (*_LOCAL_KINDS, "full_attention") for t in types)):
            raise BadInputError(f"{self.where}: layer_types must list one of full_attention / sliding_attention / "
                                f"chunked_attention per layer ({n_layers}), got {str(types)[:80]}; fix config.json")
        return [t in _LOCAL_KINDS for t in types]


def spec_from_hf(cfg: dict[str, Any], *, name: str, where: str = "config.json") -> ModelSpec:
    """Normalise one config.json into a ModelSpec; unknown model types are refused with the list."""
    note = ""
    if isinstance(cfg.get("text_config"), dict):
        towers = [k for k in _TOWERS if cfg.get(k)]
        if towers:
            note = f"; language model only: {' and '.join(towers)} (tower and projector) not counted"
        cfg = {**cfg, **cfg["text_config"]}
    mt = cfg.get("model_type")
    mt = TEXT_MODEL_TYPES.get(mt, mt) if isinstance(mt, str) else mt
    if mt not in SUPPORTED:
        raise UnsupportedModelError(
            f"{where}: model_type {mt!r} is not supported; supported: {', '.join(SUPPORTED)} "
            "(or describe the model in clusterplan's YAML format, see `clusterplan models show llama3.1-8b --format yaml`)"
        )
    c = _Config({**cfg, "model_type": mt}, where)
    builder = {"gpt2": _gpt2, "opt": _opt, "gpt_neox": _gpt_neox, "gpt_oss": _gpt_oss, "llama4": _llama4,
               "gemma": _gemma, "gemma2": _gemma, "gemma3": _gemma, "starcoder2": _starcoder2,
               "nemotron_h": _nemotron_h, "falcon": _falcon, "cohere": _cohere, "cohere2": _cohere,
               "gptj": _gptj}.get(mt, _llama_like)
    fields = builder(c)
    for extra in (fields.pop("_activation_note", ""), fields.pop("_note", "")):
        if extra:
            note = f"{note}; {extra}"
    if mt in MOE_TYPES:
        fields.update(_moe_fields(c, mt, fields["n_layers"]))
    if mt in ("deepseek_v3", "deepseek_v2"):
        fields.update(_mla_fields(c))
    if fields.get("position", "rope") == "rope":
        fields.update(_rope_fields(c))
    if fields.get("n_experts") and mt != "nemotron_h":  # _nemotron_h sets its router itself
        fields.update(_router_fields(c, mt))
    try:
        return ModelSpec(name=name, family=mt, source=f"Hugging Face config.json ({where}){note}", **fields)
    except TypeError as exc:
        raise BadInputError(f"{where}: {exc}") from exc


HF_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu", "gelu_fast": "gelu",
                  "gelu_pytorch_tanh": "gelu", "gelu_python": "gelu", "gelu_python_tanh": "gelu", "gelu_accurate": "gelu",
                  "gelu_10": "gelu", "relu": "relu", "relu2": "relu2", "quick_gelu": "quick_gelu"}
"""transformers' ACT2FN names -> ModelSpec.activation (the tanh approximations and the clipped GELU count as gelu)."""


def _activation_field(c: _Config, gated: bool, *keys: str, default: str) -> dict[str, Any]:
    """{"activation": ...} from the first of `keys` the config sets (else `default`, the configuration class's), left
    out where it is the default of the MLP's kind (silu gated, gelu plain) so earlier models serialise as before. An
    activation ModelSpec has no name for (mish, xielu, ...) changes no count or time: the model keeps its kind's default
    and says so in its source (exports then name that default)."""
    raw = next((c.raw[k] for k in keys if c.raw.get(k) is not None), default)
    if not isinstance(raw, str):
        raise BadInputError(f"{c.where}: {keys[0]} must be an activation name such as \"silu\", got {str(raw)[:40]}; "
                            "fix config.json")
    if raw not in HF_ACTIVATIONS:
        return {"_activation_note": f"activation {raw!r} not modelled: counted, priced and exported as the "
                                    f"{'gated ' if gated else ''}{default_activation(gated)} MLP"}
    act = HF_ACTIVATIONS[raw]
    return {} if act == default_activation(gated) else {"activation": act}


def _window_fields(c: _Config, windowed: list[bool], window: int | None, *, chunked: bool = False) -> dict[str, Any]:
    """sliding_window, full_attention_every and full_attention_first_layers that reproduce the config's windowed
    layers exactly (one flag per layer, as transformers' layer_types gives them); refused when no such pattern
    exists."""
    n = len(windowed)
    if window is None or not any(windowed):
        return {}
    first = windowed.index(True)
    full_after = [i for i in range(first, n) if not windowed[i]]
    every = full_after[0] + 1 if full_after else 0
    for start, step in ((first, every), (0, every)):
        spec_like = [i >= start and (not step or i % step != step - 1) for i in range(n)]
        if spec_like == windowed:
            return dict(sliding_window=window, full_attention_every=step, full_attention_first_layers=start,
                        **({"local_attention": "chunked"} if chunked else {}))
    raise UnsupportedModelError(f"{c.where}: the windowed layers {[i for i in range(n) if windowed[i]][:12]}... are not "
                                "every layer except every n-th (after a leading run of full layers); describe the "
                                "model in the YAML format")


def _gpt2(c: _Config) -> dict[str, Any]:
    # GPT2Model: c_attn/c_proj/c_fc all with biases, learned positions (n_positions), head tied to wte.
    h = c.integer("n_embd", "hidden_size")
    return dict(n_layers=c.integer("n_layer", "num_hidden_layers", maximum=MAX_LAYERS), hidden=h, n_heads=c.integer("n_head", "num_attention_heads"),
                ffn_hidden=c.integer("n_inner", default=4 * h), gated_ffn=False, vocab=c.integer("vocab_size"),
                tied_embeddings=True, norm="layernorm", position="learned",
                max_positions=c.integer("n_positions", "max_position_embeddings"), attn_bias=True, linear_bias=True,
                **_activation_field(c, False, "activation_function", default="gelu_new"))


def _opt(c: _Config) -> dict[str, Any]:
    h = c.integer("hidden_size")
    proj = c.integer("word_embed_proj_dim", default=h)
    if proj != h:
        raise UnsupportedModelError(
            f"{c.where}: OPT with word_embed_proj_dim({proj}) != hidden_size({h}) is not supported (its project_in/"
            "project_out layers are not modelled); use an OPT size whose word_embed_proj_dim equals hidden_size")
    bias = c.flag("enable_bias", True)
    # OPTLearnedPositionalEmbedding keeps max_position_embeddings + 2 rows (an offset of 2).
    return dict(n_layers=c.integer("num_hidden_layers", maximum=MAX_LAYERS), hidden=h, n_heads=c.integer("num_attention_heads"),
                ffn_hidden=c.integer("ffn_dim"), gated_ffn=False, vocab=c.integer("vocab_size"),
                tied_embeddings=c.flag("tie_word_embeddings", True), norm="layernorm", position="learned",
                max_positions=c.integer("max_position_embeddings") + 2, attn_bias=bias, linear_bias=bias,
                **_activation_field(c, False, "activation_function", default="relu"))


def _gpt_neox(c: _Config) -> dict[str, Any]:
    # GPTNeoXLayer: fused qkv and dense with biases (attention_bias, default true), 4h MLP with biases, untied embed_out;
    # input_layernorm and post_attention_layernorm, both over the layer input when use_parallel_residual (default
    # true: Pythia, GPT-NeoX-20B), x + attn(ln1(x)) + mlp(ln2(x)).
    bias = c.flag("attention_bias", True)
    return dict(n_layers=c.integer("num_hidden_layers", maximum=MAX_LAYERS), hidden=c.integer("hidden_size"), n_heads=c.integer("num_attention_heads"),
                ffn_hidden=c.integer("intermediate_size"), gated_ffn=False, vocab=c.integer("vocab_size"),
                tied_embeddings=c.flag("tie_word_embeddings", False), norm="layernorm", position="rope",
                max_positions=c.integer("max_position_embeddings", default=2048), attn_bias=bias, linear_bias=bias,
                parallel_block=c.flag("use_parallel_residual", True),
                **_activation_field(c, False, "hidden_act", default="gelu"))


def _falcon(c: _Config) -> dict[str, Any]:
    """FalconDecoderLayer (transformers FalconConfig defaults): one fused query_key_value of (n + 2 kv) x head_dim
    with the new decoder architecture (Falcon-40B / 180B: num_kv_heads), h + 2 head_dim under multi_query (Falcon-7B:
    one K/V head), else 3h; dense, dense_h_to_4h and dense_4h_to_h; every linear biased by `bias` (default false);
    LayerNorm with bias; the LM head tied to the embedding. Attention and MLP in parallel when parallel_attn or
    new_decoder_architecture, with 2 norms (ln_attn, ln_mlp) under the new architecture (num_ln_in_parallel_attn,
    default 2 there) and 1 (input_layernorm) otherwise; sequential (input and post-attention norms) when neither."""
    h = c.integer("hidden_size")
    n_heads = c.integer("num_attention_heads", "n_head")
    new = c.flag("new_decoder_architecture", False)
    parallel = new or c.flag("parallel_attn", True)
    if new:
        kv = c.integer("num_kv_heads", "n_head_kv", default=n_heads)
    else:
        kv = 1 if c.flag("multi_query", True) else n_heads
    norms = 2
    if parallel and not new:
        norms = 1
    elif new and c.raw.get("num_ln_in_parallel_attn") not in (None, 2):
        norms = c.integer("num_ln_in_parallel_attn", maximum=2)
    bias = c.flag("bias", False)
    alibi = c.flag("alibi", False)
    return dict(n_layers=c.integer("num_hidden_layers", "n_layer", maximum=MAX_LAYERS), hidden=h, n_heads=n_heads,
                n_kv_heads=kv, ffn_hidden=c.integer("ffn_hidden_size", default=4 * h), gated_ffn=False,
                vocab=c.integer("vocab_size"), tied_embeddings=c.flag("tie_word_embeddings", True), norm="layernorm",
                position="alibi" if alibi else "rope", max_positions=c.integer("max_position_embeddings", default=2048),
                attn_bias=bias, linear_bias=bias, parallel_block=parallel, norms_per_layer=norms,
                **_activation_field(c, False, "activation", default="gelu"))


def _gptj(c: _Config) -> dict[str, Any]:
    """GPTJBlock: one ln_1 feeding attention and MLP in parallel; q/k/v/out_proj unbiased, fc_in / fc_out biased
    (n_inner, default 4h), LayerNorm with bias, RoPE over rotary_dim of each head (default 64), an untied LM head with
    a bias (GPTJForCausalLM lm_head)."""
    h = c.integer("n_embd", "hidden_size")
    n_heads = c.integer("n_head", "num_attention_heads")
    head_dim = h // n_heads
    rotary = c.integer("rotary_dim", default=head_dim, maximum=head_dim)
    fields = dict(n_layers=c.integer("n_layer", "num_hidden_layers", maximum=MAX_LAYERS), hidden=h, n_heads=n_heads,
                  ffn_hidden=c.integer("n_inner", default=4 * h), gated_ffn=False, vocab=c.integer("vocab_size"),
                  tied_embeddings=c.flag("tie_word_embeddings", False), norm="layernorm", position="rope",
                  max_positions=c.integer("n_positions", "max_position_embeddings", default=2048), attn_bias=False,
                  linear_bias=True, attn_out_bias=False, lm_head_bias=True, parallel_block=True, norms_per_layer=1,
                  **_activation_field(c, False, "activation_function", default="gelu_new"))
    if rotary != head_dim:
        fields["rotary_fraction"] = rotary / head_dim
    return fields


def _cohere(c: _Config) -> dict[str, Any]:
    """CohereDecoderLayer / Cohere2DecoderLayer: one input_layernorm feeding attention and a SwiGLU MLP in parallel,
    x + attn(ln(x)) + mlp(ln(x)); CohereLayerNorm subtracts the mean but has a weight only (no bias), priced as
    RMSNorm (the same parameters and traffic); q/k/v/o biased by attention_bias, the MLP unbiased; use_qk_norm norms
    q and k per head over (heads, head_dim) weights (Cohere); the LM head tied. Cohere 2 windows three layers of four
    (layer_types; sliding_window)."""
    fields = _llama_like(c)
    if c.flag("attention_bias", False):
        raise UnsupportedModelError(f"{c.where}: {c.raw['model_type']} with attention_bias (o_proj biased, the MLP "
                                    "not) is not supported; use the YAML format")
    fields.update(parallel_block=True, norms_per_layer=1, tied_embeddings=c.flag("tie_word_embeddings", True))
    if c.raw["model_type"] == "cohere" and c.flag("use_qk_norm", False):
        fields.update(qk_norm=True, qk_norm_full_width=True)
    if c.raw["model_type"] == "cohere2":
        n_layers = fields["n_layers"]
        windowed = c.layer_kinds(n_layers)
        if windowed is None:
            every = c.integer("sliding_window_pattern", default=4)
            windowed = [(i + 1) % every != 0 for i in range(n_layers)]
        fields.update(_window_fields(c, windowed, c.integer("sliding_window", default=None)))
        fields["_note"] = "the full-attention layers' NoPE priced with RoPE, its elementwise share"
    return fields


def _gpt_oss(c: _Config) -> dict[str, Any]:
    """GptOssDecoderLayer: biased q/k/v/o (attention_bias), a sink logit per head, an MoE MLP on every layer with a
    biased router and biased expert matrices, layers alternating sliding_attention / full_attention (layer_types)."""
    n_heads = c.integer("num_attention_heads")
    n_layers = c.integer("num_hidden_layers", maximum=MAX_LAYERS)  # bounded before the per-layer list below
    windowed = c.layer_kinds(n_layers) or [i % 2 == 0 for i in range(n_layers)]
    experts = c.integer("num_local_experts")
    return dict(n_layers=n_layers, hidden=c.integer("hidden_size"), n_heads=n_heads,
                n_kv_heads=c.integer("num_key_value_heads", default=n_heads), head_dim=c.integer("head_dim", default=None),
                ffn_hidden=c.integer("intermediate_size"), vocab=c.integer("vocab_size"),
                tied_embeddings=c.flag("tie_word_embeddings", False),
                max_positions=c.integer("max_position_embeddings", default=4096),
                attn_bias=c.flag("attention_bias", True), linear_bias=True, attn_sinks=True, activation="quick_gelu",
                **_window_fields(c, windowed, c.integer("sliding_window", default=None)), n_experts=experts,
                top_k=c.integer("num_experts_per_tok", "experts_per_token"),
                expert_ffn_hidden=c.integer("intermediate_size"),
                activation_clamp=_positive_number(c, "swiglu_limit", c.raw.get("swiglu_limit", 7.0)))


def _llama4(c: _Config) -> dict[str, Any]:
    """Llama4TextModel (the language model of Llama 4 Scout / Maverick): GQA with head_dim, a parameter-free L2 q/k
    norm, MoE layers every interleave_moe_layer_step-th layer (layer step-1, 2 step-1, ...; or the listed
    moe_layers) with num_local_experts routed experts of intermediate_size, a bias-free router and one shared expert
    of the same size; dense layers use intermediate_size_mlp. Layers that use RoPE (no_rope_layers[i] = 1; by
    default all but every no_rope_layer_interval-th) attend within chunks of attention_chunk_size tokens, the NoPE
    layers attend globally (Llama4TextConfig.layer_types)."""
    n_heads = c.integer("num_attention_heads")
    n_layers = c.integer("num_hidden_layers", maximum=MAX_LAYERS)
    step = c.integer("interleave_moe_layer_step", default=1)
    listed = c.raw.get("moe_layers")
    if listed is not None and (not isinstance(listed, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n_layers for i in listed)):
        raise BadInputError(f"{c.where}: moe_layers must be a list of layer indices below {n_layers}, got "
                            f"{str(listed)[:80]}; fix config.json")
    moe = sorted(set(listed)) if listed is not None else list(range(step - 1, n_layers, step))
    chunk = c.integer("attention_chunk_size", default=None)
    interval = c.integer("no_rope_layer_interval", default=4)
    rope = c.int_list("no_rope_layers", n_layers) or [int((i + 1) % interval != 0) for i in range(n_layers)]
    windowed = c.layer_kinds(n_layers) or [bool(r) and chunk is not None for r in rope]
    expert_ffn = c.integer("intermediate_size")
    return dict(n_layers=n_layers, hidden=c.integer("hidden_size"), n_heads=n_heads,
                n_kv_heads=c.integer("num_key_value_heads", default=n_heads), head_dim=c.integer("head_dim", default=None),
                ffn_hidden=c.integer("intermediate_size_mlp"), vocab=c.integer("vocab_size"),
                tied_embeddings=c.flag("tie_word_embeddings", False),
                max_positions=c.integer("max_position_embeddings", default=4096),
                attn_bias=c.flag("attention_bias", False), **_activation_field(c, True, "hidden_act", default="silu"),
                **_window_fields(c, windowed, chunk, chunked=True),
                n_experts=c.integer("num_local_experts"), top_k=c.integer("num_experts_per_tok"),
                n_shared_experts=1, expert_ffn_hidden=expert_ffn, **_moe_layout(moe, n_layers, c.where))


def _gemma(c: _Config) -> dict[str, Any]:
    """Gemma, Gemma 2 and Gemma 3 text decoders (defaults of Gemma2Config / Gemma3TextConfig where config.json leaves a field
    out): head_dim apart from hidden / heads, four RMSNorms per layer (input, post-attention, pre- and post-
    feedforward), a gated GELU MLP, embeddings tied by default; Gemma 3 adds per-head q/k norms. Gemma (1) has the
    same attention and MLP with two norms per layer and no windows (GemmaConfig, GemmaDecoderLayer). Layers alternate
    sliding and full attention: Gemma 2 every other layer, Gemma 3 every sliding_window_pattern-th (default 6) is
    full. The logit soft-caps, the sqrt(hidden) embedding scale and query_pre_attn_scalar carry no parameters."""
    gemma1 = c.raw["model_type"] == "gemma"
    gemma3 = c.raw["model_type"] == "gemma3"
    n_heads = c.integer("num_attention_heads")
    n_layers = c.integer("num_hidden_layers", maximum=MAX_LAYERS)
    if c.flag("use_bidirectional_attention", False):
        raise UnsupportedModelError(f"{c.where}: use_bidirectional_attention makes this an encoder (embedding) model; "
                                    "clusterplan plans decoder language models")
    if c.flag("mlp_bias", False):
        raise UnsupportedModelError(f"{c.where}: Gemma with mlp_bias is not supported; use the YAML format")
    fields = dict(n_layers=n_layers, hidden=c.integer("hidden_size"), n_heads=n_heads,
                  n_kv_heads=c.integer("num_key_value_heads", default=n_heads), head_dim=c.integer("head_dim", default=256),
                  ffn_hidden=c.integer("intermediate_size"),
                  vocab=c.integer("vocab_size", default=262_208 if gemma3 else 256_000),
                  tied_embeddings=c.flag("tie_word_embeddings", True),
                  max_positions=c.integer("max_position_embeddings", default=131_072 if gemma3 else 8192),
                  attn_bias=c.flag("attention_bias", False), qk_norm=gemma3, norm_zero_centered=True,
                  # A GeGLU MLP: GemmaMLP applies config.hidden_act, Gemma2MLP / Gemma3MLP config.hidden_activation
                  # (transformers 5), tanh GELU by default
                  **_activation_field(c, True, "hidden_act" if gemma1 else "hidden_activation",
                                      default="gelu_pytorch_tanh"))
    if gemma1:  # GemmaDecoderLayer: the input and post-attention norms only, every layer global
        return fields
    pattern = c.integer("sliding_window_pattern", "_sliding_window_pattern", default=6) if gemma3 else 2
    windowed = c.layer_kinds(n_layers) or [(i + 1) % pattern != 0 for i in range(n_layers)]
    return dict(fields, norms_per_layer=4, **_window_fields(c, windowed, c.integer("sliding_window", default=4096)))


def _starcoder2(c: _Config) -> dict[str, Any]:
    """Starcoder2DecoderLayer: LayerNorm with bias, q/k/v/o and the MLP's c_fc / c_proj biased (use_bias, default
    true), a GELU MLP (not gated), GQA, config.sliding_window on every layer, embeddings tied by default
    (Starcoder2Config)."""
    n_heads = c.integer("num_attention_heads")
    n_layers = c.integer("num_hidden_layers", maximum=MAX_LAYERS)
    bias = c.flag("use_bias", True)
    return dict(n_layers=n_layers, hidden=c.integer("hidden_size"), n_heads=n_heads,
                n_kv_heads=c.integer("num_key_value_heads", default=n_heads),
                ffn_hidden=c.integer("intermediate_size"), gated_ffn=False, vocab=c.integer("vocab_size"),
                tied_embeddings=c.flag("tie_word_embeddings", True), norm="layernorm",
                max_positions=c.integer("max_position_embeddings", default=4096), attn_bias=bias, linear_bias=bias,
                **_activation_field(c, False, "hidden_act", default="gelu_pytorch_tanh"),
                **_window_fields(c, [True] * n_layers, c.integer("sliding_window", default=None)))


NEMOTRON_H_BLOCKS = {"linear_attention": "M", "mamba": "M", "full_attention": "*", "attention": "*", "mlp": "-",
                     "moe": "E"}
"""transformers NemotronHConfig layers_block_type names (and the legacy mamba / attention that
remap_legacy_layer_types renames) -> ModelSpec.hybrid_pattern characters (NemotronHConfig._list_to_pattern)."""


def _nemotron_h_pattern(c: _Config) -> str:
    """The block pattern as NemotronHConfig reads it: layers_block_type (alias layer_types) wins over the older
    hybrid_override_pattern string; num_hidden_layers is ignored (transformers derives it from the pattern)."""
    listed = c.raw.get("layers_block_type", c.raw.get("layer_types"))
    if listed is not None:
        if (not isinstance(listed, list) or not listed or len(listed) > MAX_LAYERS
                or not all(isinstance(t, str) and t in NEMOTRON_H_BLOCKS for t in listed)):
            raise BadInputError(f"{c.where}: layers_block_type must list one of {', '.join(NEMOTRON_H_BLOCKS)} per "
                                f"layer, got {str(listed)[:80]}; fix config.json")
        return "".join(NEMOTRON_H_BLOCKS[t] for t in listed)
    pattern = c.raw.get("hybrid_override_pattern")
    if pattern is None:
        raise BadInputError(f"{c.where}: config.json lacks hybrid_override_pattern / layers_block_type; a nemotron_h "
                            "config names its blocks")
    if not isinstance(pattern, str) or not 0 < len(pattern) <= MAX_LAYERS or set(pattern) - set("M*-E"):
        raise BadInputError(f"{c.where}: hybrid_override_pattern must be a string of M, *, -, E (one per layer), got "
                            f"{str(pattern)[:80]}; fix config.json")
    return pattern


def _nemotron_h(c: _Config) -> dict[str, Any]:
    """NemotronHForCausalLM (Nemotron-H, Nemotron Nano 2, Nemotron 3): a pattern of single-purpose blocks, each an
    RMSNorm then one mixer (NemotronHBlock): a Mamba-2 mixer of mamba_num_heads x mamba_head_dim, GQA attention
    with head_dim and no bias or rotary, a squared-ReLU MLP (up / down, not gated), or an MoE of non-gated experts
    with a sigmoid router (e_score_correction_bias, a buffer) and one shared expert. Defaults are NemotronHConfig's
    (transformers 5: ssm_state_size 128, mamba_num_heads 128, mamba_head_dim 64, n_groups 8, conv_kernel 4,
    chunk_size 128, intermediate_size 21504, vocab_size 131072, 32 heads / 8 KV heads of 128, untied)."""
    pattern = _nemotron_h_pattern(c)
    for key, default, why in (("use_bias", False, "biased Mamba in_proj / out_proj"),
                              ("mlp_bias", False, "biased MLP and expert matrices"),
                              ("use_conv_bias", True, "a conv1d without bias")):
        if c.flag(key, default) != default:
            raise UnsupportedModelError(f"{c.where}: nemotron_h with {key} {not default} ({why}) is not modelled; "
                                        "use the YAML format")
    if c.integer("num_nextn_predict_layers", default=0, minimum=0):
        raise UnsupportedModelError(f"{c.where}: nemotron_h with num_nextn_predict_layers (MTP blocks of their own "
                                    "pattern) is not modelled yet")
    fields: dict[str, Any] = dict(
        n_layers=len(pattern), hybrid_pattern=pattern, hidden=c.integer("hidden_size", default=4096),
        n_heads=c.integer("num_attention_heads", default=32), n_kv_heads=c.integer("num_key_value_heads", default=8),
        head_dim=c.integer("head_dim", default=128), ffn_hidden=c.integer("intermediate_size", default=21504),
        gated_ffn=False, vocab=c.integer("vocab_size", default=131_072),
        tied_embeddings=c.flag("tie_word_embeddings", False), position="none",
        max_positions=c.integer("max_position_embeddings", default=4096),
        **_activation_field(c, False, "mlp_hidden_act", default="relu2"),
        mamba_heads=c.integer("mamba_num_heads", default=128), mamba_head_dim=c.integer("mamba_head_dim", default=64),
        mamba_groups=c.integer("n_groups", "mamba_n_groups", default=8),
        mamba_state_dim=c.integer("ssm_state_size", default=128),
        mamba_conv_kernel=c.integer("conv_kernel", "mamba_d_conv", default=4),
        mamba_chunk=c.integer("chunk_size", "mamba_chunk_size", default=128))
    if "E" not in pattern:
        return fields
    # NemotronHMoE: n_routed_experts non-gated experts of moe_intermediate_size, one shared NemotronHMLP of
    # moe_shared_expert_intermediate_size (whatever n_shared_experts says), NemotronHTopkRouter (sigmoid, weights
    # renormalised when norm_topk_prob, times routed_scaling_factor; group-limited with n_group / topk_group).
    groups = c.integer("n_group", default=1)
    scaling = c.raw.get("routed_scaling_factor")
    return dict(fields, n_experts=c.integer("n_routed_experts", "num_local_experts", default=8),
                top_k=c.integer("num_experts_per_tok", default=2),
                expert_ffn_hidden=c.integer("moe_intermediate_size", default=7688),
                shared_expert_ffn_hidden=c.integer("moe_shared_expert_intermediate_size", default=7688, minimum=0),
                expert_groups=groups,  # topk_group limits nothing with one group (NemotronHConfig: 1 and 1)
                expert_groups_per_token=c.integer("topk_group", default=1) if groups > 1 else 0,
                router_score="sigmoid", router_expert_bias=True, router_renormalize=c.flag("norm_topk_prob", True),
                router_topk_scaling=1.0 if scaling is None else _positive_number(c, "routed_scaling_factor", scaling),
                # Nemotron 3 Super: the experts behind h <-> latent projections (transformers NemotronHMoE
                # fc1_latent_proj / fc2_latent_proj)
                moe_latent=c.integer("moe_latent_size", default=0, minimum=0))


def _qwen_windowed(c: _Config, mt: str, n_layers: int) -> list[bool]:
    """Qwen's windowed layers (use_sliding_window): Qwen2 / Qwen3 window the layers from max_window_layers on,
    Qwen2-MoE the even layers below max_window_layers, Qwen3-MoE every layer (their transformers configs)."""
    if not c.flag("use_sliding_window", False):
        return [False] * n_layers
    cut = c.integer("max_window_layers", default=28, minimum=0, maximum=MAX_LAYERS)
    if mt == "qwen3_moe":
        return [True] * n_layers
    if mt == "qwen2_moe":
        return [(i + 1) % 2 != 0 and i < cut for i in range(n_layers)]
    return [i >= cut for i in range(n_layers)]


def _llama_like(c: _Config) -> dict[str, Any]:
    """Llama-style decoders: RMSNorm, SwiGLU, RoPE, optional GQA; biases, qk-norm and windows per family.

    Phi-3 / Phi-4 (phi3) fuse q/k/v into qkv_proj and gate/up into gate_up_proj: the same parameters as separate
    matrices. OLMo 2 norms q and k over all heads' width and moves both norms after their sublayers (still two).
    DeepSeek-V2's MLA and MoE fields are added by spec_from_hf."""
    mt = c.raw["model_type"]
    n_heads = c.integer("num_attention_heads")
    n_layers = c.integer("num_hidden_layers", maximum=MAX_LAYERS)
    fields: dict[str, Any] = dict(
        n_layers=n_layers, hidden=c.integer("hidden_size"), n_heads=n_heads,
        n_kv_heads=c.integer("num_key_value_heads", default=n_heads), head_dim=c.integer("head_dim", default=None),
        ffn_hidden=c.integer("intermediate_size"), vocab=c.integer("vocab_size"),
        tied_embeddings=c.flag("tie_word_embeddings", False),
        max_positions=c.integer("max_position_embeddings", default=4096),
    )
    # Qwen2 / Qwen2-MoE always put biases on q, k and v (and nowhere else); ERNIE 4.5's use_bias biases q, k, v, o and
    # the MLP (Ernie4_5Attention, Ernie4_5MLP); GLM-4 (Glm4Attention) and Seed-OSS (SeedOssAttention) bias q, k and v
    # only (Seed-OSS's o_proj follows attention_out_bias).
    ernie_bias = mt == "ernie4_5" and c.flag("use_bias", False)
    attention_bias = mt in ("qwen2", "qwen2_moe") or ernie_bias or c.flag("attention_bias", False)
    mlp_bias = ernie_bias or c.flag("mlp_bias", False)
    if mt in ("phi3", "olmo2", "olmo3", "olmoe", "deepseek_v2", "deepseek_v3", "exaone4") and attention_bias:
        raise UnsupportedModelError(f"{c.where}: {mt} with attention_bias is not supported; use the YAML format")
    fields["attn_bias"] = attention_bias
    fields["linear_bias"] = mlp_bias
    # o_proj's bias, by each family's attention module: Llama, Qwen3 (MoE), Granite (MoE), SmolLM3 and Nemotron bias it
    # with attention_bias, Seed-OSS with attention_out_bias, ERNIE 4.5 with use_bias (as its MLP); the others never
    out_bias = (attention_bias if mt in O_PROJ_FOLLOWS_ATTENTION_BIAS
                else c.flag("attention_out_bias", False) if mt == "seed_oss" else ernie_bias)
    if out_bias != mlp_bias:
        fields["attn_out_bias"] = out_bias
    # GLM-4.5 norms q and k per head when use_qk_norm is set (Glm4MoeAttention).
    # EXAONE 4 norms q and k per head (Exaone4Attention q_norm / k_norm of head_dim), OLMo 3 over all heads as OLMo 2.
    fields["qk_norm"] = mt in ("qwen3", "qwen3_moe", "olmo2", "olmo3", "olmoe", "exaone4") or (
        mt == "glm4_moe" and c.flag("use_qk_norm", False))
    if mt in ("olmo2", "olmo3", "olmoe"):
        fields["qk_norm_full_width"] = True
    if mt == "glm4":
        # Glm4DecoderLayer: input, post-attention, post-self-attention and post-MLP RMSNorms (gate_up_proj fused: the
        # same parameters as gate and up apart).
        fields["norms_per_layer"] = 4
    if mt == "phimoe":
        # PhimoeDecoderLayer: LayerNorm with weight and bias (the final norm too); PhimoeAttention's attention_bias
        # also biases o_proj (attn_out_bias), and lm_head_bias the LM head.
        fields.update(norm="layernorm", attn_out_bias=attention_bias, lm_head_bias=c.flag("lm_head_bias", False))
        fields["_note"] = "sparsemixer top-2 routing priced as softmax top-2"
    if mt == "smollm3":
        fields["_note"] = "NoPE layers (no_rope_layers 0) priced with RoPE, its elementwise share"
    if mt == "nemotron":
        # NemotronDecoderLayer: LayerNorm1P (weight and bias, scaling by 1 + weight), a squared-ReLU MLP of up_proj /
        # down_proj (not gated).
        fields.update(norm="layernorm", gated_ffn=False, norm_zero_centered=True)
    gated = fields.get("gated_ffn", True)
    fields.update(_activation_field(c, gated, "hidden_act", default="relu2" if mt == "nemotron" else "silu"))
    if mt in ("mistral", "mixtral", "phi3", "phimoe"):
        # Their attention applies config.sliding_window on every layer when it is set (Mistral 7B v0.1: 4096).
        fields.update(_window_fields(c, [True] * n_layers, c.integer("sliding_window", default=None)))
    elif mt in ("ministral", "olmo3", "exaone4") or (mt == "smollm3" and c.flag("use_sliding_window", False)):
        # layer_types names each layer's attention (Ministral: every layer sliding; OLMo 3 / EXAONE 4: three sliding
        # layers, then a full one); SmolLM3 windows only with use_sliding_window.
        windowed = c.layer_kinds(n_layers)
        if windowed is None:
            every = c.integer("sliding_window_pattern", default=4) if mt in ("olmo3", "exaone4") else 0
            windowed = [not every or (i + 1) % every != 0 for i in range(n_layers)]
        fields.update(_window_fields(c, windowed, c.integer("sliding_window", default=None)))
    elif mt in ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe") and c.flag("use_sliding_window", False):
        # Without use_sliding_window the configs keep a placeholder sliding_window (Qwen2.5: 131072, Qwen2-MoE: 0).
        windowed = c.layer_kinds(n_layers) or _qwen_windowed(c, mt, n_layers)
        fields.update(_window_fields(c, windowed, c.integer("sliding_window") if any(windowed) else None))
    return fields


def _moe_layout(moe_layers: list[int], n_layers: int, where: str) -> dict[str, int]:
    """(first_dense_layers, moe_every) that reproduce the config's set of MoE layers exactly."""
    if not moe_layers:
        raise BadInputError(f"{where}: the config names experts but no layer is MoE; check decoder_sparse_step / "
                            "mlp_only_layers / first_k_dense_replace")
    first = moe_layers[0]
    every = moe_layers[1] - first if len(moe_layers) > 1 else max(1, n_layers - first)
    if moe_layers != list(range(first, n_layers, every)):
        raise UnsupportedModelError(f"{where}: MoE layers {moe_layers} are not every n-th layer from the first MoE "
                                    "layer on; clusterplan cannot describe this layer pattern yet")
    return dict(first_dense_layers=first, moe_every=every)


def _moe_fields(c: _Config, mt: str, n_layers: int) -> dict[str, Any]:
    if mt in ("mixtral", "phimoe"):  # PhimoeSparseMoeBlock: Mixtral's block (its sparsemixer router has no weights)
        return dict(n_experts=c.integer("num_local_experts"), top_k=c.integer("num_experts_per_tok"),
                    expert_ffn_hidden=c.integer("intermediate_size"))
    if mt == "olmoe":  # OlmoeSparseMoeBlock on every layer: num_experts experts of intermediate_size
        return dict(n_experts=c.integer("num_experts"), top_k=c.integer("num_experts_per_tok"),
                    expert_ffn_hidden=c.integer("intermediate_size"))
    if mt == "granitemoe":
        # GraniteMoeMoE on every layer: num_local_experts experts of intermediate_size (input_linear / output_linear,
        # no biases), a bias-free router whose top-k logits are softmaxed (weights renormalised).
        return dict(n_experts=c.integer("num_local_experts"), top_k=c.integer("num_experts_per_tok"),
                    expert_ffn_hidden=c.integer("intermediate_size"))
    if mt in ("qwen2_moe", "qwen3_moe"):
        # Qwen2MoeDecoderLayer: MoE when layer not in mlp_only_layers and (layer + 1) % decoder_sparse_step == 0.
        step = c.integer("decoder_sparse_step", default=1)
        dense = c.raw.get("mlp_only_layers") or []
        if not isinstance(dense, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in dense):
            raise BadInputError(f"{c.where}: mlp_only_layers must be a list of layer indices, got {str(dense)[:80]}")
        dense_set = set(dense)
        moe = [i for i in range(n_layers) if i not in dense_set and (i + 1) % step == 0]
        fields = dict(n_experts=c.integer("num_experts"), top_k=c.integer("num_experts_per_tok"),
                      expert_ffn_hidden=c.integer("moe_intermediate_size"), **_moe_layout(moe, n_layers, c.where))
        shared = c.integer("shared_expert_intermediate_size", default=0, minimum=0) if mt == "qwen2_moe" else 0
        return {**fields, "shared_expert_ffn_hidden": shared, "shared_expert_gate": shared > 0}
    # DeepSeek-V2 / V3 (their released modelling code, DeepseekV3DecoderLayer) and GLM-4.5 (Glm4MoeDecoderLayer,
    # the same block with n_shared_experts shared experts): MoE when layer >= first_k_dense_replace and layer %
    # moe_layer_freq == 0 (every released config has moe_layer_freq 1; Glm4MoeConfig has none).
    # Glm4MoeConfig defaults first_k_dense_replace, n_shared_experts and num_nextn_predict_layers to 1
    glm = 1 if mt == "glm4_moe" else 0
    first_k = c.integer("first_k_dense_replace", default=glm, minimum=0)
    freq = c.integer("moe_layer_freq", default=1)
    moe = [i for i in range(n_layers) if i >= first_k and i % freq == 0]
    return dict(n_experts=c.integer("n_routed_experts"), top_k=c.integer("num_experts_per_tok"),
                n_shared_experts=c.integer("n_shared_experts", default=glm, minimum=0),
                expert_ffn_hidden=c.integer("moe_intermediate_size"),
                # Group-limited routing (DeepseekV3TopkRouter: n_group groups, topk_group of them per token).
                expert_groups=c.integer("n_group", default=1, minimum=1),
                expert_groups_per_token=c.integer("topk_group", default=0, minimum=0),
                mtp_layers=c.integer("num_nextn_predict_layers", default=glm, minimum=0),
                **_moe_layout(moe, n_layers, c.where))


ROPE_SCALING_TYPES = {"llama3": "llama3", "yarn": "yarn", "linear": "linear", "default": "none"}
"""config.json rope_scaling.rope_type (older configs: .type) -> ModelSpec.rope_scaling; others are refused."""


def _positive_number(c: _Config, key: str, value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < float("inf"):
        raise BadInputError(f"{c.where}: {key} must be a positive number, got {value!r}; fix config.json")
    return float(value)


def _rope_fields(c: _Config) -> dict[str, Any]:
    """RoPE base and long-context scaling (transformers' rope_theta and rope_scaling): exports carry them."""
    out: dict[str, Any] = {}
    # transformers 5 writes rope_theta, partial_rotary_factor and the scaling into one rope_parameters mapping
    params = c.raw.get("rope_parameters")
    params = params if isinstance(params, dict) else {}
    theta = c.raw.get("rope_theta", params.get("rope_theta"))
    if theta is not None:
        out["rope_theta"] = _positive_number(c, "rope_theta", theta)
    # Partial rotary: NemotronConfig, Glm4Config and Glm4MoeConfig default partial_rotary_factor to 0.5, GPTNeoXConfig
    # rotary_pct to 0.25; every other family rotates the whole head unless its config says otherwise.
    default = {"nemotron": 0.5, "glm4_moe": 0.5, "glm4": 0.5, "gpt_neox": 0.25}.get(c.raw["model_type"], 1.0)
    key = "rotary_pct" if c.raw["model_type"] == "gpt_neox" else "partial_rotary_factor"
    raw_fraction = c.raw.get(key, params.get(key))
    fraction = _positive_number(c, key, raw_fraction) if raw_fraction is not None else default
    if not fraction <= 1.0:
        raise BadInputError(f"{c.where}: {key} must be in (0, 1], got {fraction!r}; fix config.json")
    if fraction != 1.0:
        out["rotary_fraction"] = fraction
    scaling = c.raw.get("rope_scaling")
    if scaling is None and params.get("rope_type", "default") != "default":
        scaling = params
    if isinstance(scaling, dict):
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind not in ROPE_SCALING_TYPES:
            raise UnsupportedModelError(f"{c.where}: rope_scaling type {kind!r} is not supported; supported: "
                                        f"{', '.join(ROPE_SCALING_TYPES)}")
        out["rope_scaling"] = ROPE_SCALING_TYPES[kind]
        if out["rope_scaling"] != "none":
            out["rope_scaling_factor"] = _positive_number(c, "rope_scaling.factor", scaling.get("factor", 1.0))
        if out["rope_scaling"] == "yarn" and scaling.get("mscale_all_dim"):
            out["rope_mscale_all_dim"] = _positive_number(c, "rope_scaling.mscale_all_dim", scaling["mscale_all_dim"])
    elif scaling is not None:
        raise BadInputError(f"{c.where}: rope_scaling must be a mapping or null, got {str(scaling)[:60]}")
    return out


def _router_fields(c: _Config, mt: str) -> dict[str, Any]:
    """The router's score function, expert bias, top-k weight scale and renormalisation (DeepSeek's scoring_func,
    topk_method, routed_scaling_factor, norm_topk_prob; Mixtral and GPT-OSS renormalise over the top-k)."""
    # Llama 4 (Llama4TextMoe): sigmoid of the top-k router logits, not renormalised. GLM-4.5 (Glm4MoeTopkRouter):
    # sigmoid scores with a correction bias for selection (e_score_correction_bias), as DeepSeek-V3's noaux_tc.
    score = c.raw.get("scoring_func", "sigmoid" if mt in ("llama4", "glm4_moe") else "softmax")
    if score not in ("softmax", "sigmoid"):
        raise UnsupportedModelError(f"{c.where}: scoring_func {score!r} is not supported; supported: softmax, sigmoid")
    out: dict[str, Any] = {"router_score": score,
                           "router_expert_bias": mt == "glm4_moe" or c.raw.get("topk_method") == "noaux_tc"}
    if c.raw.get("routed_scaling_factor") is not None:
        out["router_topk_scaling"] = _positive_number(c, "routed_scaling_factor", c.raw["routed_scaling_factor"])
    if mt in ("qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "olmoe", "glm4_moe"):
        # transformers' defaults when the key is absent: True for DeepseekV3Config and Glm4MoeConfig
        out["router_renormalize"] = c.flag("norm_topk_prob", mt in ("deepseek_v3", "glm4_moe"))
    elif mt == "llama4":
        out["router_renormalize"] = False
    return out


def _mla_fields(c: _Config) -> dict[str, Any]:
    # Multi-head latent attention: q through a rank-q_lora_rank bottleneck (or direct when null), kv through kv_lora_rank.
    return dict(q_lora_rank=c.integer("q_lora_rank", default=0, minimum=0), kv_lora_rank=c.integer("kv_lora_rank"),
                qk_nope_head_dim=c.integer("qk_nope_head_dim"), qk_rope_head_dim=c.integer("qk_rope_head_dim"),
                v_head_dim=c.integer("v_head_dim"), head_dim=None)
