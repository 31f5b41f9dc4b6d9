"""Activation checkpointing per the layout's recompute mode.

- full: every transformer block keeps only its input and recomputes the rest in backward (Chen et al. 2016).
- selective: only the attention core (softmax(QK^T)V) is recomputed (Korthikanti et al. 2022, section 4.2).
Non-reentrant torch.utils.checkpoint; the inputs a checkpoint holds are reported to the activation tracker,
since they bypass saved-tensor hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from clusterplan.validate.measure import hold_for_backward


def _checkpointed(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def run(*args: Any) -> torch.Tensor:
        out = checkpoint(fn, *args, use_reentrant=False)
        hold_for_backward(out, [a for a in args if isinstance(a, torch.Tensor)])
        return out

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
