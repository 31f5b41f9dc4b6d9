"""Megatron-Core's data-parallel gradient buckets as NeMo 2.0 / Megatron-Bridge run them (stacks.yaml megatron-core
dp_bucket_params; models/training/step.py megatron_dp_chunks), worked by hand.

Megatron-Bridge's CommOverlapConfig (NeMo 2.0's MegatronCommOverlapCallback alike) sets the DDP bucket to
128 x 1024 x 1024 = 134,217,728 parameters with dp > 1. Megatron-Core DistributedDataParallel buckets only the first
pipeline stage's first model chunk ("not on the critical path" elsewhere; later virtual stages: disable_bucketing),
and keeps dense and expert gradients in separate buffers. The first chunk finishes its backward last, so each buffer's
last bucket - one bucket, or the whole chunk when smaller - is the piece of the reduce-scatter (and of the next
step's all-gather) no compute hides: the buffer's reduce comes in buffer_params / that piece chunks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.step import megatron_dp_chunks

MCORE = get_stack("megatron-core")
BUCKET = 128 * 1024 * 1024


def chunks(buffer_params: float, **layout: int) -> float:
    L = LayoutArrays.from_layouts([Layout(**layout)])
    return float(megatron_dp_chunks(np.array([buffer_params]), L, MCORE)[0])


def test_the_megatron_core_stack_carries_the_recipes_bucket():
    assert MCORE.dp_bucket_params == BUCKET == 134_217_728
    assert get_stack("torchtitan").dp_bucket_params == 0  # FSDP2 reduces per block: not this rule


def test_one_chunk_comes_in_buckets_whatever_the_data_parallel_size():
    # Nemotron-4 15B over tp 2: 7.8e9 parameters per rank, 7.8e9 / 134,217,728 = 58.1 pieces at dp 8 and at dp 1024.
    assert chunks(7.8e9, tp=2, dp=8, gbs=64) == pytest.approx(7.8e9 / BUCKET)
    assert chunks(7.8e9, tp=2, dp=1024, gbs=4096) == pytest.approx(58.1145, abs=1e-4)
    # A buffer smaller than one bucket is one piece; an empty one (no experts) counts as one.
    assert chunks(5e7, dp=8, gbs=64) == 1.0
    assert chunks(0.0, dp=8, gbs=64) == 1.0


def test_pipelines_bucket_only_the_first_model_chunk():
    # pp 4, vpp 5: the first model chunk holds 1.6e9 / 5 = 3.2e8 parameters, more than a bucket: the last bucket
    # is exposed, 1.6e9 / 134,217,728 = 11.92 pieces. With vpp 20 the chunk (8e7) is smaller than a bucket and is
    # the exposed piece: 20 pieces = vpp. Without interleaving the stage is one bucketed chunk: 11.92.
    assert chunks(1.6e9, tp=4, pp=4, vpp=5, schedule="interleaved-1f1b", dp=8, gbs=64) == pytest.approx(1.6e9 / BUCKET)
    assert chunks(1.6e9, tp=4, pp=4, vpp=20, schedule="interleaved-1f1b", dp=8, gbs=64) == pytest.approx(20.0)
    assert chunks(1.6e9, tp=4, pp=4, dp=8, gbs=64) == pytest.approx(1.6e9 / BUCKET)


def test_the_estimate_exposes_each_buffers_last_bucket():
    """Nemotron-4 15B on 2,048 H100 (tp 2, dp 1024): the bucket rule exposes 1 / 58 of the reduce-scatter and
    all-gather where one of 32 layers was exposed before, so the step's dp_comm_s (exposed part plus what the
    overlapped part costs the compute beside it) goes from 0.0204 s to 0.0187 s (a dense model issues no expert
    collective: step._collective prices a zero-byte one at 0). A pin of this estimate's output: it fails when the
    term changes."""
    layout = Layout(tp=2, dp=1024, mbs=2, gbs=8192, seq=4096, sp=True, zero=1, precision="fp8", fp8_params=True,
                    fp32_grads=False)
    per_layer = replace(MCORE, dp_bucket_params=0.0)
    dp_s = [estimate(load_model("nemotron4-15b"), load_cluster("dgx-h100:256"), layout, stack=s,
                     fp8_recipe="delayed").to_json()["time"]["dp_comm_s"] for s in (MCORE, per_layer)]
    assert dp_s[1] == pytest.approx(0.0204, abs=1e-4)
    assert dp_s[0] == pytest.approx(0.0187, abs=1e-4)


def test_a_dense_model_issues_no_expert_collective():
    """The expert-data-parallel buffer of a dense model is empty: no reduce-scatter is issued over its group, so none
    is priced (before, its ring latency, 2 x 1023 steps at dp 1024, was added to every dense model's reduce)."""
    from clusterplan.models.hardware.rates import HardwareRates
    from clusterplan.models.training.step import Group, _collective
    from clusterplan.models.training.topology import Axis

    L = LayoutArrays.from_layouts([Layout(tp=2, dp=1024, gbs=4096)])
    hw = HardwareRates.of(load_cluster("dgx-h100:256"))
    edp = Group.of(L, Axis.EDP)
    assert float(_collective("reduce_scatter", np.array([0.0]), edp, hw)[0]) == 0.0
    assert float(_collective("reduce_scatter", np.array([1.0]), edp, hw)[0]) > 0.0
