"""Our predictions against NVIDIA's published Megatron-Bridge 25.11 pre-training throughput (data/megatron_bridge_2511.csv).

Each CSV row is mapped to the layout its performance recipe runs (scripts/performance in NVIDIA-NeMo/Megatron-Bridge,
read through the repository's source): the CSV gives tp/pp/cp/vp/ep, fsdp, mbs, gbs and precision; the recipes add
what the CSV does not say (recompute, uneven first/last pipeline stages, activation offloading). Rows the CLI cannot
express are listed with the reason, never dropped. These rows are a check set: no constant is fitted to them.

    python -m clusterplan.reference            # prints every reference table, this one included
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from clusterplan.errors import BadInputError
from clusterplan.hardware_db import ExecutionStack, get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.cluster import Cluster, load_cluster
from clusterplan.models.training.estimate import estimate, precision_problems
from clusterplan.models.training.layout import Layout, layout_problems, stack_problems
from clusterplan.reference.report import (
    Column,
    PricedRow,
    held_out_line,
    markdown_rows,
    notes_cell,
    print_rows,
    read_rows,
    refusal,
    row_notes,
    summary,
)

BRIDGE_CSV = "megatron_bridge_2511.csv"
STACK = "megatron-core"
"""NeMo 25.11 runs Megatron-Core with Transformer Engine (hardware_db/data/stacks.yaml)."""

MODELS = {
    "LLAMA3_8B": "llama3.1-8b",
    "LLAMA3_70B": "llama3.1-70b",
    "LLAMA3.1_405B": "llama3.1-405b",
    "DeepSeekV3": "deepseek-v3",
    "GPT_OSS_120B": "gpt-oss-120b",
    "Qwen3_30B_a3B": "qwen3-30b-a3b",
    "Qwen3_235B_a22B": "qwen3-235b-a22b",
    "Nemotron_3_Nano": "nemotron-3-nano-30b-a3b",
    "Nemotron_3_Super": "nemotron-3-super-120b-a12b",
}
"""CSV model name -> our preset (Llama 3 8B/70B have the Llama 3.1 dimensions; only the RoPE scaling differs)."""

SYSTEMS = {
    # system -> (node preset, GPUs per node preset unit)
    "DGX-GB300": ("gb300-nvl72", 4),
    "DGX-GB200": ("gb200-nvl72", 4),
    "DGX-B200": ("dgx-b200", 8),
    "DGX-B300": ("dgx-b300", 8),
    "DGX-H100": ("dgx-h100", 8),
}
"""The GB systems are NVL72 racks counted in 4-GPU compute trays (hardware_db nodes.yaml)."""

PRECISIONS = {"BF16": "bf16", "FP8-CS": "fp8", "FP8-MX": "fp8", "NVFP4": "fp8", "FP8": "fp8", "MXFP8": "fp8"}
FP8_RECIPES = {"FP8-CS": "tensorwise", "FP8-MX": "mxfp8", "NVFP4": "nvfp4", "FP8": "tensorwise", "MXFP8": "mxfp8"}
"""The stack's fp8 recipe per CSV precision: FP8-CS = per-tensor current scaling (tensorwise); FP8-MX = MXFP8 with
32-element blocks on Blackwell, the DeepSeek-V3 128x128 / 1x128 blocks on H100 (blockwise; the CSV header). FP8
and MXFP8 are the 26.x summaries' spellings of FP8-CS and FP8-MX (research/nemotron3-nano-recipes.md)."""

# Models whose recipes set account_for_embedding_in_pipeline_split and account_for_loss_in_pipeline_split: the
# embedding and the loss each count as one layer when n_layers + 2 is split evenly over pp * vp chunks, so the first
# and the last chunk hold one transformer layer fewer (Megatron-Core get_transformer_layer_offset).
# Sources: Megatron-Bridge src/megatron/bridge/recipes/llama/llama31_405b.py (model_config defaults True) and
# recipes/qwen/qwen3_moe.py qwen3_235b_a22b_pretrain_config (account_for_*_in_pipeline_split True).
EMBEDDING_LOSS_SPLIT = frozenset({"llama3.1-405b", "qwen3-235b-a22b"})

# DeepSeek-V3 pipeline layouts (Megatron-Bridge recipes/deepseek/deepseek_v3.py layout_map, keyed there by (pp, vp),
# here by the number of model chunks pp * vp): transformer layers per chunk, first chunk also embedding, last chunk
# also the MTP block and the loss. The 32-chunk layout is the H100 recipe's pp_layout "Et|(tt|)*30mL".
DEEPSEEK_CHUNK_LAYERS = {
    4: [16, 16, 16, 13],
    8: [8] * 7 + [5],
    16: [4] * 15 + [1],
    32: [1] + [2] * 30 + [0],
}

DEEPSEEK_RECIPE_KEYS = frozenset({(4, 1), (8, 1), (4, 2), (16, 1), (8, 2), (4, 4), (8, 4)})
"""(pp, vp) pairs the recipe names a layout for ((8, 4): the H100 workload config's pp_layout)."""

# Recompute as the performance recipes set it (per-row sources: ROW_SOURCES). Llama 3 / 3.1 recipes set none
# (recipes/llama/llama3.py recompute_granularity None; the perf configs add none). Qwen3 MoE: every stored version of
# the perf configs sets recompute_granularity / recompute_method / recompute_num_layers = None for Qwen3-30B-A3B and
# Qwen3-235B-A22B (qwen3/qwen3_30b_a3b_llm_pretrain.yaml@48b5204a model section; qwen3_30b_a3b_llm_pretrain.py@4054233a
# set_qwen3_30b_a3b_specific_overrides; the later qwen3_llm_pretrain.py set_qwen3_common_configs), overriding the
# library recipe's enable_recompute=True: no recompute. DeepSeek-V3 and GPT-OSS: recompute_granularity "selective"
# with named recompute_modules (below).
RECOMPUTE = {"deepseek-v3": "selective", "gpt-oss-120b": "selective", "nemotron-3-nano-30b-a3b": "selective",
             "nemotron-3-super-120b-a12b": "selective"}

