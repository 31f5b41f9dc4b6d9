"""`clusterplan models list|show`: the model catalog."""

from __future__ import annotations

import click

from clusterplan.cli.console import console
from clusterplan.cli.options import format_option
from clusterplan.models.architecture.catalog import load_model, presets
from clusterplan.models.architecture.spec import HYBRID_BLOCKS, ModelSpec


@click.group()
def models() -> None:
    """Model presets, our YAML model files and Hugging Face config.json files."""


def _summary(spec: ModelSpec) -> dict:
    return {"name": spec.name, "family": spec.family, "total_params": spec.total_params(),
            "active_params": spec.active_params(), "n_layers": spec.n_layers, "hidden": spec.hidden,
            "n_heads": spec.n_heads, "n_kv_heads": spec.kv_heads, "n_experts": spec.n_experts, "top_k": spec.top_k,
            **({"hybrid_blocks": spec.block_counts} if spec.is_hybrid else {})}


def _layers(spec: ModelSpec) -> str:
    """The layer count; a hybrid's with its blocks by kind (nemotron-h-56b: "118 M54 *10 -54")."""
    return " ".join([str(spec.n_layers), *(f"{c}{n}" for c, n in spec.block_counts.items())])


def _hybrid(spec: ModelSpec) -> dict[str, dict[str, int]]:
    """A hybrid's blocks by kind and the parameters of one block of each kind (MoE: all experts)."""
    if not spec.is_hybrid:
        return {}
    return {"hybrid_blocks": spec.block_counts,
            "block_params": {c: spec.hybrid_block_params(c) for c in spec.block_counts}}


@models.command("list")
@format_option
def models_list(fmt: str) -> None:
    """List the built-in model presets."""
    specs = list(presets().values())
    if fmt == "json":
        console.json({"models": [_summary(s) for s in specs]})
        return
    console.table(None, ["name", "family", "params B", "active B", "layers", "hidden", "heads/kv", "experts"], [
        (s.name, s.family, f"{s.total_params() / 1e9:.2f}", f"{s.active_params() / 1e9:.2f}", _layers(s), s.hidden,
         f"{s.n_heads}/{s.kv_heads}", f"{s.n_experts} top-{s.top_k}" if s.is_moe else "-") for s in specs],
        justify_right=[False, False] + [True] * 6)


def _counts(spec: ModelSpec) -> dict[str, int]:
    """Parameter counts under the conventions publishers use (see ModelSpec for each definition)."""
    return {"total_params": spec.total_params(), "active_params": spec.active_params(),
            "non_embedding_params": spec.non_embedding_params(),
            "active_params_excluding_input_embedding": spec.active_params_excluding_input_embedding(),
            "n_moe_layers": spec.n_moe_layers}


@models.command("show")
@click.argument("model")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "yaml"]), default="table",
              help="Output format; yaml prints a model file clusterplan can load back.")
def models_show(model: str, fmt: str) -> None:
    """Show a preset, a YAML model file or a config.json, with exact parameter counts."""
    spec = load_model(model)
    data = spec.to_dict()
    if fmt == "yaml":
        import yaml

        console.text(yaml.safe_dump(data, sort_keys=False).rstrip())
        return
    counts = _counts(spec)
    if fmt == "json":
        console.json({**data, **counts, **_hybrid(spec)})
        return
    rows = [(k, v) for k, v in data.items() if v not in (None, 0, "", False) or k in ("tied_embeddings",)]
    if not spec.is_moe:
        counts = {k: v for k, v in counts.items() if k in ("total_params", "non_embedding_params")}
    for key, value in counts.items():
        rows.append((key, value if key == "n_moe_layers" else f"{value:,} ({value / 1e9:.2f} B)"))
    hybrid = _hybrid(spec)
    if hybrid:
        rows.append(("hybrid_blocks", ", ".join(f"{n} {HYBRID_BLOCKS[c]} ({c})"
                                                for c, n in hybrid["hybrid_blocks"].items())))
        rows.append(("block_params", ", ".join(f"{c} {n:,}" for c, n in hybrid["block_params"].items())))
    console.table(None, ["field", "value"], rows, justify_right=[False, False], wrap=[False, True])
