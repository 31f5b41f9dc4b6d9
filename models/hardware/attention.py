"""The causal attention core priced from published kernel measurements (hardware_db/data/attention_kernels.yaml).

A kernel's forward rate is interpolated linearly in log(seq) along each published head-dim curve (clamped at the
curve's ends: the curves flatten by 8k-16k) and then linearly in log(head_dim) between the two nearest curves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clusterplan.hardware_db import AttentionCurve, SdpaFa2Measurement

KERNEL_FAMILY = {"fa1": "fa1", "triton": "fa1", "fa2": "fa2", "fa3": "fa3", "cudnn": "cudnn"}
"""Stack attention kernel -> measured family. `sdpa` (PyTorch SDPA) runs the GPU's `sdpa_family`: its FlashAttention-2
backend (PyTorch 2.2 notes) unless PyTorch puts cuDNN first on that GPU (attention_kernels.yaml sdpa_backend); that
backend's own measured curves (`sdpa_fa2` rows) where the GPU has them, else the fa2 curve x sdpa_fa2_forward_ratio.
`triton` (llm-foundry attn_impl triton, flash_attn_triton.py) runs the FlashAttention-1 rate, its documented upper
bound (flash_attn_triton.py docstring: forward + backward slightly slower than the CUDA FlashAttention)."""
ATTN_BWD_FLOPS_OVER_FWD = 2.5
"""Flash backward FLOPs over forward: 5 GEMMs (recomputed S, dV, dP, dQ, dK) to 2 (Dao 2023, FlashAttention-2
Sec. 4.1, the FLOP count its benchmarks use)."""


def flash_backward_flops_over_forward(qk_head_dim: float, v_head_dim: float) -> float:
    """Flash backward FLOPs over forward for query/key head dim d_qk and value head dim d_v. Forward: S = Q K^T
    (inner d_qk) and O = P V (d_v). Backward: the recomputed S, dQ = dS K and dK = dS^T Q (d_qk each), dV = P^T dO and
    dP = dO V^T (d_v each): (3 d_qk + 2 d_v) / (d_qk + d_v), ATTN_BWD_FLOPS_OVER_FWD when the two are equal. MLA's
    192 / 128 (DeepSeek-V3): 2.6, as NVIDIA's cudnn-frontend DeepSeek-V3 attention benchmark counts it
    (2 b h s^2 (3 x 192 + 2 x 128), halved for causal)."""
    return (3.0 * qk_head_dim + 2.0 * v_head_dim) / (qk_head_dim + v_head_dim)


@dataclass(frozen=True, slots=True)
class AttentionRates:
    curves: tuple[AttentionCurve, ...]
    clock_scale: float = 1.0
    """Tensor-core clock under a power cap (models/hardware/power.py power_clock_scale)."""
    sdpa_family: str = "fa2"
    """Measured family PyTorch SDPA dispatches to on this GPU (hardware_db get_sdpa_family)."""
    sdpa_fa2: SdpaFa2Measurement | None = None
    """PyTorch SDPA's FA2 backend measured beside FA3 on this GPU (hardware_db get_sdpa_fa2_measurement); None: SDPA's
    FA2 runs at the fa2 curve."""

    def sdpa_fa2_forward_ratio(self) -> float:
        """PyTorch SDPA's FA2-backend forward rate over the fa2 curve's (attention_kernels.yaml sdpa_fa2): the measured
        SDPA / FA3 over the curves' FA2 / FA3 at the measured shape, so the run's clock cancels; 1 without one."""
        m = self.sdpa_fa2
        if m is None or not (self._rows("fa2", "forward", m.causal) and self._rows("fa3", "forward", m.causal)):
            return 1.0
        seq = np.array([float(m.seq)])
        curves = self.rate("fa2", seq, m.head_dim, causal=m.causal) / self.rate("fa3", seq, m.head_dim, causal=m.causal)
        return float(m.sdpa_tflops / m.fa3_tflops / curves[0])

    def has(self, kernel: str, window: int | None = None) -> bool:
        """Whether a causal forward curve of `kernel` is published (with `window`: one measured at that window)."""
        return bool(self._rows(kernel, "forward", True, window))

    def has_noncausal(self, kernel: str, direction: str) -> bool:
        """Whether a curve of `kernel` without the causal mask is published in `direction`."""
        return bool(self._rows(kernel, direction, False))

    def family(self, kernel: str) -> str | None:
        """The measured kernel family a stack's attention kernel runs on this GPU (None: not a flash kernel). PyTorch
        SDPA on its FlashAttention-2 backend runs its own measured curves (sdpa_fa2) where the GPU has them."""
        if kernel == "sdpa_cudnn_first":
            # PyTorch SDPA with the cuDNN backend first (sdpa_kernel(..., set_priority=True)): cuDNN where this GPU
            # has cuDNN curves (NVIDIA), else whatever plain SDPA runs (ROCm has no cuDNN backend).
            return "cudnn" if any(c.kernel == "cudnn" for c in self.curves) else self.family("sdpa")
        if kernel != "sdpa":
            return KERNEL_FAMILY.get(kernel)
        if self.sdpa_family == "fa2" and any(c.kernel == "sdpa_fa2" for c in self.curves):
            return "sdpa_fa2"
        return self.sdpa_family

    def _rows(self, kernel: str, direction: str, causal: bool, window: int | None = None) -> list[AttentionCurve]:
        family = self.family(kernel)
        return sorted((c for c in self.curves if c.kernel == family and c.direction == direction and c.causal == causal
                       and c.window == window), key=lambda c: c.head_dim)

    def rate(self, kernel: str, seq: np.ndarray, head_dim: float, direction: str = "forward",
             causal: bool = True, window: int | None = None) -> np.ndarray:
        """Published rate (executed FLOPs/s) of one curve family at per-call sequence length `seq`, interpolated."""
        rows = self._rows(kernel, direction, causal, window)
        if not rows:
            raise ValueError(f"no published {direction} {'causal ' if causal else ''}{kernel} attention curve")
        x = np.log(np.maximum(np.asarray(seq, dtype=float), 1.0))

        def along(c: AttentionCurve) -> np.ndarray:
            return np.interp(x, np.log(np.array(c.seq, dtype=float)), np.array(c.tflops))

        dims = np.array([c.head_dim for c in rows], dtype=float)
        if head_dim <= dims[0] or len(rows) == 1:
            rate = along(rows[0])
        elif head_dim >= dims[-1]:
            rate = along(rows[-1])
        else:
            hi = int(np.searchsorted(dims, head_dim))
            lo = hi - 1
            w = (np.log(head_dim) - np.log(dims[lo])) / (np.log(dims[hi]) - np.log(dims[lo]))
            rate = (1 - w) * along(rows[lo]) + w * along(rows[hi])
        if kernel == "sdpa" and self.family(kernel) == "fa2" and direction == "forward":
            rate = rate * self.sdpa_fa2_forward_ratio()  # PyTorch's vendored FA2 forward (sdpa_fa2)
        return rate * 1e12 * self.clock_scale

    def forward_flops_per_s(self, kernel: str, seq: np.ndarray, head_dim: float,
                            window: int | None = None) -> np.ndarray:
        """Causal forward rate of `kernel` at per-call sequence length `seq` and `head_dim` (`window`: the curve
        measured with that sliding window)."""
        return self.rate(kernel, seq, head_dim, window=window)

    def backward_flops_per_s(self, kernel: str, seq: np.ndarray, head_dim: float,
                             window: int | None = None) -> np.ndarray:
        """Causal backward rate: the measured causal backward curve where one is published (the Blackwell rows);
        else the causal forward rate x the measured non-causal backward/forward ratio (the FA3 paper publishes
        backward curves without the causal mask only); the forward rate where no backward curve is published."""
        if self._rows(kernel, "backward", True, window):
            return self.rate(kernel, seq, head_dim, "backward", True, window)
        if window is not None:
            return self.rate(kernel, seq, head_dim, window=window)
        forward = self.rate(kernel, seq, head_dim)
        if not (self._rows(kernel, "backward", False) and self._rows(kernel, "forward", False)):
            return forward
        return forward * (self.rate(kernel, seq, head_dim, "backward", False)
                          / self.rate(kernel, seq, head_dim, "forward", False))