# Megatron-Core recompute_modules per (system, precision) (per-row files: ROW_SOURCES). GPT-OSS-120B H100 / B200 /
# GB200 recompute ["layernorm", "moe_act"], GB300 none (TE attention graphs instead): gpt_oss workload base configs of
# the *_BASE_CONFIG and V1/V2 generations (the @0fa501ac one sets no recompute but ep8 everywhere).
# DeepSeek-V3: the perf recipe's default is ["mla_up_proj"] (deepseek_v3 perf config: recompute_granularity
# selective, recompute_modules ["mla_up_proj"]); the base configs name ["mla_up_proj"] for B200 (pp16 ep8), GB200 BF16
# and GB300 FP8-MX, ["mla_up_proj", "mlp"] for GB200 FP8-MX. The GB300 BF16 base config names ["mlp", "moe_act"] at
# pp4 vp4 ep64, not the published pp2 vp4 ep32: the recipe default is used there.
RECOMPUTE_MODULES = {
    ("DGX-H100", "GPT_OSS_120B"): "layernorm+moe_act",
    ("DGX-B200", "GPT_OSS_120B"): "layernorm+moe_act",
    ("DGX-GB200", "GPT_OSS_120B"): "layernorm+moe_act",
    ("DGX-GB300", "DeepSeekV3", "BF16"): "mla_up_proj",
    ("DGX-GB300", "DeepSeekV3", "FP8-MX"): "mla_up_proj",
    ("DGX-GB200", "DeepSeekV3", "BF16"): "mla_up_proj",
    ("DGX-GB200", "DeepSeekV3", "FP8-MX"): "mla_up_proj+mlp",
    ("DGX-B200", "DeepSeekV3", "FP8-MX"): "mla_up_proj",
    # Nemotron 3 Nano on H100 (nemotron_3_workload_base_configs.py, research/nemotron3-nano-recipes.md); none on
    # GB300 / GB200 / B300
    ("DGX-H100", "Nemotron_3_Nano"): "moe+layernorm+core_attn+moe_act",
    # Nemotron 3 Super: moe_act and layernorm on B300 NVFP4 and B200 MXFP8, none elsewhere
    # (research/nemotron3-super-recipes.md)
    ("DGX-B300", "Nemotron_3_Super", "NVFP4"): "moe_act+layernorm",
    ("DGX-B200", "Nemotron_3_Super", "MXFP8"): "moe_act+layernorm",
}

FP8_PARAMS_RECIPES = ("tensorwise", "delayed", "mxfp8")
"""fp8 recipes whose Megatron-Bridge mixed-precision config keeps the parameters in fp8 only (Layout.fp8_params):
src/megatron/bridge/training/mixed_precision.py bf16_with_fp8_current_scaling_mixed, bf16_with_fp8_delayed_scaling_mixed
and bf16_with_mxfp8_mixed set fp8_param_gather = True (the blockwise one False); the 25.11 performance scripts take
them unchanged (scripts/performance/utils/helpers.py get_precision_config; nothing after it sets fp8_param_gather)."""

NO_TP_OVERLAP = {"NVFP4": "TP comm overlap off (the Llama NVFP4 performance configs set tp_comm_overlap=False: "
                          "research/nvfp4-training.md)"}
"""CSV precisions whose performance recipes turn Transformer Engine's TP communication overlap off, with the row note:
priced on megatron-core with tp_overlap none."""

FP32_GRADS = False
"""Every performance recipe keeps main gradients in bf16: set_llama3_common_configs, set_gpt_oss_common_configs and
the Qwen3 / DeepSeek-V3 perf configs set mixed_precision.grad_reduce_in_fp32 = ddp.grad_reduce_in_fp32 = False."""

# DeepSeek-V3's multi-token-prediction layer per (system, model): rows not named here keep the preset's (1, as the
# recipe sets it: recipes/deepseek/deepseek_v3.py _deepseek_v3_common mtp_num_layers = 1; no perf config found
# overrides it). The GB300 (pp2 vp4) and GB200 (pp4 vp4, pp8 vp4) rows ran without it: their published TFLOP/s equal
# the published tokens/s x Megatron-Bridge's own count (flop_utils.py, bridge_flops_per_token) within 0.3 % only with
# mtp_num_layers unset (with it +4.1 to +4.4 %), and flop_utils counts the MTP term from the same cfg.model that builds
# the model. The B200 row (pp16, the recipe's (16, 1) layout ending "decoder + mtp + loss") matches only WITH it
# (-0.2 %; without -4.1 %). No stored perf config names the GB layouts as published (the 25.11 recipe's layout map has
# no (2, 4) or (8, 4) key, the GB base configs of that time name pp4 vp4 gbs 2048; the later GB200_BF16_V2, the
# published pp4 vp4 ep64 gbs4096, leaves the recipe's MTP on): the published count is the only per-row evidence.
MTP_LAYERS = {("DGX-GB300", "DeepSeekV3"): 0, ("DGX-GB200", "DeepSeekV3"): 0}

# Megatron-FSDP / activation offloading the recipes add (scripts/performance/configs/llama3/workload_base_configs.py):
# cpu_offloading_num_layers moves that many layers' activations to Grace memory (Layout.offload_layers).
OFFLOAD_LAYERS = {("DGX-GB300", "LLAMA3_70B", "FP8-CS"): 20, ("DGX-GB200", "LLAMA3_70B", "FP8-CS"): 40}

# CUDA graphs as each row's recipe sets them (Layout.cuda_graphs; it prices the MoE layers' host time,
# models/training/host.py; dense rows carry it for the record only). Megatron-Core cuda_graph_impl local with scope
# full_iteration (or the older cuda_graphs: true / enable_cuda_graph) -> "full"; cuda_graph_impl transformer_engine
# with scope attn (+ moe_router, moe_preprocess: the router and the dispatch preprocessing captured, the experts
# and the token exchange eager) -> "attn", the nearest Layout value; none -> "none". The 25.11 performance summary's
# layouts match no single stored version of the perf configs: each row takes the version whose parallelism, mbs and
# gbs match the published row; ROW_SOURCES names it, and says where only a later file matches.
CUDA_GRAPHS = {
    ("DGX-GB300", "LLAMA3_8B"): "full", ("DGX-GB200", "LLAMA3_8B", "FP8-MX"): "full", ("DGX-B200", "LLAMA3_8B"): "full",
    ("DGX-GB300", "Qwen3_30B_a3B"): "full", ("DGX-GB200", "Qwen3_30B_a3B"): "full",
    ("DGX-GB300", "Qwen3_235B_a22B"): "attn", ("DGX-GB200", "Qwen3_235B_a22B"): "attn",
    ("DGX-GB300", "DeepSeekV3", "BF16"): "attn", ("DGX-GB200", "DeepSeekV3", "BF16"): "attn",
    ("DGX-GB200", "DeepSeekV3", "FP8-MX"): "full",
    ("DGX-GB300", "GPT_OSS_120B"): "attn",
    # Nemotron 3 Nano: TE graphs of attn, mamba, moe_router and moe_preprocess on GB300 / GB200 / B300; of mamba
    # only on H100 (no Layout value: the Mamba blocks' host time is not priced, so "none")
    ("DGX-GB300", "Nemotron_3_Nano"): "attn", ("DGX-GB200", "Nemotron_3_Nano"): "attn",
    ("DGX-B300", "Nemotron_3_Nano"): "attn",
    # Nemotron 3 Super: the same four TE scopes on every row but B200 MXFP8 (none)
    ("DGX-GB300", "Nemotron_3_Super"): "attn", ("DGX-GB200", "Nemotron_3_Super"): "attn",
    ("DGX-B300", "Nemotron_3_Super"): "attn", ("DGX-B200", "Nemotron_3_Super", "NVFP4"): "attn",
}

