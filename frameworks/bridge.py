"""Megatron-Bridge configs (NeMo 25.09+): a ConfigContainer as YAML, read as the Megatron-LM arguments it stands for.

Megatron-Bridge keeps every setting in one ConfigContainer of dataclasses (`model`, `train`, `dataset`, `ddp`,
`optimizer`, `dist`, `mixed_precision`, `comm_overlap`, ...). It prints the whole container as YAML at start-up
("------- Task Configuration -------", OmegaConf: objects as `_target_` mappings) and its example recipes take
override files of the same shape (examples/recipes/*/conf/*.yaml). Its fields are Megatron-Core's TransformerConfig /
DistributedDataParallelConfig / OptimizerConfig fields, which Megatron-LM's arguments.py fills from its flags; the
mapping below follows Megatron-Bridge docs/megatron-lm-to-megatron-bridge.md and the field names of
megatron/bridge/training/config.py and mixed_precision.py. `bridge_values` turns a container into the values the
Megatron-LM reader (frameworks/read.py megatron_read) takes, so one set of rules reads both. No torch here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clusterplan.errors import BadInputError
from clusterplan.fileio import loads_yaml

SECTIONS = ("model", "train", "dataset", "ddp", "optimizer", "dist", "mixed_precision", "comm_overlap")
"""ConfigContainer fields the reader looks into."""

INT_FIELDS = {
    ("model", "tensor_model_parallel_size"): "tp", ("model", "pipeline_model_parallel_size"): "pp",
    ("model", "context_parallel_size"): "cp", ("model", "expert_model_parallel_size"): "ep",
    ("model", "expert_tensor_parallel_size"): "etp",
    # ModelParallelConfig.virtual_pipeline_model_parallel_size: model chunks per pipeline rank
    # (= --num-virtual-stages-per-pipeline-rank)
    ("model", "virtual_pipeline_model_parallel_size"): "vstages",
    ("model", "num_layers_in_first_pipeline_stage"): "first_stage_layers",
    ("model", "num_layers_in_last_pipeline_stage"): "last_stage_layers",
    ("model", "recompute_num_layers"): "recompute_num",
    ("model", "num_layers"): "n_layers", ("model", "hidden_size"): "hidden",
    ("model", "num_attention_heads"): "n_heads", ("model", "ffn_hidden_size"): "ffn_hidden",
    ("model", "num_query_groups"): "kv_heads", ("model", "num_moe_experts"): "n_experts",
    ("model", "mamba_num_heads"): "mamba_heads", ("model", "mamba_head_dim"): "mamba_head_dim",
    ("model", "mamba_state_dim"): "mamba_state_dim", ("model", "mamba_num_groups"): "mamba_groups",
    ("model", "moe_latent_size"): "moe_latent",
    ("train", "micro_batch_size"): "mbs", ("train", "global_batch_size"): "gbs",
    ("ddp", "num_distributed_optimizer_instances"): "dp_replicate",
}
"""ConfigContainer integer fields -> the Megatron-LM reader's keys (frameworks/read.py MEGATRON_INT)."""

STR_FIELDS = {
    ("model", "recompute_granularity"): "recompute", ("model", "recompute_method"): "recompute_method",
    ("model", "cp_comm_type"): "cp_comm", ("model", "rotary_base"): "rotary_base",
    ("model", "moe_router_score_function"): "router_score", ("model", "mtp_num_layers"): "mtp_layers",
    ("model", "pipeline_model_parallel_layout"): "pp_layout",
    ("model", "moe_token_dispatcher_type"): "dispatcher", ("model", "moe_flex_dispatcher_backend"): "flex_backend",
    ("model", "moe_expert_capacity_factor"): "capacity_factor", ("model", "window_size"): "window_size",
    ("model", "rotary_percent"): "rotary_percent", ("model", "softmax_type"): "softmax_type",
    ("model", "window_attn_skip_freq"): "window_skip", ("model", "hybrid_override_pattern"): "hybrid_pattern",
    ("ddp", "data_parallel_sharding_strategy"): "sharding", ("optimizer", "optimizer"): "optimizer",
}
"""ConfigContainer fields read as text -> the Megatron-LM reader's keys (MEGATRON_STR)."""

