"""What a calibration's communication numbers do to a prediction, as worked examples.

- comm_compute_overlap (profiler/overlap.py): the share of compute that data-parallel traffic hides under.
  1 is the datasheet assumption (NCCL on its own SMs); 0 is gloo sharing busy CPU cores with the GEMMs.
- Per-collective fits: a calibration prices all-gather and reduce-scatter at their own measured bus bandwidth,
  not all-reduce's (gloo's reduce-scatter runs at about a third of its all-reduce on the CI machine).
- fp32 runs send 4-byte activations over TP and PP.
"""

from __future__ import annotations

from types import MappingProxyType

import pytest

from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.calibration import Calibration, CollectiveFit
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout
from clusterplan.profiler.overlap import overlap_fraction

MODEL = ModelSpec(name="m512", n_layers=4, hidden=512, n_heads=8, n_kv_heads=4, ffn_hidden=1536, vocab=2048)
CLUSTER = load_cluster("dgx-h100:1")
FSDP = Layout.parse("dp=8,zero=3,mbs=1,gbs=32,seq=256,precision=fp32")  # as validate runs on CPU


def calibration(*, overlap: float | None = None, all_gather_busbw: float | None = None) -> Calibration:
    fits = {("all_reduce", "scale_up"): CollectiveFit(latency_s=1e-5, busbw_bytes_per_s=1e9)}
    if all_gather_busbw is not None:
        fits[("all_gather", "scale_up")] = CollectiveFit(latency_s=1e-5, busbw_bytes_per_s=all_gather_busbw)
    return Calibration(collectives=MappingProxyType(fits),
                       overlap=MappingProxyType({} if overlap is None else {"scale_up": overlap}))


def dp_comm_s(layout: Layout, calib: Calibration) -> float:
    return estimate(MODEL, CLUSTER, layout, calib).to_json()["time"]["dp_comm_s"]


def test_overlap_fraction_worked_examples():
    assert overlap_fraction(comm_s=1.0, gemm_s=1.0, both_s=1.0) == 1.0   # fully hidden
    assert overlap_fraction(comm_s=1.0, gemm_s=1.0, both_s=2.0) == 0.0   # one after the other
    assert overlap_fraction(comm_s=1.0, gemm_s=2.0, both_s=2.5) == 0.5   # half the all-reduce hidden
    assert overlap_fraction(comm_s=1.0, gemm_s=2.0, both_s=3.5) == -0.5  # together slower than serial
    assert overlap_fraction(comm_s=1.0, gemm_s=1.0, both_s=9.0) == -1.0  # clipped
    assert overlap_fraction(comm_s=0.0, gemm_s=1.0, both_s=1.0) == 0.0


def test_no_overlap_exposes_every_fsdp_collective():
    hidden, serial = dp_comm_s(FSDP, calibration(overlap=1.0)), dp_comm_s(FSDP, calibration(overlap=0.0))
    half, slowed = dp_comm_s(FSDP, calibration(overlap=0.5)), dp_comm_s(FSDP, calibration(overlap=-0.5))
    assert hidden < half < serial < slowed
    # With overlap 0 the exposed time is every gather and reduce-scatter at the calibrated rate: per layer and
    # micro-batch, 2 all-gathers + 1 reduce-scatter of the layer's fp32 weights (3.15 M params x 4 B) over 8 ranks.
    layer_bytes = 4 * (512 * (512 + 2 * 256 + 512) + 3 * 512 * 1536)
    one_s = 7 / 8 * layer_bytes / 1e9 + 7 * 1e-5
    assert serial > 4 * 4 * 3 * one_s  # 4 micro-batches x 4 layers, plus the embedding/head and latency terms
    assert serial == pytest.approx(4 * 4 * 3 * one_s, rel=0.25)


def test_all_gather_priced_at_its_own_fit():
    slow_gather = dp_comm_s(FSDP, calibration(overlap=0.0, all_gather_busbw=0.25e9))
    assert slow_gather > 2 * dp_comm_s(FSDP, calibration(overlap=0.0))
    hw = HardwareRates.of(CLUSTER, calibration(all_gather_busbw=0.25e9))
    assert hw.link("all_gather").bw_in == 0.25e9 and hw.link("reduce_scatter").bw_in == 1e9


def test_defaults_keep_full_overlap():
    hw = HardwareRates.of(CLUSTER)
    assert hw.comm_overlap == 1.0 and not hw.per_op
    assert estimate(MODEL, CLUSTER, FSDP).to_json()["hardware"]["comm_overlap"] == 1.0


def test_fp32_sends_four_byte_activations():
    # Bandwidth-bound TP all-reduces (large activations): fp32 moves twice the bytes of bf16.
    big = ModelSpec(name="big", n_layers=2, hidden=8192, n_heads=64, n_kv_heads=8, ffn_hidden=28672, vocab=32000)
    tp = {p: estimate(big, CLUSTER, Layout.parse(f"tp=8,mbs=1,gbs=1,seq=8192,precision={p}")).to_json()["time"]
          ["tp_comm_s"] for p in ("bf16", "fp32")}
    # Twice the bandwidth term; the per-step latency (same for both) keeps the ratio just under 2.
    assert 1.9 < tp["fp32"] / tp["bf16"] < 2.0


def test_fsdp_under_pipeline_gathers_once_per_step():
    # torch.distributed.pipelining keeps an FSDP2 stage unsharded across micro-batches: its gathers and
    # reduce-scatters do not grow with the number of micro-batches; without pp they do (one set per micro-batch).
    calib = calibration(overlap=0.0)
    pp = {m: dp_comm_s(Layout.parse(f"pp=2,dp=4,zero=3,mbs=1,gbs={4 * m},seq=256,precision=fp32"), calib)
          for m in (4, 8)}
    flat = {m: dp_comm_s(Layout.parse(f"dp=8,zero=3,mbs=1,gbs={8 * m},seq=256,precision=fp32"), calib) for m in (4, 8)}
    assert pp[8] == pp[4]
    assert flat[8] == pytest.approx(2 * flat[4], rel=0.01)


