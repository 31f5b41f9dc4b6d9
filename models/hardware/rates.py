"""HardwareRates: the achievable rates a cost model needs, from hardware_db defaults or a calibration file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import numpy as np

from clusterplan.hardware_db import (
    get_attention_curves,
    get_gemm_tiling,
    get_sdpa_fa2_measurement,
    get_sdpa_family,
)
from clusterplan.hardware_db.catalog import HOST_CPUS
from clusterplan.hardware_db.schema import GemmTiling
from clusterplan.models.hardware.attention import ATTN_BWD_FLOPS_OVER_FWD, AttentionRates
from clusterplan.models.hardware.calibration import (
    COLLECTIVES,
    AttentionFit,
    Calibration,
    CollectiveFit,
    GemmCurve,
)
from clusterplan.models.hardware.cluster import Cluster, NodeGroup
from clusterplan.models.hardware.gemm import OUTPUT_BYTES, GemmShapeModel
from clusterplan.models.hardware.power import power_clock_scale

# Share of the best-shape GEMM rate (MAMF, hardware_db gemm_peak_fraction) that a training step's GEMMs reach
# on top of their shape's wave/tile quantisation (models/hardware/gemm.py): the one fitted GEMM constant. It holds
# for every GPU and row; it was refitted with the shape model (minimax |error|) jointly on Narayanan et al. 2021
# Table 1 and Korthikanti et al. 2022 Table 5 on A100 (0.84: max 8.7%, 0.85: 7.6%, 0.86: 7.7%; errors in
# tests/test_reference_training.py); Korthikanti Table 4's per-layer times are no held-out check (an earlier fit
# used them). README "Fitted constants" lists every fit.
# `clusterplan profile` replaces it with a measured GEMM curve.
TRAINING_GEMM_SHARE = 0.85
SUSTAINED_REFERENCE_GPU = "H200-SXM-141GB"
"""The GPU whose measured sustained / burst matmul ratio TRAINING_GEMM_SHARE already holds: the share was fitted on A100
and reproduces the GH100 rows (H100 / H200) held out within a few per cent, and H200 is the GH100 part measured under
full-node load (gemm.yaml sustained_fraction_*)."""
NCCL_CTAS_PER_NIC = 2
"""NCCL's ring search finds one channel per NIC rail across nodes and ncclTopoPostset doubles the search channels into
execution channels, one CTA each (hardware_db/data/links.yaml header: derivation and checks)."""


EVERY_AXIS = "*"
"""axis_bw_out key of a cap on every axis (the search's bound: the slowest link of the matrix)."""


def _training_gemm_rate(group: NodeGroup) -> float:
    """A node group's best-shape bf16 GEMM rate as a training step runs it (peak x MAMF fraction x power-cap clock x
    sustained scale): the slowest group prices a mixed cluster."""
    gpu = group.gpu
    return (gpu.tflops("bf16") * gpu.gemm_peak_fraction * power_clock_scale(group.power_cap_w, gpu.tdp_w)
            * sustained_scale(get_gemm_tiling(gpu.name), "bf16"))


def sustained_scale(tiling: GemmTiling | None, dtype: str) -> float:
    """A GPU's GEMM rate under full-node training load relative to what TRAINING_GEMM_SHARE holds: its measured
    sustained / burst matmul ratio (gemm.yaml sustained_fraction_*) over the GH100 reference's
    (SUSTAINED_REFERENCE_GPU); 1 where it was neither measured under that load nor derived from a same-die
    measurement (GB200 from B200 at its power cap, gemm.yaml). B200 bf16: 0.828 / 0.888 = 0.932; GB200 0.858 / 0.888.
    Scales the training GEMM rate only: the attention curves come from benchmark loops that already run kernels back
    to back, serving prices its own share (models/serving/model.py), and a `clusterplan profile` calibration replaces
    the rate with what it measured (run it with the whole node busy for a training-load number)."""
    if tiling is None:
        return 1.0
    own = tiling.sustained_fraction_bf16 if dtype == "bf16" else tiling.sustained_fraction_fp8
    reference = get_gemm_tiling(SUSTAINED_REFERENCE_GPU)
    if not own or reference is None:
        return 1.0
    return own / (reference.sustained_fraction_bf16 if dtype == "bf16" else reference.sustained_fraction_fp8)


@dataclass(frozen=True, kw_only=True, slots=True)
class LinkRates:
    """Bus bandwidth (bytes/s) and per-step latency (s) of one collective inside a scale-up domain and across nodes."""

    bw_in: float
    lat_in: float
    bw_out: float | np.ndarray
    lat_out: float


@dataclass(frozen=True, kw_only=True, slots=True)
class HardwareRates:
    gpu_name: str
    memory_bytes: float
    peak_flops: float
    """Dense bf16/fp16 peak (the MFU denominator)."""
    gemm_max_flops: float
    gemm_half_flops: float
    gemm_max_flops_fp8: float
    hbm_bytes_per_s: float
    domain: int
    """GPUs in one scale-up domain (where tp/cp/ep groups should live)."""
    bw_in: float
    """Scale-up bus bandwidth per GPU, bytes/s."""
    lat_in: float
    bw_out: float
    """Scale-out bandwidth per GPU (its share of the node's NICs), bytes/s."""
    lat_out: float
    per_op: Mapping[str, LinkRates] = field(default_factory=lambda: MappingProxyType({}))
    """Calibrated rates of each collective (all_gather, reduce_scatter, all_to_all, send_recv) where they differ
    from all_reduce's bw_in/lat_in/bw_out/lat_out; datasheet defaults use one rate for all."""
    comm_overlap: float = 1.0
    """How much communication hides under compute (models/hardware/comm.py exposed_s): 1 fully, 0 not at all, < 0 running
    both at once is slower than serial (CPU cores shared with gloo); `profile` measures it."""
    host_cpu: str = "x86"
    """The CPU that launches the kernels (GPU.host_cpu): prices the stack's per-op host time."""
    host_link_bytes_per_s: float = float("inf")
    """Host memory <-> GPU copy rate per direction of one GPU while all copy (GPU.host_link_gb_per_s, the slowest
    group's): prices activation offloading (models/training/step.py offload_exposed_s); inf where unknown."""
    attn_max_flops: float | None = None
    """Calibrated causal flash-attention forward rate (None: priced as two GEMMs on the GEMM curve)."""
    attn_half_flops: float = 0.0
    attn_bwd_over_fwd: float = ATTN_BWD_FLOPS_OVER_FWD
    """Calibrated flash-attention backward over forward time (the `profile` fit); without a fit the core's backward
    is priced from the kernel curves (models/training/compute.py flash_core_times)."""
    layer_time_factor: float = 1.0
    """Eager-layer compute over the modelled compute (calibration `layer`, applied for validate's eager runs only)."""
    tp_layer_overhead_s: float = 0.0
    """Seconds per layer and micro-batch that an eager tensor-parallel layer adds (DTensor dispatch)."""
    axis_bw_out: Mapping[str, float | np.ndarray] = field(default_factory=lambda: MappingProxyType({}))
    """On a measured link matrix under a node order: per mesh axis (models/training/topology.py Axis), the
    per-GPU share of the slowest node-to-node link that axis's hops cross, bytes/s; it caps that axis's scale-out
    bandwidth (EVERY_AXIS: all axes not named). Arrays price many node orders at once. Empty: every axis at bw_out."""
    host_oversubscription: float = 1.0
    """CPU runs: rank threads per CPU core when every rank is busy (4 ranks x 1 thread on 2 cores: 2). The
    calibrated rates were measured that way; a pipeline's idle ranks lend their cores to the busy ones."""
    calibrated: bool = False
    gemm_sustained_scale: float = 1.0
    """The sustained / burst scale in the GEMM rates (sustained_scale, bf16); 1 when a calibration measured them."""
    attention: AttentionRates | None = None
    """Published flash-attention kernel curves of this GPU (None or empty: the core is priced as its GEMMs)."""
    gemm_shape: GemmShapeModel | None = None
    """Datasheet pricing: GEMM time by shape (models/hardware/gemm.py). None with a calibrated GEMM curve, which
    prices each GEMM as (FLOPs + gemm_half_flops) / rate as `profile` measured it."""
    fp8_all_layouts: bool = False
    """The GPUs run fp8 GEMMs in every operand layout (Blackwell, sm100+: TE is_non_tn_fp8_gemm_supported), so a
    per-tensor scaled fp8 tensor needs no transposed copy (hardware_db mx_formats, as estimate.fp8_all_layouts)."""
    mxfp8_gemm_time_ratio: float = 1.0
    """An MXFP8 GEMM's time over the per-tensor scaled fp8 GEMM (hardware_db gemm.yaml mxfp8_gemm_time_ratio)."""
    nvfp4_gemm_time_ratio: float = 0.0
    """An NVFP4 GEMM's time over the per-tensor scaled fp8 GEMM (gemm.yaml nvfp4_gemm_time_ratio); 0: not published
    for these GPUs (estimate's precision rule refuses NVFP4 there)."""
    rowwise_gemm_time_ratio: float = 1.0
    """A rowwise-scaled fp8 GEMM's time through torch._scaled_mm's CUTLASS kernel over the per-tensor scaled cuBLAS
    GEMM (hardware_db gemm.yaml rowwise_gemm_time_ratio)."""
    sm_count: int = 0
    """SMs of the GPU (hardware_db gemm.yaml); 0 where unknown: no communication/computation interference priced."""
    comm_ctas_in: float = 0.0
    """CTAs (SMs) a large NCCL ring collective holds inside the scale-up domain (links.yaml nccl_ctas)."""
    comm_ctas_out: float = 0.0
    """CTAs a large NCCL ring collective holds when its group spans nodes: NCCL_CTAS_PER_NIC x NICs per node."""

    def for_fp8_recipe(self, recipe: str, forward: bool = False) -> HardwareRates:
        """These rates with the fp8 GEMMs at `recipe`'s rate, for the backward's gradient GEMMs or, `forward`, the
        forward's: MXFP8's block-scaled GEMMs all run mxfp8_gemm_time_ratio slower than per-tensor scaled fp8 ones
        (TE GEMM Profiling Tutorial, B300); NVFP4's (fprop, dgrad and wgrad all on 4-bit operands: TE
        NVFP4BlockScaling) take nvfp4_gemm_time_ratio of their time. torchao's rowwise recipe runs its forward GEMM with fast accumulation,
        which torch._scaled_mm sends to its CUTLASS rowwise kernel (rowwise_gemm_time_ratio slower, pytorch/pytorch
        #147971); its gradient GEMMs run without, which torchao sends to the per-tensor cuBLAS kernel with unit
        scales and rescales after (torchao float8_ops.addmm_float8_unwrapped): at the per-tensor rate. Block-scaled
        GEMMs (the blockwise recipe, forward and gradients) pay their own reduction-depth k_0 (gemm.yaml
        blockwise_fp8_k_overhead: the fp32 promotion every 128 of k) where one is given."""
        shape = self.gemm_shape
        if (recipe == "blockwise" and shape is not None and shape.blockwise_fp8_k_overhead
                and shape.blockwise_fp8_k_overhead != shape.fp8_k_overhead):
            return replace(self, gemm_shape=replace(shape, fp8_k_overhead=shape.blockwise_fp8_k_overhead))
        if recipe == "mxfp8":
            r = self.mxfp8_gemm_time_ratio
        elif recipe == "nvfp4" and self.nvfp4_gemm_time_ratio > 0:
            r = self.nvfp4_gemm_time_ratio  # below 1: 4-bit tensor cores, every GEMM of the three
        elif recipe == "rowwise" and forward:
            r = self.rowwise_gemm_time_ratio
        else:
            r = 1.0
        if r == 1.0:
            return self
        if shape is not None and recipe == "nvfp4":
            # The k-loop runs 1 / r times faster per element of k while each output tile's prologue and epilogue keep
            # their time: the depth k_0 whose loop equals them grows by 1 / r (gemm.py k_depth).
            shape = replace(shape, fp8_k_overhead=shape.fp8_k_overhead / r)
        return replace(self, gemm_max_flops_fp8=self.gemm_max_flops_fp8 / r,
                       gemm_shape=None if shape is None else replace(shape, max_flops_fp8=shape.max_flops_fp8 / r))

    def gemm_time_s(self, m: np.ndarray, n: np.ndarray, k: np.ndarray, fp8: np.ndarray | bool = False,
                    batch: np.ndarray | float = 1.0, sm_margin: int = 0,
                    output_bytes: np.ndarray | float = OUTPUT_BYTES, m_sd: np.ndarray | float = 0.0) -> np.ndarray:
        """Seconds of one GEMM C[m,n] = A[m,k] B[k,n] (x batch) at this hardware's rates; `sm_margin` SMs held by a
        concurrent kernel, `output_bytes` of C's traffic per element, `m_sd` the spread of the batched GEMMs' rows
        (all three priced by the shape model only: a calibrated curve has no SM count, tiles or roofline)."""
        if self.gemm_shape is not None:
            return self.gemm_shape.time_s(m, n, k, fp8, batch, sm_margin, output_bytes, m_sd)
        flops = 2.0 * np.asarray(m, float) * n * k * batch
        rate = np.where(np.asarray(fp8, dtype=bool), self.gemm_max_flops_fp8, self.gemm_max_flops)
        # Calibrated saturating curve, rate * F / (F + F_half) (Calculon-style size curve): time (F + F_half) / rate.
        return np.where(flops > 0, (flops + self.gemm_half_flops) / rate, 0.0)

    @classmethod
    def of(cls, cluster: Cluster, calibration: Calibration | None = None,
           axis_links_gb_per_s: Mapping[str, float | np.ndarray] | None = None,
           eager_layers: bool = False) -> HardwareRates:
        """Rates of the cluster's slowest node group (a mixed cluster is priced at its slowest member here).

        With a measured node bandwidth matrix, each axis's scale-out traffic is priced at its share of the slowest
        link that axis crosses under the node order (`axis_links_gb_per_s`, whole-node GB/s per axis, from
        models/training/topology.py axis_links_gb_per_s) or, when not given, all of it at the slowest link of all
        (a bound every node order meets: what the search ranks by).
        """
        group = min(cluster.groups, key=_training_gemm_rate)
        gpu = group.gpu
        peak = gpu.tflops("bf16") * 1e12
        clock = power_clock_scale(group.power_cap_w, gpu.tdp_w)
        tiling = get_gemm_tiling(gpu.name)
        sustained = sustained_scale(tiling, "bf16")
        rate = peak * gpu.gemm_peak_fraction * TRAINING_GEMM_SHARE * clock * sustained
        curve = GemmCurve(max_tflops=rate / 1e12, half_flops=0.0)
        fp8_scale = gpu.tflops("fp8") / gpu.tflops("bf16")
        hbm = gpu.hbm_bytes_per_s * gpu.hbm_fraction
        bw_in = group.scale_up_busbw_gb_per_s * 1e9
        lat_in = group.scale_up.latency_us * 1e-6
        bw_out = min(g.scale_out_busbw_gb_per_s for g in cluster.groups) * 1e9
        lat_out = max(g.nic.latency_us for g in cluster.groups) * 1e-6
        axis_caps: dict[str, float | np.ndarray] = {}
        if cluster.node_bandwidth_gb_per_s is not None and axis_links_gb_per_s is not None:
            # A node-to-node link is shared by the node's GPUs, one NIC rail each (as bw_out is the NICs' share).
            axis_caps = {axis: np.asarray(link, dtype=float) * 1e9 / group.gpus_per_node
                         for axis, link in axis_links_gb_per_s.items()}
        elif cluster.node_bandwidth_gb_per_s is not None:
            off = [v for i, row in enumerate(cluster.node_bandwidth_gb_per_s) for j, v in enumerate(row) if i != j]
            if off:
                axis_caps = {EVERY_AXIS: min(off) * 1e9 / group.gpus_per_node}
        calibrated, overlap, per_op, factor, tp_overhead, oversub = False, 1.0, {}, 1.0, 0.0, 1.0
        attn = None
        fp8_fraction = tiling.fp8_mamf_fraction if tiling and tiling.fp8_mamf_fraction else gpu.gemm_peak_fraction
        fp8_rate = (gpu.tflops("fp8") * 1e12 * fp8_fraction * TRAINING_GEMM_SHARE * clock
                    * sustained_scale(tiling, "fp8"))
        shape = GemmShapeModel.of(tiling, best_shape_flops=rate, best_shape_flops_fp8=fp8_rate, hbm_bytes_per_s=hbm)
        if calibration is not None:
            calibrated = True
            measured_curve = calibration.gemm_curve("bf16")
            if measured_curve is not None:
                curve, shape, sustained = measured_curve, None, 1.0
                fp8_rate = curve.max_tflops * 1e12 * fp8_scale
            hbm = calibration.copy_bytes_per_s or hbm
            up = calibration.collective("all_reduce", "scale_up")
            if up:
                bw_in, lat_in = up.busbw_bytes_per_s, up.latency_s
            out = calibration.collective("all_reduce", "scale_out")
            if out:
                bw_out, lat_out = out.busbw_bytes_per_s / group.gpus_per_node, out.latency_s
            overlap = calibration.comm_overlap()
            oversub = calibration.host_oversubscription()
            attn = calibration.attention_fit()
            if eager_layers:
                factor = calibration.eager_layer_time_factor or 1.0
                tp_overhead = calibration.eager_tp_overhead_s or 0.0
            for op in COLLECTIVES:
                op_up, op_out = calibration.collective(op, "scale_up"), calibration.collective(op, "scale_out")
                if op != "all_reduce" and (op_up or op_out):
                    per_op[op] = LinkRates(
                        bw_in=op_up.busbw_bytes_per_s if op_up else bw_in, lat_in=op_up.latency_s if op_up else lat_in,
                        bw_out=op_out.busbw_bytes_per_s / group.gpus_per_node if op_out else bw_out,
                        lat_out=op_out.latency_s if op_out else lat_out)
        if shape is not None:
            shape = replace(shape, hbm_bytes_per_s=hbm)
        all_layouts = all(g.gpu.mx_formats for g in cluster.groups)
        tilings = [t for g in cluster.groups if (t := get_gemm_tiling(g.gpu.name))]
        mx_ratio = max((t.mxfp8_gemm_time_ratio for t in tilings), default=1.0)
        # the slowest GPU's NVFP4 ratio; none where a GPU of the cluster has no published one
        fp4_ratio = (max(t.nvfp4_gemm_time_ratio for t in tilings)
                     if len(tilings) == len(cluster.groups) and all(t.nvfp4_gemm_time_ratio for t in tilings) else 0.0)
        rowwise_ratio = max((t.rowwise_gemm_time_ratio for t in tilings), default=1.0)
        # A profiled overlap (calibration `overlap`) was measured with the collective and the GEMM running together:
        # it already holds what the collective's CTAs cost the GEMM, so the CTA term is not added on top of it.
        up_ctas = None if calibration is not None and calibration.overlap else group.scale_up.nccl_ctas
        ctas_in = float(up_ctas or 0)
        ctas_out = float(NCCL_CTAS_PER_NIC * min(g.nics_per_node for g in cluster.groups) if up_ctas else 0)
        # The slowest host of the cluster launches for the step (HOST_CPUS: fastest per op first; Grace's per-op host
        # time is 2.75x x86's, TransformerEngine#2053): a mixed cluster waits on it as on its slowest GPU.
        host_cpu = max((g.gpu.host_cpu for g in cluster.groups), key=HOST_CPUS.index)
        return cls(gpu_name=gpu.name, host_cpu=host_cpu,
                   sm_count=tiling.sm_count if tiling is not None else 0, comm_ctas_in=ctas_in, comm_ctas_out=ctas_out,
                   host_link_bytes_per_s=min(g.gpu.host_link_gb_per_s for g in cluster.groups) * 1e9,
                   memory_bytes=cluster.min_memory_bytes, peak_flops=peak,
                   gemm_max_flops=curve.max_tflops * 1e12, gemm_half_flops=0.0 if shape else curve.half_flops,
                   gemm_max_flops_fp8=fp8_rate, hbm_bytes_per_s=hbm, gemm_shape=shape,
                   attention=AttentionRates(get_attention_curves(gpu.name), clock_scale=clock,
                                            sdpa_family=get_sdpa_family(gpu.name),
                                            sdpa_fa2=get_sdpa_fa2_measurement(gpu.name)),
                   domain=min(max(group.job_domain, group.gpus_per_node), cluster.world_size), bw_in=bw_in, lat_in=lat_in,
                   bw_out=bw_out, lat_out=lat_out, per_op=MappingProxyType(per_op), comm_overlap=overlap,
                   layer_time_factor=factor, tp_layer_overhead_s=tp_overhead, host_oversubscription=oversub,
                   axis_bw_out=MappingProxyType(axis_caps), calibrated=calibrated, gemm_sustained_scale=sustained,
                   fp8_all_layouts=all_layouts,
                   mxfp8_gemm_time_ratio=mx_ratio, rowwise_gemm_time_ratio=rowwise_ratio,
                   nvfp4_gemm_time_ratio=fp4_ratio, **_attention_rates(attn))

    @classmethod
    def measured(cls, calibration: Calibration, *, dtype: str, domain: int) -> HardwareRates | None:
        """Rates from a calibration alone (no hardware_db GPU): what `profile` compares its own layer timings with.
        None until the file has the GEMM curve for `dtype` and the copy rate; without an all-reduce fit (one
        process) communication is free, as nothing communicates."""
        curve, up = calibration.gemm_curve(dtype), calibration.collective("all_reduce", "scale_up")
        if curve is None or calibration.copy_bytes_per_s is None:
            return None
        up = up or CollectiveFit(latency_s=0.0, busbw_bytes_per_s=float("inf"))
        per_op = {op: LinkRates(bw_in=fit.busbw_bytes_per_s, lat_in=fit.latency_s, bw_out=fit.busbw_bytes_per_s,
                                lat_out=fit.latency_s)
                  for op in COLLECTIVES if (fit := calibration.collective(op, "scale_up")) is not None}
        rate = curve.max_tflops * 1e12
        return cls(gpu_name=str(calibration.meta.get("device_name", "measured")), memory_bytes=float("inf"),
                   peak_flops=rate, gemm_max_flops=rate, gemm_half_flops=curve.half_flops, gemm_max_flops_fp8=rate,
                   hbm_bytes_per_s=calibration.copy_bytes_per_s, domain=domain, bw_in=up.busbw_bytes_per_s,
                   lat_in=up.latency_s, bw_out=up.busbw_bytes_per_s, lat_out=up.latency_s,
                   per_op=MappingProxyType(per_op), comm_overlap=calibration.comm_overlap(),
                   calibrated=True, **_attention_rates(calibration.attention_fit()))

    def link(self, op: str, axis: str | None = None) -> LinkRates:
        """The rates `op` runs at: its own calibrated fit, else all_reduce's (the datasheet's bus bandwidth); over
        `axis`, scale-out capped by the measured link that axis crosses (axis_bw_out)."""
        rates = self.per_op.get(op)
        if rates is None:
            rates = LinkRates(bw_in=self.bw_in, lat_in=self.lat_in, bw_out=self.bw_out, lat_out=self.lat_out)
        cap = self.axis_bw_out.get(axis, self.axis_bw_out.get(EVERY_AXIS)) if axis is not None else None
        return rates if cap is None else replace(rates, bw_out=np.minimum(rates.bw_out, cap))


def _attention_rates(fit: AttentionFit | None) -> dict[str, float]:
    if fit is None:
        return {}
    return {"attn_max_flops": fit.max_tflops * 1e12, "attn_half_flops": fit.half_flops,
            "attn_bwd_over_fwd": fit.bwd_over_fwd}
