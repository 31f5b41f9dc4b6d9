"""Activation checkpointing per the layout's recompute mode.

- full: every transformer block keeps only its input and recomputes the rest in backward (Chen et al. 2016).
- selective: only the attention core (softmax(QK^T)V) is recomputed (Korthikanti et al. 2022, section 4.2).
Reentrant torch.utils.checkpoint, so the saved-tensor hooks of measure.py see the inputs it keeps and the
layer it recomputes in backward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def _checkpointed(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    # Reentrant checkpointing: inputs are saved through save_for_backward and the recomputation runs as a normal
    # forward inside backward, so the activation tracker sees both (the non-reentrant form hides them).
    def run(*args: Any) -> torch.Tensor:
        return checkpoint(fn, *args, use_reentrant=True)

    return run


def apply_ac(model: nn.Module, recompute: str) -> None:
    """Wrap blocks (full) or attention cores (selective) of `model` in checkpoints; `none` leaves it as is."""
    if recompute == "none":
        return
    for layer in model.layers.values():
        if recompute == "selective":
            layer.attention.core = _checkpointed(layer.attention.core)
        elif recompute == "full":
            layer.forward = _checkpointed(layer.forward)
        else:
            raise ValueError(f"unknown recompute mode {recompute!r}")
