"""MoE host (CPU launch) time, models/training/host.py: worked examples derived by hand."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from clusterplan.errors import BadInputError
from clusterplan.hardware_db import get_stack
from clusterplan.hardware_db.stacks import parse_moe_host
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.host import MoeGpuTimes, Phase, moe_host_exposed_s, phase_ops, pipeline_s
from clusterplan.models.training.layout import Layout

QWEN_B200 = "tp=1,pp=1,ep=8,mbs=1,gbs=512,seq=4096,precision=fp8,recompute=full"


def test_pipeline_of_host_and_gpu_by_hand():
    # (h, g, kernels): a1 one all-to-all, 10 small expert kernels, a2 one all-to-all, 4 kernels of the rest.
    # host 1 -> gpu max(0 + 3, 1 + 3/1) = 4; host 6 -> max(4 + 1, 6 + 1/10) = 6.1; host 7 -> max(6.1 + 3, 7 + 3) = 10;
    # host 9 -> max(10 + 4, 9 + 4/4) = 14.
    phases = [Phase(np.array([1.0]), np.array([3.0]), 1), Phase(np.array([5.0]), np.array([1.0]), 10),
              Phase(np.array([1.0]), np.array([3.0]), 1), Phase(np.array([2.0]), np.array([4.0]), 4)]
    assert pipeline_s(phases)[0] == pytest.approx(14.0)


def test_gpu_bound_pipeline_shows_only_the_first_issue():
    # A GPU-bound stretch: 0.1 of host before the first kernel, then the GPU's own 3 + 3.
    phases = [Phase(np.array([0.1]), np.array([3.0]), 1), Phase(np.array([0.1]), np.array([3.0]), 1)]
    assert pipeline_s(phases)[0] == pytest.approx(6.1)


def _arrays(text: str, world: int = 8) -> LayoutArrays:
    return LayoutArrays.from_layouts([Layout.parse(text, world=world)])


def test_phase_ops_of_qwen3_30b_fp8_ep8():
    # 128 experts / ep 8 = 16 local; TE module 2.69 ops x 2 under fp8 = 5.38. fp8 padding: 7 ops forward, 8 + 2 per
    # local expert backward (stacks.yaml moe_host fp8_padding_*).
    h = get_stack("megatron-core").moe_host
    shapes = ModelShapes.of(load_model("qwen3-30b-a3b"))
    ops = phase_ops(h, shapes, _arrays(QWEN_B200))
    assert ops["experts_forward"][0] == pytest.approx(2 * 5.38 + 1 + 2 * 16 * 4 + 7)  # 146.76
    assert ops["experts_backward"][0] == pytest.approx(2 * 5.38 + 1 + 2 * 16 * 6 + 8 + 2 * 16)  # 243.76
    assert ops["rest"][0] == pytest.approx(5 * 5.38 + 7 + 1 * 5.38 + 23)  # 62.28
    assert ops["dispatch"][0] == 5 and ops["combine"][0] == 5
    attn = phase_ops(h, shapes, _arrays(QWEN_B200 + ",cuda_graphs=attn"))
    assert attn["rest"][0] == pytest.approx(1 + 5.38 + 23)  # the attention block as one graph launch
    bf16 = phase_ops(h, shapes, _arrays(QWEN_B200.replace("fp8", "bf16")))
    assert bf16["experts_forward"][0] == pytest.approx(2 * 2.69 + 1 + 2 * 16 * 2)


def test_current_scaling_quantises_each_split_in_several_ops():
    # Per-tensor current scaling (tensorwise): each expert split's quantize is memset + amax + scale + cast = 4
    # launches and 2 allocations (data, scale_inv) = 6 ops, + 1 for the transpose where fp8 GEMMs are TN only
    # (Hopper), in place of the generic 3 (quantize + 2 outputs): + 3 ops per split on Blackwell, + 4 on Hopper.
    # Qwen3-30B ep 8: 16 local experts x 2 linears, forward the input splits, backward the output gradients'.
    h = get_stack("megatron-core").moe_host
    shapes = ModelShapes.of(load_model("qwen3-30b-a3b"))
    L = _arrays(QWEN_B200)
    generic = phase_ops(h, shapes, L)
    hopper = phase_ops(h, shapes, L, "tensorwise", fp8_all_layouts=False)
    blackwell = phase_ops(h, shapes, L, "tensorwise", fp8_all_layouts=True)
    mxfp8 = phase_ops(h, shapes, L, "mxfp8", fp8_all_layouts=True)
    assert hopper["experts_forward"][0] == pytest.approx(146.76 + 2 * 16 * 4)  # 274.76
    assert hopper["experts_backward"][0] == pytest.approx(243.76 + 2 * 16 * 4)  # 371.76
    assert blackwell["experts_forward"][0] == pytest.approx(146.76 + 2 * 16 * 3)  # 242.76
    assert blackwell["experts_backward"][0] == pytest.approx(243.76 + 2 * 16 * 3)
    for phases in (hopper, blackwell, mxfp8):
        assert phases["rest"][0] == generic["rest"][0]  # only the expert splits
    assert mxfp8["experts_forward"][0] == generic["experts_forward"][0] == pytest.approx(146.76)
    bf16 = _arrays(QWEN_B200.replace("fp8", "bf16"))
    assert phase_ops(h, shapes, bf16, "tensorwise")["experts_forward"][0] == pytest.approx(2 * 2.69 + 1 + 2 * 16 * 2)


def test_split_quantize_count_cannot_exceed_the_per_expert_count():
    # The generic split quantize is part of the per-expert fp8 count (4 forward, 6 backward): 5 cannot be.
    raw = _raw_moe_host()
    raw["split_quantize_ops"] = {"fp8": 5, "tensorwise": 6}
    with pytest.raises(BadInputError, match="split_quantize_ops.fp8"):
        parse_moe_host("megatron-core", raw)


def _raw_moe_host() -> dict:
    from clusterplan.hardware_db.stacks import _read

    return dict(_read("stacks.yaml")["stacks"]["megatron-core"]["moe_host"])


def test_phase_ops_of_mla_and_shared_experts():
    # DeepSeek-V3 fp8, ep 8: 256 / 8 = 32 local experts; MLA's attention is 7 TE modules, no q/k norms; one shared
    # expert adds its 2 TE linears and its activation beside the routed experts.
    h = get_stack("megatron-core").moe_host
    shapes = ModelShapes.of(load_model("deepseek-v3"))
    ops = phase_ops(h, shapes, _arrays("tp=1,pp=16,ep=8,mbs=1,gbs=2048,seq=4096,precision=fp8", world=256))
    assert ops["rest"][0] == pytest.approx(7 * 5.38 + 7 + 5.38 + 23)
    assert ops["experts_forward"][0] == pytest.approx(2 * 5.38 + 1 + 2 * 5.38 + 1 + 2 * 32 * 4 + 7)
    gpt = ModelShapes.of(load_model("gpt-oss-120b"))  # GQA without q/k norms, no shared experts
    ops = phase_ops(h, gpt, _arrays("tp=1,ep=8,mbs=1,gbs=512,seq=4096", world=64))
    assert ops["rest"][0] == pytest.approx(3 * 2.69 + 7 + 2.69 + 23)
    assert ops["experts_forward"][0] == pytest.approx(2 * 2.69 + 1 + 2 * 16 * 2)


def _exposed_by_hand(nf: float, nb: float) -> tuple[float, float]:
    """(full recompute, no recompute) exposed host seconds of the hand example below, with nf / nb expert ops."""
    op = 13.48e-6
    d, xf, xb, r = 5 * op, nf * op, nb * op, 62.28 * op
    # Forward stretch: dispatch ends max(0.3e-3, d + 0.3e-3); experts end at host d + xf + 0.1e-3 / nf
    # (the GPU waits on the host); combine one all-to-all after its issue; rest 0.5e-3 after the combine.
    t = d + 0.3e-3
    t = max(t + 0.1e-3, d + xf + 0.1e-3 / nf)
    t = max(t + 0.3e-3, 2 * d + xf + 0.3e-3)
    t = max(t + 0.5e-3, 2 * d + xf + r + 0.5e-3 / 62.28)
    forward = t - (0.3e-3 + 0.1e-3 + 0.3e-3 + 0.5e-3)
    # Full recompute: recomputed dispatch, experts, combine, then combine / experts / dispatch backward, the rest's
    # backward and the previous layer's recomputed rest, one stretch up to its sync.
    host = gpu_t = 0.0
    for h, g, n in [(d, 0.3e-3, 1), (xf, 0.1e-3, nf), (d, 0.3e-3, 1), (d, 0.3e-3, 1), (xb, 0.3e-3, nb),
                    (d, 0.3e-3, 1), (r, 1.0e-3, 62.28), (r, 0.5e-3, 62.28)]:
        host += h
        gpu_t = max(gpu_t + g, host + g / n)
    recompute = gpu_t - (0.3e-3 * 4 + 0.1e-3 + 0.3e-3 + 1.0e-3 + 0.5e-3)
    # Without recompute, backward has no sync: only the host's excess over the GPU, 2 d + xb + r - 1.9e-3.
    return forward + recompute, forward + max(0.0, 2 * d + xb + r - (0.6e-3 + 0.3e-3 + 1.0e-3))


def test_exposed_host_by_hand():
    # Qwen3-30B on B200 (x86, 13.48 us per op) with GPU phases chosen by hand (seconds):
    # all-to-all 0.3e-3, experts 0.1e-3 / 0.3e-3, rest 0.5e-3 / 1.0e-3. Host per phase: dispatch/combine 5 ops
    # 67.4 us, rest 62.28 ops 839.53 us; experts under MXFP8 fwd 146.76 ops 1978.32 us, bwd 243.76 ops 3285.88 us;
    # under tensorwise (megatron-core's first recipe) each of the 2 x 16 splits costs 3 ops more each way on B200
    # (every fp8 GEMM layout: no transpose): 242.76 and 339.76 ops.
    stack = get_stack("megatron-core")
    mxfp8 = replace(stack, fp8_recipes=("mxfp8", *(r for r in stack.fp8_recipes if r != "mxfp8")))
    shapes = ModelShapes.of(load_model("qwen3-30b-a3b"))
    hw = replace(estimate(load_model("qwen3-30b-a3b"), load_cluster("dgx-b200:1"),
                          Layout.parse(QWEN_B200, world=8)).evaluation.hw)
    assert hw.fp8_all_layouts
    gpu = MoeGpuTimes(experts_forward_s=np.array([0.1e-3]), experts_backward_s=np.array([0.3e-3]),
                      rest_forward_s=np.array([0.5e-3]), rest_backward_s=np.array([1.0e-3]),
                      all_to_all_s=np.array([0.3e-3]))
    for run, nf, nb in ((mxfp8, 146.76, 243.76), (stack, 242.76, 339.76)):
        full_rc, no_rc = _exposed_by_hand(nf, nb)
        assert moe_host_exposed_s(shapes, _arrays(QWEN_B200), hw, run, gpu)[0] == pytest.approx(full_rc)
        got = moe_host_exposed_s(shapes, _arrays(QWEN_B200.replace("full", "none")), hw, run, gpu)[0]
        assert got == pytest.approx(no_rc)
        full_graphs = moe_host_exposed_s(shapes, _arrays(QWEN_B200 + ",cuda_graphs=full"), hw, run, gpu)[0]
        assert full_graphs == 0.0
    assert moe_host_exposed_s(shapes, _arrays(QWEN_B200), hw, get_stack("torchtitan"), gpu)[0] == 0.0


def test_merged_passes_of_the_a2a_overlap_by_hand():
    # The hand example above at no recompute, with the 1F1B all-to-all overlap: a merged pass issues, between two
    # forward syncs, combine backward, dispatch, experts backward, dispatch backward, experts forward, combine, the
    # rest backward and the next layer's rest forward (TransformerLayerSchedulePlan.run), so the backward's 339.76
    # host ops (tensorwise) no longer run ahead. pp 1: the first forward and the last backward of the m = 512 / 8 = 64
    # micro-batches run alone (1 / 64), priced as without the overlap.
    stack = get_stack("megatron-core")
    shapes = ModelShapes.of(load_model("qwen3-30b-a3b"))
    hw = estimate(load_model("qwen3-30b-a3b"), load_cluster("dgx-b200:1"),
                  Layout.parse(QWEN_B200, world=8)).evaluation.hw
    gpu = MoeGpuTimes(experts_forward_s=np.array([0.1e-3]), experts_backward_s=np.array([0.3e-3]),
                      rest_forward_s=np.array([0.5e-3]), rest_backward_s=np.array([1.0e-3]),
                      all_to_all_s=np.array([0.3e-3]))
    nf, nb, op = 242.76, 339.76, 13.48e-6
    d, xf, xb, r = 5 * op, nf * op, nb * op, 62.28 * op
    host = gpu_t = 0.0
    for h, g, n in [(d, 0.3e-3, 1), (d, 0.3e-3, 1), (xb, 0.3e-3, nb), (d, 0.3e-3, 1), (xf, 0.1e-3, nf),
                    (d, 0.3e-3, 1), (r, 1.0e-3, 62.28), (r, 0.5e-3, 62.28)]:
        host += h
        gpu_t = max(gpu_t + g, host + g / n)
    merged = gpu_t - (0.3e-3 * 4 + 0.1e-3 + 0.3e-3 + 1.0e-3 + 0.5e-3)
    _, alone = _exposed_by_hand(nf, nb)
    no_rc = QWEN_B200.replace("full", "none")
    got = moe_host_exposed_s(shapes, _arrays(no_rc + ",moe_a2a_overlap=1"), hw, stack, gpu)[0]
    assert got == pytest.approx(alone / 64 + merged * 63 / 64)
    assert merged > alone  # the overlap costs host time here: 9.8 ms of host per merged pass on 3.1 ms of GPU
    assert moe_host_exposed_s(shapes, _arrays(no_rc), hw, stack, gpu)[0] == pytest.approx(alone)
    # Token-dropping layers have no sync: nothing ends the backward's head start, the overlap changes nothing.
    drop = no_rc + ",moe_capacity_factor=1"
    assert moe_host_exposed_s(shapes, _arrays(drop + ",moe_a2a_overlap=1"), hw, stack, gpu)[0] == pytest.approx(
        moe_host_exposed_s(shapes, _arrays(drop), hw, stack, gpu)[0])


def test_grace_host_prices_its_op():
    h = get_stack("megatron-core").moe_host
    assert h.op_s["grace"] / h.op_s["x86"] == pytest.approx(37.08 / 13.48)
    assert load_cluster("gb200-nvl72:2").groups[0].gpu.host_cpu == "grace"
    assert load_cluster("dgx-b200:1").groups[0].gpu.host_cpu == "x86"


def test_step_carries_the_host_term_and_dense_json_has_none():
    model, cluster = load_model("qwen3-30b-a3b"), load_cluster("dgx-b200:1")
    eager = estimate(model, cluster, Layout.parse(QWEN_B200, world=8)).to_json()
    graphs = estimate(model, cluster, Layout.parse(QWEN_B200 + ",cuda_graphs=full", world=8)).to_json()
    assert eager["time"]["host_s"] > 0 and graphs["time"]["host_s"] == 0.0
    assert eager["step_time_s"] == pytest.approx(graphs["step_time_s"] + eager["time"]["host_s"], rel=1e-5)
    assert "cuda_graphs" not in eager["layout"] and graphs["layout"]["cuda_graphs"] == "full"
    dense = estimate(load_model("llama3.1-8b"), cluster, Layout.parse("tp=1,mbs=1,gbs=64", world=8)).to_json()
    assert "host_s" not in dense["time"]


def test_plan_prices_a_pinned_cuda_graphs_and_the_stack_rule_refuses_it_elsewhere():
    from clusterplan.cli.plan import parse_fix
    from clusterplan.errors import BadInputError
    from clusterplan.solver.search import search

    model, cluster = load_model("qwen3-30b-a3b"), load_cluster("dgx-b200:1")
    fixed = parse_fix("ep=8,mbs=1,recompute=full,precision=fp8,cuda_graphs=full", 8)
    best = search(model, cluster, 512, 4096, fixed=fixed, top=1).plans[0]
    assert best.layout.cuda_graphs == "full" and "graphs:full" in best.layout.short()
    eager = search(model, cluster, 512, 4096, fixed=parse_fix("ep=8,mbs=1,recompute=full,precision=fp8", 8),
                   top=1).plans[0]
    assert eager.layout.cuda_graphs == "none"
    assert eager.to_json()["time"]["host_s"] > 0 and best.to_json()["time"]["host_s"] == 0.0
    assert parse_fix("cuda_graphs=none", 8) == {"cuda_graphs": "none"}
    with pytest.raises(BadInputError, match="cuda_graphs"):
        search(model, cluster, 512, 4096, fixed=fixed, top=1, stack=get_stack("torchtitan"))


def test_readme_host_example_is_what_estimate_prints():
    """README's Qwen3-30B-A3B B200 host example (eager at the CLI's tensorwise recipe and under MXFP8, then with
    full-iteration graphs) is the estimate of QWEN_B200, to the README's 0.1 s."""
    import re
    from pathlib import Path

    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text().split())
    m = re.search(r"eager: ([\d.]+) s per step of which ([\d.]+) s is `host` at the CLI's fp8 recipe .*?\), "
                  r"([\d.]+) s of which ([\d.]+) s under MXFP8 .*?with `cuda_graphs=full` ([\d.]+) s\.", readme)
    assert m, "README host example not found"
    model, cluster = load_model("qwen3-30b-a3b"), load_cluster("dgx-b200:1")

    def run(text: str, recipe: str | None = None) -> tuple[float, float]:
        out = estimate(model, cluster, Layout.parse(text, world=8), fp8_recipe=recipe).to_json()
        return round(out["step_time_s"], 1), round(out["time"]["host_s"], 1)

    step, host = run(QWEN_B200)
    mx_step, mx_host = run(QWEN_B200, "mxfp8")
    graphs, _ = run(QWEN_B200 + ",cuda_graphs=full")
    assert [float(g) for g in m.groups()] == [step, host, mx_step, mx_host, graphs]
