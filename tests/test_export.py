"""`clusterplan export`: each plan exported to each framework, parsed back, every degree and batch size checked.

Outputs are also compared byte for byte with tests/golden/export/; after an intended change regenerate them with
`CLUSTERPLAN_REGEN_GOLDEN=1 pytest tests/test_export.py` and review the diff.
"""

from __future__ import annotations

import ast
import json
import os
import shlex
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

import pytest
import tomllib

from clusterplan.errors import InfeasibleError
from clusterplan.frameworks import export_plan
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.planfile import read_plan, write_plan

GOLDEN = Path(__file__).parent / "golden" / "export"
REGEN = os.environ.get("CLUSTERPLAN_REGEN_GOLDEN") == "1"

# name -> (model, cluster, layout): the plans a user would get from `clusterplan plan --out`.
PLANS: dict[str, tuple[str, str, dict[str, Any]]] = {
    # Megatron-LM's 3D layout for a 70B dense model: interleaved 1F1B, sequence parallel, distributed optimizer.
    "llama70b_tp8pp4": ("llama3.1-70b", "dgx-h100:8",
                        {"tp": 8, "pp": 4, "vpp": 2, "dp": 2, "mbs": 1, "gbs": 512, "seq": 8192, "sp": True,
                         "recompute": "selective", "zero": 1, "schedule": "interleaved-1f1b"}),
    # A mixture of experts with 8-way expert parallelism folded over data parallelism, pipeline and full recompute.
    "mixtral_ep8": ("mixtral-8x7b", "dgx-h100:4",
                    {"tp": 1, "pp": 4, "dp": 8, "ep": 8, "mbs": 1, "gbs": 256, "seq": 4096, "recompute": "full",
                     "zero": 1, "schedule": "1f1b"}),
    # Data parallel only: ZeRO-3 / FSDP hybrid-sharded over 2 x 8 ranks, 8 accumulation steps.
    "llama8b_zero3": ("llama3.1-8b", "dgx-h100:2",
                      {"dp": 16, "dp_replicate": 2, "mbs": 2, "gbs": 256, "seq": 4096, "recompute": "full",
                       "zero": 3}),
}
TARGETS = {"torchtitan": "toml", "torchtitan-py": "py", "megatron": "sh", "megatron-bridge": "bridge.sh",
           "deepspeed": "json"}
# DeepSpeed's AutoTP runs tensor parallelism beside data parallelism only (not with pp), and no hybrid sharding since
# 0.19 removed MiCS
REFUSED = {("llama70b_tp8pp4", "deepspeed"), ("llama8b_zero3", "deepspeed")}


def _plan_file(tmp_path: Path, name: str) -> Path:
    model, cluster, layout = PLANS[name]
    path = tmp_path / f"{name}.yaml"
    write_plan(path, model_ref=model, cluster_ref=cluster, layout=Layout.from_dict(layout))
    return path


def _export(name: str, target: str, tmp_path: Path) -> tuple[str, Any]:
    plan = read_plan(_plan_file(tmp_path, name))
    return export_plan(target, plan.model, plan.cluster, plan.layout).text, plan


# ---- golden files: the exact bytes a user gets on stdout ------------------------------------------------------
CASES = [(n, t) for n in PLANS for t in TARGETS if (n, t) not in REFUSED]


@pytest.mark.parametrize(("name", "target"), CASES)
def test_export_matches_golden_file(run_cli, tmp_path, name, target):
    code, out, err = run_cli("export", str(_plan_file(tmp_path, name)), "--to", target)
    assert code == 0, err
    assert "launch: " in err
    golden = GOLDEN / f"{name}.{TARGETS[target]}"
    if REGEN:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(out, encoding="utf-8")
    assert out == golden.read_text(encoding="utf-8"), f"regenerate with CLUSTERPLAN_REGEN_GOLDEN=1 if intended: {golden}"


def test_out_writes_the_same_bytes_atomically(run_cli, tmp_path):
    """--out writes what stdout would carry, atomically, except that the launch line (stderr, and the script's own
    header) names the file written instead of the default name."""
    plan = _plan_file(tmp_path, "mixtral_ep8")
    _, stdout_text, stdout_err = run_cli("export", str(plan), "--to", "megatron")
    target = tmp_path / "run" / "train.sh"
    target.parent.mkdir()  # --out refuses a missing folder (tests/test_cli_robustness.py)
    code, out, err = run_cli("export", str(plan), "--to", "megatron", "--out", str(target))
    assert code == 0 and out == ""
    default = "megatron_mixtral_8x7b.sh"
    assert stdout_err.splitlines()[-1].endswith(f"bash {default}") and err.splitlines()[-1].endswith(f"bash {target}")
    assert target.read_text() == stdout_text.replace(f" {default}", f" {target}")
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