FLAG_FIELDS = {
    ("model", "sequence_parallel"): "sp", ("model", "moe_router_enable_expert_bias"): "expert_bias",
    ("model", "moe_enable_deepep"): "enable_deepep", ("model", "overlap_moe_expert_parallel_comm"): "a2a_overlap",
    ("model", "moe_pad_expert_input_to_capacity"): "pad_to_capacity",
    ("model", "layernorm_zero_centered_gamma"): "layernorm_1p", ("model", "is_hybrid_model"): "hybrid",
    ("model", "delay_wgrad_compute"): "delay_wgrad", ("dist", "use_torch_fsdp2"): "torch_fsdp2",
    ("optimizer", "use_precision_aware_optimizer"): "precision_aware",
}
"""ConfigContainer booleans -> the Megatron-LM reader's flag keys (MEGATRON_FLAGS)."""

DTYPES = {"torch.float32": "fp32", "torch.float": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16",
          "torch.half": "fp16", "torch.uint8": "fp8"}
"""OmegaConf's `_target_` of a torch dtype -> Megatron-LM's dtype names (--exp-avg-dtype fp32|fp16|bf16|fp8; an
fp8 moment is stored as uint8, Megatron-Core optimizer/__init__.py)."""

DEFAULT_RECOMPUTE_MODULES = ["core_attn"]
"""TransformerConfig.recompute_modules' default (the printed container above): selective recompute of the core
attention, what Layout.recompute_modules "" (the stack's own selective recompute) means on megatron-core."""
ATTN_BACKENDS = {1: "flash", 2: "fused", 3: "unfused", 4: "local", 5: "auto"}
"""megatron.core.transformer.enums.AttnBackend values, as OmegaConf prints the enum (`_args_: [5]`)."""

MIXED_PRECISION_PRESETS: dict[str, dict[str, Any]] = {
    # megatron/bridge/training/mixed_precision.py, the registered recipe functions (hyphens read as underscores)
    "bf16_mixed": {"bf16": True},
    "fp16_mixed": {"fp16": True, "grad_reduce_in_fp32": False},
    "bf16_with_fp8_delayed_scaling_mixed": {"bf16": True, "fp8": "hybrid", "fp8_recipe": "delayed",
                                            "fp8_param_gather": True},
    "fp16_with_fp8_delayed_scaling_mixed": {"fp16": True, "grad_reduce_in_fp32": False, "fp8": "hybrid",
                                            "fp8_recipe": "delayed", "fp8_param_gather": True},
    "bf16_with_mxfp8_mixed": {"bf16": True, "fp8": "e4m3", "fp8_recipe": "mxfp8", "fp8_param_gather": True},
    "fp16_with_mxfp8_mixed": {"fp16": True, "grad_reduce_in_fp32": False, "fp8": "e4m3", "fp8_recipe": "mxfp8",
                              "fp8_param_gather": True},
    "bf16_with_fp8_current_scaling_mixed": {"bf16": True, "fp8": "hybrid", "fp8_recipe": "tensorwise",
                                            "first_last_layers_bf16": True, "num_layers_at_start_in_bf16": 1,
                                            "num_layers_at_end_in_bf16": 1, "fp8_param_gather": True},
    "fp16_with_fp8_current_scaling_mixed": {"fp16": True, "grad_reduce_in_fp32": False, "fp8": "hybrid",
                                            "fp8_recipe": "tensorwise", "first_last_layers_bf16": True,
                                            "num_layers_at_start_in_bf16": 1, "num_layers_at_end_in_bf16": 1,
                                            "fp8_param_gather": True},
    "nemotron_h_bf16_with_fp8_current_scaling_mixed": {"bf16": True, "fp8": "hybrid", "fp8_recipe": "tensorwise",
                                                       "first_last_layers_bf16": True,
                                                       "num_layers_at_start_in_bf16": 2,
                                                       "num_layers_at_end_in_bf16": 2, "fp8_param_gather": True},
    "nanov2_bf16_with_fp8_current_scaling_mixed": {"bf16": True, "fp8": "hybrid", "fp8_recipe": "blockwise",
                                                   "first_last_layers_bf16": True, "num_layers_at_start_in_bf16": 2,
                                                   "num_layers_at_end_in_bf16": 2, "fp8_param_gather": True},
    "bf16_with_fp8_subchannel_scaling_mixed": {"bf16": True, "fp8": "hybrid", "fp8_recipe": "blockwise"},
    "fp16_with_fp8_subchannel_scaling_mixed": {"fp16": True, "grad_reduce_in_fp32": False, "fp8": "hybrid",
                                               "fp8_recipe": "blockwise"},
}
"""Megatron-Bridge's named mixed-precision recipes as the MixedPrecisionConfig fields they set (the rest default)."""
MIXED_PRECISION_PRESETS |= {
    # the earlier releases' names of the delayed-scaling recipes (Megatron-Bridge 0.1: @register bf16_with_fp8_mixed,
    # fp8 hybrid, fp8_recipe delayed, fp8 parameters)
    "bf16_with_fp8_mixed": MIXED_PRECISION_PRESETS["bf16_with_fp8_delayed_scaling_mixed"],
    "fp16_with_fp8_mixed": MIXED_PRECISION_PRESETS["fp16_with_fp8_delayed_scaling_mixed"],
}
MIXED_PRECISION_DEFAULTS: dict[str, Any] = {"bf16": False, "fp16": False, "fp8": None, "fp8_recipe": "tensorwise",
                                            "fp8_param_gather": False, "fp4": None, "fp4_recipe": "nvfp4",
                                            "fp4_param_gather": False,
                                            "first_last_layers_bf16": False, "num_layers_at_start_in_bf16": 0,
                                            "num_layers_at_end_in_bf16": 0, "grad_reduce_in_fp32": True}
