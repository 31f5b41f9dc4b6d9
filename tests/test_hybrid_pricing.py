"""Hybrid Mamba-2 / attention stacks (Nemotron-H) priced: the Mamba mixer's memory roofline against its kernel-by-kernel
derivation (research/mamba-ssd-traffic.md), the block mixture against the transformer it spells out, the rules
Megatron-Core's MambaStack imposes, and the MFU basis against Megatron-Bridge's own hybrid FLOP count."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from clusterplan.errors import BadInputError
from clusterplan.hardware_db.stacks import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware import mamba_kernels
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.compute import model_flops_per_step
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout, layout_problems
from clusterplan.models.training.memory import GIB
from clusterplan.models.training.rules import RuleCode

H100_SMS = 132
SEQ = 8192


@pytest.mark.parametrize("model, tp, forward, backward, saved, flops_f, flops_b", [
    # research/mamba-ssd-traffic.md sec. 7 / 10 (s 8192, b 1, Q 128, 132 SMs); ns = 2 only for 56B at tp 8
    ("nemotron-h-56b", 8, 91_972, 275_908, 21_572, 2.69e6, 7.01e6),
    ("nemotron-h-56b", 2, 367_888, 1_083_152, 86_288, 10.75e6, 28.05e6),
    ("nemotron-h-8b", 1, 273_696, 821_024, 86_304, 6.55e6, 17.56e6),
    ("nemotron-h-8b", 4, 68_424, 205_256, 21_576, 1.64e6, 4.39e6),
])
def test_mixer_bytes_are_the_kernel_by_kernel_derivation(model, tp, forward, backward, saved, flops_f, flops_b):
    m = load_model(model)
    sizes = mamba_kernels.mixer_sizes(m.mamba_inner, m.mamba_heads, m.mamba_groups, m.mamba_state_dim, m.mamba_chunk,
                                    np.array([float(tp)]))
    tokens, mbs = np.array([float(SEQ)]), np.array([1.0])
    assert mamba_kernels.forward_bytes(sizes, tokens, mbs)[0] / SEQ == forward
    assert mamba_kernels.backward_bytes(sizes, tokens, mbs, H100_SMS)[0] / SEQ == backward
    assert mamba_kernels.saved_bytes(sizes, tokens, 2.0)[0] / SEQ == saved  # out_proj's input in bf16
    f, b = mamba_kernels.ssd_flops(sizes, tokens)
    assert f[0] / SEQ == pytest.approx(flops_f, rel=0.005) and b[0] / SEQ == pytest.approx(flops_b, rel=0.005)


def test_ssd_splits_by_hand():
    # 56B at tp 8: H 32, G 1; b (s / Q) H = 64 chunks x 32 heads = 2,048 programs over 132 SMs -> ceil(15.5) = 16
    # heads per program, ceil(32 / 16) = 2 splits; at two micro-batch sequences 32 per program, 1 split.
    m = load_model("nemotron-h-56b")
    sizes = mamba_kernels.mixer_sizes(m.mamba_inner, m.mamba_heads, m.mamba_groups, m.mamba_state_dim, m.mamba_chunk,
                                    np.array([8.0]))
    assert mamba_kernels.ssd_splits(sizes, np.array([8192.0, 16384.0]), H100_SMS).tolist() == [2.0, 1.0]
    assert mamba_kernels.ssd_splits(sizes, np.array([8192.0]), 0).tolist() == [1.0]  # SM count unknown


def test_mbs_above_one_adds_megatrons_layout_copies():
    # _ssm_training's rearrange(...).contiguous() of zxBCdt in and y out: 4 W + 4 d more per token each way, W = 2d +
    # 2GN + H = 4,096 + 512 + 32 = 4,640 at 56B tp 8: 4 x 4,640 + 4 x 2,048 = 26,752 B.
    m = load_model("nemotron-h-56b")
    sizes = mamba_kernels.mixer_sizes(m.mamba_inner, m.mamba_heads, m.mamba_groups, m.mamba_state_dim, m.mamba_chunk,
                                    np.array([8.0, 8.0]))
    one = mamba_kernels.forward_bytes(sizes, np.array([2.0 * SEQ, 2.0 * SEQ]), np.array([1.0, 2.0]))
    assert (one[1] - one[0]) / (2 * SEQ) == 26_752


def test_alternating_attention_and_mlp_blocks_price_as_the_transformer_they_spell():
    """A transformer layer is an attention block then an MLP block, each with its pre-norm and residual add, and one
    all-gather / reduce-scatter pair each under TP with SP: Llama 3.1 8B written as the hybrid pattern "*-" x 32
    (64 blocks) has the same parameters, model FLOPs, compute and TP time and (without full recompute) peak memory
    as the model itself. What may differ, and why: the data-parallel reduce's last bucket follows the parameters of
    one layer (here one block), within 0.05 % of the step; full recompute checkpoints each block's input (32 more
    than the layers' 32), so its memory is not compared."""
    llama = load_model("llama3.1-8b")
    spelled = llama.scaled(name="llama3.1-8b-blocks", n_layers=64, hybrid_pattern="*-" * 32)
    assert spelled.total_params() == llama.total_params()
    cluster = load_cluster("dgx-h100:1")
    for layout in (Layout(tp=2, dp=4, mbs=1, gbs=32, seq=8192, sp=True, precision="fp8", fp8_params=True),
                   Layout(tp=1, dp=8, mbs=2, gbs=64, seq=4096, recompute="full"),
                   Layout(tp=4, pp=2, dp=1, mbs=1, gbs=16, seq=8192, sp=True, zero=1)):
        a, b = (estimate(m, cluster, layout).evaluation for m in (llama, spelled))
        for term in ("compute_s", "tp_comm_s", "pp_comm_s", "bubble_s", "optimizer_s"):
            assert getattr(b.time, term)[0] == pytest.approx(getattr(a.time, term)[0], rel=1e-9), (term, layout)
        assert b.time.model_flops[0] == pytest.approx(a.time.model_flops[0], rel=1e-12)
        assert b.time.step_s[0] == pytest.approx(a.time.step_s[0], rel=5e-4), layout.short()
        if layout.recompute != "full":
            assert b.memory.peak[0] == pytest.approx(a.memory.peak[0], rel=1e-9), layout.short()


