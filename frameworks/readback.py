"""An exported launch config read back as `check` reads it and priced on the stack that runs it: what `export`
warns about before a job is launched (a plan made for one stack can overflow on the stack its target runs)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from clusterplan.errors import BadInputError
from clusterplan.frameworks.read import read_config
from clusterplan.hardware_db.stacks import get_stack
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.cluster import Cluster
from clusterplan.models.training.estimate import Estimate, estimate
from clusterplan.models.training.layout import Layout, named_fp8_recipe

SUFFIX_OF_TARGET = {"torchtitan": ".toml", "torchtitan-py": ".py", "megatron": ".sh", "megatron-bridge": ".sh",
                    "deepspeed": ".json"}
"""The file suffix each target's config is read back by (frameworks/read.py config_kind)."""


@dataclass(frozen=True, slots=True)
class PricedBack:
    """The exported config as it runs: its stack and estimate, or why it could not be read back."""

    stack: str = ""
    estimate: Estimate | None = None
    unread: str = ""
    """Why the config was not read back ('' when it was): pricing it is advice, the config is written anyway."""


def price_back(model: ModelSpec, cluster: Cluster, target: str, text: str) -> PricedBack:
    """Read `text` (an export to `target`) back as `check` would and estimate it on the stack it names."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"exported{SUFFIX_OF_TARGET[target]}"
        path.write_text(text, encoding="utf-8")
        try:
            read = read_config(path, model, cluster.world_size)
        except BadInputError as exc:
            return PricedBack(unread=str(exc).splitlines()[0])
    stack = get_stack(read.stack)
    return PricedBack(stack=stack.name, estimate=estimate(model, cluster, read.layout, stack=stack))


def named_recipe(layout: Layout, stack: str) -> Layout:
    """`layout` with its fp8 recipe written out ("" = the first of `stack`: named_fp8_recipe), so a plan and its
    read-back, or a plan and its export, name the same recipe whatever stack each defaults to."""
    recipe = named_fp8_recipe(layout, get_stack(stack or None))
    return replace(layout, fp8_recipe=recipe) if recipe else layout