MOE_DISPATCHERS = {"Nemotron_3_Nano": "hybridep", "Nemotron_3_Super": "hybridep"}
"""Token dispatcher per CSV model where the recipe sets one (Layout.moe_dispatcher; alltoall elsewhere): the Nemotron
3 Nano and Super configs run the flex dispatcher with the hybridep backend on every system
(research/nemotron3-nano-recipes.md, research/nemotron3-super-recipes.md)."""

# Megatron-Core's 1F1B all-to-all overlap (--overlap-moe-expert-parallel-comm; Layout.moe_a2a_overlap) where the 25.11
# run had it though no stored perf config shows it: Megatron-Bridge PR #1760 (2025-12-17) fixed the B200 Qwen3-235B
# recipe's "performance regression from 25.09. MXFP8 step time improved from 20.1s to 16.9s ... Disable
# moe_a2a_overlap due to CPU overhead for BF16 and MXFP8. Disable VP for mxfp8", and issue #1705's QA note: "Fixed by
# disabling EP A2A overlap in config (PR #1760). Recipe config change, not code bug". The published row is 64 GPUs x
# 3,269 tokens/s = gbs 1024 x 4,096 tokens per 20.05 s: the 20.1 s run, with VP (pp8 vp2) and the overlap.
A2A_OVERLAP = {("DGX-B200", "Qwen3_235B_a22B", "FP8-MX")}

VERDICTS = ("ok", "changed", "unsure")


@dataclass(frozen=True)
class RowSource:
    """Where one CSV row's recipe settings come from, and the audit's verdict on them."""

    verdict: str
    """ok: every setting our Layout expresses agrees with the source whose layout matches the row; changed: the
    2026-12-03 audit corrected a setting (before -> after in `source`); unsure: no stored source matches the
    row's layout, the nearest one is used, or the settings as recorded cannot run together (`source` says why)."""
    source: str
    """Files (scripts/performance/configs/..., src/megatron/bridge/recipes/... in NVIDIA-NeMo/Megatron-Bridge, commit
    prefix where the stored copy names one) and what each sets; settings Layout cannot express are listed too."""
    note: str = ""
    """Shown in the row's notes: a setting taken from a file later than the 25.11 release."""


_Q3 = "qwen3/qwen3_30b_a3b_llm_pretrain.{yaml@48b5204a,py@4054233a}; qwen3/workload_base_configs.py@0fa501ac"
_Q3_RC = "recompute None in every version (was full: the library recipe's enable_recompute, which the perf configs override)"
_DS_BASE = "deepseek/workload_base_configs.py@0fa501ac"
_DS_LATER = "deepseek/deepseek_workload_base_configs.py@04264182 (V1/V2, later than 25.11)"
_GO_LATER = "gpt_oss/gpt_oss_workload_base_configs.py V1/V2 (later than 25.11)"
_L3 = "llama3/workload_base_configs.py@0fa501ac; llama/llama3_workload_base_configs.py@00919dcf (V1/V2)"
_L31 = "llama31/workload_base_configs.py@0fa501ac; recipes/llama/llama31_405b.py (embedding/loss in the pipeline split)"
NOT_IN_LAYOUT = ("not in Layout: token dispatcher (alltoall / flex with DeepEP or HybridEP), moe_permute_fusion, "
               "moe_router_fusion, TP comm overlap userbuffers")
_LATER_ONLY = "recipe setting from a later perf-config file than 25.11 (the only one matching this row's layout)"
_Q3_GRAPHS = ("unsure since 2026-12-04: a dropless MoE layer cannot be captured by 25.11 Megatron-Core's local "
              "full_iteration graph (Megatron-Core moe/README.md 'CUDA Graph': dynamic shapes make MoE layers "
              "uncapturable without moe_expert_capacity_factor + moe_pad_expert_input_to_capacity; token_dispatcher.py "
              "_maybe_dtoh_and_synchronize syncs the host unless drop_and_pad; full-iteration capture of the dropless "
              "Qwen3 MoE came with moe_paged_stash, Megatron-Bridge PR #4211, 2026-06), so the run was either "
              "token-dropping with graphs (qwen3_30b_a3b_llm_pretrain.py@4054233a: use_tokendrop defaults to True "
              "on every system, apply_moe_token_drop = capacity 1.0 + pad) or eager in its MoE layers; no stored "
              "file says which; graphs kept (research/moe-x86-dgx.md: eager would give B200 +24 %, GB200 -30 %, "
              "GB300 -42 %); Megatron-Bridge issue #1998 names the 25.11 dropless regression on H100 and B200 only")