"""MixedPrecisionConfig's own defaults for the fields read."""


def looks_like_bridge(doc: Any) -> bool:
    """A ConfigContainer dump or override file: a `model` section of Megatron-Core fields beside a `train` section,
    or the container's own `_target_`."""
    if not isinstance(doc, Mapping):
        return False
    if str(doc.get("_target_", "")).endswith("ConfigContainer"):
        return True
    model = doc.get("model")
    return isinstance(model, Mapping) and (isinstance(doc.get("train"), Mapping) or any(
        key in model for key in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "num_layers")))


def override_doc(words: list[str], where: str) -> dict[str, Any]:
    """The ConfigContainer fields a launch line sets as trailing KEY=VALUE overrides (Megatron-Bridge's
    scripts/training/run_recipe.py and the example recipes: `model.tensor_model_parallel_size=4`), nested as the
    container prints them; each value read as a YAML scalar or list, as OmegaConf reads it. Empty when none."""
    doc: dict[str, Any] = {}
    for word in words:
        key, eq, raw = word.partition("=")
        section, dot, field = key.lstrip("+").partition(".")
        if not (eq and section in SECTIONS and (field.isidentifier() if dot else section == "mixed_precision")):
            continue
        value = loads_yaml(raw, f"{where}: {key}") if raw else None
        if dot:
            named = doc.get(section)
            if isinstance(named, str):  # mixed_precision=NAME then one of its fields: the named recipe, edited
                doc[section] = _mixed_precision({section: named}, {}, where)
            doc.setdefault(section, {})[field] = value
        else:  # mixed_precision=bf16_with_mxfp8_mixed: a named recipe
            doc[section] = value
    return doc


def _section(doc: Mapping[str, Any], name: str, where: str) -> Mapping[str, Any]:
    value = doc.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        if name == "mixed_precision" and isinstance(value, str):
            return {}
        raise BadInputError(f"{where}: {name} must be a section of settings, got {type(value).__name__} "
                            f"{str(value)[:40]}")
    return value


