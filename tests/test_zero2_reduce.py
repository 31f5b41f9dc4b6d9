"""ZeRO-2 keeps only its shard of the gradients, so it cannot accumulate them across micro-batches: every backward
reduce-scatters. Megatron-FSDP `optim_grads` (what zero 2 exports to on megatron-core) sets grad_reduce_every_bprop
for optim_grads / optim_grads_params; DeepSpeed stage 2 refuses no_sync; PyTorch FSDP1 SHARD_GRAD_OP (Composer,
llm-foundry) also reshards the weights after each backward and gathers them again in the next forward. ZeRO-1 (the
distributed optimizer) accumulates whole gradients and reduce-scatters once, after the last micro-batch.

An expert reviewer found ZeRO-2 priced like ZeRO-1 (one reduce per step) while its memory held only the gradient
shard, so `plan` put zero 2 first wherever it was a free saving of memory (the README demo among them)."""

from __future__ import annotations

import pytest

from clusterplan.hardware_db import get_stack
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.hardware.cluster import load_cluster
from clusterplan.models.training.estimate import estimate
from clusterplan.models.training.layout import Layout

MODEL = load_model("llama3.1-70b")
CLUSTER = load_cluster("dgx-h100:8")


def dp_comm_s(zero: int, gbs: int, stack: str = "megatron-core", **extra: object) -> float:
    layout = Layout(tp=1, pp=4, vpp=3, dp=8, cp=2, mbs=1, zero=zero, first_stage_layers=19, last_stage_layers=19,
                    gbs=gbs, seq=2048, precision="bf16", recompute="none", **extra)
    return estimate(MODEL, CLUSTER, layout, stack=get_stack(stack)).to_json()["time"]["dp_comm_s"]


def test_one_micro_batch_prices_zero_2_as_zero_1():
    # gbs 8 over dp 8 x mbs 1: one micro-batch, one reduce-scatter either way.
    assert dp_comm_s(2, 8) == dp_comm_s(1, 8)


def test_zero_1_reduces_once_per_step_whatever_the_micro_batches():
    assert dp_comm_s(1, 16) == dp_comm_s(1, 128) == dp_comm_s(1, 512)


def test_zero_2_reduces_once_per_micro_batch():
    """Each micro-batch adds one reduce-scatter less what its own backward hides: the exposed time is affine in the
    micro-batch count m (2, 16, 64 here: gbs 16, 128, 512): (t64 - t16) / 48 == (t16 - t2) / 14, and each added
    micro-batch costs more than nothing."""
    t2, t16, t64 = dp_comm_s(2, 16), dp_comm_s(2, 128), dp_comm_s(2, 512)
    per_micro_batch = (t16 - t2) / 14
    assert per_micro_batch > 0.01
    assert (t64 - t16) / 48 == pytest.approx(per_micro_batch, abs=2e-7)  # the JSON rounds to 1 us
    assert t64 > 3 * dp_comm_s(1, 512)


def test_fsdp1_shard_grad_op_also_gathers_per_micro_batch():
    """llm-foundry's zero 2 is SHARD_GRAD_OP: its all-gather repeats per micro-batch as well, so at pp 1 (the stack
    runs no pipeline with ZeRO) its ZeRO-2 exposes more per micro-batch than DeepSpeed's, which gathers once per
    step; both equal their own m = 1 price at one micro-batch."""
    model, cluster = load_model("llama3.1-8b"), load_cluster("dgx-h100:2")

    def dp(stack: str, gbs: int) -> float:
        layout = Layout(dp=16, mbs=1, zero=2, gbs=gbs, seq=4096, precision="bf16", recompute="full")
        return estimate(model, cluster, layout, stack=get_stack(stack)).to_json()["time"]["dp_comm_s"]

    assert get_stack("llm-foundry").zero2_gathers_per_microbatch and not get_stack("deepspeed").zero2_gathers_per_microbatch
    foundry, deepspeed = dp("llm-foundry", 256) - dp("llm-foundry", 16), dp("deepspeed", 256) - dp("deepspeed", 16)
    assert deepspeed >= 0 and foundry > deepspeed


def test_torch_pipelining_holds_the_reduce_until_the_last_backward():
    """torchtitan under pp > 1: torch.distributed.pipelining's stage defers FSDP's reduce-scatter to the last
    micro-batch's backward (it accumulates unsharded gradients), so its ZeRO-2 reduces once per step however many
    micro-batches run."""
    assert dp_comm_s(2, 16, "torchtitan", schedule="interleaved-1f1b") == dp_comm_s(2, 512, "torchtitan",
                                                                                     schedule="interleaved-1f1b")
