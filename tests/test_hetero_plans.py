"""Mixed-GPU plans end to end: `plan --headroom-gib` caps every stage, `plan --out` saves the stages (GPU type, node,
layers), `check` / `estimate --plan` price them as `plan` printed them, and the Megatron and torchtitan exports carry
the per-stage layers and the node ranks of each GPU type, read back by `check` (the round trip of test_roundtrip.py
for mixed clusters). The cluster is tests/fixtures/clusters/mixed_h100_a100.yaml: 2 DGX H100 + 4 DGX A100 nodes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from clusterplan.errors import BadInputError, InfeasibleError
from clusterplan.frameworks import export_plan, read_config, runs_as
from clusterplan.frameworks.common import with_stage_ends
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.planfile import PipelineStage, read_plan, write_plan
from clusterplan.solver.hetero import evaluate_stages, hetero_plan

MIXED = str(Path(__file__).parent / "fixtures" / "clusters" / "mixed_h100_a100.yaml")
PLAN_ARGS = ("plan", "--model", "llama3.1-70b", "--cluster", MIXED, "--gbs", "256", "--seq", "4096", "--top", "1")
SUFFIX = {"megatron": ".sh", "torchtitan": ".toml", "torchtitan-py": ".py"}
A100 = ("A100-SXM4-80GB", "dgx-a100-80g")
H100 = ("H100-SXM5-80GB", "dgx-h100")
# A hand-written 6-stage split (tp8 dp1: 4 A100 stages, then 2 H100 stages) whose middle stages differ, so that
# Megatron's --decoder-first/last-pipeline-num-layers cannot say it.
SIX = (10, 11, 11, 11, 18, 19)
SIX_LAYOUT = Layout(tp=8, pp=6, dp=1, mbs=1, gbs=256, seq=4096, recompute="full", zero=1, sp=True)
SIX_STAGES = tuple(PipelineStage(gpu=g, node=n, layers=k) for (g, n), k in zip([A100] * 4 + [H100] * 2, SIX,
                                                                                 strict=True))


def _plan(run_cli, tmp_path: Path, *extra: str) -> tuple[dict, Path]:
    out = tmp_path / "plan.yaml"
    code, stdout, err = run_cli(*PLAN_ARGS, "--format", "json", "--out", str(out), *extra)
    assert code == 0, err
    return json.loads(stdout), out


# ---- headroom ---------------------------------------------------------------------------------------------------
def test_headroom_caps_every_stage_of_the_balanced_split():
    model, cluster = load_model("llama3.1-70b"), load_cluster(MIXED)
    loose = hetero_plan(model, cluster, 256, 4096, headroom_gib=0.0).balanced
    tight = hetero_plan(model, cluster, 256, 4096, headroom_gib=10.0).balanced
    # Without headroom the H100 stage runs within 10 GiB of its memory (25 layers, 69.9 of 79.6 GiB, 2-byte master
    # remainders); with 10 GiB asked for, no stage does (24 / 24 on the H100s).
    assert any(p + 10.0 > c for p, c in zip(loose.peak_gib, loose.capacity_gib, strict=True))
    assert all(p + 10.0 <= c for p, c in zip(tight.peak_gib, tight.capacity_gib, strict=True))
    assert tight.headroom_gib == 10.0 and tight.fits and sum(tight.layers) == 80


def test_plan_table_shows_each_stage_memory_under_the_headroom(run_cli):
    code, out, _ = run_cli(*PLAN_ARGS, "--headroom-gib", "6")
    assert code == 0
    text = out.split("mixed GPU types:", 1)[1]
    assert "less 6 GiB headroom" in text
    header = next(line for line in text.splitlines() if line.startswith("stage"))
    assert header.split()[:9] == ["stage", "GPU", "layers", "stage", "s", "peak", "GiB", "of", "GiB"]
    rows = [line.split() for line in text.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == int(text.split("pipeline of ", 1)[1].split()[0]) >= 2
    for row in rows:  # stage, GPU, first-last, (n), stage s, peak, of, free, ...
        peak, capacity, free = float(row[5]), float(row[6]), float(row[7])
        assert free == pytest.approx(capacity - peak, abs=0.11) and free >= 6.0


def test_infeasible_headroom_names_it(run_cli):
    with pytest.raises(InfeasibleError, match="headroom"):
        hetero_plan(load_model("llama3.1-70b"), load_cluster(MIXED), 256, 4096, headroom_gib=70.0)


# ---- plan --out -> check / estimate --plan ---------------------------------------------------------------------
def test_plan_out_saves_the_mixed_pipeline_and_check_prints_the_same_numbers(run_cli, tmp_path):
    data, path = _plan(run_cli, tmp_path)
    balanced = data["mixed_gpu_types"]["balanced"]
    plan = read_plan(path)
    assert [(st.gpu, st.node, st.layers) for st in plan.stages] == \
        [(st["gpu"], st["node"], st["layers"]) for st in balanced["stages"]]
    assert plan.layout.to_dict() == data["mixed_gpu_types"]["layout"]
    assert sum(st.layers for st in plan.stages) == 80 and plan.layout.pp == len(plan.stages) >= 2
    # `check` with the plan's headroom reports the per-stage memory and step time plan printed, digit for digit.
    code, out, _ = run_cli("check", str(path), "--headroom-gib", "2", "--format", "json")
    assert code == 0
    checked = json.loads(out)
    assert checked["mixed_gpu_types"] == balanced and checked["estimate"] is None
    code, out, _ = run_cli("estimate", "--plan", str(path), "--format", "json")
    assert code == 0
    estimated = json.loads(out)["mixed_gpu_types"]
    assert {k: v for k, v in estimated.items() if k != "headroom_gib"} == \
        {k: v for k, v in balanced.items() if k != "headroom_gib"}
    # The pipeline term, by hand: m = gbs / (dp * mbs) micro-batches at the slowest stage's pace plus pp - 1 stages
    # of fill and drain.
    lay = plan.layout
    m = 256 // (lay.dp * lay.mbs)
    slowest = max(st["stage_s"] for st in balanced["stages"])
    assert balanced["pipeline_s"] == pytest.approx((m + lay.pp - 1) * slowest, rel=1e-5)
    # ... and the step adds the sends and the slowest stage's gradient sync + optimizer step after the drain.
    tail = max(st["dp_comm_s"] + st["optimizer_s"] for st in balanced["stages"])
    assert balanced["step_time_s"] == pytest.approx(balanced["pipeline_s"] + balanced["pp_comm_s"] + tail, abs=3e-6)
    # The text check prints the stage table and the step as plan did.
    code, out, _ = run_cli("check", str(path))
    assert code == 0 and f"step {balanced['step_time_s']:.4g} s" in out and "A100-SXM4-80GB" in out


def test_check_fails_a_stage_over_its_memory_less_headroom(run_cli, tmp_path):
    _, path = _plan(run_cli, tmp_path)
    peaks = [(st.layers, p) for st, p in zip(read_plan(path).stages,
                                              evaluate_stages(load_model("llama3.1-70b"), load_cluster(MIXED),
                                                              read_plan(path).layout, read_plan(path).stages).peak_gib,
                                              strict=True)]
    fullest = max(range(len(peaks)), key=lambda i: peaks[i][1])
    code, out, _ = run_cli("check", str(path), "--headroom-gib", "10", "--format", "json")
    assert code == 1
    rules = [v["rule"] for v in json.loads(out)["violations"]]
    assert any(r.startswith(f"memory: stage {fullest} ") for r in rules), rules


def test_homogeneous_plan_files_have_no_stages(run_cli, tmp_path):
    out = tmp_path / "p.yaml"
    code, _, _ = run_cli("plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--gbs", "64", "--seq", "4096",
                         "--top", "1", "--out", str(out))
    assert code == 0
    doc = yaml.safe_load(out.read_text())
    assert list(doc) == ["format", "version", "model", "cluster", "layout", "stack", "prediction"]
    assert doc["stack"] == "megatron-core" and read_plan(out).stack == "megatron-core"
    assert read_plan(out).stages == ()
    assert os.listdir(tmp_path) == ["p.yaml"]  # written atomically: no temporary file left beside it


def test_write_plan_is_atomic_and_round_trips_stages(tmp_path):
    path = tmp_path / "six.yaml"
    path.write_text("old")
    write_plan(path, model_ref="llama3.1-70b", cluster_ref=MIXED, layout=SIX_LAYOUT, stages=SIX_STAGES)
    assert read_plan(path).stages == SIX_STAGES and sorted(os.listdir(tmp_path)) == ["six.yaml"]


@pytest.mark.parametrize("stages, says", [
    ([{"gpu": "B200", "node": "dgx-b200", "layers": 80}], "stages for pp(6)"),
    ([{"gpu": "A100-SXM4-80GB", "node": "dgx-a100-80g", "layers": 10} for _ in SIX], "hold 60 layers"),
    ([{"gpu": "A100-SXM4-80GB", "node": "dgx-a100-80g", "layers": n} for n in SIX], "no more left"),
    ([{"gpu": "B200", "node": "dgx-b200", "layers": n} for n in SIX], "does not have"),
    ([{"gpu": "A100-SXM4-80GB", "node": "dgx-a100-80g", "layers": 0} for _ in SIX], "positive integer"),
    ([{"gpu": "A100-SXM4-80GB", "layers": 10} for _ in SIX], "exactly gpu, node and layers"),
    ("A100", "must be a list"),
])
def test_bad_stages_exit_2_with_one_line(run_cli, tmp_path, stages, says):
    path = tmp_path / "bad.yaml"
    write_plan(path, model_ref="llama3.1-70b", cluster_ref=MIXED, layout=SIX_LAYOUT, stages=SIX_STAGES)
    doc = yaml.safe_load(path.read_text())
    doc["stages"] = stages
    path.write_text(yaml.safe_dump(doc))
    for args in (("check", str(path)), ("estimate", "--plan", str(path)), ("export", str(path), "--to", "megatron")):
        code, out, err = run_cli(*args)
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and says in err, (args, err)


# ---- export -> check -------------------------------------------------------------------------------------------
def _stage_lines(text: str) -> list[str]:
    return [line.split(" ", 1)[1] for line in text.splitlines() if line.startswith("# stage ")]


@pytest.mark.parametrize("target", list(SUFFIX))
def test_export_of_the_saved_plan_reads_back_the_same_stages(run_cli, tmp_path, target):
    data, path = _plan(run_cli, tmp_path)
    balanced = data["mixed_gpu_types"]["balanced"]
    config = tmp_path / f"job{SUFFIX[target]}"
    code, _, err = run_cli("export", str(path), "--to", target, "--out", str(config))
    assert code == 0, err
    assert "--node-rank $NODE_RANK" in err or target == "megatron"  # static node ranks: the stage sets the GPU type
    # Stage s is global ranks s*K .. (s+1)*K - 1 with K = tp * cp * dp, on node ranks s*K // 8 .. ((s+1)*K - 1) // 8.
    lay = data["mixed_gpu_types"]["layout"]
    per_stage = lay["tp"] * lay["cp"] * lay["dp"]
    lines = _stage_lines(config.read_text())
    assert len(lines) == len(balanced["stages"])
    for s, (line, st) in enumerate(zip(lines, balanced["stages"], strict=True)):
        lo, hi = s * per_stage, (s + 1) * per_stage - 1
        nodes = f"node rank {lo // 8}" if lo // 8 == hi // 8 else f"node ranks {lo // 8}-{hi // 8}"
        assert line == (f"stage {s}: layers {st['first_layer']}-{st['first_layer'] + st['layers'] - 1} "
                        f"({st['layers']}) on {st['gpu']} ({st['node']}), {nodes}, global ranks {lo}-{hi}")
    code, out, err = run_cli("check", str(config), "--model", "llama3.1-70b", "--cluster", MIXED, "--headroom-gib",
                             "2", "--stack", "megatron-core", "--format", "json")
    assert code == 0, (out, err)
    read = json.loads(out)["mixed_gpu_types"]
    assert [(s["gpu"], s["node"], s["layers"], s["first_layer"]) for s in read["stages"]] == \
        [(s["gpu"], s["node"], s["layers"], s["first_layer"]) for s in balanced["stages"]]
    if target == "megatron":
        assert read["step_time_s"] == balanced["step_time_s"]
    else:  # torchtitan has no ZeRO-1: its FSDP without resharding reads back as ZeRO-2, which megatron-core prices
        # with a reduce-scatter per micro-batch (Megatron-FSDP optim_grads): never faster than the plan's ZeRO-1
        assert read["step_time_s"] >= balanced["step_time_s"]
    if target == "megatron":  # Megatron runs the plan's ZeRO-1, so its memory is the plan's too
        assert read == balanced
        middle = {st["layers"] for st in balanced["stages"][1:-1]}
        # first/last flags say the split when the middle stages are equal, the layout flag otherwise
        assert ("--decoder-first-pipeline-num-layers" in config.read_text()) == (len(middle) <= 1)
        assert ("--pipeline-model-parallel-layout" in config.read_text()) == (len(middle) > 1)


@pytest.mark.parametrize("target", list(SUFFIX))
def test_six_uneven_stages_round_trip(tmp_path, target):
    model, cluster = load_model("llama3.1-70b"), load_cluster(MIXED)
    text = export_plan(target, model, cluster, SIX_LAYOUT, SIX_STAGES).text
    if target == "megatron":
        assert "--pipeline-model-parallel-layout 'Et*10|t*11|t*11|t*11|t*18|t*19L'" in text
        assert "--decoder-first-pipeline-num-layers" not in text
    path = tmp_path / f"six{SUFFIX[target]}"
    path.write_text(text)
    read = read_config(path, model, cluster.world_size)
    assert read.rank_layers == SIX
    assert read.stage_gpus == tuple([A100] * 4 + [H100] * 2)
    assert not [n for n in read.notes if "even split" in n]  # priced stage by stage, not evened out
    flat = lambda L: L.with_(first_stage_layers=0, last_stage_layers=0, pp_layers=())  # noqa: E731
    assert flat(read.layout) == flat(runs_as(target, model, with_stage_ends(SIX_LAYOUT, SIX_STAGES)))


def test_deepspeed_refuses_a_mixed_plan_with_the_reason(run_cli, tmp_path):
    _, path = _plan(run_cli, tmp_path)
    code, out, err = run_cli("export", str(path), "--to", "deepspeed")
    assert code == 2 and out == "" and err.count("\n") == 1 and "partition_method" in err


def test_stage_lines_must_name_the_cluster_s_gpus(run_cli, tmp_path):
    model, cluster = load_model("llama3.1-70b"), load_cluster(MIXED)
    path = tmp_path / "six.sh"
    path.write_text(export_plan("megatron", model, cluster, SIX_LAYOUT, SIX_STAGES).text)
    code, _, err = run_cli("check", str(path), "--model", "llama3.1-70b", "--cluster", "dgx-h100:6")
    assert code == 2 and err.count("\n") == 1 and "does not have" in err
    text = path.read_text().replace("# stage 1:", "# stage 7:")
    path.write_text(text)
    with pytest.raises(BadInputError, match="0, 1, 2"):
        read_config(path, model, cluster.world_size)


@pytest.mark.parametrize("layout, says", [("Et*10|t*11|t*11|t*11|t*18|t*18L", "places 79"),
                                          ("t*10|t*11|t*11|t*11|t*18|Et*19L", "embedding E must open"),
                                          ("Et*10|x*11|t*11|t*11|t*18|t*19L", "unknown layer character")])
def test_bad_megatron_layouts_exit_2(run_cli, tmp_path, layout, says):
    model, cluster = load_model("llama3.1-70b"), load_cluster(MIXED)
    text = export_plan("megatron", model, cluster, SIX_LAYOUT, SIX_STAGES).text
    path = tmp_path / "bad.sh"
    path.write_text(text.replace("Et*10|t*11|t*11|t*11|t*18|t*19L", layout))
    code, _, err = run_cli("check", str(path), "--model", "llama3.1-70b", "--cluster", MIXED)
    assert code == 2 and err.count("\n") == 1 and says in err, err


def test_megatron_layout_of_an_upstream_deepseek_script_is_read(tmp_path):
    """Megatron-MoE-ModelZoo's DeepSeek-V3 flag (pp 8 x vpp 4 with MTP): chunk totals, vpp from the chunk count."""
    model = load_model("deepseek-v3")
    path = tmp_path / "ds.sh"
    path.write_text("torchrun pretrain_gpt.py --num-layers 61 --pipeline-model-parallel-size 8 "
                    "--pipeline-model-parallel-layout \"Et*2|(tt|)*22t|(tt|)*7mL\" --expert-model-parallel-size 32 "
                    "--micro-batch-size 1 --global-batch-size 8192 --seq-length 4096\n")
    read = read_config(path, model, 1024)
    assert read.layout.vpp == 4 and read.layout.pp == 8
    # Chunks: [E t t], 22 x [t t], [t], 7 x [t t], [m L]; rank r holds chunks r, r + 8, r + 16, r + 24:
    # rank 0: 2 + 2 + 2 + 2; rank 7: chunks 7, 15, 23 ([t]) and 31 ([m L]): 2 + 2 + 1 + 0.
    assert read.rank_layers == (8, 8, 8, 8, 8, 8, 8, 5)
    assert (read.layout.first_stage_layers, read.layout.last_stage_layers) == (8, 5)