# ---- torchtitan v0.2 TOML ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PLANS))
def test_torchtitan_toml_degrees_and_batches(tmp_path, name):
    text, plan = _export(name, "torchtitan", tmp_path)
    cfg = tomllib.loads(text)
    L, par, train = plan.layout, cfg["parallelism"], cfg["training"]
    mesh = (par["data_parallel_replicate_degree"] * par["data_parallel_shard_degree"] * par["tensor_parallel_degree"]
            * par["pipeline_parallel_degree"] * par["context_parallel_degree"])
    assert mesh == plan.cluster.world_size == L.world
    assert (par["data_parallel_replicate_degree"], par["data_parallel_shard_degree"]) == (L.dp_replicate, L.dp_shard)
    assert (par["tensor_parallel_degree"], par["pipeline_parallel_degree"]) == (L.tp, L.pp)
    assert (par["context_parallel_degree"], par["expert_parallel_degree"]) == (L.cp, L.ep)
    assert par["fsdp_reshard_after_forward"] == ("always" if L.zero == 3 else "never")
    assert train["global_batch_size"] == L.gbs and train["seq_len"] == L.seq
    # torchtitan accumulates global / (local * dp) times; pp splits local into local / microbatch_size micro-batches.
    accumulation = train["global_batch_size"] // (train["local_batch_size"] * L.dp)
    per_local = train["local_batch_size"] // par.get("pipeline_parallel_microbatch_size", train["local_batch_size"])
    microbatch = train["local_batch_size"] // per_local
    assert (accumulation * per_local, microbatch) == (L.gbs // (L.dp * L.mbs), L.mbs)
    # With pp the plan's bubble assumes every micro-batch is in one pipeline schedule, not accumulated outside it.
    assert accumulation == 1 if L.pp > 1 else per_local == 1
    assert cfg["activation_checkpoint"]["mode"] == L.recompute


def test_torchtitan_pipeline_parts_hold_every_layer_once_in_order(tmp_path):
    text, plan = _export("llama70b_tp8pp4", "torchtitan", tmp_path)
    par = tomllib.loads(text)["parallelism"]
    parts = par["module_fqns_per_model_part"]
    assert par["pipeline_parallel_schedule"] == "Interleaved1F1B"
    assert len(parts) == 4 * 2  # pp x vpp chunks; chunk c runs on rank c % pp
    assert [len([m for m in p if m.startswith("layers.")]) for p in parts] == [10] * 8
    flat = [m for p in parts for m in p]
    assert flat == ["tok_embeddings", *(f"layers.{i}" for i in range(80)), "norm", "output"]


def test_uneven_first_and_last_stages_reach_both_frameworks():
    model, cluster = load_model("llama3.1-70b"), load_cluster("dgx-h100:8")
    layout = Layout.from_dict({"tp": 8, "pp": 4, "mbs": 1, "gbs": 512, "seq": 8192, "first_stage_layers": 18,
                               "last_stage_layers": 18}, world=64)
    parts = tomllib.loads(export_plan("torchtitan", model, cluster, layout).text)["parallelism"]
    sizes = [len([m for m in p if m.startswith("layers.")]) for p in parts["module_fqns_per_model_part"]]
    assert sizes == [18, 22, 22, 18]  # (80 - 18 - 18) / 2 = 22 in the middle
    args = _megatron_flags(export_plan("megatron", model, cluster, layout).text)
    assert args["--decoder-first-pipeline-num-layers"] == "18" and args["--decoder-last-pipeline-num-layers"] == "18"


def test_torchtitan_notes_what_it_runs_differently(tmp_path):
    text, _ = _export("mixtral_ep8", "torchtitan", tmp_path)
    assert "# note: torchtitan ships no mixtral-8x7b" in text
    cfg = tomllib.loads(text)
    assert cfg["model"]["name"] == "mixtral"
    assert cfg["parallelism"]["expert_parallel_degree"] == 8 and cfg["parallelism"]["expert_tensor_parallel_degree"] == 1


# ---- torchtitan main Python recipe -------------------------------------------------------------------------------
def _call_kwargs(source: str, func: str) -> dict[str, Any]:
    """Keyword arguments of the first call to `func` in `source`, evaluated (they are literals and products)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == func:
            return {k.arg: eval(compile(ast.Expression(k.value), "<recipe>", "eval"), {"__builtins__": {}})
                    for k in node.keywords}
    raise AssertionError(f"no {func}(...) call")


@pytest.mark.parametrize("name", list(PLANS))
def test_torchtitan_recipe_degrees_and_batches(tmp_path, name):
    text, plan = _export(name, "torchtitan-py", tmp_path)
    L = plan.layout
    par, train = _call_kwargs(text, "ParallelismConfig"), _call_kwargs(text, "TrainingConfig")
    assert par["data_parallel_replicate_degree"] * par["data_parallel_shard_degree"] == L.dp
    assert (par["tensor_parallel_degree"], par["pipeline_parallel_degree"], par["context_parallel_degree"]) == (
        L.tp, L.pp, L.cp)
    assert par["enable_sequence_parallel"] == (L.sp and L.tp > 1)
    # torchtitan 0.3 accumulates global / (local * dp) times; pp cuts local into local / microbatch_size micro-batches.
    accumulation = train["global_batch_size"] // (train["local_batch_size"] * L.dp)
    per_local = train["local_batch_size"] // par.get("pipeline_parallel_microbatch_size", train["local_batch_size"])
    assert accumulation * per_local == L.gbs // (L.dp * L.mbs)
    assert accumulation == 1 or L.pp == 1  # with pp every micro-batch is in one pipeline schedule
    assert train.get("disable_cuda_graphs", False) == (L.pp > 1 or L.ep > 1)  # CUDA graphs do not run with pp or ep
    if L.pp > 1:
        parts = par["module_fqns_per_model_part"]
        assert len(parts) == L.pp * L.vpp and parts[-1][-1] == "lm_head"


# ---- Megatron-LM -----------------------------------------------------------------------------------------------
def _megatron_flags(script: str) -> dict[str, str]:
    """Flag -> value ("" for switches) of every `--flag` in the script's argument arrays."""
    tokens = shlex.split(script, comments=True)
    flags = {}
    for i, tok in enumerate(tokens):
        if tok.startswith("--"):
            nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
            flags[tok] = "" if nxt.startswith("--") or nxt == ")" else nxt
    return flags


@pytest.mark.parametrize("name", list(PLANS))
def test_megatron_args_degrees_and_batches(tmp_path, name):
    text, plan = _export(name, "megatron", tmp_path)
    f, L, model = _megatron_flags(text), plan.layout, plan.model
    tp, pp, cp = (int(f[k]) for k in ("--tensor-model-parallel-size", "--pipeline-model-parallel-size",
                                      "--context-parallel-size"))
    world = int(f["--nproc-per-node"]) * int(f["--nnodes"])
    dp = world // (tp * pp * cp)  # Megatron derives dp itself
    assert (tp, pp, cp, dp, world) == (L.tp, L.pp, L.cp, L.dp, plan.cluster.world_size)
    mbs, gbs = int(f["--micro-batch-size"]), int(f["--global-batch-size"])
    assert (mbs, gbs, int(f["--seq-length"])) == (L.mbs, L.gbs, L.seq)
    assert gbs % (mbs * dp) == 0  # Megatron's own rule
    if L.vpp > 1:
        assert int(f["--num-layers-per-virtual-pipeline-stage"]) * L.pp * L.vpp == model.n_layers
    assert ("--sequence-parallel" in f) == (L.sp and L.tp > 1)
    assert ("--use-distributed-optimizer" in f) == (L.zero >= 1)
    assert f.get("--data-parallel-sharding-strategy") == {3: "optim_grads_params", 2: "optim_grads"}.get(L.zero)
    assert f.get("--recompute-granularity", "none") == L.recompute
    assert int(f["--num-layers"]) == model.n_layers and int(f["--hidden-size"]) == model.hidden
    if model.is_moe:
        assert (int(f["--num-experts"]), int(f["--expert-model-parallel-size"])) == (model.n_experts, L.ep)
    assert int(f.get("--num-query-groups", model.n_heads)) == model.kv_heads


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("name", list(PLANS))
def test_megatron_script_is_valid_bash(tmp_path, name):
    text, _ = _export(name, "megatron", tmp_path)
    script = tmp_path / "train.sh"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


# ---- hybrid Mamba stacks: Megatron-LM pretrain_mamba.py -----------------------------------------------------------
HYBRID_PLAN = ("nemotron-h-56b", "dgx-h100:4", {"tp": 8, "dp": 4, "mbs": 1, "gbs": 96, "seq": 8192, "sp": True,
                                                "precision": "fp8", "fp8_params": True, "recompute": "none", "zero": 1})


def test_hybrid_exports_as_pretrain_mamba_and_matches_golden(run_cli, tmp_path):
    """Nemotron-H 56B as NVIDIA's DGXC recipe lays it out (tp 8, fp8): pretrain_mamba.py with the MambaStack spec,
    the block pattern and the Mamba-2 sizes as Megatron-LM's arguments.py names them; byte-identical to the golden
    file, and `check` reads the script back as the plan."""
    model, cluster, layout = HYBRID_PLAN
    path = tmp_path / "nemotronh.yaml"
    write_plan(path, model_ref=model, cluster_ref=cluster, layout=Layout.from_dict(layout))
    code, out, err = run_cli("export", str(path), "--to", "megatron")
    assert code == 0, err
    golden = GOLDEN / "nemotronh56b_tp8.sh"
    if REGEN:
        golden.write_text(out, encoding="utf-8")
    assert out == golden.read_text(encoding="utf-8"), f"regenerate with CLUSTERPLAN_REGEN_GOLDEN=1 if intended: {golden}"
    f = _megatron_flags(out)
    m = load_model(model)
    assert "--is-hybrid-model" in f and f["--hybrid-override-pattern"] == m.hybrid_pattern
    assert (f["--mamba-num-heads"], f["--mamba-head-dim"], f["--mamba-state-dim"], f["--mamba-num-groups"]) == (
        "256", "64", "256", "8")
    assert "--spec megatron.core.models.mamba.mamba_layer_specs mamba_stack_spec" in out
    assert "pretrain_mamba.py" in out and "pretrain_gpt.py" not in out
    assert "--squared-relu" in f and f["--position-embedding-type"] == "none"
    script = tmp_path / "run.sh"
    script.write_text(out, encoding="utf-8")
    code, out, err = run_cli("check", str(script), "--model", model, "--cluster", cluster)
    assert code == 0 and out.startswith("ok:"), err
    code, out, err = run_cli("check", str(script), "--model", "nemotron-h-8b", "--cluster", cluster)
    assert code != 0 and "--mamba-num-heads 256 but nemotron-h-8b has 128" in out + err


def test_a_pattern_starting_with_an_mlp_block_is_one_argparse_word():
    from clusterplan.frameworks.megatron import hybrid_args

    m = load_model("nemotron-h-8b").scaled(name="mlp-first", n_layers=3, hybrid_pattern="-M*")
    assert hybrid_args(m)[:2] == ["--is-hybrid-model", "--hybrid-override-pattern=-M*"]


# ---- DeepSpeed --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mixtral_ep8"])
def test_deepspeed_config_batches_and_zero(tmp_path, name):
    text, plan = _export(name, "deepspeed", tmp_path)
    cfg, L = json.loads(text), plan.layout
    dp = plan.cluster.world_size // (L.pp * cfg.get("sequence_parallel_size", 1))
    # DeepSpeed's _batch_assertion: train_batch_size == micro * accumulation * dp.
    assert cfg["train_batch_size"] == cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"] * dp
    assert (cfg["train_batch_size"], cfg["train_micro_batch_size_per_gpu"]) == (L.gbs, L.mbs)
    assert cfg["zero_optimization"]["stage"] == L.zero
    assert cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"]
    assert ("activation_checkpointing" in cfg) == (L.recompute == "full")


def test_deepspeed_refuses_hybrid_sharding():
    """DeepSpeed 0.19 rejects `mics_shard_size` (DeepSpeedConfigError, issue deepspeedai/DeepSpeed#8489)."""
    with pytest.raises(InfeasibleError, match="MiCS"):
        export_plan("deepspeed", load_model("llama3.1-8b"), load_cluster("dgx-h100:2"),
                    Layout.from_dict(PLANS["llama8b_zero3"][2]))


# ---- refusals: one line, exit 2 -------------------------------------------------------------------------------
@pytest.mark.parametrize(("layout", "target", "says"), [
    (Layout(pp=2, dp=8, gbs=64, zero=2), "deepspeed", "ZeRO stage 0 or 1"),
    (Layout(tp=8, dp=2, gbs=64, zero=3), "deepspeed", "AutoTP (tp=8) runs with ZeRO stage 0-2"),
    (Layout(tp=2, dp=8, gbs=64, zero=0), "torchtitan", "DDP (zero=0)"),
    (Layout(dp=16, gbs=64, precision="fp16"), "torchtitan", "not fp16"),
    (Layout(tp=3, dp=5, gbs=60), "megatron", "tp(3) = 15 != world(16)"),  # the plan does not fill the cluster
])
def test_impossible_combinations_exit_2_with_one_line(run_cli, tmp_path, layout, target, says):
    path = tmp_path / "plan.yaml"
    write_plan(path, model_ref="llama3.1-8b", cluster_ref="dgx-h100:2", layout=layout)
    code, out, err = run_cli("export", str(path), "--to", target)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and says in err


@pytest.mark.parametrize("content", [None, "format: clusterplan-plan\nversion: 1\nmodel: [unclosed\n",
                                     "format: something-else\n"])
def test_unreadable_plan_exits_2_with_one_line(run_cli, tmp_path, content):
    path = tmp_path / "plan.yaml"
    if content is not None:
        path.write_text(content)
    code, out, err = run_cli("export", str(path), "--to", "torchtitan")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and str(path) in err


def test_ulysses_context_parallel_in_each_framework():
    """cp=2 all-to-all: Megatron a2a, DeepSpeed sequence_parallel_size (its dp excludes it), torchtitan ring + note."""
    model, cluster = load_model("llama3.1-8b"), load_cluster("dgx-h100:2")
    layout = Layout(cp=2, cp_kind="a2a", dp=8, mbs=1, gbs=64, seq=16384, recompute="none")
    f = _megatron_flags(export_plan("megatron", model, cluster, layout).text)
    assert (f["--context-parallel-size"], f["--cp-comm-type"]) == ("2", "a2a")
    ds = json.loads(export_plan("deepspeed", model, cluster, layout).text)
    assert ds["sequence_parallel_size"] == 2
    assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * (16 // 2)
    titan = export_plan("torchtitan", model, cluster, layout)
    assert tomllib.loads(titan.text)["parallelism"]["context_parallel_degree"] == 2
    assert any("ring attention" in n for n in titan.notes)


def test_fp8_turns_on_torchtitan_float8_and_megatron_fp8():
    model, cluster = load_model("llama3.1-8b"), load_cluster("dgx-h100:2")
    layout = Layout(dp=16, gbs=64, precision="fp8")
    cfg = tomllib.loads(export_plan("torchtitan", model, cluster, layout).text)
    assert cfg["model"]["converters"] == ["quantize.linear.float8"]
    assert cfg["quantize"]["linear"]["float8"]["enable_fsdp_float8_all_gather"] is True
    f = _megatron_flags(export_plan("megatron", model, cluster, layout).text)
    assert f["--fp8-format"] == "hybrid" and "--bf16" in f


def test_zero_bubble_runs_as_torchtitan_zbv_with_two_chunks_per_rank():
    model, cluster = load_model("llama3.1-8b"), load_cluster("dgx-h100:2")
    layout = Layout(pp=4, dp=4, gbs=64, schedule="zb")
    par = tomllib.loads(export_plan("torchtitan", model, cluster, layout).text)["parallelism"]
    assert par["pipeline_parallel_schedule"] == "ZBVZeroBubble"
    assert len(par["module_fqns_per_model_part"]) == 8  # 32 layers = 8 chunks of 4
    megatron = export_plan("megatron", model, cluster, layout)
    assert any("zero-bubble" in n for n in megatron.notes)


def test_exporters_are_pure_functions_of_the_plan(tmp_path):
    """Same plan, same bytes; and the exporter does not write anything."""
    first, plan = _export("llama70b_tp8pp4", "megatron", tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    again = export_plan("megatron", plan.model, plan.cluster, plan.layout).text
    assert first == again and sorted(p.name for p in tmp_path.iterdir()) == before
    with pytest.raises(InfeasibleError):
        export_plan("deepspeed", plan.model, plan.cluster, plan.layout)


def test_deepseek_v3_layer_pattern_and_latent_attention_flags():
    """DeepSeek-V3 as Megatron's own example maps it: 3 dense layers then 58 MoE, MLA dims (B.2)."""
    model = load_model("deepseek-v3")
    layout = Layout(tp=1, pp=8, dp=32, ep=32, mbs=1, gbs=4096, seq=4096, first_stage_layers=5, last_stage_layers=8)
    f = _megatron_flags(export_plan("megatron", model, load_cluster("dgx-h100:32"), layout).text)
    assert f["--moe-layer-freq"] == "([0]*3+[1]*58)"
    assert (f["--num-experts"], f["--moe-router-topk"], f["--moe-ffn-hidden-size"]) == ("256", "8", "2048")
    assert (f["--q-lora-rank"], f["--kv-lora-rank"], f["--qk-pos-emb-head-dim"]) == ("1536", "512", "64")
    assert "--multi-latent-attention" in f and "--num-query-groups" not in f


def test_the_best_plan_of_clusterplan_plan_exports_to_every_framework(run_cli, tmp_path):
    """The workflow of the issue: `plan --out plan.yaml`, then `export plan.yaml --to ...` for each framework."""
    plan_path = tmp_path / "plan.yaml"
    code, _, err = run_cli("plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100:2", "--gbs", "256", "--seq", "4096",
                           "--fix", "tp=1,pp=1,zero=1,precision=bf16", "--top", "1", "--out", str(plan_path))
    assert code == 0, err  # bf16 pinned: DeepSpeed has no fp8 recipe (an fp8 plan is refused there, with the reason)
    layout = read_plan(plan_path).layout
    for target in TARGETS:
        code, out, err = run_cli("export", str(plan_path), "--to", target)
        assert code == 0 and out, err
    ds = json.loads(run_cli("export", str(plan_path), "--to", "deepspeed")[1])
    assert ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * 16 == 256 == ds["train_batch_size"]
    assert ds["train_micro_batch_size_per_gpu"] == layout.mbs


def test_megatron_export_carries_rope_and_router_settings_and_check_notes_a_different_base(tmp_path):
    """Llama 3.1 trains with RoPE base 500,000 and its long-context scaling (factor 8); DeepSeek-V3 routes with
    sigmoid scores, an expert bias, 8 groups of which 4 per token, weights x 2.5, and trains one MTP layer. The
    Megatron script says so; `check` of a script with another base reads the same layout and notes the base."""
    from clusterplan.frameworks import read_config
    from clusterplan.models.architecture.catalog import load_model
    from clusterplan.models.hardware.cluster import load_cluster
    from clusterplan.models.training.layout import Layout

    llama = load_model("llama3.1-8b")
    layout = Layout(tp=1, dp=8, mbs=1, gbs=64, seq=8192)
    text = export_plan("megatron", llama, load_cluster("dgx-h100:1"), layout).text
    assert "--rotary-base 500000" in text and "--use-rope-scaling" in text and "--rope-scaling-factor 8" in text
    ds = load_model("deepseek-v3")
    ds_layout = Layout(pp=8, ep=32, dp=32, mbs=1, gbs=1024, seq=4096, first_stage_layers=5, last_stage_layers=8)
    ds_text = export_plan("megatron", ds, load_cluster("dgx-h100:32"), ds_layout).text
    for flag in ("--moe-router-score-function sigmoid", "--moe-router-enable-expert-bias",
                 "--moe-router-num-groups 8", "--moe-router-group-topk 4", "--moe-router-topk-scaling-factor 2.5",
                 "--mtp-num-layers 1", "--rope-type yarn", "--rotary-scaling-factor 40", "--mscale-all-dim 1"):
        assert flag in ds_text, flag
    path = tmp_path / "other_base.sh"
    path.write_text(text.replace("--rotary-base 500000", "--rotary-base 10000"), encoding="utf-8")
    read = read_config(path, llama, 8)
    assert read.layout == read_config(_write(tmp_path / "same.sh", text), llama, 8).layout and read.mismatches == ()
    assert any("--rotary-base 10000" in n and "500000" in n for n in read.notes)


def test_megatron_export_names_the_activation_windows_and_sinks(tmp_path):
    """The MLP's activation and the attention's windows and sinks, as Megatron-LM's arguments.py names them: GPT-OSS
    runs a clamped quick GEGLU with (x_linear + 1) (transformers GptOssExperts), learnable sink logits and a 128-key
    window on every other layer (window (127, 0): query i attends keys i - 127 .. i, 128 of them); Nemotron a squared
    ReLU; Gemma 2 a GeGLU, which has no flag: the script keeps its three matrices (--swiglu) and says it trains SwiGLU.
    A script that drops them reads back with notes (tests/test_framework_parsers.py builds each in Megatron-Core)."""
    from clusterplan.frameworks import read_config
    from clusterplan.models.architecture.catalog import load_model
    from clusterplan.models.hardware.cluster import load_cluster
    from clusterplan.models.training.layout import Layout

    cluster, layout = load_cluster("dgx-h100:1"), Layout(dp=8, mbs=1, gbs=8, seq=4096)
    oss = load_model("gpt-oss-120b")
    exported = export_plan("megatron", oss, cluster, layout)
    f = _megatron_flags(exported.text)
    assert (f["--quick-geglu"], f["--activation-func-clamp-value"], f["--glu-linear-offset"]) == ("", "7", "1")
    assert (f["--softmax-type"], f["--window-size"], f["--window-attn-skip-freq"]) == ("learnable", "127,0", "2")
    assert "--swiglu" not in f and not exported.notes
    nemotron = _megatron_flags(export_plan("megatron", load_model("nemotron4-15b"), cluster, layout).text)
    assert "--squared-relu" in nemotron and "--swiglu" not in nemotron and "--window-size" not in nemotron
    assert nemotron["--rotary-percent"] == "0.5"  # NemotronConfig partial_rotary_factor: RoPE on half the head
    assert "--apply-layernorm-1p" in nemotron  # LayerNorm1P: scales by 1 + weight (TENorm zero_centered_gamma)
    nemo_text = export_plan("megatron", load_model("nemotron4-15b"), cluster, layout).text
    plain_norm = read_config(_write(tmp_path / "ln.sh", nemo_text.replace("--apply-layernorm-1p", "")),
                             load_model("nemotron4-15b"), 8).notes
    assert any("no --apply-layernorm-1p" in n for n in plain_norm)
    gemma = export_plan("megatron", load_model("gemma2-2b"), cluster, layout)
    assert "--swiglu" in _megatron_flags(gemma.text)
    assert any("GeGLU" in n and "trains SwiGLU" in n for n in gemma.notes)
    assert any("four norms per layer" in n for n in gemma.notes)  # Gemma 2's post-sublayer norms
    assert any("softcapping" in n for n in gemma.notes)
    granite = export_plan("megatron", load_model("granite-3.1-8b"), cluster, layout)
    assert any("multiplier" in n for n in granite.notes)
    olmoe = export_plan("megatron", load_model("olmoe-1b-7b"), cluster, layout)
    assert "--qk-layernorm" in _megatron_flags(olmoe.text) and any("over all heads" in n for n in olmoe.notes)
    llama = _megatron_flags(export_plan("megatron", load_model("llama3.1-8b"), cluster, layout).text)
    assert "--swiglu" in llama and not {"--window-size", "--squared-relu", "--softmax-type", "--rotary-percent"} & set(llama)
    assert llama["--attention-backend"] == "flash" and "--apply-layernorm-1p" not in llama
    # A hand-written GPT-OSS script with SwiGLU and no windows: the same layout, two notes.
    plain = exported.text.replace("--quick-geglu", "--swiglu").replace("--window-size 127,0", "")
    read = read_config(_write(tmp_path / "plain.sh", plain), oss, 8)
    assert read.layout == read_config(_write(tmp_path / "same.sh", exported.text), oss, 8).layout
    assert any("gated silu MLP but gpt-oss-120b has a gated quick_gelu" in n for n in read.notes)
    assert any("over the whole sequence but gpt-oss-120b has a 128-token window" in n for n in read.notes)
    assert not read_config(tmp_path / "same.sh", oss, 8).notes
    # GPT-OSS's sinks need Transformer Engine's fused (cuDNN) attention: FlashAttention takes no learnable softmax.
    assert f["--attention-backend"] == "fused"
    # Every layer windowed, or no sinks: the windows and sinks the script runs are read back against the model's.
    every = exported.text.replace("--window-attn-skip-freq 2", "")
    assert any("windows layers [0, 1, 2" in n for n in read_config(_write(tmp_path / "every.sh", every), oss, 8).notes)
    listed = exported.text.replace("--window-attn-skip-freq 2", "--window-attn-skip-freq [1,0]*18")
    assert not read_config(_write(tmp_path / "listed.sh", listed), oss, 8).notes
    sinkless = exported.text.replace("--softmax-type learnable", "")
    assert any("sink logit" in n for n in read_config(_write(tmp_path / "sinkless.sh", sinkless), oss, 8).notes)



def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


_DEEPEP_OVERLAP = Layout(tp=2, dp=8, ep=8, zero=2, mbs=4, gbs=64, seq=4096, moe_dispatcher="deepep",
                         moe_a2a_overlap=True)


@pytest.mark.parametrize("model_ref, layout, target, differences", [
    ("qwen3-30b-a3b", _DEEPEP_OVERLAP, "torchtitan", ("ZeRO-2 runs as FSDP", "moe_dispatcher=deepep", "moe_a2a_overlap")),
    ("qwen3-30b-a3b", _DEEPEP_OVERLAP, "torchtitan-py", ("ZeRO-2 runs as FSDP", "moe_dispatcher=deepep",
                                                         "moe_a2a_overlap")),
    ("llama3.1-8b", Layout(dp=16, gbs=64, zero=1), "torchtitan", ("ZeRO-1 runs as FSDP",)),
    ("llama3.1-8b", Layout(cp=2, cp_kind="a2a", dp=8, mbs=1, gbs=64, seq=16384, recompute="none"), "torchtitan",
     ("(Ulysses) exchange runs as its default all-gather", "ZeRO-1 runs as FSDP")),
    ("llama3.1-8b", Layout(pp=4, dp=4, gbs=64, schedule="zb"), "megatron", ("zero-bubble",)),
])
def test_export_says_each_difference_once(run_cli, tmp_path, model_ref, layout, target, differences):
    """Where the exporter's note and the stack's rule are about the same field (the framework runs something else),
    stderr says it once: the note, which says what runs instead, with the stack's re-plan hint. Before, the stack
    rule followed as a second warning ("stack torchtitan has no zero=2", "... no deepep token dispatcher")."""
    path, config = tmp_path / "plan.yaml", tmp_path / "config"
    write_plan(path, model_ref=model_ref, cluster_ref="dgx-h100:2", layout=layout)
    code, out, err = run_cli("export", str(path), "--to", target, "--out", str(config))
    assert code == 0 and out == ""
    warnings = [line for line in err.splitlines()
                if line.startswith("warning: ") and not line.startswith("warning: the exported config as")]
    assert len(warnings) == len(differences), err
    for difference in differences:
        said = [w for w in warnings if difference in w]
        assert len(said) == 1 and "re-plan with `clusterplan plan --stack" in said[0], err
        assert config.read_text().count(difference) == 1  # the note stays in the file
    assert "warning: stack " not in err


def test_export_prices_the_config_it_wrote_on_the_stack_that_runs_it(run_cli, tmp_path):
    """A megatron-core plan (ZeRO-2, no recompute: 77 GiB on 80 GB H100) exported to torchtitan runs as FSDP with
    the weights kept gathered and compiled loss: 153 GiB. `check` on the exported TOML says so; export now says it
    before the job is launched, with the same number, and still writes the file. Planned for torchtitan, the warning
    goes. fp8 on A100 is refused outright: no framework runs it."""
    layout = Layout(tp=4, pp=4, vpp=3, dp=4, zero=2, mbs=1, gbs=512, seq=8192, recompute="none", sp=True,
                    schedule="interleaved-1f1b", precision="fp8", first_stage_layers=19, last_stage_layers=19)
    plan, toml = tmp_path / "plan.yaml", tmp_path / "job.toml"
    write_plan(plan, model_ref="llama3.1-70b", cluster_ref="dgx-h100:8", layout=layout, stack="megatron-core")
    assert run_cli("estimate", "--plan", str(plan), "--format", "json")[0] == 0  # fits where it was planned
    code, _, err = run_cli("export", str(plan), "--to", "torchtitan", "--out", str(toml))
    assert code == 0 and toml.exists()
    said = [w for w in err.splitlines() if w.startswith("warning: the exported config as")]
    assert len(said) == 1 and "(planned for megatron-core): out of memory: peak 153.1 GiB" in said[0], err
    code, out, _ = run_cli("check", str(toml), "--model", "llama3.1-70b", "--cluster", "dgx-h100:8")
    assert code == 1 and "peak 153.1 GiB" in out
    fp8_a100 = tmp_path / "a100.yaml"
    write_plan(fp8_a100, model_ref="llama3.1-8b", cluster_ref="dgx-a100-80g:1",
               layout=Layout(tp=8, dp=1, gbs=64, seq=4096, precision="fp8"))
    code, out, err = run_cli("export", str(fp8_a100), "--to", "megatron")
    assert code == 2 and out == "" and "A100-SXM4-80GB has no fp8 tensor cores" in err
    code, out, _ = run_cli("check", str(fp8_a100))
    assert code == 1 and "has no fp8 tensor cores" in out


def test_plan_file_names_its_stack_and_check_prices_it_there(run_cli, tmp_path):
    """`plan --stack torchtitan --out` writes `stack: torchtitan`; `estimate --plan` and `check` price the plan on
    it unless --stack says otherwise (they used to re-price every plan file on megatron-core)."""
    import yaml

    path = tmp_path / "plan.yaml"
    code, _, _ = run_cli("plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--gbs", "64", "--seq", "4096",
                         "--stack", "torchtitan", "--out", str(path), "--quiet")
    assert code == 0 and yaml.safe_load(path.read_text())["stack"] == "torchtitan"
    code, out, _ = run_cli("estimate", "--plan", str(path), "--format", "json")
    assert code == 0 and json.loads(out)["stack"] == "torchtitan"
    code, out, _ = run_cli("estimate", "--plan", str(path), "--stack", "megatron-core", "--format", "json")
    assert json.loads(out)["stack"] == "megatron-core"
    plan = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**plan, "stack": "no-such-stack"}))
    code, _, err = run_cli("check", str(path))
    assert code == 2 and "no-such-stack" in err


