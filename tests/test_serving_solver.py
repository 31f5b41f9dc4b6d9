"""The Melange ILP on the published example, and its limits."""

from __future__ import annotations

import json

import pytest

from clusterplan.errors import InfeasibleError
from clusterplan.solver.melange import MixProblem, solve_mix
from tests.conftest import REFERENCE

EXAMPLE = json.loads((REFERENCE / "melange_example.json").read_text(encoding="utf-8"))


def _problem(slice_factor: int, only: str | None = None, **limits) -> MixProblem:
    names = [n for n in EXAMPLE["gpu_info"] if only in (None, n)]
    info = EXAMPLE["gpu_info"]
    dist = [w for row in EXAMPLE["workload_distribution"] for w in row]
    return MixProblem(
        type_names=tuple(names), usd_per_hour=tuple(info[n]["cost_per_hour"] for n in names),
        capacity_rps=tuple(tuple(float(v) for row in info[n]["tputs"] for v in row) for n in names),
        bucket_rps=tuple(w * EXAMPLE["total_request_rate"] for w in dist), slice_factor=slice_factor, **limits)


@pytest.mark.parametrize("expected", EXAMPLE["expected"], ids=lambda e: str(e.get("slice_factor", "single")))
def test_melange_example_exact(expected: dict) -> None:
    # Melange README / research/serving-models.md sec. 3.3: slice 1 -> 3 A10G + 1 A100 = $6.70;
    # slice 4 -> 2 A10G + 1 A100 = $5.69; A100 alone -> 2 x A100 = $7.34.
    problem = _problem(expected.get("slice_factor", 4), only=expected.get("single_type_only"))
    mix = solve_mix(problem)
    assert mix.counts == expected["counts"]
    assert mix.usd_per_hour == pytest.approx(expected["cost_per_hour"], abs=1e-9)
    # Every bucket is fully assigned, and no type carries more load than its instances.
    assert all(sum(col) == pytest.approx(1.0) for col in zip(*mix.share, strict=True))
    assert all(mix.load[n] <= mix.counts[n] + 1e-9 for n in mix.load)


def test_availability_and_instance_limits() -> None:
    # Only one A10G available: the slice-4 optimum (2 A10G) is out; the solver must pay more.
    limited = solve_mix(_problem(4, max_count=(1, None)))
    assert limited.counts.get("A10G", 0) <= 1 and limited.usd_per_hour > 5.69
    with pytest.raises(InfeasibleError):
        solve_mix(_problem(4, max_instances=1))