def test_fsdp_under_pipeline_holds_the_whole_stage_unsharded():
    # pp=2 over 4 layers: 2 layers + embedding (first stage). FSDP2 keeps their fp32 weights and fp32 gradients
    # unsharded through the step: (2 x 3.15 M + 2048 x 512) params x (4 + 4) B.
    layout = Layout.parse("pp=2,dp=4,zero=3,mbs=1,gbs=16,seq=256,precision=fp32")
    from clusterplan.models.architecture.shapes import ModelShapes
    from clusterplan.models.training.batch import LayoutArrays
    from clusterplan.models.training.memory import stage_layers, stage_params, state_bytes

    shapes, arrays = ModelShapes.of(MODEL), LayoutArrays.from_layouts([layout])
    first = stage_layers(shapes, arrays).first
    params = stage_params(shapes, arrays, first, True, False)
    layer = 512 * (512 + 2 * 256 + 512) + 3 * 512 * 1536 + 2 * 512  # + the two RMSNorm scales
    assert float(params.dense[0]) == 2 * layer + 2048 * 512
    assert float(state_bytes(shapes, arrays, params, first).fsdp_buffers[0]) == (2 * layer + 2048 * 512) * 8


def test_eager_layer_section_applies_to_validate_only():
    calib = Calibration(eager_layer_time_factor=1.5, eager_tp_overhead_s=0.01)
    layout = Layout.parse("tp=2,mbs=1,gbs=4,seq=256,precision=fp32")
    fused = estimate(MODEL, CLUSTER, layout, calib).to_json()["time"]
    eager = estimate(MODEL, CLUSTER, layout, calib, eager_layers=True).to_json()["time"]
    # 4 layers x 4 micro-batches of TP layers, 10 ms each of DTensor dispatch on top of their all-reduces.
    assert eager["tp_comm_s"] == pytest.approx(fused["tp_comm_s"] + 16 * 0.01, rel=1e-4)
    assert 1.3 * fused["compute_s"] < eager["compute_s"] < 1.5 * fused["compute_s"]  # the LM head is not scaled


def test_idle_pipeline_ranks_lend_their_cores_on_an_oversubscribed_cpu():
    # 4 ranks x 1 thread profiled on 2 cores: k = 2. A pp=2 stage with 4 micro-batches idles 1 stage-time in the
    # bubble; with k = 2 the busy ranks run twice as fast meanwhile and (4 + 1) / 2 < 4: no time is lost.
    meta = {"backend": "gloo", "local_world_size": 4, "cpu_threads": 1, "host_cpus": 2}
    shared = Calibration(meta=MappingProxyType(meta))
    assert shared.host_oversubscription() == 2.0
    assert Calibration(meta=MappingProxyType({**meta, "backend": "nccl"})).host_oversubscription() == 1.0
    layout = Layout.parse("pp=2,mbs=1,gbs=4,seq=256,precision=fp32,schedule=1f1b")
    assert estimate(MODEL, CLUSTER, layout, shared).to_json()["time"]["bubble_s"] == 0.0
    own_cores = Calibration(meta=MappingProxyType({**meta, "local_world_size": 2}))
    assert estimate(MODEL, CLUSTER, layout, own_cores).to_json()["time"]["bubble_s"] > 0.0


def test_vocabulary_parallel_ends_all_reduce_too():
    # Megatron-LM at tp > 1: the embedding all-reduces its output (forward), the LM head its input's gradient
    # (backward), and the vocab-parallel cross-entropy all-reduces 3 floats per token. With a 1 GB/s, 10 us
    # all-reduce over tp=2 the layer-independent part of tp_comm_s is exactly that, per micro-batch.
    calib = calibration()
    tp = {n: estimate(MODEL.scaled(name=f"m{n}", n_layers=n), CLUSTER,
                      Layout.parse("tp=2,sp=0,mbs=1,gbs=4,seq=256,precision=fp32"), calib).to_json()["time"]["tp_comm_s"]
          for n in (2, 4)}
    per_layer = (tp[4] - tp[2]) / 2
    ends = tp[2] - 2 * per_layer

    def all_reduce_s(size_bytes: float) -> float:  # ring over 2 ranks: 2 steps of latency + 2 * (1/2) S / busbw
        return 2 * 1e-5 + size_bytes / 1e9

    activations = 256 * 512 * 4
    assert per_layer == pytest.approx(4 * 4 * all_reduce_s(activations), rel=1e-4)  # 4 per layer, 4 micro-batches
    assert ends == pytest.approx(4 * (2 * all_reduce_s(activations) + 3 * all_reduce_s(4 * 256)), rel=1e-4)


def test_hsdp_all_reduces_across_replicas_in_every_micro_batch():
    # FSDP2 HSDP (dp_replicate 2 x dp_shard 4) at pp = 1: each micro-batch's backward reduce-scatters over the shard
    # group and all-reduces the shard over the replicas, so with no overlap the traffic doubles with the micro-batches.
    calib = calibration(overlap=0.0)
    hsdp = {m: dp_comm_s(Layout.parse(f"dp=8,dp_replicate=2,zero=3,mbs=1,gbs={8 * m},seq=256,precision=fp32"), calib)
            for m in (2, 4)}
    assert hsdp[4] == pytest.approx(2 * hsdp[2], rel=1e-5)  # to_json rounds to 6 digits
