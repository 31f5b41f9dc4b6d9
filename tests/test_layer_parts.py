"""`estimate --parts` (models/training/layer_parts.py): one dense layer's compute by part and the attention curve that
prices its core, as worked examples."""

from __future__ import annotations

import json

import pytest

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layer_parts import layer_parts
from clusterplan.models.training.layout import Layout
from clusterplan.reference.titan import published_sdpa

LLAMA_8B = "tp=1,dp=8,zero=3,mbs=1,gbs=8,seq=8192"


def _parts(stack: str | None = None, cluster: str = "dgx-h100:1", model: str = "llama3.1-8b",
           layout: str = LLAMA_8B, stack_obj=None):  # noqa: ANN001, ANN202
    c = load_cluster(cluster)
    st = stack_obj or get_stack(stack)
    return layer_parts(estimate(load_model(model), c, Layout.parse(layout, world=c.world_size), stack=st))


def test_attention_part_worked_example():
    # Llama 3.1 8B, mbs 1 x 8192 tokens, 32 heads of 128: causal core FLOPs 4 x 1 x 32 x 8192^2 x 128 / 2 = 5.4976e11
    # per layer forward, at the H100 cuDNN curve's 8k head-dim-128 rate, 529 TFLOP/s: 1.0392 ms.
    p = _parts("megatron-core")
    flops = 4 * 1 * 32 * 8192 ** 2 * 128 / 2
    assert p.attention_curve == "cudnn" and p.attention_kernel == "cudnn"
    assert p.parts.forward_s["attention"] == pytest.approx(flops / 529e12, rel=1e-9)


def test_the_attention_curve_follows_the_stack():
    # torchtitan today: SDPA with cuDNN first -> the cuDNN curve; the same stack as its published rows ran it (plain
    # SDPA, PyTorch's FA2 backend on Hopper) -> our measured sdpa_fa2 curve, a slower core.
    today = _parts("torchtitan-compile")
    published = _parts(stack_obj=published_sdpa(get_stack("torchtitan-compile")))
    assert (today.attention_kernel, today.attention_curve) == ("sdpa_cudnn_first", "cudnn")
    assert (published.attention_kernel, published.attention_curve) == ("sdpa", "sdpa_fa2")
    assert published.parts.forward_s["attention"] > 1.5 * today.parts.forward_s["attention"]
    assert published.parts.forward_s["gemm"] == today.parts.forward_s["gemm"]
    # no curve for the GPU (MI355X): the core is priced as its GEMMs, and the output says so
    assert _parts("torchtitan", cluster="mi355x-8:1").attention_curve is None
    assert _parts("torchtitan", cluster="mi300x-8:1").attention_curve == "aotriton"


def test_cli_prints_the_parts_and_json_carries_them(run_cli):
    args = ("estimate", "--model", "llama3.1-8b", "--cluster", "dgx-h100:1", "--layout", LLAMA_8B, "--parts")
    code, out, _ = run_cli(*args)
    assert code == 0 and "compute of one dense layer, one micro-batch, one rank" in out
    assert "attention core: stack kernel cudnn, priced on the cudnn curve" in out
    code, first, _ = run_cli(*args, "--format", "json")
    code2, second, _ = run_cli(*args, "--format", "json")
    assert code == code2 == 0 and first == second  # deterministic
    parts = json.loads(first)["layer_parts"]
    assert set(parts["forward_s"]) == {"gemm", "fp8_cast", "attention", "elementwise"}
    assert parts["forward_s"]["attention"] == pytest.approx(4 * 1 * 32 * 8192 ** 2 * 128 / 2 / 529e12, rel=1e-5)


def test_a_model_without_dense_layers_says_so(run_cli):
    code, out, err = run_cli("estimate", "--model", "qwen3-30b-a3b", "--cluster", "dgx-h100:2", "--layout",
                             "ep=8,dp=16,mbs=1,gbs=512,seq=4096", "--parts", "--format", "json")
    assert code == 0 and "layer_parts" not in json.loads(out)
    assert "--parts: the model has no dense layer" in err


def test_autocast_parts_only_where_the_stack_autocasts():
    from clusterplan.models.architecture.shapes import ModelShapes
    from clusterplan.models.hardware.rates import HardwareRates
    from clusterplan.models.training.batch import LayoutArrays
    from clusterplan.models.training.layer_parts import dense_layer_parts
    from clusterplan.runtime.stack import runtime_stack

    shapes = ModelShapes.of(load_model("llama3.1-8b"))
    hw = HardwareRates.of(load_cluster("dgx-h100:1"))
    L = LayoutArrays.from_layouts([Layout(tp=1, dp=8, mbs=1, gbs=32, seq=8192, precision="bf16")])
    eager = dense_layer_parts(shapes, L, hw, runtime_stack())
    fsdp = dense_layer_parts(shapes, L, hw, runtime_stack(fsdp=True))
    assert eager.forward_s["autocast_cast"] > 0 and eager.backward_s["autocast_weight"] > 0
    assert "autocast_cast" not in fsdp.forward_s
    assert {k: v for k, v in eager.forward_s.items() if not k.startswith("autocast")} == fsdp.forward_s