def test_megatron_uneven_ends_that_vpp_does_not_divide_export_per_chunk(run_cli, tmp_path):
    """`plan` on Llama 3.1 70B / 64 H100 picks tp4 pp4 vpp3 with 19 layers on the first and last rank: Megatron-Core's
    --decoder-first/last-pipeline-num-layers need multiples of vpp, so export used to refuse the plan it was given.
    It now writes every chunk's layers (--pipeline-model-parallel-layout, chunk c on rank c % pp): rank 0 holds
    chunks 0, 4, 8 = 5 + 7 + 7 = 19, the middle ranks 3 x 7 = 21, the last 7 + 7 + 5 = 19; read back, the same
    layout and peak."""
    layout = Layout(tp=4, pp=4, vpp=3, dp=4, zero=2, mbs=1, gbs=512, seq=8192, recompute="none", sp=True,
                    schedule="interleaved-1f1b", precision="fp8", first_stage_layers=19, last_stage_layers=19)
    plan, script = tmp_path / "plan.yaml", tmp_path / "train.sh"
    write_plan(plan, model_ref="llama3.1-70b", cluster_ref="dgx-h100:8", layout=layout, stack="megatron-core")
    code, _, _ = run_cli("export", str(plan), "--to", "megatron", "--out", str(script))
    assert code == 0
    flags = _megatron_flags(script.read_text())
    text = flags["--pipeline-model-parallel-layout"].strip("'")
    assert text == "Et*5|" + "|".join(["t*7"] * 10) + "|t*5L"
    assert not {"--num-virtual-stages-per-pipeline-rank", "--num-layers-per-virtual-pipeline-stage",
                "--decoder-first-pipeline-num-layers"} & set(flags)
    _, plan_out, _ = run_cli("check", str(plan))
    code, out, _ = run_cli("check", str(script), "--model", "llama3.1-70b", "--cluster", "dgx-h100:8")
    assert code == 0 and "tp4 pp4v3" in out and plan_out.split("): ", 1)[1] == out.split("): ", 1)[1]
    try:  # Megatron-Core's own parser, where the test extra is installed (its import warns of missing TE / Apex)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from megatron.core.transformer.enums import LayerType
            from megatron.core.transformer.pipeline_parallel_layer_layout import PipelineParallelLayerLayout
    except ImportError:
        return
    parsed = PipelineParallelLayerLayout(text, pipeline_model_parallel_size=4)
    parsed.validate_layer_layout(num_layers=80, mtp_num_layers=0)
    per_chunk = [[chunk.count(LayerType.decoder) for chunk in rank] for rank in parsed.layout]  # [pp rank][vpp stage]
    assert per_chunk == [[5, 7, 7], [7, 7, 7], [7, 7, 7], [7, 7, 5]]


