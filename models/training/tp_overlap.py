"""What overlapping tensor-parallel communication with the GEMMs costs the GEMMs themselves: the overlap hides the
all-gathers and reduce-scatters (step.tp_comm_s prices what stays exposed), but it cuts each GEMM into chunks that
fill fewer waves of the SMs, and some variants run their communication kernels on SMs the GEMM then gives up.

Transformer Engine userbuffers (Megatron-Core --tp-comm-overlap, stack tp_overlap "bulk"), with the defaults of
TE's initialize_ub (transformer_engine/pytorch/module/base.py, get_default_config):
  ring_exchange (qkv_fprop, fc1_fprop, proj_dgrad, fc2_dgrad): the all-gather runs as tp peer-to-peer steps on the
      copy engines and the GEMM as tp chunks of m/tp rows, one under each step (num_splits = tp, 1 SM);
  pipeline (proj_fprop, fc2_fprop): the GEMM is cut into UB_PIPELINE_SPLITS chunks of m/4 rows whose reduce-scatters
      run on UB_COMM_SMS SMs while the next chunk computes; the GEMM is launched with that SM margin (set_sm_margin);
  bulk (qkv_dgrad, fc1_dgrad): the input all-gather runs under the dgrad GEMM and the dgrad's reduce-scatter under
      the wgrad GEMM, each on UB_COMM_SMS SMs the concurrent GEMM gives up.
PyTorch async TP (torchtitan, stack tp_overlap "async_tp"): the micro-pipeline pass rewrites all-gather -> matmul
and matmul -> reduce-scatter, forward and backward, into tp chunks of m/tp rows with copy-engine transfers
(torch.distributed._symmetric_memory fused_all_gather_matmul / fused_matmul_reduce_scatter); the weight-gradient
matmul is not rewritten.
Vectorised over LayoutArrays; nothing here is fitted.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum

import numpy as np

UB_PIPELINE_SPLITS = 4
"""TE initialize_ub default num_splits of a "pipeline" overlap (proj_fprop, fc2_fprop)."""
UB_COMM_SMS = 16
"""TE initialize_ub default num_sm of the "pipeline" and "bulk" overlaps, given up by the GEMM (set_sm_margin)."""


class TpRole(IntEnum):
    """A weight GEMM's place in a Megatron tensor-parallel block (Shoeybi 2019; Korthikanti 2022 with SP)."""

    NONE = 0
    COLUMN = 1
    """Column-parallel (qkv, fc1): all-gather of the sequence-parallel input before it, reduce-scatter of dX after."""
    ROW = 2
    """Row-parallel (proj, fc2): reduce-scatter of its output after it, all-gather of dY before its dgrad."""


Gemm = Callable[..., np.ndarray]
"""hw.gemm_time_s(m, n, k, fp8, batch=1.0, sm_margin=0)."""


def chunked_s(gemm: Gemm, m: np.ndarray, n, k, fp8: np.ndarray, chunks: np.ndarray | float,
              sm_margin: int = 0) -> np.ndarray:
    """`chunks` GEMMs of m / chunks rows each, one after the other (each fills its own waves)."""
    return chunks * gemm(m / chunks, n, k, fp8, sm_margin=sm_margin)


def overlapped_times(gemm: Gemm, role: TpRole, kind: str, tokens: np.ndarray, in_features, out_features,
                     fp8: np.ndarray, tp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(forward, input-gradient, weight-gradient) seconds of one tensor-parallel GEMM run under `kind` overlap
    ("bulk": TE userbuffers, "async_tp": PyTorch async TP). Y = X W forward; dX = dY W^T, dW = X^T dY backward."""
    t, i, o = tokens, in_features, out_features
    if kind == "async_tp":
        return (chunked_s(gemm, t, o, i, fp8, tp), chunked_s(gemm, t, i, o, fp8, tp), gemm(i, o, t, fp8))
    if role == TpRole.COLUMN:  # ring_exchange forward; bulk dgrad and wgrad on the SMs the comm kernels leave
        return (chunked_s(gemm, t, o, i, fp8, tp), gemm(t, i, o, fp8, sm_margin=UB_COMM_SMS),
                gemm(i, o, t, fp8, sm_margin=UB_COMM_SMS))
    # ROW: pipeline forward with the SM margin; ring_exchange dgrad; wgrad as is
    return (chunked_s(gemm, t, o, i, fp8, UB_PIPELINE_SPLITS, UB_COMM_SMS), chunked_s(gemm, t, i, o, fp8, tp),
            gemm(i, o, t, fp8))