_N3 = "configs/nemotronh/nemotron_3_workload_base_configs.py @f601ba97 / @06e8da4"
ROW_SOURCES = {
    ("DGX-GB300", "LLAMA3_8B", "FP8-CS"): RowSource("ok", f"{_L3}: mbs 4 there (2 published), cuda graphs local "
                                                         "full_iteration (dense: no host term), no recompute"),
    ("DGX-GB300", "LLAMA3_8B", "FP8-MX"): RowSource("ok", f"{_L3}: FP8_MX = FP8_CS config; as FP8-CS"),
    ("DGX-GB300", "LLAMA3_70B", "FP8-CS"): RowSource("ok", f"{_L3}: Megatron FSDP, cpu_offloading_num_layers 20, "
                                                          "mbs 2 (V2: gbs 256 as published)"),
    ("DGX-GB300", "LLAMA3.1_405B", "FP8-CS"): RowSource("unsure", f"{_L31}: stored GB300 FP8_CS is tp2 FSDP with "
                                                                 "10 offloaded layers at gbs 64, not the published "
                                                                 "tp2 pp8 vp4 cp2 gbs 1536: no offload, no graphs"),
    ("DGX-GB300", "DeepSeekV3", "BF16"): RowSource("unsure", f"{_DS_BASE} (pp4 vp4 ep64: mlp+moe_act, TE attn "
                                                            f"graphs); {_DS_LATER} (pp4 vp4 ep64 moe_act) - neither "
                                                            "is the published pp2 vp4 ep32: mla_up_proj, attn kept"),
    ("DGX-GB300", "DeepSeekV3", "FP8-MX"): RowSource("unsure", f"{_DS_BASE} (pp4 vp4 ep64 gbs2048: mla_up_proj, no "
                                                              f"graphs); {_DS_LATER} FP8_MX V2 (pp2 vp8 ep32 gbs4096: "
                                                              "recompute [], cuda_graph_impl full_iteration) - "
                                                              "neither matches pp2 vp4: kept"),
    ("DGX-GB300", "GPT_OSS_120B", "BF16"): RowSource("changed", f"{_GO_LATER} GB300_BF16_V2 (ep64 gbs1280, the "
                                                               "published layout): TE graphs attn+moe_router+"
                                                               "moe_preprocess, no recompute; graphs full -> attn "
                                                               "(full came from the ep8 BASE of gpt_oss/"
                                                               "workload_base_configs.py@0fa501ac)", _LATER_ONLY),
    ("DGX-GB300", "Qwen3_30B_a3B", "FP8-MX"): RowSource("unsure", f"{_Q3}: {_Q3_RC}; local full_iteration graphs "
                                                                 f"(mbs 8 there, 4 published); {_Q3_GRAPHS}"),
    ("DGX-GB300", "Qwen3_235B_a22B", "BF16"): RowSource("changed", "qwen/qwen3_workload_base_configs.py@01b2977e "
                                                                  "GB300_BF16_V2 (256 GPUs pp4 gbs8192 mbs2, the "
                                                                  "published layout but ep32 there): TE graphs attn+"
                                                                  "moe_router+moe_preprocess, hybridep; graphs none "
                                                                  "-> attn (none came from the 64-GPU tp2 ep64 "
                                                                  "config); no recompute", _LATER_ONLY),
    ("DGX-GB200", "LLAMA3_8B", "FP8-CS"): RowSource("unsure", f"{_L3}: 0fa501ac sets no graphs for GB200 FP8_CS, "
                                                             "V1 local full_iteration (dense: no host term); none kept"),
    ("DGX-GB200", "LLAMA3_8B", "FP8-MX"): RowSource("ok", f"{_L3}: mbs 2, local full_iteration graphs"),
    ("DGX-GB200", "LLAMA3_70B", "FP8-CS"): RowSource("ok", f"{_L3}: Megatron FSDP, cpu_offloading_num_layers 40, "
                                                          "mbs 2 (V2 gbs 256 as published)"),
    ("DGX-GB200", "LLAMA3.1_405B", "FP8-CS"): RowSource("unsure", f"{_L31}: stored GB200 FP8_CS is tp2 FSDP with 95 "
                                                                 "offloaded layers at gbs 64, not the published tp4 "
                                                                 "pp16 vp4 gbs 1536: no offload, no graphs"),
    ("DGX-GB200", "DeepSeekV3", "BF16"): RowSource("changed", f"{_DS_LATER} GB200_BF16_V2 (pp4 vp4 ep64 gbs4096 "
                                                             "mbs1, the published layout): mla_up_proj, TE graphs "
                                                             "attn+moe_router+moe_preprocess, hybridep; graphs full "
                                                             "-> attn (full came from deepseek_v3_llm_pretrain.yaml"
                                                             "@0aa7db37 at tp2; 25.11-era py configs: no graphs)",
                                                  _LATER_ONLY),
    ("DGX-GB200", "DeepSeekV3", "FP8-MX"): RowSource("unsure", f"{_DS_BASE} (pp4 vp4 ep64: mla_up_proj+mlp, no "
                                                              f"graphs); {_DS_LATER} FP8_MX (pp4 vp4 ep64: "
                                                              "mla_up_proj, full_iteration) - neither is the published "
                                                              "pp8 vp4 ep32: mla_up_proj+mlp, full kept"),
    ("DGX-GB200", "GPT_OSS_120B", "BF16"): RowSource("changed", f"{_GO_LATER} GB200_BF16_V2 (ep64 gbs1280, the "
                                                               "published layout; the 25.11-era BASE_CONFIG file the "
                                                               "same at gbs512): layernorm+moe_act, no graphs, "
                                                               "hybridep; graphs full -> none"),
    ("DGX-GB200", "Qwen3_30B_a3B", "FP8-MX"): RowSource("unsure", f"{_Q3}: {_Q3_RC}; mbs 4, local full_iteration "
                                                                 f"graphs (yaml: cuda_graphs true); {_Q3_GRAPHS}"),
    ("DGX-GB200", "Qwen3_235B_a22B", "BF16"): RowSource("changed", "qwen/qwen3_workload_base_configs.py@01b2977e "
                                                                  "GB200 V2 (256 GPUs pp8 gbs8192; vp3 ep32 as "
                                                                  "published in FP8_MX_V2): TE graphs attn+moe_router+"
                                                                  "moe_preprocess, hybridep; graphs full -> attn (full "
                                                                  "came from the 64-GPU config); no recompute",
                                                       _LATER_ONLY),
    ("DGX-B200", "LLAMA3_8B", "FP8-CS"): RowSource("ok", f"{_L3}: mbs 2, local full_iteration graphs"),
    ("DGX-B200", "LLAMA3_8B", "FP8-MX"): RowSource("ok", f"{_L3}: FP8_MX = FP8_CS config"),
    ("DGX-B200", "LLAMA3.1_405B", "FP8-CS"): RowSource("ok", f"{_L31}: tp4 pp8 cp2 vp8 gbs64 as published; no "
                                                            "recompute, offload or graphs"),
    ("DGX-B200", "LLAMA3.1_405B", "FP8-MX"): RowSource("ok", f"{_L31}: FP8_MX = FP8_CS config"),
    ("DGX-B200", "DeepSeekV3", "FP8-MX"): RowSource("changed", f"{_DS_BASE} and every stored py version at the "
                                                              "published tp1 pp16 ep8 gbs2048: mla_up_proj, no CUDA "
                                                              "graphs (early versions: DeepEP + a2a overlap); graphs "
                                                              "full -> none (full came from deepseek_v3_llm_pretrain."
                                                              "yaml@0aa7db37, whose b200 entry is tp2)"),
    ("DGX-B200", "GPT_OSS_120B", "BF16"): RowSource("changed", "gpt_oss/workload_base_configs.py@0fa501ac (ep8 mbs8: "
                                                              "local full_iteration, no recompute) vs the BASE_CONFIG "
                                                              f"file and {_GO_LATER} (ep64 mbs4 or ep8 gbs1280: "
                                                              "layernorm+moe_act, no graphs); none matches ep8 mbs4 "
                                                              "gbs512: recompute and graphs now from the same file, "
                                                              "graphs full -> none"),
    ("DGX-B200", "Qwen3_30B_a3B", "FP8-MX"): RowSource("changed", f"{_Q3}: {_Q3_RC}; CUDA graphs on B200 in every "
                                                                 "py version (cuda_graphs True, then local "
                                                                 "full_iteration at mbs 1 as published), but the run "
                                                                 "was dropless: Megatron-Bridge issue #1998 "
                                                                 "(2026-01-20, a maintainer) 'We have 2X slower "
                                                                 "performance in QWEN3 30B on H100 and B200 with the "
                                                                 "dropless schedule ... the perf in 25.11 is 2X slower "
                                                                 "than 25.09', and a dropless layer cannot be in a "
                                                                 "25.11 full-iteration graph (Megatron-Core "
                                                                 "moe/README.md 'CUDA Graph'; token_dispatcher.py "
                                                                 "_maybe_dtoh_and_synchronize syncs the host unless "
                                                                 "drop_and_pad); graphs full -> "
                                                                 "none (2026-12-04; what replaced them is not "
                                                                 "published: none is the recipe without its graphs)"),
    ("DGX-B200", "Qwen3_235B_a22B", "FP8-MX"): RowSource("changed", "qwen3/workload_base_configs.py@0fa501ac "
                                                                   "B200_FP8_MX (pp8 vp2 ep8 gbs1024, the published "
                                                                   "layout): no recompute, no graphs; later V1: "
                                                                   "alltoall dispatcher; a2a overlap off -> on "
                                                                   "(2026-12-04): the 25.11 run had it, Megatron-Bridge "
                                                                   "PR #1760 / issue #1705 (A2A_OVERLAP)"),
    ("DGX-H100", "LLAMA3_8B", "FP8-CS"): RowSource("ok", f"{_L3}: Megatron FSDP (0fa501ac; V1 instead sets "
                                                        "recompute_num_layers 5 without FSDP), no graphs"),
    ("DGX-H100", "LLAMA3_70B", "FP8-CS"): RowSource("ok", f"{_L3}: tp4 pp8 vp5 as published; no recompute, graphs"),
    ("DGX-H100", "LLAMA3.1_405B", "FP8-CS"): RowSource("ok", f"{_L31}: tp8 pp8 cp2 vp8 gbs512 as published"),
    ("DGX-H100", "GPT_OSS_120B", "BF16"): RowSource("changed", f"{_GO_LATER} H100_BF16_V1 and the BASE_CONFIG file "
                                                              "(pp4 ep8 gbs512, the published layout): "
                                                              "layernorm+moe_act, no graphs; graphs full -> none"),
    ("DGX-H100", "Qwen3_30B_a3B", "FP8-CS"): RowSource("changed", f"{_Q3}: {_Q3_RC}; no graphs (yaml cuda_graphs "
                                                                 "false; py versions none); vp 24 as the yaml, mbs 2 "
                                                                 "as the py; dropless with the alltoall dispatcher, "
                                                                 "which NVIDIA calls a regression (Megatron-Bridge "
                                                                 "issue #1998: 2x slower than 25.09's token-drop; "
                                                                 "recovered by HybridEP at ep16, PR #5123: 299 "
                                                                 "TFLOP/s on 16 H100 in BF16, priced +2.5 % in "
                                                                 "reference/mcore_moe.py)"),
    # Nemotron 3 Nano (the 26.04 / 26.06 rows of data/megatron_bridge_hybrid.csv; research/nemotron3-nano-recipes.md:
    # every stored version of the Nano section of nemotron_3_workload_base_configs.py is the same)
    **{(system, "Nemotron_3_Nano", "MXFP8"): RowSource(
        "ok", f"{_N3}: no recompute, TE graphs attn+mamba+moe_router+moe_preprocess, flex hybridep, mxfp8 params, "
              "grads reduced in bf16, force-balanced", "TE graphs of attn, mamba, moe_router, moe_preprocess: cg:attn "
                                                       "(the Mamba blocks' host time is not priced)")
       for system in ("DGX-GB300", "DGX-GB200", "DGX-B300")},
    ("DGX-H100", "Nemotron_3_Nano", "FP8"): RowSource(
        "ok", f"{_N3}: selective recompute moe+layernorm+core_attn+moe_act, TE graphs of mamba only, flex hybridep, "
              "current-scaling fp8 params; 26.06 may have graphed all four scopes (PR #4628)",
        "TE graphs of mamba only: cg:none (the Mamba blocks' host time is not priced)"),
    # Nemotron 3 Super (research/nemotron3-super-recipes.md: nemotron_3_workload_base_configs.py, index id
    # 66800225295, matches the 26.04 table; no GB300 / GB200 change before 26.06)
    **{(system, "Nemotron_3_Super", precision): RowSource(
        "unsure" if precision == "NVFP4" else "ok",
        f"{_N3}: hybridep, mtp 2 depths of *E repeated, latent 1024, " + (
            "NVFP4 with bf16 params, the last 14 layers and (te_quant.cfg) the attention and latent projections in "
            "bf16 (PR #3095; whether it made 26.04 is not known)" if precision == "NVFP4" else "MXFP8 params"),
        "the last 14 layers priced in bf16 (bf16_last_layers=14); te_quant.cfg's bf16 attention / latent "
        "projections are not" if precision == "NVFP4" else "")
       for system, precision in (("DGX-GB300", "NVFP4"), ("DGX-GB200", "NVFP4"), ("DGX-B300", "NVFP4"),
                                 ("DGX-B200", "NVFP4"), ("DGX-GB300", "MXFP8"), ("DGX-GB200", "MXFP8"),
                                 ("DGX-B300", "MXFP8"), ("DGX-B200", "MXFP8"))},
}
"""Per CSV row (system, model, precision): the audit of its recipe settings against the perf-config sources
(2026-12-03). Every row also runs settings our Layout cannot express (NOT_IN_LAYOUT)."""


