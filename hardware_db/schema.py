"""Frozen, typed records of the hardware database. Units are in every field name.

Bandwidths are per direction (uni-directional), in GB/s (1e9 bytes/s); FLOP rates are dense
(no structured sparsity), in TFLOP/s (1e12 FLOP/s); capacities are in GiB.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8", "fp4")


GIVEN_PROVIDER = "cluster file"
"""PriceRow.provider of a price the user's cluster file gives (`usd_per_gpu_hour:` on a group); it wins over the table."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PriceRow:
    """One price observation of data/prices.yaml (or of a user's --prices file); prices move, so each row carries its
    provider, pricing model, date and source."""

    gpu: str
    """Canonical GPU name (hardware_db gpus.yaml)."""
    provider: str
    region: str
    pricing: str
    """on_demand, spot, reserved or capacity_block (hardware_db/prices.py PRICINGS); "given" for a cluster file's."""
    usd_per_gpu_hour: float
    instance: str
    date: str
    """Date of the observation, ISO `YYYY`, `YYYY-MM` or `YYYY-MM-DD` ("" for a cluster file's own price)."""
    source: str

    @property
    def given(self) -> bool:
        """The user's own price from a cluster file, not a row of the price table."""
        return self.provider == GIVEN_PROVIDER


@dataclass(frozen=True, kw_only=True, slots=True)
class GPU:
    name: str
    vendor: str
    aliases: tuple[str, ...]
    peak_tflops: Mapping[str, float]
    """Dense peak per dtype in TFLOP/s; a dtype the GPU lacks is absent."""
    memory_gib: float
    memory_tb_per_s: float
    scale_up_link: str
    """Name of a link in links.yaml (`pcie4` when the GPU has no scale-up fabric)."""
    scale_up_gb_per_s: float
    """Per-GPU scale-up bandwidth per direction: the line rate of `scale_up_link`, copied from links.yaml at load
    (one source of each link bandwidth)."""
    scale_up_domain: int
    """GPUs reachable over the scale-up fabric (8 for an NVSwitch node, 72 for NVL72, 1 for none)."""
    pcie_gen: int
    tdp_w: float
    gemm_peak_fraction: float
    """Best achieved fraction of dense bf16/fp16 peak on large GEMMs (MAMF)."""
    hbm_fraction: float
    """Achieved fraction of peak memory bandwidth on large streaming copies."""
    sources: Mapping[str, str]
    """Source of each group of numbers: tflops, memory, scale_up, tdp, achieved."""
    mx_formats: bool = False
    """Tensor cores run microscaling formats (MXFP8) natively (Blackwell, CDNA 4)."""
    host_cpu: str = "x86"
    """The CPU that launches this GPU's kernels: "x86" (DGX/HGX hosts) or "grace" (the superchips GH200, GB200,
    GB300); prices the stack's per-op host time (stacks.yaml moe_host)."""
    host_link_gb_per_s: float = 0.0
    """Host memory <-> GPU copy bandwidth per direction that one GPU gets while every GPU of its node copies at once
    (line rates): its PCIe x16 link on x86 hosts (links.yaml pcie<gen>), its share of the NVLink-C2C link and of
    the Grace CPU's LPDDR5X on the superchips (gpus.yaml host_link). Prices activation offloading's copies."""

    @property
    def has_fp8(self) -> bool:
        """fp8 tensor cores (a dense fp8 peak is published)."""
        return "fp8" in self.peak_tflops

    @property
    def has_nvfp4(self) -> bool:
        """NVFP4 tensor cores: an NVIDIA GPU with a published dense fp4 peak (Blackwell; Transformer Engine's
        NVFP4BlockScaling trains on SM 10.0 / 10.3 only)."""
        return self.vendor == "nvidia" and "fp4" in self.peak_tflops

    def tflops(self, dtype: str) -> float:
        """Dense peak TFLOP/s for `dtype`; fp8 falls back to bf16 on GPUs without fp8 units."""
        if dtype in self.peak_tflops:
            return self.peak_tflops[dtype]
        if dtype in ("fp8", "fp4") and "bf16" in self.peak_tflops:
            return self.peak_tflops["bf16"]
        if dtype == "bf16" and "fp16" in self.peak_tflops:
            return self.peak_tflops["fp16"]
        return self.peak_tflops["fp32"]

    @property
    def memory_bytes(self) -> float:
        return self.memory_gib * 2**30

    @property
    def hbm_bytes_per_s(self) -> float:
        return self.memory_tb_per_s * 1e12


