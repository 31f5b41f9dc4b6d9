"""The search's shortcuts give the very numbers of the plain computation: layer_time once per distinct combination of
the columns it reads (step.unique_layer_time), the memory breakdown computed once and taken for the survivors, the
per-layer activations shared by the three pipeline positions, the batch rules filtered before the arrays are built.
Exact equality (assert_array_equal), not a tolerance: `plan` must print the same JSON as before."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from clusterplan.hardware_db.stacks import get_stack, list_stacks
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.architecture.shapes import ModelShapes
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.hardware.rates import HardwareRates
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.compute import layer_time
from clusterplan.models.training.estimate import stack_memory
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.memory import DEDUPE_MIN_ROWS as MEMORY_DEDUPE_MIN_ROWS
from clusterplan.models.training.memory import (
    PER_LAYER_ACTIVATION_FIELDS,
    per_layer_activation_bytes,
    unique_per_layer_activation_bytes,
)
from clusterplan.models.training.step import (
    DEDUPE_MIN_ROWS,
    LAYER_TIME_FIELDS,
    layer_time_fields,
    unique_layer_time,
)
from clusterplan.solver.space import enumerate_space

DERIVED = {"microbatches": ("gbs", "dp", "mbs"), "sp_div": ("sp", "tp"), "dp_shard": ("dp", "dp_replicate"),
           "token_drop": ("moe_capacity_factor",), "full_recompute_share": ("pp", "recompute", "recompute_layers"),
           "cp_ring": ("cp", "cp_kind", "cp_a2a")}


class _Reading:
    """A LayoutArrays that records which of its columns (or derived columns) are read."""

    def __init__(self, arrays: LayoutArrays, seen: set[str]) -> None:
        self._arrays, self._seen = arrays, seen

    def __getattr__(self, name: str):
        self._seen.add(name)
        return getattr(self._arrays, name)

    def __len__(self) -> int:
        return len(self._arrays)


@pytest.mark.parametrize("model", ["deepseek-v3", "llama3.1-8b", "qwen3-30b-a3b", "gpt-oss-120b"])
def test_layer_time_fields_cover_every_column_layer_time_reads(model):
    spec = load_model(model)
    shapes = ModelShapes.of(spec)
    ep = 4 if spec.is_moe else 1
    layouts = [Layout(tp=2, dp=16, ep=ep, precision="fp8", recompute="selective"),
               Layout(tp=4, cp=2, dp=4, ep=ep, recompute="full", flash_attn=False),
               Layout(tp=1, dp=32, ep=ep, mbs=2, recompute="selective", recompute_modules="core_attn+moe_act")]
    seen: set[str] = set()
    for cluster in ("dgx-h100:4", "dgx-b200:4"):
        hw = HardwareRates.of(load_cluster(cluster))
        for stack in list_stacks():
            for layout in layouts:
                for moe in {False, spec.is_moe}:
                    layer_time(shapes, _Reading(LayoutArrays.from_layouts([layout]), seen), hw, moe, get_stack(stack))
    read = set().union(*(DERIVED.get(name, (name,)) for name in seen))
    assert read, "the recorder saw no column"
    assert read <= set(LAYER_TIME_FIELDS), f"layer_time reads {sorted(read - set(LAYER_TIME_FIELDS))} too"


@pytest.mark.parametrize(("model", "cluster", "gbs", "seq", "stack"), [
    ("deepseek-v3", "dgx-h100:16", 512, 4096, "megatron-core"),
    ("mixtral-8x7b", "dgx-h100:4", 256, 4096, "torchtitan"),
    ("llama3.1-8b", "dgx-b200:4", 128, 8192, "megatron-core"),
    ("llama3.1-8b", "dgx-h100:8", 256, 8192, "torchtitan-compile"),
])
def test_unique_layer_time_equals_layer_time_on_every_row(model, cluster, gbs, seq, stack):
    spec, c = load_model(model), load_cluster(cluster)
    shapes, hw, st = ModelShapes.of(spec), HardwareRates.of(c), get_stack(stack)
    arrays = enumerate_space(spec, c.world_size, c.primary.scale_up_domain, gbs, seq, None, st,
                             ("bf16", "fp8")).arrays
    assert len(arrays) >= DEDUPE_MIN_ROWS, "the space must be large enough for the shortcut to run"
    fields = layer_time_fields(st)  # as unique_layer_time keys them
    unique = arrays.unique_rows(fields)
    assert unique is not None and len(unique[0]) < len(arrays) / 4  # the shortcut does save work here
    first, inverse = unique
    for name in fields:  # each row maps to a representative equal in every listed column
        np.testing.assert_array_equal(getattr(arrays, name)[first][inverse], getattr(arrays, name))
    for moe in {False, spec.is_moe}:
        fast, plain = unique_layer_time(shapes, arrays, hw, moe, st), layer_time(shapes, arrays, hw, moe, st)
        _assert_same(fast, plain, len(arrays), "LayerTime")


def _assert_same(fast, plain, n: int, where: str) -> None:
    """Equal in every array (broadcast to n rows), tuple and dataclass field."""
    if dataclasses.is_dataclass(plain):
        for f in dataclasses.fields(plain):
            _assert_same(getattr(fast, f.name), getattr(plain, f.name), n, f"{where}.{f.name}")
    elif isinstance(plain, tuple):
        assert isinstance(fast, tuple) and len(fast) == len(plain), where
        for i, (a, b) in enumerate(zip(fast, plain, strict=True)):
            _assert_same(a, b, n, f"{where}[{i}]")
    else:
        np.testing.assert_array_equal(np.broadcast_to(fast, (n,)), np.broadcast_to(plain, (n,)), err_msg=where)


def test_unique_rows_refuses_fractional_columns_and_handles_one_combination():
    L = LayoutArrays.from_layouts([Layout(tp=2, dp=4)] * 3)
    first, inverse = L.unique_rows(("tp", "dp", "mbs"))
    assert len(first) == 1 and inverse.tolist() == [0, 0, 0]
    half = LayoutArrays.from_columns(tp=np.array([1.0, 1.5]), dp=np.array([2.0, 2.0]))
    assert half.unique_rows(("tp",)) is None


def test_memory_breakdown_picks_the_first_most_loaded_position_and_takes_the_survivors():
    spec, c = load_model("deepseek-v3"), load_cluster("dgx-h100:16")
    arrays = enumerate_space(spec, c.world_size, c.primary.scale_up_domain, 512, 4096, None, get_stack(),
                             ("bf16", "fp8")).arrays
    shapes = ModelShapes.of(spec)
    mem = stack_memory(shapes, arrays, get_stack())
    totals = mem.by_position[:, 5, :]
    np.testing.assert_array_equal(mem.peak_position, np.argmax(totals, axis=0))
    for j, term in enumerate(("weights", "grads", "optimizer", "activations", "other", "peak")):
        np.testing.assert_array_equal(getattr(mem, term), mem.by_position[np.argmax(totals, axis=0), j,
                                                                          np.arange(len(arrays))])
    # pp = 1 layouts are equal at every position: the first wins, as argmax picks it.
    assert np.all(mem.peak_position[arrays.pp == 1] == 0)
    kept = np.nonzero(mem.peak <= HardwareRates.of(c).memory_bytes)[0]
    survivors, again = mem.take(kept), stack_memory(shapes, arrays.take(kept), get_stack())
    for term in survivors.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(survivors, term), getattr(again, term), err_msg=term)


@pytest.mark.parametrize("model", ["deepseek-v3", "llama3.1-8b", "gpt-oss-120b"])
def test_per_layer_activation_fields_cover_what_it_reads_and_the_shortcut_is_exact(model):
    spec = load_model(model)
    shapes = ModelShapes.of(spec)
    ep = 4 if spec.is_moe else 1
    seen: set[str] = set()
    for selective in ("core_attn", "op_sac"):
        for layout in (Layout(tp=2, dp=16, ep=ep, precision="fp8", recompute="selective"),
                       Layout(tp=4, cp=2, dp=4, ep=ep, recompute="full", flash_attn=False, sp=False)):
            per_layer_activation_bytes(shapes, _Reading(LayoutArrays.from_layouts([layout]), seen), selective,
                                       sp_gathered=True, fused_glu=False)
    read = set().union(*(DERIVED.get(name, (name,)) for name in seen))
    assert read and read <= set(PER_LAYER_ACTIVATION_FIELDS), sorted(read - set(PER_LAYER_ACTIVATION_FIELDS))
    c = load_cluster("dgx-h100:16")
    arrays = enumerate_space(spec, c.world_size, c.primary.scale_up_domain, 512, 4096, None, get_stack(),
                             ("bf16", "fp8")).arrays
    assert len(arrays) >= MEMORY_DEDUPE_MIN_ROWS
    for fast, plain in zip(unique_per_layer_activation_bytes(shapes, arrays, "op_sac"),
                           per_layer_activation_bytes(shapes, arrays, "op_sac"), strict=True):
        np.testing.assert_array_equal(fast, plain)