def test_attention_and_moe_blocks_price_as_the_moe_transformer_they_spell():
    """The same for an MoE model: Mixtral 8x7B as "*E" x 32 (an attention block, then an MoE block with its router,
    experts, all-to-alls and host time) has Mixtral's parameters, model FLOPs, compute, expert-parallel, TP and host
    time, and (without full recompute) peak memory."""
    mixtral = load_model("mixtral-8x7b")
    spelled = mixtral.scaled(name="mixtral-8x7b-blocks", n_layers=64, hybrid_pattern="*E" * 32)
    assert (spelled.total_params(), spelled.active_params()) == (mixtral.total_params(), mixtral.active_params())
    cluster = load_cluster("dgx-h100:2")
    for layout in (Layout(tp=2, dp=8, ep=8, mbs=1, gbs=64, seq=4096, sp=True, precision="fp8", fp8_params=True),
                   Layout(tp=1, dp=16, ep=8, mbs=1, gbs=64, seq=4096, recompute="selective",
                          recompute_modules="moe_act+layernorm"),
                   Layout(tp=1, pp=2, dp=8, ep=8, mbs=1, gbs=64, seq=4096, recompute="full")):
        a, b = (estimate(m, cluster, layout).evaluation for m in (mixtral, spelled))
        for term in ("compute_s", "tp_comm_s", "ep_comm_s", "host_s", "pp_comm_s", "optimizer_s", "model_flops"):
            assert getattr(b.time, term)[0] == pytest.approx(getattr(a.time, term)[0], rel=1e-9), (term, layout)
        assert b.time.step_s[0] == pytest.approx(a.time.step_s[0], rel=5e-4), layout.short()
        if layout.recompute != "full":
            assert b.memory.peak[0] == pytest.approx(a.memory.peak[0], rel=1e-9), layout.short()


def test_a_mamba_block_by_hand():
    """Nemotron-H 56B, tp 8, one 8,192-token micro-batch: in_proj 8,192 -> (2 x 16,384 + 2 x 8 x 256 + 256) / 8 =
    4,640 and out_proj 2,048 -> 8,192 per rank, 2 x 8,192 x (8,192 x 4,640 + 2,048 x 8,192) = 898.6 GFLOP forward;
    its mixer 91,972 B/token forward and 275,908 backward; the block keeps its input and
    norm output (bf16, SP shards of h), the mixer's 21,572 B/token and nothing for attention. The mixer's bytes move
    at SSD_KERNEL_COPY_SHARE (0.46) of the copy rate: vLLM PR #27299's H100 measurement of these kernels."""
    from clusterplan.models.hardware.rates import HardwareRates
    from clusterplan.models.training.compute import layer_flops, layer_linears, layer_time
    from clusterplan.models.training.memory import layer_activation_bytes

    shapes = ModelShapes.of(load_model("nemotron-h-56b"))
    mamba = next(b for _, b in shapes.blocks if b.block == "mamba")
    L = LayoutArrays.from_layouts([Layout(tp=8, dp=1, mbs=1, gbs=8, seq=SEQ, sp=True)])
    assert [(g.in_features, g.out_features) for g in layer_linears(mamba, L, False)] == [(8192, 4640), (2048, 8192)]
    linear, core = layer_flops(mamba, L, False)
    assert linear[0] == 2 * SEQ * (8192 * 4640 + 2048 * 8192) and core[0] == 0
    hw = HardwareRates.of(load_cluster("dgx-h100:1"))
    with_mixer = layer_time(mamba, L, hw, False, get_stack("megatron-core"))
    # the same linears as an MLP block (whose plain activation moves 4 B per inner element) less the mixer
    as_mlp = layer_time(replace(mamba, block="mlp"), L, hw, False, get_stack("megatron-core"))
    activation_bytes = 4.0 * SEQ * 16384 / 8
    # the mixer's bytes at the SSD kernels' measured share of the copy rate, less the MLP activation's at the copy rate
    ssd_rate = mamba_kernels.SSD_KERNEL_COPY_SHARE * hw.hbm_bytes_per_s
    assert with_mixer.forward_s[0] - as_mlp.forward_s[0] == pytest.approx(
        91_972 * SEQ / ssd_rate - activation_bytes / hw.hbm_bytes_per_s)
    assert with_mixer.backward_s[0] - as_mlp.backward_s[0] == pytest.approx(
        275_908 * SEQ / ssd_rate - 2 * activation_bytes / hw.hbm_bytes_per_s)
    kept = layer_activation_bytes(mamba, L, False, np.array([0]))
    # one norm input (bf16, SP shard), in_proj's saved input (the norm output, SP shard), the mixer's tensors
    assert kept[0] == SEQ * 8192 * 2 / 8 + SEQ * 8192 * 2 / 8 + 21_572 * SEQ


