"""validate's torch model: exact parameter counts, correct gradients of the fused-style ops, scaling, stages."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from clusterplan.errors import UnsupportedModelError  # noqa: E402
from clusterplan.models.architecture.catalog import load_model  # noqa: E402
from clusterplan.models.training.layout import Layout, layout_problems  # noqa: E402
from clusterplan.runtime.apply_pp import local_stages, stage_layer_ids  # noqa: E402
from clusterplan.runtime.model import Decoder, _RMSNormFn, apply_rope, rope_tables  # noqa: E402
from clusterplan.validate.scale import scale_model  # noqa: E402


@pytest.mark.parametrize("name", ["llama3.1-8b", "llama3.1-70b", "mixtral-8x7b", "gpt3-175b"])
def test_parameter_count_equals_model_spec(name):
    # The built module and ModelSpec count the same tensors: exact equality, no tolerance.
    spec = load_model(name)
    with torch.device("meta"):
        model = Decoder(spec, seq=128)
    assert sum(p.numel() for p in model.parameters()) == spec.total_params()


def test_mla_is_refused_with_a_way_out():
    with pytest.raises(UnsupportedModelError, match="MLA"):
        Decoder(load_model("deepseek-v3"), seq=128)


def test_fused_style_ops_have_exact_gradients():
    cos, sin = rope_tables(16, 8)
    x = torch.randn(2, 8, 3, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: apply_rope(x, cos.double(), sin.double()), (x,))
    w = torch.randn(16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: _RMSNormFn.apply(x, w, 1e-6), (x, w))
    reference = torch.nn.functional.rms_norm(x, (16,), w, 1e-6)
    assert torch.allclose(_RMSNormFn.apply(x, w, 1e-6), reference)


def test_scaled_model_keeps_the_layout_valid():
    layout = Layout.parse("tp=8,pp=4,dp=2,mbs=1,gbs=64,seq=256")
    small = scale_model(load_model("llama3.1-70b"), layout, 16)
    assert small.n_heads == 64 and small.kv_heads == 8  # head counts stay, so tp splits the same way
    assert small.total_params() < 70.6e9 / 100
    assert layout_problems(small, layout, 64) == []


def test_interleaved_stages_sit_round_robin():
    # 8 layers, pp=2, vpp=2: stages 0..3 of 2 layers; rank 0 holds stages 0 and 2 (Megatron's assignment).
    layout = Layout.parse("pp=2,vpp=2,schedule=interleaved-1f1b,gbs=4")
    spec = load_model("llama3.1-8b").scaled(n_layers=8)
    assert stage_layer_ids(spec, layout) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert local_stages(layout, 0) == [0, 2] and local_stages(layout, 1) == [1, 3]


def test_uneven_first_and_last_stages():
    # 10 layers on pp=4 with 1 on the first stage (it also holds the embedding) and 3 on the last: 1, 3, 3, 3.
    layout = Layout.parse("pp=4,first_stage_layers=1,gbs=4")
    spec = load_model("llama3.1-8b").scaled(n_layers=10)
    assert [len(ids) for ids in stage_layer_ids(spec, layout)] == [1, 3, 3, 3]
    assert stage_layer_ids(spec, layout)[0] == [0] and stage_layer_ids(spec, layout)[3] == [7, 8, 9]


def test_per_rank_lists_build_the_stages_as_listed():
    # pp_layers 2/4/3/1 of 10 layers: every layer once, in order. Over vpp 2 the chunks are the exported ones
    # (layout.chunk_layers): a middle rank's odd count gives its earliest chunk the extra layer (rank 2: chunks 2 and
    # 6 hold 2 and 1), the end ranks take their difference in the outer chunks (chunk 0 the embedding alone, chunk 7
    # the head alone), as Megatron's pipeline layout and torchtitan's module lists write them.
    spec = load_model("llama3.1-8b").scaled(n_layers=10)
    flat = Layout.parse("pp=4,pp_layers=2/4/3/1,gbs=4")
    assert [len(ids) for ids in stage_layer_ids(spec, flat)] == [2, 4, 3, 1]
    looped = Layout.parse("pp=4,vpp=2,schedule=interleaved-1f1b,pp_layers=2/4/3/1,gbs=8")
    sizes = [len(ids) for ids in stage_layer_ids(spec, looped)]
    assert sizes == [0, 2, 2, 1, 2, 2, 1, 0] and sum(sizes) == 10
    assert [i for ids in stage_layer_ids(spec, looped) for i in ids] == list(range(10))


def test_the_mlp_applies_the_models_activation():
    # A squared-ReLU MLP (Nemotron) and a GeGLU (Gemma) run their own activation, not GELU / SiLU by kind; a 1-unit MLP
    # with unit weights at x = -2 and 3: relu(x)^2 = 0, 9; gelu(x) * x = 0.0910, 8.9880.
    from dataclasses import replace

    from clusterplan.runtime.model import FeedForward
    x = torch.tensor([[-2.0], [3.0]])
    for name, want in (("minitron-8b", [0.0, 9.0]), ("gemma-7b", [0.0910, 8.9880])):
        mlp = FeedForward(replace(load_model(name), hidden=1), 1)
        for layer in (mlp.w1, mlp.w2, mlp.w3):
            if layer is not None:
                torch.nn.init.ones_(layer.weight)
                if layer.bias is not None:
                    torch.nn.init.zeros_(layer.bias)
        assert mlp(x).flatten().tolist() == pytest.approx(want, abs=1e-3), name