def test_deepspeed_autotp_plan_exports_and_reads_back(run_cli, tmp_path):
    """plan --stack deepspeed searches DeepSpeed's AutoTP training (stacks.yaml tp_sequence_parallel false,
    tp_max_zero 2, tp_alone): pinned tp 4, it offers ZeRO <= 2 without sequence parallelism; the export writes
    tensor_parallel.autotp_size and `check` reads the same layout and peak back. ZeRO-3 or a pipeline beside it is
    refused by name."""
    plan, ds = tmp_path / "plan.yaml", tmp_path / "ds.json"
    code, _, _ = run_cli("plan", "--model", "llama3.1-70b", "--cluster", "dgx-h100:8", "--gbs", "512", "--seq", "8192",
                         "--stack", "deepspeed", "--fix", "tp=4", "--out", str(plan), "--quiet")
    assert code == 0
    layout = read_plan(plan).layout
    assert layout.tp == 4 and layout.zero <= 2 and not layout.sp and layout.pp == layout.cp == layout.ep == 1
    code, _, _ = run_cli("export", str(plan), "--to", "deepspeed", "--out", str(ds))
    assert code == 0 and json.loads(ds.read_text())["tensor_parallel"] == {"autotp_size": 4}
    _, plan_out, _ = run_cli("check", str(plan))
    code, out, _ = run_cli("check", str(ds), "--model", "llama3.1-70b", "--cluster", "dgx-h100:8")
    assert code == 0 and plan_out.split("): ", 1)[1] == out.split("): ", 1)[1]
    for bad, says in ((Layout(tp=4, dp=16, zero=3, gbs=512, seq=8192, sp=False), "runs with ZeRO stage 0-2"),
                      (Layout(tp=4, pp=2, dp=8, zero=1, gbs=512, seq=8192, sp=False), "beside data parallelism only")):
        with pytest.raises(InfeasibleError, match=says):
            export_plan("deepspeed", load_model("llama3.1-70b"), load_cluster("dgx-h100:8"), bad)


