"""Per-step overhead of decoding: one eager step of a tiny decoder with the target's layer count.

The layers are the real sequence of kernels (norm, QKV, attention over a KV cache, output projection, gated
MLP, residuals; then LM head and greedy sampling) at hidden 256 and batch 1, so FLOPs and bytes are negligible
and the step time is launch and dispatch cost: the fixed t0 of research/serving-models.md 4.4 for an engine
without CUDA graphs (graph-replaying engines pay less; their scheduler pays more).
"""

from __future__ import annotations

from typing import Any

from clusterplan.profiler.gemm import torch_dtype
from clusterplan.profiler.sweep import Measurement
from clusterplan.profiler.timer import adaptive_repeats, summarize, time_runs

HIDDEN, HEADS, FFN, CONTEXT, VOCAB = 256, 4, 512, 128, 1024


def _layer_weights(device: Any, dtype: Any) -> dict[str, Any]:
    import torch

    def w(*shape: int) -> Any:
        return torch.randn(*shape, device=device, dtype=dtype) * 0.02

    return {"qkv": w(HIDDEN, 3 * HIDDEN), "out": w(HIDDEN, HIDDEN), "up": w(HIDDEN, 2 * FFN), "down": w(FFN, HIDDEN),
            "k": w(1, HEADS, CONTEXT, HIDDEN // HEADS), "v": w(1, HEADS, CONTEXT, HIDDEN // HEADS),
            "n1": torch.ones(HIDDEN, device=device, dtype=dtype), "n2": torch.ones(HIDDEN, device=device, dtype=dtype)}


def decode_step_fn(layers: int, device: Any, dtype: Any) -> Any:
    import torch
    import torch.nn.functional as F

    weights = [_layer_weights(device, dtype) for _ in range(layers)]
    head = torch.randn(HIDDEN, VOCAB, device=device, dtype=dtype) * 0.02
    x0 = torch.randn(1, 1, HIDDEN, device=device, dtype=dtype)

    @torch.no_grad()
    def step() -> Any:
        x = x0
        for lw in weights:
            q, k, v = (F.rms_norm(x, (HIDDEN,), lw["n1"]) @ lw["qkv"]).split(HIDDEN, dim=-1)
            q = q.view(1, 1, HEADS, -1).transpose(1, 2)
            keys = torch.cat([lw["k"], k.view(1, 1, HEADS, -1).transpose(1, 2)], dim=2)
            values = torch.cat([lw["v"], v.view(1, 1, HEADS, -1).transpose(1, 2)], dim=2)
            att = F.scaled_dot_product_attention(q, keys, values).transpose(1, 2).reshape(1, 1, HIDDEN)
            x = x + att @ lw["out"]
            gate, up = (F.rms_norm(x, (HIDDEN,), lw["n2"]) @ lw["up"]).chunk(2, dim=-1)
            x = x + (F.silu(gate) * up) @ lw["down"]
        return torch.argmax(x @ head, dim=-1)

    return step


def measure_decode(meas: Measurement, device: Any, *, budget_s: float) -> dict[str, Any]:
    layers = meas.shape[0]
    fn = decode_step_fn(layers, device, torch_dtype(meas.dtype))
    cuda = device.type == "cuda"
    repeats, _ = adaptive_repeats(fn, cuda=cuda, budget_s=budget_s, lo=5, hi=30)  # one step per sample: launches count
    timing = summarize(time_runs(fn, cuda=cuda, warmup=2, repeats=repeats))
    return {"key": meas.key, "dtype": meas.dtype, "layers": layers, "hidden": HIDDEN, "context": CONTEXT,
            "graphs": False, **timing.to_dict()}
