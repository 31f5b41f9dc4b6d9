"""Forward + backward of whole eager transformer layers, alone (tp 1) and tensor-parallel over rank pairs (tp 2).

The GEMM, copy and collective fits price each kernel of a layer; an eager PyTorch layer also pays for what lies
between them: unfused elementwise ops (RMSNorm, RoPE, SwiGLU as separate kernels), autograd bookkeeping and, under
tensor parallelism, DTensor's per-op dispatch and redistribution. This measures two layers of validate's own decoder
(runtime/model.py, the layers `clusterplan validate` runs) on a reference shape, every rank at once, as a middle
pipeline stage (hidden states in and out: no embedding, head or loss), and reports seconds per layer.
profiler/store.py turns the two numbers into the calibration's `layer` section against the cost model.
"""

from __future__ import annotations

from typing import Any

from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.profiler.sweep import Measurement
from clusterplan.profiler.timer import summarize, time_runs

LAYERS = 2


def reference_layer(*, cuda: bool) -> tuple[ModelSpec, int]:
    """(model, seq): a Llama-3-8B layer at 4096 tokens on GPU; a 512-wide layer at 256 tokens on a CPU core."""
    if cuda:
        return ModelSpec(name="layer-ref", n_layers=LAYERS, hidden=4096, n_heads=32, n_kv_heads=8, ffn_hidden=14336,
                         vocab=128), 4096
    return ModelSpec(name="layer-ref", n_layers=LAYERS, hidden=512, n_heads=8, n_kv_heads=4, ffn_hidden=1536,
                     vocab=128), 256


def measure_layer(meas: Measurement, *, world_size: int, device: Any, quick: bool) -> dict[str, Any]:
    """Run on every rank (tp 2 builds a (world/2, 2) mesh, so every rank must call it); times are the slowest rank's."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from clusterplan.runtime.apply_tp import apply_tp
    from clusterplan.runtime.model import Decoder, keep_stage, materialize

    cuda = device.type == "cuda"
    (tp,) = meas.shape
    spec, seq = reference_layer(cuda=cuda)
    with torch.device("meta"):
        stage = keep_stage(Decoder(spec, seq), list(range(LAYERS)), first=False, last=False)
    if tp > 1:
        mesh = init_device_mesh(device.type, (world_size // tp, tp), mesh_dim_names=("dp", "tp"))
        apply_tp(stage, mesh["tp"], sp=False)
    materialize(stage, device, spec, seq, seed=0)
    x = torch.randn(1, seq, spec.hidden, device=device, requires_grad=True)
    grad = torch.randn(1, seq, spec.hidden, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            y = stage(x)
        y.backward(grad)

    repeats = (5 if quick else 10) if cuda else (5 if quick else 9)
    times = time_runs(step, cuda=cuda, warmup=2, repeats=repeats, before=dist.barrier)
    slowest = torch.tensor(times, dtype=torch.float64, device=device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    timing = summarize((slowest / LAYERS).cpu().tolist())
    return {"key": meas.key, "tp": tp, "dtype": meas.dtype, "hidden": spec.hidden, "n_heads": spec.n_heads,
            "n_kv_heads": spec.n_kv_heads, "ffn_hidden": spec.ffn_hidden, "seq": seq, "mbs": 1,
            "concurrent_ranks": world_size, **timing.to_dict()}