@dataclass(frozen=True, kw_only=True, slots=True)
class Link:
    name: str
    kind: str
    """`scale_up` (NVLink, Infinity Fabric, PCIe inside a node) or `scale_out` (NICs)."""
    gb_per_s: float
    """Per port (scale-out) or per GPU (scale-up) bandwidth, per direction, line rate."""
    latency_us: float
    """Per-step latency (alpha) of a collective over this link."""
    busbw_fraction: float
    """Achieved nccl-tests bus bandwidth at large messages as a fraction of line rate."""
    source: str
    nccl_ctas: int | None = None
    """Scale-up links: CTAs (one SM each) a large NCCL ring collective runs on over this link, as NCCL's topology
    search sets them (links.yaml header); None where not derived (no interference is priced)."""

    @property
    def achieved_bytes_per_s(self) -> float:
        return self.gb_per_s * 1e9 * self.busbw_fraction


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeType:
    name: str
    gpu: str
    gpus_per_node: int
    scale_up_link: str
    scale_up_domain: int
    """GPUs in one scale-up domain (8 in a DGX, 72 in an NVL72 rack)."""
    nic_link: str
    nics_per_node: int
    description: str
    source: str
    aliases: tuple[str, ...] = ()
    usd_per_node_hour: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class GemmTiling:
    """How a GPU's GEMM library tiles a matmul (gemm.yaml), for the wave-quantisation model."""

    gpu: str
    sm_count: int
    """Streaming multiprocessors (NVIDIA) or compute units (AMD): output tiles that run at once."""
    tile_m: int
    tile_n: int
    mamf_shape: tuple[int, int, int] | None
    """m, n, k at which the GPU's MAMF (GPU.gemm_peak_fraction) was measured; None when not published."""
    fp8_mamf_fraction: float | None
    """Measured fp8 MAMF over the dense fp8 peak; None: the bf16 fraction is assumed."""
    sources: Mapping[str, str]
    mxfp8_gemm_time_ratio: float = 1.0
    """Time of an MXFP8 (1x32 block-scaled) GEMM over the same GEMM with per-tensor scaled fp8 operands, both
    pre-quantised (sources: mxfp8); 1 where none is published."""
    nvfp4_gemm_time_ratio: float = 0.0
    """Time of an NVFP4 GEMM (E2M1 operands, one E4M3 scale per 16 elements along k) over the same GEMM with
    per-tensor scaled fp8 operands, both pre-quantised (sources: nvfp4); 0 where none is published (NVFP4 is then
    not priced on this GPU)."""
    rowwise_gemm_time_ratio: float = 1.0
    """Time of a rowwise-scaled fp8 GEMM through torch._scaled_mm's CUTLASS kernel (fast accumulation) over the same
    GEMM per-tensor scaled through cuBLAS (sources: rowwise); 1 where none is published."""
    fp8_k_overhead: float = 0.0
    """Reduction depth k_0 (elements) whose k-loop time equals an fp8 output tile's fixed prologue/epilogue: an fp8 GEMM
    of depth k runs at k / (k + k_0) of its long-k rate (sources: k_depth); 0 where nothing is published."""
    bf16_k_overhead: float = 0.0
    """The same k_0 for bf16/fp16 GEMMs (sources: k_depth_bf16); 0 where nothing is published."""
    sustained_fraction_bf16: float = 0.0
    sustained_fraction_fp8: float = 0.0
    """Maximum sustainable matmul FLOPS over the burst MAMF, bf16 / fp8, measured with every GPU of the node running
    matmuls (stas00/ml-engineering mamf-finder-all-gpus.py "MSMF": the power-capped steady clock a training step runs
    at; sources: sustained), or derived from the same die's measurement at another power cap (GB200 from B200); 0
    where neither (models/hardware/rates.py sustained_scale)."""
    bf16_kernel_s: float = 0.0
    fp8_kernel_s: float = 0.0
    """Fixed time of one GEMM kernel beside its k-depth and FLOP terms, bf16 / fp8, fitted with k_0 on the same sweep
    (sources: k_depth_bf16 / k_depth; yaml in microseconds: bf16_kernel_us, fp8_kernel_us); 0 where not fitted. Below
    1 % of a training GEMM, so priced only for a rank's per-expert GEMMs (moe_layer.grouped_gemm_time_s)."""
    blockwise_fp8_k_overhead: float = 0.0
    """The same k_0 for block-scaled fp8 GEMMs (1x128 / 128x128 scales: DeepGEMM, Transformer Engine's
    Float8BlockScaling), which promote the tensor cores' partial sums to fp32 every 128 of k (DeepSeek-V3 report,
    Sec. 3.3.2) (sources: k_depth_blockwise); 0: as fp8_k_overhead."""


