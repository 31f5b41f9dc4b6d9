"""Layers kept in bf16 under fp8 (Layout.bf16_first_layers / bf16_last_layers; Megatron-Core first_last_layers_bf16),
as worked examples: which rank runs them, what each adds to its stage's time and memory, the rules Megatron-Core's
TransformerConfig imposes, and the Megatron-LM flags that carry them there and back."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from clusterplan.errors import BadInputError
from clusterplan.frameworks import export_plan, read_config
from clusterplan.frameworks.megatron import training_args
from clusterplan.hardware_db.stacks import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.bf16_layers import (
    as_bf16,
    bf16_layers_by_rank,
    bf16_position_counts,
    bf16_stage_layers,
)
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout, layout_problems, stack_problems
from clusterplan.models.training.memory import stage_params
from clusterplan.models.training.rules import RuleCode
from clusterplan.models.training.step import layer_cost, step_time


def fp8(**kw) -> Layout:
    return Layout(precision="fp8", **kw)


def test_ranks_hold_the_models_first_and_last_layers():
    # pp 1: the last 14 of Nemotron 3 Super's 88 pattern layers (its NVFP4 recipe) on the one rank.
    assert bf16_layers_by_rank(88, fp8(dp=64, bf16_last_layers=14)) == [tuple(range(74, 88))]
    # 32 layers, pp 4, vpp 2: chunks of 4, chunk c on rank c % 4. The first 2 sit in chunk 0 (rank 0); of the last
    # 5, 28-31 are chunk 7 (rank 3) and 27 ends chunk 6 (rank 2).
    layout = fp8(dp=2, pp=4, vpp=2, schedule="interleaved-1f1b", bf16_first_layers=2, bf16_last_layers=5)
    assert bf16_layers_by_rank(32, layout) == [(0, 1), (), (27,), (28, 29, 30, 31)]
    # An uneven split: 2 layers on the first rank, so 3 bf16 layers spill 1 onto rank 1.
    layout = fp8(dp=2, pp=3, first_stage_layers=2, bf16_first_layers=3)
    assert bf16_layers_by_rank(32, layout) == [(0, 1), (2,), ()]
    counts = bf16_position_counts(32, LayoutArrays.from_layouts([layout, fp8(dp=2, pp=3), fp8(dp=6, bf16_last_layers=4)]))
    assert [c.tolist() for c in counts] == [[2, 0, 4], [1, 0, 4], [0, 0, 4]]


def test_a_bf16_layer_adds_its_bf16_time_less_its_fp8_time():
    # Stage times in units of the average fp8 layer (1 s here): a bf16 layer of 1.5 s adds 0.5 on its rank.
    L = LayoutArrays.from_layouts([fp8(dp=2, pp=4, bf16_first_layers=2, bf16_last_layers=3)])
    shapes = ModelShapes.of(load_model("llama3-8b"))  # 32 layers: 8 per rank
    one = np.ones(1)
    first, middle, last = bf16_stage_layers(shapes, L, (8 * one, 8 * one, 8 * one), one,
                                            {"layer": (one, 1.5 * one)})
    assert (first[0], middle[0], last[0]) == (9.0, 8.0, 9.5)


def test_a_hybrids_bf16_layers_are_the_blocks_its_pattern_ends_with():
    # Nemotron-H 8B's pattern ends "...M*M-M-"? Whatever it holds: the addition is each of the last k characters'
    # own kind's (bf16 - fp8) time.
    model = load_model("nemotron-h-8b")
    shapes = ModelShapes.of(model)
    L = LayoutArrays.from_layouts([fp8(dp=8, bf16_last_layers=4)])
    times = {"mamba": (np.ones(1), 3.0 * np.ones(1)), "attention": (np.ones(1), 11.0 * np.ones(1)),
             "mlp": (np.ones(1), 1.25 * np.ones(1))}
    n = float(model.n_layers)
    first, _, last = bf16_stage_layers(shapes, L, (n * np.ones(1),) * 3, np.ones(1), times)
    added = {"M": 2.0, "*": 10.0, "-": 0.25}
    expected = n + sum(added[c] for c in model.hybrid_pattern[-4:])
    assert first[0] == last[0] == pytest.approx(expected)


def test_the_step_pays_each_microbatch_its_bf16_layers():
    # pp 1, dense: step(k bf16 layers) - step(0) = micro-batches x k x (bf16 layer - fp8 layer), exactly.
    model, cluster = load_model("llama3-8b"), load_cluster("dgx-h100:1")
    shapes, hw, stack = ModelShapes.of(model), HardwareRates.of(cluster), get_stack()
    base = fp8(dp=8, zero=2, gbs=64, seq=8192)
    L0, L4 = (LayoutArrays.from_layouts([replace(base, bf16_last_layers=k)]) for k in (0, 4))
    stack = stack.running(stack.fp8_recipes[0])
    delta = layer_cost(shapes, as_bf16(L0), hw, stack).total_s - layer_cost(shapes, L0, hw, stack).total_s
    assert delta[0] > 0  # bf16 GEMMs are slower than fp8 ones on H100
    steps = step_time(shapes, L4, hw, stack).step_s - step_time(shapes, L0, hw, stack).step_s
    assert steps[0] == pytest.approx(L0.microbatches[0] * 4 * delta[0], rel=1e-9)
    # Every layer in bf16 is bf16 training's layers (the LM head runs bf16 either way).
    all_bf16 = estimate(model, cluster, replace(base, bf16_first_layers=32))
    bf16 = estimate(model, cluster, replace(base, precision="bf16"))
    step = lambda e: e.to_json()["step_time_s"]  # noqa: E731
    assert step(all_bf16) == pytest.approx(step(bf16), rel=0.005)


def test_a_bf16_layer_keeps_no_fp8_weight_copy_and_saves_bf16_inputs():
    model, cluster = load_model("llama3-8b"), load_cluster("dgx-h100:1")
    base = fp8(dp=8, zero=1, gbs=64, seq=8192, fp8_params=False)
    e0, e2 = (estimate(model, cluster, replace(base, bf16_last_layers=k)) for k in (0, 2))
    L = LayoutArrays.from_layouts([base])
    one = stage_params(ModelShapes.of(model), L, np.ones(1), False, False)
    # Hopper keeps two fp8 copies (row-wise and transposed): 2 B per parameter (memory.fp8_weight_copy_bytes).
    copies = 2.0 * float(one.dense[0] + one.expert[0])
    m0, m2 = e0.evaluation.memory, e2.evaluation.memory
    assert float(m0.weights[0] - m2.weights[0]) == pytest.approx(2 * copies, rel=1e-9)
    assert float(m2.activations[0]) > float(m0.activations[0])  # bf16 saved inputs, 2 B where fp8 saves 1


def test_rules_megatron_core_imposes():
    model = load_model("llama3-8b")  # 32 layers
    codes = lambda layout: {p.code for p in layout_problems(model, layout, layout.world)}  # noqa: E731
    assert RuleCode.BF16_LAYERS not in codes(fp8(dp=2, pp=4, bf16_first_layers=8))
    assert RuleCode.BF16_LAYERS in codes(fp8(dp=2, pp=4, bf16_first_layers=9))  # > 32 // 4 per stage
    cluster = load_cluster("dgx-h100:1")
    delayed = estimate(model, cluster, fp8(dp=8, zero=2, gbs=64, fp8_recipe="delayed", bf16_last_layers=1))
    assert [r.code for r in delayed.reasons] == [RuleCode.BF16_LAYERS]
    assert stack_problems(fp8(dp=8, bf16_last_layers=1), get_stack("torchtitan"))
    assert not stack_problems(fp8(dp=8, bf16_last_layers=1), get_stack("megatron-core"))
    with pytest.raises(BadInputError, match="need precision=fp8"):
        Layout(dp=8, bf16_last_layers=1)
    assert Layout.parse("dp=8,bf16_last_layers=2").precision == "fp8"  # the count names fp8 training


def test_megatron_flags_carry_the_counts():
    args = training_args(fp8(dp=8, bf16_first_layers=1, bf16_last_layers=3), "fused")
    i = args.index("--first-last-layers-bf16")
    assert args[i:i + 5] == ["--first-last-layers-bf16", "--num-layers-at-start-in-bf16", "1",
                             "--num-layers-at-end-in-bf16", "3"]
    assert "--first-last-layers-bf16" not in training_args(fp8(dp=8), "fused")


def test_megatron_export_reads_back(tmp_path):
    model, cluster = load_model("llama3-8b"), load_cluster("dgx-h100:1")
    layout = fp8(dp=8, zero=2, gbs=64, seq=8192, bf16_first_layers=1, bf16_last_layers=3)
    path = tmp_path / "train.sh"
    path.write_text(export_plan("megatron", model, cluster, layout).text, encoding="utf-8")
    read = read_config(path, model, 8).layout
    assert (read.bf16_first_layers, read.bf16_last_layers) == (1, 3)
    # The flag alone: Megatron-LM's defaults, one layer at each end.
    text = export_plan("megatron", model, cluster, fp8(dp=8, zero=2, gbs=64, seq=8192)).text
    path.write_text(text.replace("--fp8-format hybrid", "--fp8-format hybrid --first-last-layers-bf16", 1),
                    encoding="utf-8")
    read = read_config(path, model, 8).layout
    assert (read.bf16_first_layers, read.bf16_last_layers) == (1, 1)


def test_plan_pins_fp8_and_searches_around_them(run_cli):
    code, out, _ = run_cli("plan", "--model", "llama3-8b", "--cluster", "dgx-h100:1", "--gbs", "64", "--seq", "8192",
                           "--fix", "bf16_last_layers=2", "--format", "json")
    assert code == 0
    plans = json.loads(out)["plans"]
    assert plans and all(p["layout"]["precision"] == "fp8" and p["layout"]["bf16_last_layers"] == 2 for p in plans)
    code, _, err = run_cli("plan", "--model", "llama3-8b", "--cluster", "dgx-h100:1", "--gbs", "64", "--seq", "8192",
                           "--fix", "bf16_last_layers=2", "--stack", "torchtitan")
    assert code == 2 and "torchtitan" in err and len(err.strip().splitlines()) == 1


def test_a_hybrids_mtp_block_runs_in_bf16_where_the_stack_keeps_it():
    # Megatron-Bridge keep_mtp_spec_in_bf16 (stacks.yaml hybrid_mtp_bf16): Nemotron 3 Super's 2 MTP depths of "*E"
    # each cost the bf16 block's time, not the MXFP8 one's: step(on) - step(off) = m x 2 x (bf16 - fp8 block).
    model, cluster = load_model("nemotron-3-super-120b-a12b"), load_cluster("gb300-nvl72:16")
    shapes, hw = ModelShapes.of(model), HardwareRates.of(cluster)
    on = get_stack().running("mxfp8")
    assert on.hybrid_mtp_bf16
    off = replace(on, hybrid_mtp_bf16=False)
    L = LayoutArrays.from_layouts([fp8(dp=64, ep=64, gbs=512, seq=8192, recompute="none", fp8_recipe="mxfp8",
                                       moe_dispatcher="hybridep", cuda_graphs="attn")])
    block = shapes.mtp_layer
    delta = layer_cost(block, as_bf16(L), hw, on).total_s - layer_cost(block, L, hw, on).total_s
    steps = step_time(shapes, L, hw, on).step_s - step_time(shapes, L, hw, off).step_s
    assert steps[0] == pytest.approx(L.microbatches[0] * 2 * delta[0], rel=1e-6)
    assert not get_stack("torchtitan").hybrid_mtp_bf16


def test_estimate_shows_where_they_run_and_what_one_costs(run_cli):
    code, out, _ = run_cli("estimate", "--model", "llama3-70b", "--cluster", "dgx-h100:8", "--layout",
                           "tp=4,pp=4,dp=4,gbs=128,seq=8192,fp8_params=1,bf16_first_layers=2,bf16_last_layers=2", "--format",
                           "json")
    assert code == 0
    b = json.loads(out)["bf16_layers"]
    assert (b["first"], b["last"], b["per_rank"]) == (2, 2, [2, 0, 0, 2])
    assert b["extra_ms_per_layer"]["layer"] > 0  # bf16 GEMMs on H100 run at half the fp8 rate
    code, out, _ = run_cli("estimate", "--model", "llama3-70b", "--cluster", "dgx-h100:8", "--layout",
                           "tp=4,pp=4,dp=4,gbs=128,seq=8192,precision=fp8,fp8_params=1", "--format", "json")
    assert code == 0 and "bf16_layers" not in json.loads(out)


def test_a_middle_rank_pays_for_the_bf16_layers_spilled_onto_it():
    # 32 layers on pp 3 with a 2-layer first stage: 3 bf16 first layers put one on rank 1, a middle rank (15 layers),
    # which adds 0.5 of an average layer to the slowest middle.
    L = LayoutArrays.from_layouts([fp8(dp=2, pp=3, first_stage_layers=2, bf16_first_layers=3)])
    shapes = ModelShapes.of(load_model("llama3-8b"))
    one = np.ones(1)
    first, middle, last = bf16_stage_layers(shapes, L, (2 * one, 15 * one, 15 * one), one,
                                            {"layer": (one, 1.5 * one)})
    assert (first[0], middle[0], last[0]) == (3.0, 15.5, 15.0)


def test_uneven_ends_with_virtual_stages_hold_their_own_layers():
    # Megatron-Core splits a 14-layer end rank's layers evenly over its 2 virtual chunks
    # (get_transformer_layer_offset with --decoder-first/last-pipeline-num-layers): 80 layers on pp 4 vpp 2 give
    # chunks 7 / 13 / 13 / 7 / 7 / 13 / 13 / 7, so the first 3 and last 3 layers sit on the end ranks.
    layout = fp8(tp=8, pp=4, vpp=2, dp=1, schedule="interleaved-1f1b", first_stage_layers=14, last_stage_layers=14,
                 bf16_first_layers=3, bf16_last_layers=3)
    assert bf16_layers_by_rank(80, layout) == [(0, 1, 2), (), (), (77, 78, 79)]


def test_nvfp4_has_no_per_stage_limit_and_a100_offers_bf16(run_cli):
    # Megatron-Core checks n_layers // pp (and delayed scaling) under fp8 only; fp4 training keeps any count.
    model = load_model("llama3-8b")
    nvfp4 = fp8(dp=2, pp=4, fp8_recipe="nvfp4", bf16_last_layers=9)
    assert RuleCode.BF16_LAYERS not in {p.code for p in layout_problems(model, nvfp4, 8)}
    assert RuleCode.BF16_LAYERS in {p.code for p in layout_problems(model, replace(nvfp4, fp8_recipe=""), 8)}
    # On GPUs without fp8 the nearest option is bf16 training, the bf16 layers dropped with it (exit 1, not 2).
    code, _, err = run_cli("estimate", "--model", "llama3.1-8b", "--cluster", "dgx-a100-80g:1", "--layout",
                           "tp=8,gbs=64,seq=4096,precision=fp8,bf16_last_layers=1")
    assert code == 1 and "no fp8 tensor cores" in err and "precision fp8 -> bf16" in err


def test_a_pipeline_across_gpu_types_refuses_them():
    # solver/hetero.py prices stages by type without them: a mixed-GPU layout with bf16 layers is refused in one rule.
    from pathlib import Path

    from clusterplan.solver.hetero import mixed_problems

    cluster = load_cluster(str(Path(__file__).parent / "fixtures" / "clusters" / "mixed_h100_a100.yaml"))
    layout = Layout(tp=8, pp=6, dp=1, gbs=64, seq=4096, bf16_last_layers=2, precision="fp8")
    codes = [p.code for p in mixed_problems(load_model("llama3-70b"), cluster, layout)]
    assert RuleCode.BF16_LAYERS in codes


def test_repeated_fix_options_pin_together(run_cli):
    # `--fix a --fix b` is one pin list (click would otherwise keep the last): a bf16 pin is not dropped silently.
    code, _, err = run_cli("plan", "--model", "llama3-8b", "--cluster", "dgx-h100:1", "--gbs", "64", "--seq", "8192",
                           "--fix", "bf16_last_layers=2", "--fix", "precision=bf16")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "need precision=fp8" in err
    code, out, _ = run_cli("plan", "--model", "llama3-8b", "--cluster", "dgx-h100:1", "--gbs", "64", "--seq", "8192",
                           "--fix", "tp=2", "--fix", "bf16_last_layers=2", "--format", "json")
    assert code == 0
    plans = json.loads(out)["plans"]
    assert plans and all(p["layout"]["tp"] == 2 and p["layout"]["bf16_last_layers"] == 2 for p in plans)


def test_the_hybrid_mtp_block_keeps_no_fp8_weight_copies():
    # Under hybrid_mtp_bf16 the MTP module's weights are bf16 alone: the last stage's weights drop the fp8 copies of
    # the MTP parameters it holds (Hopper per-tensor scaling: 2 B per parameter, row-wise and transposed).
    from clusterplan.models.training.estimate import stack_memory
    from clusterplan.models.training.memory import fp8_weight_copy_bytes

    model = load_model("nemotron-3-super-120b-a12b")
    shapes = ModelShapes.of(model)
    L = LayoutArrays.from_layouts([fp8(dp=64, ep=64, gbs=512, seq=8192, recompute="none")])
    on = get_stack().running("tensorwise")
    off = replace(on, hybrid_mtp_bf16=False)
    with_mtp = stage_params(shapes, L, np.zeros(1), False, True)
    without = stage_params(replace(shapes, mtp_layers=0), L, np.zeros(1), False, True)
    mtp_params = float(with_mtp.dense[0] - without.dense[0] + with_mtp.expert[0] - without.expert[0])
    assert mtp_params > 1e8  # one shared "*E" block: attention, shared expert, 512 / 64 experts, eh-proj
    drop = float(stack_memory(shapes, L, off).weights[0] - stack_memory(shapes, L, on).weights[0])
    assert drop == pytest.approx(mtp_params * fp8_weight_copy_bytes("tensorwise", False), rel=1e-9)


def test_megatron_export_says_a_hybrids_nvfp4_needs_a_newer_megatron_core():
    # megatron/core/ssm/mamba_block.py (0.16.1) MambaStack.forward enters get_fp8_context only: --fp4-format leaves
    # a hybrid in bf16 there, so the export says so.
    model, cluster = load_model("nemotron-3-super-120b-a12b"), load_cluster("gb300-nvl72:16")
    layout = fp8(dp=64, ep=64, gbs=512, seq=8192, recompute="none", fp8_recipe="nvfp4", bf16_last_layers=14)
    notes = " ".join(str(n) for n in export_plan("megatron", model, cluster, layout).notes)
    assert "MambaStack enters no fp4 context" in notes
    mxfp8 = export_plan("megatron", model, cluster, replace(layout, fp8_recipe="mxfp8", bf16_last_layers=0))
    assert "fp4 context" not in " ".join(str(n) for n in mxfp8.notes)