def test_a2a_overlap_exports_delayed_wgrads_and_many_connections(tmp_path):
    """The 1F1B all-to-all overlap as the plan priced it: the experts' weight gradients after the backward all-to-all
    is issued (--delay-wgrad-compute) and the two streams on separate hardware queues (CUDA_DEVICE_MAX_CONNECTIONS=32,
    as the Megatron-MoE-ModelZoo runs it; Megatron-LM PR #6311: half the gain with 1). A script with one connection
    and no delayed weight gradients reads back with two notes."""
    from clusterplan.frameworks import read_config
    from clusterplan.models.architecture.catalog import load_model
    from clusterplan.models.hardware.cluster import load_cluster

    model, cluster = load_model("qwen3-30b-a3b"), load_cluster("dgx-h100:2")
    exported = export_plan("megatron", model, cluster, _DEEPEP_OVERLAP)
    f = _megatron_flags(exported.text)
    assert "--overlap-moe-expert-parallel-comm" in f and "--delay-wgrad-compute" in f
    assert "CUDA_DEVICE_MAX_CONNECTIONS=32" in exported.text
    assert any("CUDA_DEVICE_MAX_CONNECTIONS=32" in n and "Hopper" in n for n in exported.notes)  # tp 2
    assert not read_config(_write(tmp_path / "same.sh", exported.text), model, 16).notes
    plain = exported.text.replace("--delay-wgrad-compute", "").replace("CUDA_DEVICE_MAX_CONNECTIONS=32",
                                                                       "CUDA_DEVICE_MAX_CONNECTIONS=1")
    notes = read_config(_write(tmp_path / "plain.sh", plain), model, 16).notes
    assert any("without --delay-wgrad-compute" in n for n in notes)
    assert any("one hardware queue" in n for n in notes)