@dataclass(frozen=True, kw_only=True, slots=True)
class AttentionCurve:
    """Published forward throughput of the causal attention core of one kernel on one GPU (attention_kernels.yaml)."""

    gpu: str
    kernel: str
    """Kernel family: fa1, fa2, fa3, cudnn, or sdpa_fa2 (PyTorch SDPA's FlashAttention-2 backend as called)."""
    direction: str
    """forward or backward."""
    causal: bool
    head_dim: int
    seq: tuple[int, ...]
    tflops: tuple[float, ...]
    """FLOPs as executed per second, one per `seq`: forward 4 b h s^2 d (halved when causal), backward 2.5x that."""
    source: str
    window: int | None = None
    """Sliding window (keys per query) the curve was measured with; None: full causal. A window curve's FLOPs are those
    of the band (4 b h s w d forward) and its `seq` the call's sequence length."""


@dataclass(frozen=True, slots=True)
class SdpaFa2Measurement:
    """PyTorch SDPA's FlashAttention-2 backend measured beside FlashAttention-3 in one run, forward, at one shape
    (attention_kernels.yaml sdpa_fa2): with the FA2 and FA3 curves of the same GPU it gives the rate of PyTorch's
    vendored FA2 relative to the FA2 the curves measure (models/hardware/attention.py sdpa_fa2_forward_ratio)."""

    gpu: str
    seq: int
    head_dim: int
    causal: bool
    sdpa_tflops: float
    fa3_tflops: float
    source: str


@dataclass(frozen=True, slots=True)
class HardwareDB:
    gpus: Mapping[str, GPU] = field(default_factory=lambda: MappingProxyType({}))
    links: Mapping[str, Link] = field(default_factory=lambda: MappingProxyType({}))
    nodes: Mapping[str, NodeType] = field(default_factory=lambda: MappingProxyType({}))
    gemm: Mapping[str, GemmTiling] = field(default_factory=lambda: MappingProxyType({}))
    attention: tuple[AttentionCurve, ...] = ()
    sdpa_backend: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """GPU -> kernel family PyTorch SDPA dispatches to (attention_kernels.yaml sdpa_backend); unlisted: fa2."""
    sdpa_fa2: Mapping[str, SdpaFa2Measurement] = field(default_factory=lambda: MappingProxyType({}))
    """GPU -> PyTorch SDPA FA2-backend measurement (attention_kernels.yaml sdpa_fa2, carried to its `also` GPUs)."""
