"""Scaling a model down so a validation run fits the machine, keeping the layout's divisibility intact.

`--scale N` divides layers, head size, FFN, vocabulary and expert FFN by N (head counts and expert counts stay,
so tensor and expert parallelism split the same way); `--scale auto` picks the smallest power of two whose
predicted per-rank memory fits the budget.
"""

from __future__ import annotations

from clusterplan.errors import BadInputError
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.training.layout import Layout
from clusterplan.validate.predict import predicted_bytes


def _down(value: int, factor: int, multiple: int, floor: int) -> int:
    scaled = max(floor, value // factor)
    return max(multiple, scaled // multiple * multiple)


def scale_model(model: ModelSpec, layout: Layout, factor: int) -> ModelSpec:
    """`model` with sizes divided by `factor`, rounded to what the layout needs to divide evenly."""
    if factor < 1:
        raise BadInputError(f"--scale {factor}: give a positive integer or `auto`")
    if factor == 1:
        return model
    chunks = layout.pp * layout.vpp
    head_dim = _down(model.dim_head, factor, 2, 8)
    changes = {
        "name": f"{model.name}/scale{factor}",
        "n_layers": _down(model.n_layers, factor, chunks, chunks),
        "head_dim": head_dim,
        "hidden": model.n_heads * head_dim,
        "ffn_hidden": _down(model.ffn_hidden, factor, layout.tp, 16),
        "vocab": _down(model.vocab, factor, layout.tp, 64),
        "max_positions": max(layout.seq, model.max_positions // factor),
    }
    if model.is_moe:
        changes["expert_ffn_hidden"] = _down(model.expert_ffn_hidden, factor, layout.etp, 16)
        changes["first_dense_layers"] = min(model.first_dense_layers, changes["n_layers"] - 1)
        if model.shared_expert_ffn_hidden:
            changes["shared_expert_ffn_hidden"] = _down(model.shared_expert_ffn_hidden, factor, layout.tp, 16)
    return model.scaled(**changes)


def auto_factor(model: ModelSpec, layout: Layout, budget_bytes: float) -> int:
    """Smallest power-of-two factor whose predicted peak per rank (states + activations) fits `budget_bytes`."""
    factor = 1
    while factor <= 4096:
        scaled = scale_model(model, layout, factor)
        worst = max(sum(p[t] for t in ("weights", "grads", "optimizer", "activations"))
                    for p in predicted_bytes(scaled, layout).values())
        if worst <= budget_bytes:
            return factor
        factor *= 2
    raise BadInputError(f"model {model.name} does not fit {budget_bytes / 2**30:.1f} GiB per rank even scaled "
                        "down 4096x; use --dry-run")