BF16_LAST_LAYERS = {("Nemotron_3_Super", "NVFP4"): 14}
"""(model, precision) -> the last layers its recipe keeps in bf16 (Layout.bf16_last_layers): Megatron-Bridge
mixed_precision.py nemotron_3_super_bf16_with_nvfp4_mixed sets first_last_layers_bf16=True,
num_layers_at_start_in_bf16=0, num_layers_at_end_in_bf16=14 (PR #3095; research/nemotron3-super-recipes.md sec. 2).
Every other recipe here leaves first_last_layers_bf16 False. (Megatron-Core 0.16.1's MambaStack.forward enters the
fp8 context only, ssm/mamba_block.py: a hybrid's NVFP4 is the newer Megatron-Core of the 26.x containers these rows
ran.)"""


VOCAB_DIVISIBLE_BY = 128
"""Megatron-Bridge pads the vocabulary to a multiple of make_vocab_size_divisible_by (128) x tp
(utils/vocab_utils.py calculate_padded_vocab_size) before counting the logit FLOPs."""


def bridge_flops_per_token(model: ModelSpec, seq: int, tp: int) -> float:
    """Model FLOPs per token as Megatron-Bridge 25.11 counts them for its published TFLOP/s
    (src/megatron/bridge/training/utils/flop_utils.py num_floating_point_operations, transformer_flops): 12 = 3 x 2 x 2
    per matmul parameter pair; the MLP widths x 3/2 only when gated_linear_unit AND activation_func is F.silu, so
    GPT-OSS's quick_gelu GLU experts count as two matrices, not three; GQA attention 12 h^2 (1 + g/n + s/(2h)) q/h
    per layer (causal half of the core, every layer, no sliding window); MLA its q/kv low-rank terms and a causal
    core; MTP layers as extra MoE layers with their norms and projection; logits 6 h V_padded per output head. No
    biases, router, sinks or norms. Our own MFU (models/training/compute.py MFU_BASIS) counts what runs instead."""
    if model.is_hybrid:
        return bridge_hybrid_flops_per_token(model, seq, tp)
    h = model.hidden
    layers = model.n_layers + model.mtp_layers
    moe_layers = model.n_moe_layers + (model.mtp_layers if model.is_moe_layer(model.n_layers - 1) else 0)
    glu = 1.5 if model.gated_ffn and model.family != "gpt_oss" else 1.0  # GPT-OSS: quick_gelu, not F.silu
    if model.is_mla:
        heads, qk, rope, v = model.n_heads, model.qk_nope_head_dim, model.qk_rope_head_dim, model.v_head_dim
        q_term = model.q_lora_rank * (h + heads * (qk + rope) + 1) if model.q_lora_rank else h * heads * (qk + rope)
        attn = 6 * layers * (q_term + model.kv_lora_rank * (h + heads * (qk + v) + 1) + h * rope + heads * v * h
                             + seq * heads * (qk + rope) / 2 + seq * heads * v / 2)
    else:
        attn = 12 * layers * h * h * (1 + model.kv_heads / model.n_heads + seq / h / 2) * model.q_dim / h
    shared = model.shared_ffn if model.is_moe else 0
    mlp = 12 * h * glu * (model.ffn_hidden * (layers - moe_layers)
                          + (model.expert_ffn_hidden * model.top_k + shared) * moe_layers)
    mtp = 6 * model.mtp_layers * (3 * h + 2 * h * h)
    multiple = VOCAB_DIVISIBLE_BY * tp
    padded_vocab = -(-model.vocab // multiple) * multiple
    return mlp + attn + mtp + 6 * h * padded_vocab * (model.mtp_layers + 1)


def bridge_hybrid_flops_per_token(model: ModelSpec, seq: int, tp: int) -> float:
    """Megatron-Bridge's count for a hybrid Mamba stack (flop_utils.py hybrid_flops; research/hybrid-mamba.md sec. 3:
    it reproduces the published Nemotron 3 Nano / Super TFLOP/s to 0.1 %), 3 x the forward per token: a Mamba block
    2h(2d + 2GN + H) + 7dN + 2dh with d = 2h whatever the heads x head dim; an attention block 4 h p (h + h g / n +
    s / 2), p = kv_channels n / h; an MLP block 4 f h (x 3/2 when gated); an MoE block 4 h (f_expert top_k +
    f_shared), with a latent width L 4 L f_expert top_k + 4 h L + 4 h f_shared; each MTP depth its "*E" blocks and
    the logits once more; the logits 2 h V_padded."""
    h, counts = model.hidden, model.block_counts
    d = 2 * h
    mamba = 2 * h * (2 * d + 2 * model.mamba_groups * model.mamba_state_dim + model.mamba_heads) \
        + 7 * d * model.mamba_state_dim + 2 * d * h
    p = model.dim_head * model.n_heads / h
    attention = 4 * h * p * (h + h * model.kv_heads / model.n_heads + seq / 2)
    mlp = 4 * model.ffn_hidden * h * (1.5 if model.gated_ffn else 1.0)
    moe = 4 * h * (model.expert_ffn_hidden * model.top_k + model.shared_ffn)
    multiple = VOCAB_DIVISIBLE_BY * tp
    padded_vocab = -(-model.vocab // multiple) * multiple
    moe = moe + (4 * h * model.moe_latent - 4 * h * model.expert_ffn_hidden * model.top_k
                 + 4 * model.moe_latent * model.expert_ffn_hidden * model.top_k if model.moe_latent else 0)
    blocks = (counts.get("M", 0) * mamba + counts.get("*", 0) * attention + counts.get("-", 0) * mlp
              + counts.get("E", 0) * moe)
    # MTP depths add their pattern's blocks ("*E" or "*-") and one more logits pass each
    mtp = model.mtp_layers * (attention + (moe if model.is_moe else mlp))
    return 3 * (blocks + mtp + 2 * h * padded_vocab * (1 + model.mtp_layers))


TFLOPS_CONVENTION = ("TFLOP/s: `predicted` = predicted tokens/s x Megatron-Bridge's own FLOPs per token (flop_utils.py; "
                     "GPT-OSS's GLU experts count as two matrices, every layer's attention as full causal), so its "
                     "error is the throughput error; `ours (as executed)` is estimate's tflops_per_gpu (MFU basis: "
                     "FLOPs as they run, windows and all three GLU matrices counted).")


@dataclass(frozen=True)
class BridgeRow(PricedRow):
    """One CSV row, how we run it, and what we predict (None where the row cannot be expressed)."""

    system: str
    model: str
    precision: str
    gpus: int
    preset: str
    cluster: str
    layout: Layout | None
    notes: tuple[str, ...]
    reason: str
    """Why the CLI cannot express the row ('' when it can)."""
    published_tokens_per_s: float
    published_tflops: float
    predicted_tokens_per_s: float | None = None
    predicted_tflops: float | None = None
    """Predicted tokens/s per GPU x Megatron-Bridge's FLOPs per token (bridge_flops_per_token): the published
    TFLOP/s' own convention, so its error is the throughput error seen through their count."""
    release: str = ""
    """The performance summary's release where the CSV has a release column (data/megatron_bridge_nvfp4.csv)."""
    model_tflops: float | None = None
    """Our estimate's tflops_per_gpu (MFU_BASIS: FLOPs as executed, windows and GLU widths counted)."""
    refused: str = ""
    """The estimate's own reasons (out of memory) when it refuses the layout; the time is still compared."""

    @property
    def label(self) -> str:
        return f"{self.system.removeprefix('DGX-')} {self.model} {self.precision}"

    @property
    def tflops_error(self) -> float:
        if self.predicted_tflops is None:
            raise ValueError(f"{self.label}: not expressible ({self.reason})")
        return self.predicted_tflops / self.published_tflops - 1


def stage_split(model: ModelSpec, pp: int, vp: int) -> tuple[int, int, str]:
    """(first_stage_layers, last_stage_layers, note) per pipeline rank as the recipe splits the model; (0, 0) = even."""
    chunks = pp * vp
    if pp == 1:
        return 0, 0, ""
    if model.name == "deepseek-v3":
        per_chunk = DEEPSEEK_CHUNK_LAYERS.get(chunks)
        if per_chunk is None:
            return 0, 0, f"no DeepSeek-V3 layout for {chunks} chunks in the recipe"
        # Rank r holds chunks r, r + pp, r + 2 pp, ... (Megatron's interleaved assignment).
        first = sum(per_chunk[0::pp])
        last = sum(per_chunk[pp - 1::pp])
        tail = "+MTP+L" if model.mtp_layers else "+L"
        note = f"DeepSeek layout {per_chunk[0]}+E|{per_chunk[1]}|...|{per_chunk[-1]}{tail} layers per chunk"
        if (pp, vp) not in DEEPSEEK_RECIPE_KEYS:
            note += f" (pp{pp} vp{vp} is not a key of the recipe's map: its {chunks}-chunk layout assumed)"
        return first, last, note
    if model.name in EMBEDDING_LOSS_SPLIT:
        if (model.n_layers + 2) % chunks:
            return 0, 0, f"n_layers + 2 = {model.n_layers + 2} not divisible by {chunks} chunks"
        per = (model.n_layers + 2) // chunks
        return vp * per - 1, vp * per - 1, f"embedding/loss counted as layers: {per - 1}+E, {per}, ..., {per - 1}+L"
    return 0, 0, ""


CONVENTION_TOLERANCE = 0.01
"""Published TFLOP/s and tokens/s are rounded; beyond 1 % the row was counted another way."""


def flops_convention_note(model: ModelSpec, layout: Layout, tokens_per_s: float, tflops: float) -> str:
    """'' when the published TFLOP/s equal the published tokens/s x bridge_flops_per_token within
    CONVENTION_TOLERANCE; else what the published pair implies (a model with MTP checked without it)."""
    per_token = bridge_flops_per_token(model, layout.seq, layout.tp)
    if abs(tokens_per_s * per_token / 1e12 / tflops - 1) <= CONVENTION_TOLERANCE:
        return ""
    if model.mtp_layers:
        without = bridge_flops_per_token(replace(model, mtp_layers=0), layout.seq, layout.tp)
        if abs(tokens_per_s * without / 1e12 / tflops - 1) <= CONVENTION_TOLERANCE:
            return ("published TFLOP/s = Megatron-Bridge's FLOPs count WITHOUT the MTP layer (mtp_num_layers unset in "
                    "that run?); predicted here with MTP (MTP_LAYERS sets it per row)")
    return (f"published TFLOP/s imply {tflops * 1e12 / tokens_per_s / 1e9:.2f} GFLOP/token; Megatron-Bridge's count "
            f"gives {per_token / 1e9:.2f}")


def row_model(r: dict[str, str]) -> tuple[ModelSpec, str]:
    """The model a CSV row ran (its preset with the row's MTP_LAYERS override) and a note on its MTP layers."""
    model = load_model(MODELS[r["model"]])
    mtp = MTP_LAYERS.get((r["system"], r["model"]))
    if mtp is not None and mtp != model.mtp_layers:
        return replace(model, mtp_layers=mtp), (
            f"MTP layers {model.mtp_layers} -> {mtp}: the published TFLOP/s count none (MTP_LAYERS)")
    if model.mtp_layers:
        return model, f"{model.mtp_layers} MTP layer(s) on the last stage (the published TFLOP/s count it)"
    return model, ""


def bridge_layout(r: dict[str, str], model: ModelSpec) -> tuple[Layout, list[str]]:
    tp, pp, cp, ep = int(r["tp"]), int(r["pp"]), int(r["cp"]), int(r["ep"])
    vp = int(r["vp"] or 1)
    gpus, mbs, gbs = int(r["gpus"]), int(r["mbs"]), int(r["gbs"])
    notes = []
    first, last, split_note = stage_split(model, pp, vp)
    if split_note:
        notes.append(split_note)
    fsdp = r["fsdp"] == "1"
    key = (r["system"], r["model"], r["precision"])
    modules = RECOMPUTE_MODULES.get(key, RECOMPUTE_MODULES.get(key[:2], ""))
    recompute = RECOMPUTE.get(model.name, "none")
    if recompute == "selective" and not modules:
        recompute = "none"  # e.g. GPT-OSS on GB300: no recompute modules
    offload = OFFLOAD_LAYERS.get(key, 0)
    bf16_last = BF16_LAST_LAYERS.get(key[1:], 0)
    graphs = CUDA_GRAPHS.get(key, CUDA_GRAPHS.get(key[:2], "none"))
    if offload:
        notes.append(f"recipe offloads {offload} layers' activations to CPU")
    source = ROW_SOURCES.get(key)
    if source is not None and source.note:
        notes.append(source.note)
    layout = Layout(tp=tp, pp=pp, cp=cp, dp=gpus // (tp * pp * cp), vpp=vp, ep=ep, etp=1, mbs=mbs, gbs=gbs,
                    seq=int(r["seq"]), sp=tp > 1, zero=3 if fsdp else 1, recompute=recompute,
                    recompute_modules=modules, schedule="interleaved-1f1b" if vp > 1 else "1f1b",
                    precision=PRECISIONS[r["precision"]], flash_attn=True, first_stage_layers=first,
                    last_stage_layers=last, fp32_grads=FP32_GRADS, offload_layers=offload,
                    cuda_graphs=graphs, moe_a2a_overlap=key in A2A_OVERLAP, bf16_last_layers=bf16_last,
                    moe_dispatcher=MOE_DISPATCHERS.get(r["model"], "alltoall"),
                    fp8_params=FP8_RECIPES.get(r["precision"]) in FP8_PARAMS_RECIPES)
    return layout, notes


def bridge_cluster(system: str, gpus: int) -> tuple[str, Cluster | None, str]:
    node, per = SYSTEMS[system]
    ref = f"{node}:{gpus // per}"
    try:
        return ref, load_cluster(ref), ""
    except BadInputError as exc:
        return ref, None, f"no {system} preset ({str(exc).splitlines()[0]})"


def fp8_recipe(precision: str, cluster: Cluster) -> str | None:
    """The recipe a CSV precision runs on this cluster's GPUs (None for BF16)."""
    recipe = FP8_RECIPES.get(precision)
    if recipe == "mxfp8" and not all(g.gpu.mx_formats for g in cluster.groups):
        return "blockwise"
    return recipe


NO_TP_OVERLAP_MODELS = {"Nemotron_3_Super": "TP comm overlap off (the Super recipe leaves comm_overlap unset: "
                                            "research/nemotron3-super-recipes.md)"}
"""CSV models whose recipes run without Transformer Engine's TP communication overlap, whatever the precision."""


def row_stack(precision: str, model: str = "") -> tuple[ExecutionStack, str]:
    """The stack a CSV precision's (and model's) recipe runs on, and its row note ('' for the stack as it is)."""
    stack = get_stack(STACK)
    note = NO_TP_OVERLAP_MODELS.get(model) or NO_TP_OVERLAP.get(precision)
    if note:
        return replace(stack, name=f"{STACK}, TP comm overlap off", tp_overlap="none", tp_overlap_share=0.0), note
    return stack, ""


def bridge_rows(csv_name: str = BRIDGE_CSV) -> list[BridgeRow]:
    out = []
    for r in read_rows(csv_name):
        gpus = int(r["gpus"])
        preset = MODELS[r["model"]]
        model, mtp_note = row_model(r)
        ref, cluster, reason = bridge_cluster(r["system"], gpus)
        base = dict(system=r["system"], model=r["model"], precision=r["precision"], gpus=gpus, preset=preset,
                    release=r.get("release", ""),
                    cluster=ref, published_tokens_per_s=float(r["tokens_per_s_per_gpu"]),
                    published_tflops=float(r["model_tflops_per_gpu"]))
        layout, notes = bridge_layout(r, model)
        if mtp_note:
            notes.append(mtp_note)
        note = flops_convention_note(model, layout, base["published_tokens_per_s"], base["published_tflops"])
        if note:
            notes.append(note)
        if int(r["gbs"]) != int(r["mbs"]) * int(r["ga"]) * layout.dp:
            notes.append(f"gbs {r['gbs']} != mbs x ga x dp = {int(r['mbs']) * int(r['ga']) * layout.dp} in the "
                         "source: gbs used")
        if cluster is None:
            out.append(BridgeRow(layout=layout, notes=tuple(notes), reason=reason, **base))
            continue
        stack, stack_note = row_stack(r["precision"], r["model"])
        if stack_note:
            notes.append(stack_note)
        recipe = fp8_recipe(r["precision"], cluster)
        layout = replace(layout, fp8_params=layout.fp8_params and recipe in FP8_PARAMS_RECIPES,
                         fp8_recipe=recipe if layout.precision == "fp8" and recipe else "")
        problems = [*layout_problems(model, layout, cluster.world_size), *stack_problems(layout, stack),
                    *precision_problems(cluster, layout, stack, recipe)]
        if problems:
            out.append(BridgeRow(layout=layout, notes=tuple(notes), reason="; ".join(str(p) for p in problems), **base))
            continue
        est = estimate(model, cluster, layout, stack=stack, fp8_recipe=recipe)
        js = est.to_json()
        tokens = js["tokens_per_s"] / gpus
        nv_tflops = tokens * bridge_flops_per_token(model, layout.seq, layout.tp) / 1e12
        out.append(BridgeRow(layout=layout, notes=tuple(notes), reason="", predicted_tokens_per_s=tokens,
                             predicted_tflops=nv_tflops, model_tflops=js["tflops_per_gpu"],
                             refused=refusal(est), **base))
    return out


def layout_text(L: Layout) -> str:
    parts = [f"tp{L.tp}", f"pp{L.pp}" + (f"v{L.vpp}" if L.vpp > 1 else ""), f"cp{L.cp}", f"ep{L.ep}", f"dp{L.dp}",
             f"z{L.zero}", f"mbs{L.mbs}", f"gbs{L.gbs}", f"s{L.seq}",
             L.precision + (f":{L.fp8_recipe}" if L.fp8_recipe else "") + ("-params" if L.fp8_params else ""),
             f"rc:{L.recompute_modules or L.recompute}"]
    if L.bf16_moments:
        parts.append("bf16-moments")
    if L.cuda_graphs != "none":
        parts.append(f"cg:{L.cuda_graphs}")
    if L.moe_dispatcher != "alltoall":
        parts.append(L.moe_dispatcher)
    if L.moe_a2a_overlap:
        parts.append("a2a-overlap")
    if L.moe_capacity_factor is not None:
        parts.append(f"drop:{L.moe_capacity_factor:g}")
    if L.first_stage_layers or L.last_stage_layers:
        parts.append(f"stages {L.first_stage_layers}/../{L.last_stage_layers}")
    return " ".join(parts)



TITLE = "Megatron-Bridge 25.11 (NeMo 25.11 performance summary): tokens/s and model TFLOP/s per GPU"
"""The table's heading on the console (print_table)."""


def print_table(rows: list[BridgeRow]) -> None:
    columns, cells = table(rows)
    print_rows(TITLE, columns, cells, [r.label for r in rows], [_expressible_line(rows), TFLOPS_CONVENTION])


def table(rows: list[BridgeRow]) -> tuple[list[Column], list[list[str]]]:
    """The columns, and each row's cells with its notes last: what markdown_table and print_table show."""
    columns = [("system", "l"), ("model", "l"), ("precision", "l"), ("GPUs", "r"), ("layout", "l"),
               ("tokens/s/GPU published", "r"), ("predicted", "r"), ("error", "r"), ("TFLOP/s/GPU published", "r"),
               ("predicted", "r"), ("error", "r"), ("ours (as executed)", "r"), ("notes", "l")]
    cells = [[r.system, r.preset, r.precision, f"{r.gpus}", *row_cells(r, tflops_error_and_ours=True)] for r in rows]
    return columns, cells


def row_cells(r: BridgeRow, *, tflops_error_and_ours: bool) -> list[str]:
    """A row's cells from its layout on: layout, tokens/s published, predicted, error, TFLOP/s published, predicted
    (with tflops_error_and_ours: the TFLOP/s error and estimate's own TFLOP/s), and its notes last ("-" where the
    row is not expressible). What this table and bridge_nvfp4's share."""
    notes = ([] if r.expressible else [f"not expressible: {r.reason}"]) + row_notes(r.notes, r.refused)
    priced = [f"{r.predicted_tokens_per_s:.0f}", f"{r.error:+.1%}", f"{r.published_tflops:.0f}",
              f"{r.predicted_tflops:.0f}"] if r.expressible else ["-", "-", f"{r.published_tflops:.0f}", "-"]
    if tflops_error_and_ours:
        priced += [f"{r.tflops_error:+.1%}", f"{r.model_tflops:.0f}"] if r.expressible else ["-", "-"]
    return [layout_text(r.layout) if r.layout else "-", f"{r.published_tokens_per_s:.0f}", *priced, notes_cell(notes)]


def release_table(rows: list[BridgeRow]) -> tuple[list[Column], list[list[str]]]:
    """A later release's table (a CSV with a release column: bridge_nvfp4, bridge_hybrid): release, system, model,
    GPUs, then row_cells without our own TFLOP/s."""
    columns = [("release", "l"), ("system", "l"), ("model", "l"), ("GPUs", "r"), ("layout", "l"),
               ("tokens/s/GPU published", "r"), ("predicted", "r"), ("error", "r"), ("TFLOP/s/GPU published", "r"),
               ("predicted", "r"), ("notes", "l")]
    cells = [[r.release, r.system.removeprefix("DGX-"), r.preset, f"{r.gpus}",
              *row_cells(r, tflops_error_and_ours=False)] for r in rows]
    return columns, cells


def print_release_table(title: str, rows: list[BridgeRow]) -> None:
    columns, cells = release_table(rows)
    print_rows(title, columns, cells, [r.label for r in rows], [held_out_line(rows)])


def release_markdown(rows: list[BridgeRow]) -> str:
    columns, cells = release_table(rows)
    return "\n".join([*markdown_rows(columns, cells), "", held_out_line(rows) + "."])


def _expressible_line(rows: list[BridgeRow]) -> str:
    n, med, worst = summary(rows)
    return (f"Expressible rows: {n} of {len(rows)}; median |error| of tokens/s {med:.1%}, max {worst:.1%} "
            "(issue #13 target: every row within 15 %, median within 8 %).")


def markdown_table(rows: list[BridgeRow]) -> str:
    columns, cells = table(rows)
    return "\n".join([*markdown_rows(columns, cells), "", _expressible_line(rows), "", TFLOPS_CONVENTION])