def test_mfu_basis_agrees_with_megatron_bridges_hybrid_flops():
    """Megatron-Bridge flop_utils.hybrid_flops gives Nemotron-H 56B 340.2 GFLOP per token at s 8192
    (research/hybrid-mamba.md sec. 3): in_proj / out_proj / MLP / attention projections 6 x matmul parameters, the
    causal attention core, an SSD term 7 d N (ours: the chunked scan's 4 d N + 2 d Q + 2 G N Q) and the LM head."""
    shapes = ModelShapes.of(load_model("nemotron-h-56b"))
    L = LayoutArrays.from_layouts([Layout(tp=8, dp=1, mbs=1, gbs=1, seq=SEQ, sp=True)])
    per_token = model_flops_per_step(shapes, L)[0] / SEQ
    assert per_token == pytest.approx(340.2e9, rel=0.01)


@pytest.mark.parametrize("change, says", [
    (dict(tp=16, dp=1), "mamba_groups(8) % tp(16)"),
    (dict(tp=8, cp=64, dp=1), "mamba_heads / tp (32) % cp(64) == 0"),
    (dict(pp=2, vpp=2, dp=4, schedule="interleaved-1f1b"), "no interleaved pipeline"),
    (dict(recompute="full"), "no full recompute"),
    (dict(pp=2, dp=1, pp_layers=(60, 58)), "no per-rank layout"),
])
def test_what_megatron_cores_mamba_stack_cannot_run(change, says):
    model = load_model("nemotron-h-56b")
    layout = Layout(**{**dict(tp=8, dp=2, mbs=1, gbs=16, seq=SEQ, sp=True), **change})
    problems = [p for p in layout_problems(model, layout, 16) if p.code == RuleCode.HYBRID]
    assert len(problems) == 1 and says in problems[0].message


def test_only_megatron_core_trains_hybrids(run_cli):
    code, out, err = run_cli("plan", "--model", "nemotron-h-56b", "--cluster", "dgx-h100:4", "--gbs", "96", "--seq",
                             "8192", "--stack", "torchtitan")
    assert code == 2 and out == "" and err.strip().splitlines() == [
        "error: --stack torchtitan has no Mamba blocks for hybrid nemotron-h-56b; use --stack megatron-core"]
    est = estimate(load_model("nemotron-h-56b"), load_cluster("dgx-h100:4"),
                   Layout(tp=8, dp=4, mbs=1, gbs=96, seq=SEQ, sp=True), stack=get_stack("torchtitan"))
    assert any(r.code == RuleCode.STACK and "no Mamba blocks" in r.message for r in est.reasons)