# ---- the frameworks' own code -----------------------------------------------------------------------------------
def _run(script: str, tmp_path: Path) -> dict:
    path = tmp_path / "check_script.py"
    path.write_text(textwrap.dedent(script), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=900, cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.slow
@pytest.mark.skipif(not _installed("megatron.core"), reason="needs megatron-core")
def test_megatron_core_takes_the_per_stage_layout(tmp_path):
    """TransformerConfig.__post_init__ parses and validates the exported layout; each rank builds the stage's layers."""
    model, cluster = load_model("llama3.1-70b"), load_cluster(MIXED)
    text = export_plan("megatron", model, cluster, SIX_LAYOUT, SIX_STAGES).text
    layout = text.split("--pipeline-model-parallel-layout ", 1)[1].split("\n", 1)[0].strip("'")
    (tmp_path / "job.json").write_text(json.dumps({"layout": layout, "n_layers": 80, "pp": 6}))
    result = _run("""
        import json
        import torch
        from megatron.core.transformer.enums import LayerType
        from megatron.core.transformer.transformer_config import TransformerConfig
        job = json.load(open("job.json"))
        cfg = TransformerConfig(num_layers=job["n_layers"], hidden_size=8192, num_attention_heads=64,
                                num_query_groups=8, ffn_hidden_size=28672, tensor_model_parallel_size=8,
                                pipeline_model_parallel_size=job["pp"], sequence_parallel=True,
                                pipeline_dtype=torch.bfloat16, pipeline_model_parallel_layout=job["layout"])
        lay = cfg.pipeline_model_parallel_layout
        print(json.dumps({"layers": [lay.layout[r][0].count(LayerType.decoder) for r in range(job["pp"])],
                          "vpp": lay.virtual_pipeline_model_parallel_size}))
    """, tmp_path)
    assert result == {"layers": list(SIX), "vpp": 1}


@pytest.mark.slow
@pytest.mark.skipif(not (_installed("torchtitan") and _installed("triton")), reason="needs torchtitan 0.3 (and triton)")
def test_torchtitan_builds_the_per_stage_recipe(tmp_path):
    """The recipe's Trainer.Config validates; its model parts are the stages, every module named once in order."""
    model, cluster = load_model("llama3.1-70b"), load_cluster(MIXED)
    (tmp_path / "six.py").write_text(export_plan("torchtitan-py", model, cluster, SIX_LAYOUT, SIX_STAGES).text)
    result = _run("""
        import json
        import six
        from torchtitan.distributed.parallel_dims import ParallelDims
        from torchtitan.distributed.pipeline_parallel import _get_pipeline_metadata
        cfg = six.clusterplan_llama3_1_70b()
        dims = ParallelDims.from_config(cfg.parallelism, 48)
        par = cfg.parallelism
        stages, _, _, _ = _get_pipeline_metadata(dims, par, cfg.model_spec.model)
        parts = par.module_fqns_per_model_part
        names = [m for p in parts for m in p]
        print(json.dumps({"stages": stages, "layers": [sum(m.startswith("layers.") for m in p) for p in parts],
                          "in_order": names == ["tok_embeddings", *[f"layers.{i}" for i in range(80)], "norm",
                                                "lm_head"]}))
    """, tmp_path)
    assert result == {"stages": 6, "layers": list(SIX), "in_order": True}


def test_validate_refuses_a_mixed_plan_with_one_line(run_cli, tmp_path):
    path = tmp_path / "six.yaml"
    write_plan(path, model_ref="llama3.1-70b", cluster_ref=MIXED, layout=SIX_LAYOUT, stages=SIX_STAGES)
    code, out, err = run_cli("validate", str(path), "--dry-run")
    assert code == 2 and out == "" and err.count("\n") == 1 and "mixed-GPU plan (6 stages on 2 GPU types)" in err


def test_three_stages_go_as_first_and_last_flags(tmp_path):
    """One middle stage: --decoder-first/last-pipeline-num-layers say the split; read back with its GPU types."""
    model, cluster = load_model("llama3.1-70b"), load_cluster(MIXED)
    layout = Layout(tp=8, pp=3, dp=2, mbs=2, gbs=256, seq=4096, recompute="none", zero=1, sp=True)
    stages = tuple(PipelineStage(gpu=g, node=n, layers=k) for (g, n), k in zip([A100, A100, H100], (16, 17, 47),
                                                                                strict=True))
    text = export_plan("megatron", model, cluster, layout, stages).text
    assert "--decoder-first-pipeline-num-layers 16" in text and "--decoder-last-pipeline-num-layers 47" in text
    assert "--pipeline-model-parallel-layout" not in text
    assert "# stage 2: layers 33-79 (47) on H100-SXM5-80GB (dgx-h100), node ranks 4-5, global ranks 32-47" in text
    path = tmp_path / "three.sh"
    path.write_text(text)
    read = read_config(path, model, cluster.world_size)
    assert read.rank_layers == (16, 17, 47) and read.stage_gpus == (A100, A100, H100)


def test_out_writes_one_types_nodes_when_they_beat_every_mixed_plan(run_cli, tmp_path):
    """Llama-3.1-8B on 2 DGX H100 + 4 DGX A100 at 64 x 4096: the balanced H100/A100 pipeline takes 1.161 s, the H100
    nodes alone 1.059 s. A new user's review found `--out` writing the slower mix; it writes the H100 plan on a
    one-group cluster, and the text says why."""
    args = ("plan", "--model", "llama3.1-8b", "--cluster", MIXED, "--gbs", "64", "--seq", "4096")
    code, stdout, _ = run_cli(*args, "--format", "json")
    mixed = json.loads(stdout)["mixed_gpu_types"]
    assert code == 0 and mixed["fastest_type_only"]["step_time_s"] < mixed["balanced"]["step_time_s"]
    out = tmp_path / "p.yaml"
    code, text, err = run_cli(*args, "--out", str(out))
    assert code == 0, err
    assert "run on those nodes alone; --out writes that plan" in text and "nodes alone" in err
    plan = read_plan(out)
    assert {g.gpu.name for g in plan.cluster.groups} == {"H100-SXM5-80GB"} and plan.layout.world == 16


def test_the_answer_comes_first_on_a_mixed_cluster(run_cli):
    """The ranked table of a mixed cluster splits layers evenly, paced by the slowest type: Llama-3.1-8B on 2 DGX H100
    + 4 DGX A100 at 256 x 4096 has #1 at 6.227 s there, while the balanced pipeline takes 3.719 s and the H100 nodes
    alone 4.136 s. A new user read the table's #1 as the answer; the fastest of the three is named first (text) and
    in JSON `best_on_cluster`, the same choice `--out` writes. At 64 x 4096 the H100 nodes alone win."""
    args = ("plan", "--model", "llama3.1-8b", "--cluster", MIXED, "--seq", "4096")
    code, stdout, _ = run_cli(*args, "--gbs", "256", "--format", "json")
    data = json.loads(stdout)
    best, mixed = data["best_on_cluster"], data["mixed_gpu_types"]
    assert code == 0 and best["choice"] == "mixed_pipeline" and best["where"] == "mixed_gpu_types.balanced"
    assert best["step_time_s"] == mixed["balanced"]["step_time_s"] < mixed["fastest_type_only"]["step_time_s"]
    assert best["step_time_s"] < data["plans"][0]["step_time_s"]
    code, text, _ = run_cli(*args, "--gbs", "256")
    assert text.splitlines()[0].startswith("fastest on this mixed cluster: the pipeline balanced across the GPU types")
    code, stdout, _ = run_cli(*args, "--gbs", "64", "--format", "json")
    best = json.loads(stdout)["best_on_cluster"]
    assert best["choice"] == "one_gpu_type" and best["gpu"] == "H100-SXM5-80GB"


def test_the_mixed_answer_has_days_and_dollars_with_tokens(run_cli):
    """With --tokens, the fastest answer of a mixed cluster carries its days and dollars as the table's rows do
    (goodput.time_to_train, failures included). Worked example, 1e12 tokens of Llama-3.1-8B at 256 x 4096:
    - the balanced pipeline on all 6 nodes: 1e12 / (256 x 4096 / step s) / 86,400 s days without failures, on
      16 H100 at $2.69 + 32 A100-80GB at $1.60 per GPU-hour (prices.yaml's default rule: each type's cheapest
      on-demand row, RunPod and Hyperstack) = $94.24 per hour;
    - at 64 x 4096 the H100 nodes alone win: 16 GPUs at $2.69 = $43.04 per hour, and 2 nodes fail less often than 6
      (fewer failures per day than the whole cluster)."""
    args = ("plan", "--model", "llama3.1-8b", "--cluster", MIXED, "--seq", "4096", "--tokens", "1e12",
            "--format", "json")
    code, stdout, _ = run_cli(*args, "--gbs", "256")
    best = json.loads(stdout)["best_on_cluster"]
    train = best["time_to_train"]
    assert code == 0 and best["choice"] == "mixed_pipeline"
    assert train["days_without_failures"] == pytest.approx(1e12 / (256 * 4096 / best["step_time_s"]) / 86400,
                                                           rel=1e-5)
    assert train["usd_per_hour"] == pytest.approx(16 * 2.69 + 32 * 1.60, rel=1e-6) and train["gpus"] == 48
    assert train["days"] >= train["days_without_failures"]
    assert train["usd"] == pytest.approx(train["days"] * 24 * train["usd_per_hour"], rel=1e-4)
    code, stdout, _ = run_cli(*args, "--gbs", "64")
    alone = json.loads(stdout)["best_on_cluster"]
    assert alone["choice"] == "one_gpu_type"
    assert alone["time_to_train"]["usd_per_hour"] == pytest.approx(16 * 2.69, rel=1e-6)
    assert alone["time_to_train"]["nodes"] == 2
    assert (alone["time_to_train"]["failures"]["unexpected_per_day"]
            < train["failures"]["unexpected_per_day"])  # 2 nodes of 16 GPUs fail less often than 6 of 48
    code, text, _ = run_cli(*args[:-2], "--gbs", "256")
    assert f"({train['days']:.4g} days, ${train['usd']:,.0f} to train 1e+12 tokens, failures included)" in text


def test_time_to_train_names_the_mixed_answer_that_trains_soonest(run_cli):
    """Under time-to-train a mixed cluster's first line names whichever of its three answers has the fewest expected
    days: Llama-3.1-70B at 256 x 4096 on 2 H100 + 4 A100 nodes, 1e12 tokens. The table's even split is paced by the
    A100s (plan #1 ~560 days); the balanced pipeline takes ~371 days on the same 48 GPUs, so it is named first."""
    args = ("plan", "--model", "llama3.1-70b", "--cluster", MIXED, "--gbs", "256", "--seq", "4096", "--tokens",
            "1e12", "--objective", "time-to-train")
    code, stdout, _ = run_cli(*args, "--format", "json")
    data = json.loads(stdout)
    best = data["best_on_cluster"]
    assert code == 0 and best["choice"] == "mixed_pipeline" and best["objective"] == "time-to-train"
    assert best["time_to_train"]["days"] < 0.7 * data["plans"][0]["time_to_train"]["days"]
    _, text, _ = run_cli(*args)
    assert text.splitlines()[0].startswith("fewest days to train on this mixed cluster: the pipeline balanced across "
                                           "the GPU types")


def test_cost_to_train_compares_the_mixed_answers_with_the_tables_row():
    """Under cost-to-train the table already ranks one type's node counts (search.sub_clusters), so plan #1 may be
    cheaper than both mixed answers; best_choice_to_train names the least of the three by dollars, ties to plan #1,
    and a row without a price never wins. Llama-3.1-70B at 256 x 4096, 1e12 tokens: the balanced pipeline over all
    48 GPUs costs ~$0.84 M (16 H100 at $2.69 + 32 A100-80GB at $1.60 per GPU-hour; ~$1.47 M at the $2.99 / $3.67 of
    gpus.yaml before prices.yaml became the one table), the H100 nodes alone less (~$0.58 M on 16 GPUs)."""
    from clusterplan.models.architecture.catalog import load_model
    from clusterplan.models.hardware.cluster import load_cluster
    from clusterplan.solver.hetero import best_choice_to_train, choice_time_to_train, hetero_plan

    model, cluster = load_model("llama3.1-70b"), load_cluster(MIXED)
    mixed = hetero_plan(model, cluster, 256, 4096)
    usd = {c: choice_time_to_train(mixed, c, model, cluster, 1e12)["usd"] for c in ("one_gpu_type", "mixed_pipeline")}
    assert usd["mixed_pipeline"] == pytest.approx(0.838e6, rel=0.01)
    assert usd["one_gpu_type"] == pytest.approx(0.581e6, rel=0.01)
    pick = lambda row: best_choice_to_train(mixed, row, "cost-to-train", model, cluster, 1e12)  # noqa: E731
    assert pick({"days": 600.0, "usd": 0.9 * usd["one_gpu_type"]}) == ("ranked", None)
    assert pick({"days": 600.0, "usd": usd["one_gpu_type"]})[0] == "ranked"  # a tie goes to plan #1
    choice, train = pick({"days": 560.0, "usd": 2.2e6})
    assert choice == "one_gpu_type" and train is not None and train["usd"] == usd["one_gpu_type"]
    assert pick({"days": 1.0, "usd": None})[0] == "one_gpu_type"  # no price: never the answer
    # time-to-train ranks by days: the balanced pipeline's ~371 days beat a 560-day row
    assert best_choice_to_train(mixed, {"days": 560.0, "usd": 1.0}, "time-to-train", model,
                                cluster, 1e12)[0] == "mixed_pipeline"


def test_no_best_on_cluster_line_on_one_gpu_type(run_cli):
    """A homogeneous cluster has one answer, plan #1: no summary line, no JSON key."""
    code, stdout, _ = run_cli("plan", "--model", "llama3.1-8b", "--cluster", "dgx-h100:2", "--gbs", "64", "--seq",
                              "4096", "--format", "json")
    assert code == 0 and "best_on_cluster" not in json.loads(stdout)


def test_mixed_stages_keep_master_remainders_as_estimate_does(run_cli, tmp_path):
    """Megatron-Core's precision-aware distributed optimizer keeps 2-byte master remainders where a full fp32 master
    took 4 (memory.Remainders; ZeRO-1, bf16). A new user's pass found the mixed pipeline's stages priced with the
    full master whatever `precision_aware` said. Each stage now holds what estimate's stack_memory holds: turning the
    remainders off adds 2 B per parameter of the stage over dp, 80 layers of Llama-3.1-70B over 6 stages at tp 8."""
    peaks = {}
    for aware in (True, False):
        path = tmp_path / f"six_{aware}.yaml"
        write_plan(path, model_ref="llama3.1-70b", cluster_ref=MIXED, layout=replace(SIX_LAYOUT, precision_aware=aware),
                   stages=SIX_STAGES)
        code, out, _ = run_cli("estimate", "--plan", str(path), "--format", "json")
        assert code == 0
        peaks[aware] = [s["peak_gib"] for s in json.loads(out)["mixed_gpu_types"]["stages"]]
    params_per_layer = load_model("llama3.1-70b").total_params() / 80 / 8  # per tp rank, roughly (embedding aside)
    for aware, full, stage in zip(peaks[True], peaks[False], SIX_STAGES, strict=True):
        saved_gib = full - aware
        assert saved_gib == pytest.approx(2 * stage.layers * params_per_layer / 2**30, rel=0.15)
