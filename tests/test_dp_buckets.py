"""Megatron-Core's data-parallel gradient buckets (stacks.yaml megatron-core dp_bucket_min_params,
dp_bucket_params_per_dp_rank; models/training/step.py megatron_dp_chunks), worked by hand.

Megatron-Core DistributedDataParallel buckets each model chunk's gradients into buckets of
max(40,000,000, 1,000,000 x |dp x cp|) parameters; only the first model chunk is bucketed (get_model:
disable_bucketing=(model_chunk_idx > 0)). The first chunk finishes its backward last, so its last bucket - one bucket,
or the whole chunk when smaller - is the piece of the reduce-scatter (and of the next step's all-gather) no compute
hides: the reduce comes in stage_params / that piece chunks."""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.hardware_db import get_stack
from clusterplan.models.training.batch import LayoutArrays
from clusterplan.models.training.layout import Layout
from clusterplan.models.training.step import megatron_dp_chunks

MCORE = get_stack("megatron-core")


def chunks(stage_params: float, **layout: int) -> float:
    L = LayoutArrays.from_layouts([Layout(**layout)])
    return float(megatron_dp_chunks(np.array([stage_params]), L, MCORE)[0])


def test_the_megatron_core_stack_carries_the_ddp_default():
    assert (MCORE.dp_bucket_min_params, MCORE.dp_bucket_params_per_dp_rank) == (40_000_000, 1_000_000)
    assert get_stack("torchtitan").dp_bucket_min_params == 0  # FSDP2 reduces per block: not this rule


def test_small_data_parallel_groups_take_the_40m_floor():
    # dp 8 x cp 1 = 8 ranks: max(40M, 8M) = 40M; a 7.8e9-parameter rank (Nemotron-4 15B over tp 2) reduces in
    # 7.8e9 / 4e7 = 195 pieces.
    assert chunks(7.8e9, tp=2, dp=8, gbs=64) == pytest.approx(195.0)


def test_the_bucket_grows_with_the_data_parallel_group():
    # dp 1024: max(40M, 1024M) = 1.024e9 parameters per bucket: 7.8e9 / 1.024e9 = 7.6171875 pieces, so the exposed
    # last bucket is 1 / 7.6 of the reduce instead of 1 / 195 at dp 8.
    assert chunks(7.8e9, tp=2, dp=1024, gbs=4096) == pytest.approx(7.6171875)
    # Context parallelism joins the group: dp 32 x cp 2 = 64 ranks, max(40M, 64M) = 64M.
    assert chunks(6.4e9, tp=4, cp=2, dp=32, gbs=64) == pytest.approx(100.0)


def test_interleaved_pipelines_bucket_only_their_first_chunk():
    # pp 4, vpp 5: the first model chunk holds 1.6e9 / 5 = 3.2e8 parameters; at dp 8 its buckets are 40M: the last
    # one, 1.6e9 / 4e7 = 40 pieces. At dp 512 a bucket (512M) is larger than the whole first chunk (320M): the chunk
    # is the exposed piece, 1.6e9 / 3.2e8 = 5 = vpp.
    assert chunks(1.6e9, tp=4, pp=4, vpp=5, schedule="interleaved-1f1b", dp=8, gbs=64) == pytest.approx(40.0)
    assert chunks(1.6e9, tp=4, pp=4, vpp=5, schedule="interleaved-1f1b", dp=512, gbs=4096) == pytest.approx(5.0)
    # Without interleaving the one chunk is bucketed as at pp 1: 1.6e9 / 4e7.
    assert chunks(1.6e9, tp=4, pp=4, dp=8, gbs=64) == pytest.approx(40.0)


def test_the_estimate_exposes_the_last_bucket():
    """Nemotron-4 15B on 2,048 H100 (tp 2, dp 1024, as DGX Cloud Benchmarking ran it): the bucket rule exposes 1 / 7.6
    of the reduce-scatter and all-gather where one of 32 layers was exposed before; the step's dp_comm_s (exposed part
    plus what the overlapped part costs the compute beside it) goes from 0.0235 s to 0.0368 s. A pin of this
    estimate's output: it fails when the term changes."""
    from dataclasses import replace

    from clusterplan.models.architecture.catalog import load_model
    from clusterplan.models.hardware.cluster import load_cluster
    from clusterplan.models.training.estimate import estimate

    layout = Layout(tp=2, dp=1024, mbs=2, gbs=8192, seq=4096, sp=True, zero=1, precision="fp8", fp8_params=True,
                    fp32_grads=False)
    per_layer = replace(MCORE, dp_bucket_min_params=0.0, dp_bucket_params_per_dp_rank=0.0)
    dp_s = [estimate(load_model("nemotron4-15b"), load_cluster("dgx-h100:256"), layout, stack=s,
                     fp8_recipe="tensorwise").to_json()["time"]["dp_comm_s"] for s in (MCORE, per_layer)]
    assert dp_s == pytest.approx([0.0368, 0.0235], abs=1e-4)