def test_plan_searches_a_hybrid_within_its_rules(run_cli):
    import json

    code, out, err = run_cli("plan", "--model", "nemotron-h-56b", "--cluster", "dgx-h100:4", "--gbs", "96", "--seq",
                             "8192", "--top", "3", "--format", "json")
    doc = json.loads(out)
    assert code == 0 and doc["plans"]
    for p in doc["plans"]:
        lay = p["layout"]
        assert lay["vpp"] == 1 and 8 % lay["tp"] == 0 and (256 // lay["tp"]) % lay["cp"] == 0
        assert p["memory"]["peak_gib"] * GIB <= load_cluster("dgx-h100:4").min_memory_bytes
    # vpp > 1 is not searched for Mamba blocks (said in the notes); tp 16 breaks the groups rule
    code, out, err = run_cli("plan", "--model", "nemotron-h-56b", "--cluster", "dgx-h100:4", "--gbs", "96", "--seq",
                             "8192", "--top", "1")
    assert code == 0 and "vpp > 1 with Mamba blocks" in err
    code, out, err = run_cli("plan", "--model", "nemotron-h-56b", "--cluster", "dgx-h100:4", "--gbs", "96", "--seq",
                             "8192", "--fix", "vpp=2", "--format", "json")
    doc = json.loads(out)
    assert not doc["plans"] and doc["search"]["rejected"][RuleCode.HYBRID.value] > 0
    # At 128K context parallelism runs (Megatron-Core's Mamba all-to-alls; mamba_cp_s): the plans use it.
    code, out, err = run_cli("plan", "--model", "nemotron-h-56b", "--cluster", "dgx-h100:8", "--gbs", "64", "--seq",
                             "131072", "--top", "3", "--format", "json")
    doc = json.loads(out)
    assert code == 0 and doc["plans"] and all(p["layout"]["cp"] > 1 for p in doc["plans"])
    assert all(p["time"]["cp_comm_s"] > 0 for p in doc["plans"])


def test_mamba_context_parallelism_by_hand():
    """Megatron-Core MambaContextParallel (ssm/mamba_context_parallel.py): per Mamba block and micro-batch, six
    all-to-alls each way (z, x, B, C, dt to head sharding, y back) and the copies around them. Nemotron-H 56B
    (d_in 16,384, 256 heads, 8 groups, state 256) at tp 4, cp 2, seq 8,192 on one DGX H100: 4,096 local tokens;
    widths z = x = y = 4,096, B = C = max(8 / 4, 2) x 256 = 512, dt = 64: 13,376 elements, 2 B each, 109,576,192 B
    per direction, each all-to-all 1 step of latency and half its bytes over the NVLink bus rate. Copies: 3 passes
    over zxBCdt (9,280) and 2 over y (4,096), each a read and a write: 72,064 elements per token, 590,348,288 B."""
    from clusterplan.models.hardware.rates import HardwareRates
    from clusterplan.models.training.step import Group, mamba_cp_s
    from clusterplan.models.training.topology import Axis

    model, cluster = load_model("nemotron-h-56b"), load_cluster("dgx-h100:1")
    shapes = {b.block: b for _, b in ModelShapes.of(model).blocks}["mamba"]
    L = LayoutArrays.from_layouts([Layout(tp=4, cp=2, dp=1, mbs=1, gbs=1, seq=SEQ, sp=True)])
    hw = HardwareRates.of(cluster)
    link = hw.link("all_to_all", Axis.CP)
    one_way = 6 * link.lat_in + 0.5 * 109_576_192 / link.bw_in + 590_348_288 / hw.hbm_bytes_per_s
    got = mamba_cp_s(shapes, L, L.seq * L.mbs / L.cp, Group.of(L, Axis.CP), hw)[0]
    assert got == pytest.approx(2 * one_way, rel=1e-9)
    assert 2 * one_way == pytest.approx(735.6e-6, rel=0.001)  # 2 us latency, 369 GB/s, 2.85 TB/s HBM (hardware_db)
    # The rule Megatron-Core asserts: whole heads per cp rank (256 / 8 = 32 heads at tp 8: cp 64 is refused).
    ok = Layout(tp=8, cp=2, dp=1, mbs=1, gbs=1, seq=SEQ, sp=True)
    assert not [p for p in layout_problems(model, ok, 16) if p.code == RuleCode.HYBRID]


def test_a_latent_moe_layer_by_hand():
    """Nemotron 3 Super's latent MoE (Megatron-Core MoELayer fc1_latent_proj / fc2_latent_proj): the router and the
    shared expert read h = 4,096; the tokens are projected to 1,024 before the dispatch, so the all-to-all carries
    1,024 elements per routed token and each expert is 1,024 -> 2,688 -> 1,024 (squared ReLU, 2 matrices);
    latent -> h after the combine. At ep 64, one 8,192-token micro-batch, 512 experts top 22: 8 local experts of
    8,192 x 22 x 64 / 512 = 22,528 rows each, the busiest rank's (a little more under forced balancing:
    moe_layer.imbalance, tests/test_moe_forced_balance.py) set the expert GEMMs and the all-to-all."""
    from clusterplan.models.training.collectives import ep_collectives
    from clusterplan.models.training.compute import layer_linears
    from clusterplan.models.training.moe_layer import imbalance

    m = load_model("nemotron-h-8b").scaled(
        name="latent", n_layers=2, hybrid_pattern="*E", n_experts=512, top_k=22, expert_ffn_hidden=2688,
        shared_expert_ffn_hidden=5376, moe_latent=1024, hidden=4096, router_score="sigmoid", router_expert_bias=True,
        mamba_heads=0, mamba_head_dim=0, mamba_groups=0, mamba_state_dim=0)
    assert m.expert_params() == 2 * 1024 * 2688 and m.latent_projection_params() == 2 * 4096 * 1024
    assert m.moe_params() == 4096 * 512 + 512 * 2 * 1024 * 2688 + 2 * 4096 * 1024 + 2 * 4096 * 5376
    moe = next(b for _, b in ModelShapes.of(m).blocks if b.block == "moe")
    L = LayoutArrays.from_layouts([Layout(tp=1, dp=64, ep=64, mbs=1, gbs=64, seq=SEQ)])
    linears = layer_linears(moe, L, True)
    experts = [g for g in linears if g.streamed]
    busiest = float(imbalance(moe, L)[0])
    assert 1.0 < busiest < 1.02
    assert [(g.in_features, g.out_features, g.count) for g in experts] == [(1024, 2688, 8), (2688, 1024, 8)]
    assert [float(g.tokens[0]) for g in experts] == pytest.approx([22_528 * busiest] * 2, rel=1e-12)
    assert [(g.in_features, g.out_features) for g in linears[-2:]] == [(4096, 1024), (1024, 4096)]
    a2a = ep_collectives(moe, L)
    # bf16, every routed copy at the latent width
    assert float(a2a.size_bytes[0]) == pytest.approx(2 * SEQ * 22 * 1024 * busiest, rel=1e-12)


def test_a_hybrid_mtp_depth_prices_as_the_transformers_mtp_layer():
    """An MTP depth after a hybrid pattern is its attention + MoE block pair (Megatron-Bridge's "*E"; ModelShapes
    .mtp_layer), so Mixtral with one MTP module and Mixtral spelled "*E" x 32 with one MTP depth price alike: the
    same parameters, model FLOPs and compute, the MTP projection and one more LM head pass on the last stage."""
    mixtral = load_model("mixtral-8x7b").scaled(name="mixtral-mtp", mtp_layers=1)
    spelled = mixtral.scaled(name="mixtral-mtp-blocks", n_layers=64, hybrid_pattern="*E" * 32)
    assert spelled.mtp_params() == mixtral.mtp_params() > 0
    cluster = load_cluster("dgx-h100:2")
    layout = Layout(tp=2, pp=2, dp=4, ep=4, mbs=1, gbs=64, seq=4096, sp=True)
    a, b = (estimate(m, cluster, layout).evaluation for m in (mixtral, spelled))
    base = estimate(load_model("mixtral-8x7b"), cluster, layout).evaluation
    assert a.time.step_s[0] > base.time.step_s[0]  # the MTP module costs time
    for term in ("compute_s", "tp_comm_s", "ep_comm_s", "model_flops"):
        assert getattr(b.time, term)[0] == pytest.approx(getattr(a.time, term)[0], rel=1e-9), term
    assert b.memory.peak[0] == pytest.approx(a.memory.peak[0], rel=1e-9)


def test_serving_a_hybrid_by_hand():
    """Nemotron-H 56B served at tp 8 on H100: only its 10 attention blocks keep a KV cache, 2 (K, V) x 10 x 8 kv heads
    x 128 x 2 B = 40,960 B per token over the model (5,120 per GPU: one kv head each); each of its 54 Mamba blocks
    keeps a fixed state per sequence, the SSM state 256 x 64 x 256 and the conv's last 3 inputs of x, B, C
    (16,384 + 2 x 8 x 256): 4,255,744 elements, bf16, split over tp: 54 x 4,255,744 / 8 x 2 = 57,452,544 B per GPU,
    11,222 KV tokens of the same GPU, which every running sequence reserves; a decode step reads and writes it."""
    from clusterplan.hardware_db import get_gpu
    from clusterplan.models.serving.kv import (
        kv_bytes_per_token,
        kv_bytes_per_token_per_gpu,
        mamba_state_bytes_per_seq_per_gpu,
        state_tokens_per_seq,
    )
    from clusterplan.models.serving.model import (
        ServingInstance,
        kv_accounting,
        max_batch,
        serving_memory,
        step_model,
    )

    m = load_model("nemotron-h-56b")
    assert kv_bytes_per_token(m) == 40_960 and kv_bytes_per_token_per_gpu(m, 8, 1) == 5_120
    assert m.mamba_state_elements() == 256 * 64 * 256 + 3 * (16_384 + 2 * 8 * 256) == 4_255_744
    assert mamba_state_bytes_per_seq_per_gpu(m, 8, 1) == 57_452_544
    assert state_tokens_per_seq(m, 8, 8, 1) == 11_222
    inst = ServingInstance(model=m, gpu=get_gpu("H100"), tp=8)
    assert kv_accounting(inst) == {"state_tokens_per_seq": 11_222}
    capacity = serving_memory(inst).kv_capacity_tokens
    assert max_batch(inst, 2048) == capacity // (2048 + 11_222)
    step = step_model(inst)
    hbm = inst.gpu.hbm_bytes_per_s * inst.gpu.hbm_fraction
    one, two = (float(step.terms(0.0, 0.0, b, b * 2048.0).memory_s) for b in (1.0, 2.0))
    # one more sequence: its KV (2,048 tokens x 5,120 B) read, its state read and written
    assert two - one == pytest.approx((2048 * 5_120 + 2 * 57_452_544) / hbm, rel=1e-9)
    # The SSM state in fp32 (vLLM --mamba-ssm-cache-dtype float32, NVIDIA's Nemotron serving recipes): the 4,194,304
    # SSM elements at 4 B, the 61,440 conv ones at 2 B: 54 x (16,777,216 + 122,880) / 8 = 114,075,648 B per GPU,
    # 22,281 KV tokens; the launch lines carry the flag.
    assert m.mamba_ssm_state_elements() == 4_194_304 and m.mamba_conv_state_elements() == 61_440
    fp32 = ServingInstance(model=m, gpu=get_gpu("H100"), tp=8, mamba_ssm_dtype="fp32")
    assert fp32.mamba_state_bytes_per_seq == 114_075_648
    assert kv_accounting(fp32) == {"state_tokens_per_seq": 22_281}
    step32 = step_model(fp32)
    one, two = (float(step32.terms(0.0, 0.0, b, b * 2048.0).memory_s) for b in (1.0, 2.0))
    assert two - one == pytest.approx((2048 * 5_120 + 2 * 114_075_648) / hbm, rel=1e-9)
    from clusterplan.models.serving.launch import LaunchConfig, launch_lines

    lines = launch_lines(LaunchConfig(repo="x", tp=8, mamba_ssm_dtype="fp32"))
    assert "--mamba-ssm-cache-dtype float32" in lines["vllm"] and "--mamba-ssm-dtype float32" in lines["sglang"]
    assert "mamba" not in launch_lines(LaunchConfig(repo="x", tp=8))["vllm"]
    with pytest.raises(BadInputError, match="mamba-ssm-dtype"):
        ServingInstance(model=m, gpu=get_gpu("H100"), tp=8, mamba_ssm_dtype="fp8")


def test_a_hybrids_pipeline_stages_hold_their_slice_of_the_pattern():
    """Megatron-Core's MambaStack gives each pipeline rank its count of pattern characters, whatever their kind: Llama
    3.1 8B written "*" x 32 + "-" x 32 on pp 2 puts every attention block on rank 0 and every MLP block on rank 1,
    so the stages are priced as 32 attention blocks and 32 MLP blocks (in the average block's units), not 32
    average blocks each; an even "*-" x 32 split keeps the average."""
    from clusterplan.hardware_db.stacks import get_stack
    from clusterplan.models.hardware.rates import HardwareRates
    from clusterplan.models.training.memory import stage_layers
    from clusterplan.models.training.step import hybrid_stage_layers, layer_cost

    llama = load_model("llama3.1-8b")
    hw, stack = HardwareRates.of(load_cluster("dgx-h100:1")), get_stack("megatron-core")
    L = LayoutArrays.from_layouts([Layout(tp=2, pp=2, dp=2, mbs=1, gbs=16, seq=8192, sp=True)])
    for pattern, split in (("*" * 32 + "-" * 32, True), ("*-" * 32, False)):
        shapes = ModelShapes.of(llama.scaled(name="x", n_layers=64, hybrid_pattern=pattern))
        cost = layer_cost(shapes, L, hw, stack)
        kinds = {b.block: layer_cost(b, L, hw, stack).total_s[0] for _, b in shapes.blocks}
        got = hybrid_stage_layers(shapes, L, stage_layers(shapes, L), cost, hw, stack)
        average = cost.total_s[0]
        if split:
            assert got.first[0] == pytest.approx(32 * kinds["attention"] / average)
            assert got.last[0] == pytest.approx(32 * kinds["mlp"] / average)
        else:
            assert got.first[0] == pytest.approx(32.0) and got.last[0] == pytest.approx(32.0)


def test_recompute_modules_leave_the_mamba_blocks_alone():
    """Megatron-Core's MambaLayer is no TransformerLayer: the "mlp" module checkpoints the MLP blocks only (their
    activations freed, their forward run again), "layernorm" charges no Mamba norm (fused into in_proj); a Mamba
    block keeps and costs the same under every module set."""
    from clusterplan.hardware_db.stacks import get_stack
    from clusterplan.models.hardware.rates import HardwareRates
    from clusterplan.models.training.batch import RecomputeCode
    from clusterplan.models.training.compute import layer_time
    from clusterplan.models.training.layout import RECOMPUTE_MODULES
    from clusterplan.models.training.memory import layer_activation_bytes

    shapes = ModelShapes.of(load_model("nemotron-h-8b"))
    blocks = {b.block: b for _, b in shapes.blocks}
    hw, stack = HardwareRates.of(load_cluster("dgx-h100:1")), get_stack("megatron-core")
    base = LayoutArrays.from_layouts([Layout(tp=2, dp=4, mbs=1, gbs=8, seq=SEQ, sp=True, recompute="none")])
    for modules in ("mlp", "layernorm", "mlp+layernorm+core_attn"):
        L = LayoutArrays.from_layouts([Layout(tp=2, dp=4, mbs=1, gbs=8, seq=SEQ, sp=True, recompute="selective",
                                              recompute_modules=modules)])
        mode = np.array([RecomputeCode.SELECTIVE])
        assert layer_activation_bytes(blocks["mamba"], L, False, mode)[0] == \
            layer_activation_bytes(blocks["mamba"], base, False, np.array([RecomputeCode.NONE]))[0], modules
        assert layer_time(blocks["mamba"], L, hw, False, stack).recompute_s[0] == 0.0, modules
    L = LayoutArrays.from_layouts([Layout(tp=2, dp=4, mbs=1, gbs=8, seq=SEQ, sp=True, recompute="selective",
                                          recompute_modules="mlp")])
    assert layer_activation_bytes(blocks["mlp"], L, False, np.array([RecomputeCode.SELECTIVE]))[0] < \
        layer_activation_bytes(blocks["mlp"], base, False, np.array([RecomputeCode.NONE]))[0]
    assert layer_time(blocks["mlp"], L, hw, False, stack).recompute_s[0] > 0.0
    assert "mlp" in RECOMPUTE_MODULES


def test_serving_sizes_each_stage_by_its_slice_of_the_pattern():
    """Nemotron Nano 2 9B (4 attention blocks in 56) at pp 4: the stages hold 0, 2, 2 and 0 attention blocks, so the
    busiest stage sizes the KV cache by 2 of them, not 4 / 4 = 1; its Mamba state by the busiest stage's 8."""
    from clusterplan.models.serving.kv import busiest_stage_layers, kv_bytes_per_token_per_gpu

    m = load_model("nemotron-nano-9b-v2")
    assert [m.hybrid_pattern[round(i * 56 / 4):round((i + 1) * 56 / 4)].count("*") for i in range(4)] == [0, 2, 2, 0]
    assert busiest_stage_layers(m, 4, "*") == 2 and busiest_stage_layers(m, 4, "M") == 8
    assert kv_bytes_per_token_per_gpu(m, 1, 4) == 2 * 2 * m.kv_heads * m.dim_head * 2


def test_expert_placement_moves_a_latent_moes_tokens_at_the_latent_width():
    from clusterplan.models.moe.metrics import fabric_for

    super_ = load_model("nemotron-3-super-120b-a12b")
    fabric = fabric_for(load_cluster("dgx-h100:8"), super_, "bf16")
    assert fabric.dispatch_bytes_per_token == fabric.combine_bytes_per_token == 1024 * 2


def test_no_mixed_gpu_pipeline_for_a_hybrid(run_cli):
    # A mixed-GPU plan balances per-stage layer counts, which Megatron-Core's MambaStack does not take: plan says so
    # and keeps its single-type plans.
    code, out, err = run_cli("plan", "--model", "nemotron-h-56b", "--cluster",
                             "tests/fixtures/clusters/mixed_h100_a100.yaml", "--gbs", "256", "--seq", "8192", "--top", "1")
    assert code == 0 and "hybrid Mamba stack, whose pipeline Megatron-Core splits by count" in err
    assert "stage  GPU" not in out


def test_estimate_shows_the_blocks_behind_a_hybrids_average_layer(run_cli):
    """estimate's hybrid_blocks: each kind's count and one block's forward / backward, and the Mamba mixer's part at
    its bytes per token (the derivation's) over SSD_KERNEL_COPY_SHARE of the copy rate."""
    import json

    from clusterplan.models.hardware.rates import HardwareRates

    code, out, err = run_cli("estimate", "--model", "nemotron-h-56b", "--cluster", "dgx-h100:4", "--layout",
                             "tp=8,mbs=1,gbs=96,seq=8192,sp=1,precision=fp8,fp8_params=1,recompute=none",
                             "--format", "json")
    assert code == 0, err
    blocks = json.loads(out)["hybrid_blocks"]
    assert {k: b["count"] for k, b in blocks.items()} == {"mamba": 54, "attention": 10, "mlp": 54}
    mamba = blocks["mamba"]
    assert mamba["mixer_bytes_per_token"] == {"forward": 91_972, "backward": 275_908}
    hbm = HardwareRates.of(load_cluster("dgx-h100:4")).hbm_bytes_per_s
    assert mamba["mixer_forward_ms"] == pytest.approx(91_972 * SEQ / (mamba_kernels.SSD_KERNEL_COPY_SHARE * hbm) * 1e3,
                                                      rel=1e-5)
    assert mamba["mixer_forward_ms"] < mamba["forward_ms"] and mamba["mixer_backward_ms"] < mamba["backward_ms"]
    code, out, err = run_cli("estimate", "--model", "nemotron-h-56b", "--cluster", "dgx-h100:4", "--layout",
                             "tp=8,mbs=1,gbs=96,seq=8192,sp=1,precision=fp8,fp8_params=1,recompute=none")
    assert "hybrid blocks, one micro-batch on one rank" in out and "91,972 + 275,908" in out


def test_mamba_context_parallelism_runs_the_whole_sequence_on_fewer_heads():
    """Under MambaContextParallel a rank scans all 8,192 tokens on heads / (tp cp): Nemotron-H 56B at tp 4 cp 2 runs
    the same mixer as at tp 8 cp 1 (32 heads, one group each way: at tp 8 a group per rank, at tp 4 cp 2 the 2 groups
    per tp rank split over 2 cp ranks). At tp 8 cp 2 a tp rank's one group is repeated for both cp ranks
    (group_repeat_count 2): each holds a whole group of 16 heads, and B and C cross the all-to-all twice over."""
    from clusterplan.models.hardware.mamba_kernels import cp_all_to_all_widths, mixer_sizes
    from clusterplan.models.hardware.rates import HardwareRates
    from clusterplan.models.training.estimate import hybrid_blocks_json

    model = load_model("nemotron-h-56b")
    hw, stack = HardwareRates.of(load_cluster("dgx-h100:2")), get_stack()
    mixer = {}
    for tp, cp in ((8, 1), (4, 2)):
        lay = Layout(tp=tp, cp=cp, dp=16 // (tp * cp), mbs=1, gbs=16, seq=SEQ, sp=True)
        b = hybrid_blocks_json(model, lay, hw, stack)["mamba"]
        mixer[(tp, cp)] = (b["mixer_forward_ms"], b["mixer_backward_ms"])
    assert mixer[(4, 2)] == mixer[(8, 1)]
    s = mixer_sizes(model.mamba_inner, model.mamba_heads, model.mamba_groups, model.mamba_state_dim,
                    model.mamba_chunk, np.array([8.0]), np.array([2.0]))
    assert (s.heads[0], s.groups[0], s.inner[0]) == (16.0, 1.0, 1024.0)
    widths = cp_all_to_all_widths(model.mamba_inner, model.mamba_heads, model.mamba_groups, model.mamba_state_dim,
                                  np.array([8.0]), np.array([2.0]))
    assert [float(w[0]) for w in widths] == [2048.0, 2048.0, 512.0, 512.0, 32.0, 2048.0]


def test_mamba_context_parallelism_needs_groups_and_cp_to_divide():
    """MambaContextParallel asserts the groups per tp rank and cp divide one another: 8 groups on cp 3 do not, though
    the 192 heads split into 3."""
    model = replace(load_model("nemotron-h-56b"), mamba_heads=192)
    layout = Layout(tp=1, cp=3, dp=1, mbs=1, gbs=1, seq=3 * 2 * 1024)
    problems = [p.message for p in layout_problems(model, layout, 3) if p.code == RuleCode.HYBRID]
    assert len(problems) == 1 and "mamba_groups / tp (8) and cp dividing one another" in problems[0]
    assert not [p for p in layout_problems(model, replace(layout, cp=4, seq=8192), 4) if p.code == RuleCode.HYBRID]


def test_serving_past_the_groups_replicates_one_per_gpu():
    """vLLM's MambaMixer2 replicates B / C groups when tp exceeds them: Nemotron-H 8B's 8 groups at tp 16 leave each
    GPU one whole group (mixer_sizes' max(G / tp, cp) / cp at cp 1), not half of one."""
    from clusterplan.models.hardware.mamba_kernels import mixer_sizes

    m = load_model("nemotron-h-8b")
    s = mixer_sizes(m.mamba_inner, m.mamba_heads, m.mamba_groups, m.mamba_state_dim, m.mamba_chunk, np.array([16.0]))
    assert (m.mamba_groups, float(s.groups[0])) == (8, 1.0)


def test_estimate_shows_the_mamba_all_to_alls_behind_cp_comm(run_cli):
    import json

    code, out, _ = run_cli("estimate", "--model", "nemotron-h-56b", "--cluster", "dgx-h100:8", "--layout",
                           "tp=8,cp=2,zero=2,gbs=64,seq=32768,precision=fp8,fp8_params=1", "--format", "json")
    assert code == 0
    d = json.loads(out)
    mamba = d["hybrid_blocks"]["mamba"]
    # 54 Mamba blocks x 16 micro-batches (64 sequences over dp 4) of all-to-alls: cp_comm, less the 10 attention
    # blocks' ring exchange (K / V of 16K local tokens, mostly under their attention core)
    mamba_s = mamba["count"] * 16 * mamba["cp_all_to_all_ms"] / 1e3
    assert mamba_s <= d["time"]["cp_comm_s"] <= 1.02 * mamba_s


def test_a_hybrids_pipeline_ranks_hold_their_own_blocks_in_memory():
    """Llama 3.1 8B written "*" x 32 + "-" x 32 on pp 2: rank 0 holds the 32 attention blocks, rank 1 the 32 MLP
    blocks. Rank 0's layers keep 32 attention blocks' activations for its 2 micro-batches in flight (the embedding's
    output on top) and rank 1's 32 MLP blocks' for 1; the weights split as the blocks do and add up to the even
    pattern's. An even "*-" x 32 split keeps the model's mix."""
    from clusterplan.models.training.memory import (
        inflight_microbatches,
        memory_breakdown,
        per_layer_activation_bytes,
    )

    llama = load_model("llama3.1-8b")
    L = LayoutArrays.from_layouts([Layout(tp=2, pp=2, dp=2, mbs=1, gbs=16, seq=SEQ, sp=True, recompute="none")])
    split, even = (ModelShapes.of(llama.scaled(name="x", n_layers=64, hybrid_pattern=p))
                   for p in ("*" * 32 + "-" * 32, "*-" * 32))
    blocks = {b.block: b for _, b in split.blocks}
    attention, mlp = (per_layer_activation_bytes(blocks[k], L)[0][0] for k in ("attention", "mlp"))
    m, e = memory_breakdown(split, L).by_position, memory_breakdown(even, L).by_position
    first, last = 0, 2
    embed_out = m[first, 3, 0] - 32 * attention * inflight_microbatches(L, "first")[0]
    assert 0 < embed_out < 0.01 * m[first, 3, 0]  # the embedding's output, a sliver of the stage
    mixed = (attention + mlp) / 2
    assert e[first, 3, 0] - embed_out == pytest.approx(32 * mixed * inflight_microbatches(L, "first")[0], rel=1e-9)
    assert m[first, 0, 0] + m[last, 0, 0] == pytest.approx(e[first, 0, 0] + e[last, 0, 0], rel=1e-9)
    assert m[first, 0, 0] < e[first, 0, 0] < m[last, 0, 0]  # the MLP blocks are the heavier weights
