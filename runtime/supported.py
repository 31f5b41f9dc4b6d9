"""Which model architectures the runtime's decoder (runtime/model.py) builds: decided from the ModelSpec alone, so
`validate` refuses a plan before torch is imported or any rank starts."""

from __future__ import annotations

from clusterplan.errors import UnsupportedModelError
from clusterplan.models.architecture.spec import ModelSpec


def check_supported(spec: ModelSpec) -> None:
    """Raise UnsupportedModelError for architectures this decoder cannot build."""
    if spec.is_mla:
        raise UnsupportedModelError(f"model {spec.name}: multi-head latent attention (MLA) is not built by validate; "
                                    "validate a GQA model or use `clusterplan estimate`")
    if spec.is_hybrid:
        raise UnsupportedModelError(f"model {spec.name}: hybrid Mamba-2 / attention blocks (hybrid_pattern) are not "
                                    "built by validate; `clusterplan models show` gives its sizes")
    if spec.position == "alibi":
        raise UnsupportedModelError(f"model {spec.name}: ALiBi positions are not built by validate")
    if spec.sliding_window is not None or spec.attn_sinks:
        raise UnsupportedModelError(f"model {spec.name}: sliding-window attention and attention sinks are not built "
                                    "by validate; use `clusterplan estimate`")
    if spec.is_moe and spec.linear_bias:
        raise UnsupportedModelError(f"model {spec.name}: MoE experts with biases are not built by validate")
    if spec.parallel_block:
        raise UnsupportedModelError(f"model {spec.name}: parallel attention / MLP layers (Falcon, GPT-NeoX, Cohere) "
                                    "are not built by validate, whose decoder runs them one after the other; use "
                                    "`clusterplan estimate --stack deepspeed`")
    if spec.norms_per_layer != 2 or spec.qk_norm_full_width:
        raise UnsupportedModelError(f"model {spec.name}: Gemma's post-norms and OLMo 2's full-width q/k norms are not "
                                    "built by validate; use `clusterplan estimate`")
