"""Parallel attention / MLP layers (ModelSpec.parallel_block): x + attn(norm(x)) + mlp(norm'(x)), GPT-J's formulation
as Falcon, GPT-NeoX / Pythia and Cohere run it (transformers FalconDecoderLayer, GPTNeoXLayer use_parallel_residual,
CohereDecoderLayer / Cohere2DecoderLayer).

The FLOPs are a sequential layer's. What changes, worked by hand below: the parameter count (one norm where the
branches share it), the activations kept for backward (one residual input for both norms; with one norm, one norm
output for both the qkv and the MLP input), the norm kernels' traffic, and which stacks can train it (stacks.yaml
parallel_blocks: DeepSpeed, which trains the Hugging Face model as built).

Configs: tests/fixtures/hf/{falcon-7b, falcon-40b, cohere-command-r, cohere2}, transformers' configuration classes at
their defaults or the released sizes (each file's `_source`); every count equals transformers' model on the meta
device.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from clusterplan.errors import BadInputError
from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.hf import spec_from_hf
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.compute import norm_bytes
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.memory import RECOMPUTE_NONE, layer_activation_bytes
from clusterplan.models.training.rules import RuleCode
from tests.conftest import hf_config, transformers_count

HF = Path(__file__).parent / "fixtures" / "hf"






@pytest.mark.parametrize("name, overrides", [
    ("falcon-7b", {}), ("falcon-40b", {}), ("cohere-command-r", {}), ("cohere2", {}), ("gpt-j-6b", {}),
    ("falcon-7b", {"parallel_attn": False}),  # sequential Falcon: input and post-attention norms
    ("falcon-7b", {"multi_query": False, "bias": True}),  # Falcon-RW style: MHA, biased linears
    ("falcon-40b", {"num_ln_in_parallel_attn": 1}),  # new architecture with one shared norm
    ("cohere-command-r", {"use_qk_norm": True}),  # per-head q / k norms over (heads, head_dim)
])
def test_count_equals_transformers_on_meta_device(name, overrides):
    raw = {**hf_config(name), **overrides}
    assert spec_from_hf(raw, name=name).total_params() == transformers_count(raw)


def test_falcon_7b_by_hand():
    spec = load_model(str(HF / "falcon-7b"))
    # hidden 4544, 71 heads of 64, one K/V head (multi_query), ffn 18176 (4h), no biases, LayerNorm (weight + bias),
    # one norm per layer (parallel_attn), embedding tied.
    # Per layer: qkv 4544 x (4544 + 2 x 64) = 21,229,568; dense 4544^2 = 20,647,936; MLP 2 x 4544 x 18176 =
    # 165,183,488; norm 2 x 4544 = 9,088: 207,070,080. x 32 = 6,626,242,560, + embedding 65,024 x 4,544 =
    # 295,469,056 + final norm 9,088 = 6,921,720,704.
    assert (spec.parallel_block, spec.norms_per_layer, spec.kv_heads, spec.position) == (True, 1, 1, "rope")
    assert spec.layer_params(0) == 207_070_080
    assert spec.total_params() == 6_921_720_704
    forty = load_model(str(HF / "falcon-40b"))
    assert (forty.parallel_block, forty.norms_per_layer, forty.kv_heads) == (True, 2, 8)
    assert load_model(str(HF / "pythia-1.4b")).parallel_block  # GPTNeoXConfig use_parallel_residual defaults true


def _arrays(**kw) -> LayoutArrays:
    return LayoutArrays.from_layouts([Layout(**{**dict(dp=8, mbs=1, gbs=8, seq=2048, recompute="none"), **kw})])


def _bytes(spec) -> float:
    return float(layer_activation_bytes(ModelShapes.of(spec), _arrays(), False, np.array([RECOMPUTE_NONE]))[0])


def test_gpt_j_by_hand():
    # GPT-J 6B: hidden 4096, 16 heads of 256, ffn 16384 (4h), 28 layers, vocab 50400; q/k/v/out unbiased, the MLP and
    # the LM head biased, one LayerNorm (weight + bias) per layer, RoPE on 64 of 256 dimensions, untied.
    # Layer: 4 x 4096^2 = 67,108,864; MLP 2 x 4096 x 16384 + 16384 + 4096 = 134,238,208; norm 8,192: 201,355,264.
    # x 28 = 5,637,947,392; embedding 50,400 x 4,096 = 206,438,400 twice (head untied) + head bias 50,400 + final
    # norm 8,192: 6,050,882,784.
    spec = load_model(str(HF / "gpt-j-6b"))
    assert (spec.parallel_block, spec.norms_per_layer, spec.attn_out_bias, spec.lm_head_bias) == (True, 1, False, True)
    assert spec.rotary_fraction == 0.25 and spec.layer_params(0) == 201_355_264
    assert spec.total_params() == 6_050_882_784


def test_activations_kept_by_hand():
    # Against the same model run sequentially, per layer and micro-batch at 2,048 tokens, bf16, no SP:
    # one norm: the MLP's norm input (2 B x tokens x h) and its norm output (2 B x tokens x h) are not kept apart:
    # 4 x 2048 x 4544 = 37,224,448 B less. Two norms (Falcon-40B): only the second norm input, 2 x 2048 x 8192 =
    # 33,554,432 B less.
    seven = load_model(str(HF / "falcon-7b"))
    sequential = replace(seven, parallel_block=False, norms_per_layer=2)
    assert _bytes(sequential) - _bytes(seven) == 4 * 2048 * 4544
    forty = load_model(str(HF / "falcon-40b"))
    assert _bytes(replace(forty, parallel_block=False)) - _bytes(forty) == 2 * 2048 * 8192


def test_one_shared_norm_runs_one_norm_kernel():
    # norm_bytes: read + write h at 2 B per token and norm: 2 norms 2 x 4 x 2048 x 4544, one shared norm half that.
    seven = load_model(str(HF / "falcon-7b"))
    L = _arrays()
    assert float(norm_bytes(ModelShapes.of(seven), L)[0]) == 4 * 2048 * 4544
    assert float(norm_bytes(ModelShapes.of(replace(seven, parallel_block=False, norms_per_layer=2)), L)[0]) == \
        2 * 4 * 2048 * 4544


def test_the_flops_are_a_sequential_layers():
    seven = load_model(str(HF / "falcon-7b"))
    cluster = load_cluster("dgx-h100:1")
    layout = Layout(dp=8, zero=3, mbs=1, gbs=64, seq=2048, recompute="full")
    stack = get_stack("deepspeed")
    par = estimate(seven, cluster, layout, stack=stack).to_json()
    seq = estimate(replace(seven, parallel_block=False, norms_per_layer=2), cluster, layout, stack=stack).to_json()
    # model FLOPs per step identical (MFU x step time), the parallel layer's norms a little cheaper
    assert par["mfu"] * par["step_time_s"] == pytest.approx(seq["mfu"] * seq["step_time_s"], rel=1e-5)  # 6 figures
    assert par["step_time_s"] < seq["step_time_s"]


def test_stacks_that_build_sequential_blocks_refuse_it(run_cli, tmp_path):
    seven = load_model(str(HF / "falcon-7b"))
    cluster = load_cluster("dgx-h100:1")
    layout = Layout(dp=8, zero=3, mbs=1, gbs=64, seq=2048)
    for name in ("megatron-core", "torchtitan", "nanotron"):
        est = estimate(seven, cluster, layout, stack=get_stack(name))
        assert not est.feasible and [r.code for r in est.reasons] == [RuleCode.STACK], name
        assert "runs them in parallel: use --stack deepspeed" in est.reasons[0].message
    assert estimate(seven, cluster, layout, stack=get_stack("deepspeed")).feasible
    model = str(HF / "falcon-7b")
    code, _, err = run_cli("plan", "--model", model, "--cluster", "dgx-h100:1", "--gbs", "64", "--seq", "2048")
    assert code == 2 and "use --stack deepspeed" in err and "Traceback" not in err
    plan = tmp_path / "falcon.yaml"
    code, out, _ = run_cli("plan", "--model", model, "--cluster", "dgx-h100:1", "--gbs", "64", "--seq", "2048",
                           "--stack", "deepspeed", "--top", "1", "--out", str(plan))
    assert code == 0 and "falcon-7b" in out and plan.exists()
    for target in ("megatron", "megatron-bridge", "torchtitan"):
        code, out, err = run_cli("export", str(plan), "--to", target, "--out", str(tmp_path / "run.sh"))
        assert code == 2 and out == "" and "export --to deepspeed" in err, target
        assert not (tmp_path / "run.sh").exists()
    code, out, _ = run_cli("export", str(plan), "--to", "deepspeed")
    assert code == 0 and '"train_micro_batch_size_per_gpu"' in out


def test_spec_rules():
    seven = load_model(str(HF / "falcon-7b"))
    with pytest.raises(BadInputError, match="norms_per_layer 1 needs parallel_block"):
        replace(seven, parallel_block=False)
    with pytest.raises(BadInputError, match="parallel_block is modelled for dense"):
        replace(load_model("mixtral-8x7b"), parallel_block=True)


def test_serving_names_the_tensor_parallel_sizes_that_divide_the_heads(run_cli):
    # Falcon-7B's 71 heads (a prime): tensor parallelism 1 only; Llama 3.1 70B's 64: 1 .. 64.
    code, _, err = run_cli("serve-estimate", "--model", str(HF / "falcon-7b"), "--gpu", "H100", "--tp", "2",
                           "--concurrency", "4", "--input-len", "1000", "--output-len", "100")
    assert code == 2 and err.strip() == "error: --tp 2 does not divide falcon-7b's 71 attention heads; use a divisor: 1"
    code, _, err = run_cli("serve-estimate", "--model", "llama3.1-70b", "--gpu", "H100", "--tp", "3",
                           "--concurrency", "4", "--input-len", "1000", "--output-len", "100")
    assert code == 2 and err.strip().endswith("use a divisor: 1, 2, 4, 8, 16, 32 or 64")


def test_validate_refuses_a_parallel_layer_it_would_build_sequentially():
    # runtime/model.py builds attention, then the MLP on its output: validating Falcon or Pythia would compare the
    # prediction with another model's step.
    from clusterplan.errors import UnsupportedModelError
    from clusterplan.runtime.supported import check_supported

    for name in ("falcon-40b", "falcon-7b", "pythia-1.4b"):
        with pytest.raises(UnsupportedModelError, match="parallel attention / MLP layers"):
            check_supported(load_model(str(HF / name)))
    check_supported(load_model("llama3.1-8b"))


def test_stack_rules_the_review_found():
    # torchtitan: DDP with dp 1 is no DDP (no rule); zero-bubble over uneven stages is a rule in estimate as in plan.
    from clusterplan.models.training.layout import stack_problems

    titan = get_stack("torchtitan")
    assert stack_problems(Layout(tp=8, dp=1, zero=0, mbs=1, gbs=8, seq=4096), titan) == []
    ddp = stack_problems(Layout(tp=4, dp=2, zero=0, mbs=1, gbs=8, seq=4096), titan)
    assert [p.field for p in ddp] == ["zero"] and "zero=3 (FSDP)" in ddp[0].message
    zbv = Layout(pp=4, vpp=2, dp=2, zero=3, mbs=1, gbs=64, seq=4096, schedule="zbv", first_stage_layers=6,
                 last_stage_layers=6)
    assert [p.field for p in stack_problems(zbv, titan)] == ["schedule"]
    # nanotron and 2021 Megatron-LM shard over the whole dp group too
    assert not get_stack("nanotron").hsdp and not get_stack("megatron-lm-2021").hsdp