@pytest.mark.parametrize("stack, precision, compiled", [
    ("torchtitan-compile-loss", "bf16", ["model", "loss"]), ("torchtitan-compile", "bf16", ["model"]),
    ("torchtitan", "fp8", None), ("torchtitan-compile-loss", "fp8", ["model", "loss"]),
])
def test_torchtitan_export_compiles_what_the_plans_stack_compiles(run_cli, tmp_path, stack, precision, compiled):
    """[compile] follows the stack the plan was priced on, and `check` reads that stack back: a compiled bf16 plan
    was exported eager (75.1 GiB planned, 84.5 GiB as written: out of memory), an eager fp8 plan compiled (77.0 GiB
    planned, 56.5 GiB as written), each without a word."""
    import tomllib

    layout = Layout(tp=2, dp=4, zero=3, mbs=2, gbs=32, seq=8192, recompute="none", sp=True, precision=precision)
    plan, toml = tmp_path / "plan.yaml", tmp_path / "job.toml"
    write_plan(plan, model_ref="llama3.1-8b", cluster_ref="dgx-h100:1", layout=layout, stack=stack)
    code, _, err = run_cli("export", str(plan), "--to", "torchtitan", "--out", str(toml))
    assert code == 0, err
    doc = tomllib.loads(toml.read_text())
    assert (doc["compile"]["components"] if doc.get("compile", {}).get("enable") else None) == compiled
    assert ("float8 written without torch.compile" in err) is (compiled is None and precision == "fp8")
    assert "the exported config as" not in err  # no memory or stack difference read back
    code, out, _ = run_cli("check", str(toml), "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--format", "json")
    assert json.loads(out)["estimate"]["stack"] == stack
