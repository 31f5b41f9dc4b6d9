"""`plan --fix` pins the search space (solver/space.py enumerate_space): each pinned key holds in every candidate."""

from __future__ import annotations

import numpy as np
import pytest

from clusterplan.errors import BadInputError
from clusterplan.models.architecture.catalog import load_model
from clusterplan.models.training.batch import RecomputeCode
from clusterplan.solver.space import enumerate_space

LLAMA8B = load_model("llama3.1-8b")


def test_a_pinned_dp_leaves_only_structures_of_that_degree():
    # 16 GPUs at dp 4: tp x pp x cp = 4 in every candidate (before 2026-12-04 dp was always world / (tp pp cp)
    # whatever --fix said).
    space = enumerate_space(LLAMA8B, 16, 8, 64, 4096, fixed={"dp": 4})
    a = space.arrays
    assert len(a) > 0
    assert set(a.dp.tolist()) == {4.0}
    np.testing.assert_array_equal(a.tp * a.pp * a.cp, 4.0)


def test_a_dp_that_does_not_divide_the_gpus_is_bad_input_with_the_divisors():
    with pytest.raises(BadInputError, match=r"--fix dp=3: dp must divide the 16 GPUs .* pick one of 1, 2, 4, 8, 16"):
        enumerate_space(LLAMA8B, 16, 8, 64, 4096, fixed={"dp": 3})


def test_pinned_recompute_layers_pin_full_recompute():
    # A count of fully recomputed layers is full recompute (RuleCode.RECOMPUTE_LAYERS): every candidate keeps it, as
    # every pinned key holds in every plan shown.
    a = enumerate_space(LLAMA8B, 8, 8, 64, 4096, fixed={"recompute_layers": 8}).arrays
    assert len(a) and set(a.recompute.tolist()) == {float(RecomputeCode.FULL)}
    assert set(a.recompute_layers.tolist()) == {8.0}