def _int(value: Any, where: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInputError(f"{where}: {key} must be an integer, got {repr(value)[:40]}")
    return value


def _dtype(value: Any) -> str | None:
    """A torch dtype as OmegaConf prints it ({_target_: torch.bfloat16}) or as text -> Megatron-LM's name."""
    target = value.get("_target_") if isinstance(value, Mapping) else value
    return DTYPES.get(str(target)) if target is not None else None


def _attention_backend(value: Any) -> str | None:
    """AttnBackend as printed (`{_target_: ...AttnBackend, _args_: [5]}`), by name, or as `AttnBackend.fused`."""
    if isinstance(value, Mapping):
        args = value.get("_args_") or [None]
        return ATTN_BACKENDS.get(args[0]) if isinstance(args, list) else None
    if isinstance(value, str):
        return value.rsplit(".", 1)[-1] or None
    return None


def _mixed_precision(doc: Mapping[str, Any], model: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The MixedPrecisionConfig fields read: a named recipe, the printed dataclass, or (no mixed_precision section)
    what Megatron-Core's TransformerConfig itself says (MixedPrecisionConfig.setup copies its fields there)."""
    raw = doc.get("mixed_precision")
    if isinstance(raw, str):
        name = raw.replace("-", "_")
        if name not in MIXED_PRECISION_PRESETS:
            raise BadInputError(f"{where}: mixed_precision {raw!r} is not one of Megatron-Bridge's recipes: "
                                f"{', '.join(MIXED_PRECISION_PRESETS)}")
        return MIXED_PRECISION_DEFAULTS | MIXED_PRECISION_PRESETS[name]
    source = raw if isinstance(raw, Mapping) else model
    return MIXED_PRECISION_DEFAULTS | {k: source[k] for k in MIXED_PRECISION_DEFAULTS if k in source}


def bridge_values(doc: Mapping[str, Any], where: str) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """(the Megatron-LM reader's values, notes, Bridge-only settings: offload_layers, cuda_graphs, and whether it is
    a whole container) of a ConfigContainer or of overrides to one."""
    sec = {name: _section(doc, name, where) for name in SECTIONS}
    model = sec["model"]
    v: dict[str, Any] = {}
    notes: list[str] = []
    for (section, field), key in INT_FIELDS.items():
        value = sec[section].get(field)
        if value is not None:
            v[key] = _int(value, where, f"{section}.{field}")
    for (section, field), key in STR_FIELDS.items():
        value = sec[section].get(field)
        if value is not None:
            v[key] = str(value) if not isinstance(value, list) else ",".join(map(str, value))
    for (section, field), key in FLAG_FIELDS.items():
        if sec[section].get(field) is True:
            v[key] = True
    seq = sec["dataset"].get("sequence_length", sec["dataset"].get("seq_length", model.get("seq_length")))
    if seq is not None:
        v["seq"] = _int(seq, where, "dataset.sequence_length")
    if model.get("recompute_modules") and v.get("recompute") == "selective":
        modules = model["recompute_modules"]
        modules = [str(m) for m in (modules if isinstance(modules, list) else [modules])]
        if modules != DEFAULT_RECOMPUTE_MODULES:  # the default list is Megatron-Core's own selective recompute
            v["recompute_modules"] = modules
    sizes = model.get("hierarchical_context_parallel_sizes")
    if sizes:
        if not isinstance(sizes, list) or not all(isinstance(n, int) and not isinstance(n, bool) for n in sizes):
            raise BadInputError(f"{where}: model.hierarchical_context_parallel_sizes must be a list of integers (the "
                                f"all-to-all group, then the ring), got {str(sizes)[:40]}")
        v["hierarchical_cp_sizes"] = [str(n) for n in sizes]
    # --use-distributed-optimizer sets both (Megatron-Bridge keeps them in sync); Megatron FSDP is a ddp and a dist
    # switch (the override examples set dist.use_megatron_fsdp)
    if sec["ddp"].get("use_distributed_optimizer") or sec["optimizer"].get("use_distributed_optimizer"):
        v["distopt"] = True
    if sec["ddp"].get("use_megatron_fsdp") or sec["dist"].get("use_megatron_fsdp"):
        v["megatron_fsdp"] = True
    for field, key in (("exp_avg_dtype", "exp_avg_dtype"), ("exp_avg_sq_dtype", "exp_avg_sq_dtype"),
                       ("main_grads_dtype", "main_grads_dtype"), ("main_params_dtype", "main_params_dtype")):
        name = _dtype(sec["optimizer"].get(field))
        if name:
            v[key] = name
    backend = _attention_backend(model.get("attention_backend"))
    if backend:
        v["attention"] = backend
    if model.get("num_query_groups") is not None:
        v["gqa"] = True  # num_query_groups set: arguments.py's --group-query-attention
    if model.get("old_context_len") is not None or model.get("rope_scaling") is True:
        v["rope_scaling"] = True  # Llama 3.1 / 3.2 providers carry the llama3 scaling (scale_factor, old_context_len)
    activation = str((model.get("activation_func") or {}).get("_target_", "")
                     if isinstance(model.get("activation_func"), Mapping) else model.get("activation_func", ""))
    if model.get("gated_linear_unit"):
        v["quick_geglu" if activation.endswith("quick_gelu") else "swiglu"] = True
    elif activation.endswith("squared_relu"):
        v["squared_relu"] = True
    whole = str(doc.get("_target_", "")).endswith("ConfigContainer")
    assumed = []
    if not whole and doc.get("mixed_precision") is None and not any(model.get(k) for k in ("bf16", "fp16", "fp8")):
        doc = {**doc, "mixed_precision": "bf16_mixed"}
        assumed.append("bf16_mixed")
    if not whole and not any(field in sec[s] for s in ("ddp", "optimizer") for field in (
            "use_distributed_optimizer", "use_megatron_fsdp")) and not sec["dist"].get("use_megatron_fsdp"):
        v["distopt"] = True
        assumed.append("the distributed optimizer")
    mp = _mixed_precision(doc, model, where)
    v["bf16"] = bool(mp["bf16"]) or None
    v["fp16"] = bool(mp["fp16"]) or None
    if mp["fp8"]:
        v["fp8"], v["fp8_recipe"] = str(mp["fp8"]), str(mp["fp8_recipe"])
        v["fp8_param_gather"] = bool(mp["fp8_param_gather"]) or None
    if mp["fp4"]:
        v["fp4"], v["fp4_recipe"] = str(mp["fp4"]), str(mp["fp4_recipe"])
        v["fp4_param_gather"] = bool(mp["fp4_param_gather"]) or None
    if mp["first_last_layers_bf16"]:
        v["first_last_bf16"] = True
        v["bf16_start"] = _int(mp["num_layers_at_start_in_bf16"], where, "mixed_precision.num_layers_at_start_in_bf16")
        v["bf16_end"] = _int(mp["num_layers_at_end_in_bf16"], where, "mixed_precision.num_layers_at_end_in_bf16")
    # MixedPrecisionConfig.setup overwrites ddp.grad_reduce_in_fp32 with its own (default True)
    reduce_fp32 = mp["grad_reduce_in_fp32"] if isinstance(doc.get("mixed_precision"), (Mapping, str)) \
        else sec["ddp"].get("grad_reduce_in_fp32", True)
    if not reduce_fp32:
        v["grad_bf16"] = True
    v = {k: val for k, val in v.items() if val is not None}
    extra = {"offload_layers": _offload_layers(model, where), "cuda_graphs": _cuda_graphs(model, notes, where),
             "whole": whole,
             # MixedPrecisionConfig.setup copies fp8_recipe into the optimizer config, fp8 or not (the remainders need
             # it None or delayed: layout.REMAINDER_FP8_RECIPES)
             # (None, Megatron-Core's default, keeps the remainders as delayed does)
             "optimizer_fp8_recipe": None if mp["fp8_recipe"] is None else str(mp["fp8_recipe"])}
    if not whole:
        notes.append("overrides, not a whole ConfigContainer: what they leave out is read at Megatron-Core's defaults "
                     "(the recipe they are merged onto may differ)" + (
                         f", and as Megatron-Bridge's pre-training recipes set them: {' and '.join(assumed)}"
                         if assumed else ""))
    overlap = doc.get("comm_overlap")
    if v.get("tp", 1) > 1 and (("comm_overlap" in doc and overlap is None)
                               or (isinstance(overlap, Mapping) and overlap.get("tp_comm_overlap") is False)):
        notes.append("comm_overlap sets no TP communication overlap: priced with megatron-core's (the stack's own)")
    return v, notes, extra


def _offload_layers(model: Mapping[str, Any], where: str) -> int:
    """TransformerConfig cpu_offloading with cpu_offloading_num_layers (activations only priced)."""
    if not model.get("cpu_offloading"):
        return 0
    return _int(model.get("cpu_offloading_num_layers", 0), where, "model.cpu_offloading_num_layers")


def _cuda_graphs(model: Mapping[str, Any], notes: list[str], where: str = "config") -> str:
    """Layout.cuda_graphs from cuda_graph_impl / cuda_graph_scope (Megatron-Core >= 0.14: "local" with scope
    "full_iteration" captures the whole iteration, Transformer Engine graphs of scope "attn" the attention block;
    before: enable_cuda_graph / external_cuda_graph with cuda_graph_scope "full" or "attn"). Per-layer graphs with
    full recompute are refused as Megatron-Core refuses them (TransformerConfig.__post_init__: "full recompute is only
    supported with full iteration CUDA graph")."""
    impl = model.get("cuda_graph_impl")
    scope = model.get("cuda_graph_scope")
    scopes = [str(s) for s in scope] if isinstance(scope, list) else [str(scope)] if scope else []
    legacy = model.get("enable_cuda_graph") is True or model.get("external_cuda_graph") is True
    if impl in (None, "none") and not legacy:
        return "none"
    if "full_iteration" in scopes:
        return "full"
    if "attn" in scopes:
        if len(scopes) > 1:
            notes.append(f"cuda_graph_scope {scopes}: the attention block's graph priced; the other scopes run eager")
        return "attn"
    if scopes in ([], ["full"]):  # Megatron-Core 0.16: "full" (deprecated) and [] capture each whole layer
        if model.get("recompute_granularity") == "full":
            raise BadInputError(f"{where}: per-layer CUDA graphs (cuda_graph_scope {scopes or '[]'}) with "
                                "recompute_granularity full: Megatron-Core refuses it (\"full recompute is only "
                                "supported with full iteration CUDA graph\"); set cuda_graph_scope [full_iteration] "
                                "or recompute_granularity selective")
        notes.append("per-layer CUDA graphs (cuda_graph_scope full / empty): priced as a captured iteration (no host "
                     "time), an upper bound on what they save")
        return "full"
    notes.append(f"cuda_graph_scope {scopes}: not priced; the layers run eager")
    return "none"
