"""Disaggregated serving: a prefill pool and a decode pool, each its own GPU mix, sized by rate matching.

Every bucket's rate must be absorbed by both pools (DistServe; aiconfigurator rate matching,
research/serving-models.md sec. 4.8): prefill instances meet the TTFT target including the KV-cache transfer
to the decode side (sec. 4.9), decode instances meet the TPOT target with prompts arriving prefilled.
"""

from __future__ import annotations

import numpy as np

from clusterplan.errors import InfeasibleError
from clusterplan.hardware_db import Link
from clusterplan.models.serving.kv import kv_bytes_per_token
from clusterplan.models.serving.model import DTYPE_BYTES, ServingInstance, step_model
from clusterplan.models.serving.sim import rate_upper_bound_rps
from clusterplan.progress import ProgressFn
from clusterplan.solver.melange import LimitsTooTight
from clusterplan.solver.serve import (
    Limits,
    ServePlan,
    Workload,
    capacity_table,
    describe_pools,
    engine_for,
    mean_output_tokens,
    pool_cost,
    solve_pools,
    unreachable,
)


def kv_transfer_terms(inst: ServingInstance, link: Link) -> tuple[float, float]:
    """(latency s, s per prompt token) of sending a prompt's KV from this prefill instance.

    Each of the instance's tp x pp GPUs sends its shard over its own NIC: t = alpha + I kv_tok / (n B); a hybrid's
    Mamba state goes with it once per request (the same on every GPU's link: kv.mamba_state_bytes_per_seq_per_gpu).
    """
    bytes_per_s = link.achieved_bytes_per_s * inst.n_gpus
    per_token = kv_bytes_per_token(inst.model, DTYPE_BYTES[inst.kv_dtype]) / bytes_per_s
    state_s = inst.mamba_state_bytes_per_seq / link.achieved_bytes_per_s
    return link.latency_us * 1e-6 + state_s, per_token


def plan_disaggregated(instances: tuple[ServingInstance, ...], work: Workload, limits: Limits, link: Link,
                       progress: ProgressFn | None = None) -> ServePlan:
    """Cheapest prefill mix, then the cheapest decode mix within the GPUs the prefill pool left."""
    transfer = tuple(kv_transfer_terms(inst, link) for inst in instances)
    prefill = capacity_table(instances, work, mode="prefill", transfer=transfer, progress=progress)
    decode = capacity_table(instances, work, mode="decode", progress=progress)
    for phase, table in (("prefill", prefill), ("decode", decode)):
        if any(all(row[b] <= 0 for row in table.capacity_rps) for b in range(len(work.buckets))):
            raise unreachable(table, work, phase)
    try:
        p_mix = solve_pools(prefill, work, limits)
    except LimitsTooTight as exc:  # its numbers are the prefill pool's alone
        raise InfeasibleError(
            f"no disaggregated plan within --max-gpus / --available: the prefill pool alone needs "
            f"{exc.nearest['gpus_needed']} GPUs, before any decode pool; raise the limits or try --disaggregate off"
        ) from None
    used: dict[str, int] = {}
    p_pools = describe_pools(prefill, p_mix, work, limits, role="prefill", used_gpus=used)
    rest = Limits(max_gpus=limits.max_gpus - sum(used.values()) if limits.max_gpus else None,
                  available_gpus=tuple((k, v - used.get(k, 0)) for k, v in limits.available_gpus),
                  slice_factor=limits.slice_factor)
    try:
        d_mix = solve_pools(decode, work, rest)
    except LimitsTooTight as exc:  # its numbers are the decode pool's alone: say what the limits hold in all
        prefill_gpus = sum(used.values())
        raise InfeasibleError(
            f"no disaggregated plan within --max-gpus / --available: the prefill pool takes {prefill_gpus} GPU"
            f"{'s' if prefill_gpus != 1 else ''} and the decode pool needs {exc.nearest['gpus_needed']} more "
            f"({prefill_gpus + exc.nearest['gpus_needed']} in all); raise the limits or try --disaggregate off"
        ) from None
    pools = p_pools + describe_pools(decode, d_mix, work, limits, role="decode", used_gpus=used)
    return ServePlan(mode="disaggregated", pools=pools, usd_per_hour=pool_cost(pools),
                     output_tokens_per_s=work.rate_rps * mean_output_tokens(work))


def disagg_lower_bound_usd(instances: tuple[ServingInstance, ...], work: Workload) -> float:
    """$/h no disaggregated plan can undercut, without simulating: each bucket's rate at the cheapest $ per
    saturated req/s of a prefill instance plus that of a decode instance (LP relaxation, capacity <= bound)."""
    total = 0.0
    for mode in ("prefill", "decode"):
        best = np.full(len(work.buckets), np.inf)
        for inst in instances:
            step, engine = step_model(inst), engine_for(inst, mode)
            for b, bucket in enumerate(work.buckets):
                hi = rate_upper_bound_rps(step, engine, float(np.mean(bucket.input_tokens)),
                                          float(np.mean(bucket.output_tokens)), work.slo)
                if hi > 0:
                    best[b] = min(best[b], inst.usd_per_hour / hi)
        total += float(sum(b.share * work.rate_rps * c for b, c in zip(work.buckets, best, strict=True)))
    return total
