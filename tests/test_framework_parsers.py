"""Every export in the round-trip matrix is parsed and validated by the framework's own code, installed from PyPI on CPU.

- torchtitan 0.3 (`--to torchtitan-py`): the recipe module is imported and its function called, which runs
  `Trainer.Config.__post_init__` (micro-batch divisibility, CUDA graphs off with pp/ep); then
  `ParallelDims.from_config` (mesh = world) and, with pp, `_get_pipeline_metadata` (stages per rank for the schedule),
  and every module name of `module_fqns_per_model_part` names a module of the model config.
- DeepSpeed (`--to deepspeed`): `deepspeed.runtime.config.DeepSpeedConfig` (batch assertion, ZeRO pydantic models
  that forbid unknown keys, pipeline section); without a launcher it sees one rank, so the per-replica batch is given
  (deepspeed.comm's CPU backend compiles oneCCL at init, which does not finish on a 2-core CI machine).
- Megatron-Core (`--to megatron`): the flags that are fields of `ModelParallelConfig`/`TransformerConfig` build those
  dataclasses (their `__post_init__` checks tp/pp/vpp/cp/ep, MoE, fp8, MLA and the uneven first/last stages).
  Megatron-LM's `arguments.py` (the argument parser itself) is not in the megatron-core wheel, so the other flags
  (training, data, DDP) are not parsed here.

Each framework runs in one subprocess over all exports (torch imports stay out of the test process); a framework that
is not installed skips its test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from clusterplan.errors import InfeasibleError
from clusterplan.frameworks import export_plan
from clusterplan.frameworks.read import TORCHTITAN_MODELS
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import load_cluster

pytestmark = pytest.mark.slow
FIXTURES = Path(__file__).parent / "fixtures"


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _matrix():
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from test_roundtrip import plans
    finally:
        sys.path.pop(0)
    return plans()


def _exported(target: str, models: set[str] | None = None) -> list[tuple[str, str, object, str]]:
    out = []
    for model_name, cluster_ref, layout in _matrix():
        if models is not None and model_name not in models:
            continue
        try:
            text = export_plan(target, load_model(model_name), load_cluster(cluster_ref), layout).text
        except InfeasibleError:
            continue
        out.append((model_name, cluster_ref, layout, text))
    return out


def _run(script: str, tmp_path: Path, timeout: int = 900) -> dict:
    path = tmp_path / "check_script.py"
    path.write_text(textwrap.dedent(script), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not (_installed("torchtitan") and _installed("triton")), reason="needs torchtitan 0.3 (and triton)")
def test_torchtitan_builds_and_validates_every_recipe(tmp_path):
    cases = _exported("torchtitan-py", set(TORCHTITAN_MODELS))
    if not _installed("torchao"):  # torchtitan's float8 converter needs torchao to build the model config
        cases = [c for c in cases if c[2].precision != "fp8"]
    assert len(cases) >= 20
    jobs = []
    for i, (model_name, cluster_ref, layout, text) in enumerate(cases):
        module = f"recipe_{i}"
        (tmp_path / f"{module}.py").write_text(text, encoding="utf-8")
        function = next(line.split()[1].split("(")[0] for line in text.splitlines() if line.startswith("def "))
        jobs.append({"module": module, "function": function, "world": load_cluster(cluster_ref).world_size,
                     "n_layers": load_model(model_name).n_layers, "what": f"{model_name} {layout.short()}"})
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    result = _run("""
        import importlib, json, re
        from torchtitan.distributed.parallel_dims import ParallelDims
        from torchtitan.distributed.pipeline_parallel import _get_pipeline_metadata
        errors, done = [], 0
        for job in json.load(open("jobs.json")):
            try:
                cfg = getattr(importlib.import_module(job["module"]), job["function"])()
                dims = ParallelDims.from_config(cfg.parallelism, job["world"])
                layers = len(cfg.model_spec.model.layers)
                assert layers == job["n_layers"], (layers, job["n_layers"])
                par = cfg.parallelism
                if par.pipeline_parallel_degree > 1:
                    stages, _, _, _ = _get_pipeline_metadata(dims, par, cfg.model_spec.model)
                    parts = par.module_fqns_per_model_part
                    assert len(parts) % par.pipeline_parallel_degree == 0
                    if par.pipeline_parallel_layers_per_stage is not None:
                        assert stages == len(parts), (stages, len(parts))
                    names = [m for p in parts for m in p]
                    want = ["tok_embeddings", *[f"layers.{i}" for i in range(layers)], "norm", "lm_head"]
                    assert names == want, names[:3]
                done += 1
            except Exception as exc:  # noqa: BLE001 - reported per recipe
                errors.append(f"{job['what']}: {type(exc).__name__}: {exc}")
        print(json.dumps({"done": done, "errors": errors}))
    """, tmp_path)
    assert result["errors"] == []
    assert result["done"] == len(cases)


@pytest.mark.skipif(not _installed("deepspeed"), reason="needs deepspeed")
def test_deepspeed_parses_every_ds_config(tmp_path):
    cases = _exported("deepspeed")
    assert len(cases) >= 20
    jobs = []
    for model_name, cluster_ref, layout, text in cases:
        dp = load_cluster(cluster_ref).world_size // (layout.pp * layout.cp * layout.tp)  # AutoTP: tp ranks share a batch
        jobs.append({"config": json.loads(text), "dp": dp, "what": f"{model_name} {layout.short()}"})
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    result = _run("""
        import json
        from deepspeed.runtime.config import DeepSpeedConfig
        errors, done = [], 0
        for job in json.load(open("jobs.json")):
            try:
                # Without a launcher DeepSpeedConfig sees one data-parallel rank, so the batch assertion is run
                # with the per-replica batch (train_batch_size / dp); the roundtrip test checks the dp product.
                config = dict(job["config"], train_batch_size=job["config"]["train_batch_size"] // job["dp"])
                cfg = DeepSpeedConfig(config)
                assert cfg.world_size == 1
                assert cfg.zero_optimization_stage == job["config"]["zero_optimization"]["stage"]
                assert cfg.pipeline["stages"] == job["config"].get("pipeline", {}).get("stages", "auto")
                done += 1
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{job['what']}: {type(exc).__name__}: {exc}")
        print(json.dumps({"done": done, "errors": errors}))
    """, tmp_path)
    assert result["errors"] == []
    assert result["done"] == len(cases)


def _flag_values(script: str) -> dict[str, str]:
    tokens = shlex.split(script, comments=True)
    flags: dict[str, str] = {}
    for i, tok in enumerate(tokens):
        if tok.startswith("--"):
            words = []  # every word up to the next flag: one value, or a list (--recompute-modules a b)
            for nxt in tokens[i + 1:]:
                if nxt.startswith("--") or nxt == ")":
                    break
                words.append(nxt)
            flags[tok] = " ".join(words)
    return flags


@pytest.mark.skipif(not _installed("megatron.core"), reason="needs megatron-core")
def test_megatron_core_builds_the_transformer_config_of_every_script(tmp_path):
    cases = _exported("megatron")
    jobs = [{"flags": _flag_values(text), "what": f"{m} {L.short()}"} for m, _, L, text in cases]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    result = _run("""
        import dataclasses, json
        import megatron.core.utils as mcore_utils
        from packaging.version import Version
        # Transformer Engine does not install on CPU; TransformerConfig's version gates (fp8 with MoE grouped GEMM
        # needs TE >= 1.7) are asked as on a GPU machine with a current TE, so the flags themselves are checked.
        mcore_utils.get_te_version = lambda: Version("2.8.0")
        from megatron.core.transformer.transformer_config import TransformerConfig, MLATransformerConfig
        # flag -> field where the names differ (megatron/training/arguments.py core_transformer_config_from_args)
        RENAMED = {"num_experts": "num_moe_experts", "swiglu": "gated_linear_unit", "normalization": "normalization",
                   "num_query_groups": "num_query_groups", "sequence_parallel": "sequence_parallel",
                   "qk_layernorm": "qk_layernorm", "kv_channels": "kv_channels", "bf16": "bf16", "fp16": "fp16",
                   "fp8_format": "fp8", "num_layers_per_virtual_pipeline_stage": None,
                   "num_virtual_stages_per_pipeline_rank": "virtual_pipeline_model_parallel_size",
                   "decoder_first_pipeline_num_layers": "num_layers_in_first_pipeline_stage",
                   "decoder_last_pipeline_num_layers": "num_layers_in_last_pipeline_stage",
                   "moe_router_topk": "moe_router_topk", "moe_ffn_hidden_size": "moe_ffn_hidden_size",
                   "moe_shared_expert_intermediate_size": "moe_shared_expert_intermediate_size",
                   "moe_layer_freq": "moe_layer_freq", "q_lora_rank": "q_lora_rank", "kv_lora_rank": "kv_lora_rank",
                   "qk_head_dim": "qk_head_dim", "qk_pos_emb_head_dim": "qk_pos_emb_head_dim",
                   "v_head_dim": "v_head_dim", "recompute_granularity": "recompute_granularity",
                   "recompute_method": "recompute_method", "recompute_num_layers": "recompute_num_layers",
                   "add_qkv_bias": "add_qkv_bias", "disable_bias_linear": None, "fp8_recipe": "fp8_recipe",
                   "moe_router_score_function": "moe_router_score_function",
                   "moe_router_enable_expert_bias": "moe_router_enable_expert_bias",
                   "moe_router_num_groups": "moe_router_num_groups",
                   "moe_router_group_topk": "moe_router_group_topk",
                   "moe_router_topk_scaling_factor": "moe_router_topk_scaling_factor",
                   "mtp_num_layers": "mtp_num_layers", "rotary_base": None, "cp_comm_type": "cp_comm_type",
                   "fp4_format": "fp4", "fp4_recipe": "fp4_recipe",
                   "hierarchical_context_parallel_sizes": "hierarchical_context_parallel_sizes"}
        errors, done = [], 0
        for job in json.load(open("jobs.json")):
            f = {k[2:].replace("-", "_"): v for k, v in job["flags"].items()}
            cls = MLATransformerConfig if "multi_latent_attention" in f else TransformerConfig
            fields = {x.name: x for x in dataclasses.fields(cls)}
            kwargs = {}
            for key, raw in f.items():
                name = RENAMED.get(key, key)
                if name is None or name not in fields:
                    continue
                if raw == "":
                    value = True
                elif name == "moe_layer_freq":
                    value = eval(raw, {"__builtins__": {}})
                elif name == "recompute_modules":
                    value = raw.split()
                elif name == "hierarchical_context_parallel_sizes":
                    value = [int(x) for x in raw.split()]
                else:
                    try:
                        value = int(raw)
                    except ValueError:
                        try:
                            value = float(raw)
                        except ValueError:
                            value = raw
                kwargs[name] = value
            if kwargs.get("gated_linear_unit"):
                import torch.nn.functional as F
                kwargs["activation_func"] = F.silu
            if "num_layers_per_virtual_pipeline_stage" in f:
                per_rank = int(f["num_layers"]) // int(f["pipeline_model_parallel_size"])
                kwargs["virtual_pipeline_model_parallel_size"] = per_rank // int(f["num_layers_per_virtual_pipeline_stage"])
            if kwargs.get("virtual_pipeline_model_parallel_size") == 1:
                kwargs.pop("virtual_pipeline_model_parallel_size")
            if kwargs.get("recompute_granularity") == "selective":
                kwargs.pop("recompute_method", None), kwargs.pop("recompute_num_layers", None)
            kwargs["add_bias_linear"] = "disable_bias_linear" not in f
            kwargs["pipeline_dtype"] = __import__("torch").bfloat16
            try:
                cls(**kwargs)
                done += 1
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{job['what']}: {type(exc).__name__}: {exc}")
        print(json.dumps({"done": done, "errors": errors}))
    """, tmp_path)
    assert result["errors"] == []
    assert result["done"] == len(cases)


@pytest.mark.skipif(not _installed("deepspeed"), reason="needs deepspeed")
def test_deepspeed_parses_an_autotp_config(tmp_path):
    """tp > 1 exports as DeepSpeed AutoTP training (tensor_parallel.autotp_size, ZeRO <= 2): DeepSpeed's own config
    class reads the size back; the batch assertion runs per data-parallel replica (dp = 64 / 4 = 16)."""
    from clusterplan.models.training.layout import Layout

    layout = Layout(tp=4, dp=16, zero=2, mbs=1, gbs=512, seq=8192, sp=False, recompute="full")
    config = json.loads(export_plan("deepspeed", load_model("llama3.1-70b"), load_cluster("dgx-h100:8"), layout).text)
    assert config["tensor_parallel"] == {"autotp_size": 4}
    (tmp_path / "job.json").write_text(json.dumps(dict(config, train_batch_size=config["train_batch_size"] // 16)))
    result = _run("""
        import json
        from deepspeed.runtime.config import DeepSpeedConfig
        cfg = DeepSpeedConfig(json.load(open("job.json")))
        print(json.dumps({"autotp": cfg.tensor_parallel_config.autotp_size, "zero": cfg.zero_optimization_stage}))
    """, tmp_path)
    assert result == {"autotp": 4, "zero": 2}


@pytest.mark.skipif(not _installed("megatron.core"), reason="needs megatron-core")
def test_megatron_core_builds_each_activation_and_window_pattern(tmp_path):
    # The architecture flags the round-trip matrix (Llama, Mixtral, Qwen3, DeepSeek) never carries: GPT-OSS's clamped
    # quick GEGLU, sinks and every-other-layer windows, Nemotron's squared ReLU, Gemma 2's alternating windows, a
    # StarCoder2 window on every layer, and a leading run of full layers (the explicit list). Each builds
    # TransformerConfig as core_transformer_config_from_args would, and Megatron-Core's own is_layer_window_attention
    # must window exactly the layers the model windows.
    from dataclasses import replace

    from clusterplan.models.training.layout import Layout
    leading = replace(load_model("gemma2-2b"), name="leading-full", full_attention_every=0,
                      full_attention_first_layers=3)
    models = [load_model(n) for n in ("gpt-oss-120b", "nemotron4-15b", "gemma2-2b", "starcoder2-15b")] + [leading]
    cluster = load_cluster("dgx-h100:1")
    jobs = []
    for m in models:
        text = export_plan("megatron", m, cluster, Layout(dp=8, mbs=1, gbs=8, seq=4096)).text
        jobs.append({"flags": _flag_values(text), "what": m.name,
                     "windowed": [m.is_sliding_layer(i) for i in range(m.n_layers)]})
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    result = _run("""
        import json
        import torch.nn.functional as F
        from megatron.core.activations import quick_gelu, squared_relu
        from megatron.core.transformer.transformer_config import TransformerConfig
        from megatron.core.transformer.utils import is_layer_window_attention
        errors, done = [], 0
        for job in json.load(open("jobs.json")):
            f = job["flags"]
            kw = dict(num_layers=int(f["--num-layers"]), hidden_size=int(f["--hidden-size"]),
                      num_attention_heads=int(f["--num-attention-heads"]),
                      ffn_hidden_size=int(f["--ffn-hidden-size"]))
            # megatron/training/arguments.py core_transformer_config_from_args
            if "--swiglu" in f:
                kw.update(gated_linear_unit=True, activation_func=F.silu)
            elif "--quick-geglu" in f:
                kw.update(gated_linear_unit=True, activation_func=quick_gelu)
            elif "--squared-relu" in f:
                kw.update(activation_func=squared_relu)
            for flag, field in (("--activation-func-clamp-value", "activation_func_clamp_value"),
                                ("--glu-linear-offset", "glu_linear_offset")):
                if flag in f:
                    kw[field] = float(f[flag])
            if "--softmax-type" in f:
                kw["softmax_type"] = f["--softmax-type"]
            if "--window-size" in f:
                kw["window_size"] = tuple(int(x) for x in f["--window-size"].strip("()").split(","))
            skip = f.get("--window-attn-skip-freq")
            if skip is not None:
                kw["window_attn_skip_freq"] = eval(skip, {"__builtins__": {}}) if "[" in skip else int(skip)
            try:
                cfg = TransformerConfig(**kw)
                got = [is_layer_window_attention(cfg.window_size, cfg.window_attn_skip_freq, i + 1)
                       for i in range(cfg.num_layers)]
                if got != job["windowed"]:
                    errors.append(f"{job['what']}: windowed layers {got[:8]}... != {job['windowed'][:8]}...")
                done += 1
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{job['what']}: {type(exc).__name__}: {exc}")
        print(json.dumps({"done": done, "errors": errors}))
    """, tmp_path)
    assert result["errors"] == []
    assert result["done"] == len(models)


@pytest.mark.skipif(not _installed("megatron.core"), reason="needs megatron-core")
def test_megatron_core_allocates_each_hybrid_scripts_layers_as_its_pattern(tmp_path):
    """A hybrid's pretrain_mamba.py script: Megatron-Core's own allocator (ssm/mamba_hybrid_layer_allocation.py
    allocate_layers, which MambaStack calls with --num-layers and --hybrid-override-pattern) accepts the pattern and
    returns one layer per character, the blocks the plan priced."""
    cases = [c for c in _exported("megatron") if load_model(c[0]).is_hybrid]
    assert len(cases) >= 2
    jobs = [{"flags": _flag_values(text), "pattern": load_model(m).hybrid_pattern} for m, _, _, text in cases]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    result = _run("""
        import json
        from megatron.core.ssm.mamba_hybrid_layer_allocation import allocate_layers
        out = []
        for job in json.load(open("jobs.json")):
            f = job["flags"]
            layers = allocate_layers(int(f["--num-layers"]), 0.0, 0.0, f["--hybrid-override-pattern"])
            out.append("".join(layers) == job["pattern"])
        print(json.dumps({"same": out}))
    """, tmp_path)
    assert result["same"] == [True] * len(cases)
