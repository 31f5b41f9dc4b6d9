"""Routing statistics: the four file formats, their one-line errors, and the seeded synthetic generator."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clusterplan.errors import BadInputError
from clusterplan.models.moe.routing import SynthConfig, load_stats, make_stats, save_stats, synth_stats


def _small() -> object:
    return synth_stats(SynthConfig(n_layers=3, n_experts=8, top_k=2, n_tokens=500, seed=3))


@pytest.mark.parametrize("suffix", [".npz", ".json", ".csv"])
def test_round_trip_keeps_loads_and_transitions(tmp_path, suffix):
    stats = _small()
    written = save_stats(stats, tmp_path / f"stats{suffix}")
    assert len(written) == (2 if suffix == ".csv" else 1)  # CSV puts transitions in NAME.transitions.csv
    back = load_stats(written[0])
    np.testing.assert_array_equal(back.tokens_per_expert, stats.tokens_per_expert)
    np.testing.assert_array_equal(back.transitions, stats.transitions)


def test_npy_holds_loads_only(tmp_path):
    stats = _small()
    path = save_stats(stats, tmp_path / "stats.npy")[0]
    back = load_stats(path)
    np.testing.assert_array_equal(back.tokens_per_expert, stats.tokens_per_expert)
    assert back.transitions is None


def test_csv_by_hand(tmp_path):
    # Two layers of three experts; a missing row counts as zero tokens.
    path = tmp_path / "s.csv"
    path.write_text("layer,expert,tokens\n0,0,5\n0,1,3\n0,2,2\n1,0,4\n1,2,6\n")
    (tmp_path / "s.transitions.csv").write_text("layer,from_expert,to_expert,tokens\n0,0,2,5\n")
    stats = load_stats(path)
    assert stats.tokens_per_expert.tolist() == [[5, 3, 2], [4, 0, 6]]
    assert stats.transitions[0, 0, 2] == 5 and stats.transitions.sum() == 5


@pytest.mark.parametrize("content, message", [
    ({"tokens_per_expert": [[1, 2], [3]]}, "rectangular"),
    ({"tokens_per_expert": [[1, -2]]}, "negative"),
    ({"tokens_per_expert": [[0, 0]]}, "no tokens"),
    ({"tokens_per_expert": [[1, 2], [3, 4]], "transitions": [[[1]]]}, "shape"),
    ({"loads": [[1]]}, "tokens_per_expert"),
])
def test_bad_json_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(BadInputError, match=message):
        load_stats(path)


def test_unknown_extension_and_missing_file(tmp_path):
    with pytest.raises(BadInputError, match="unknown statistics format"):
        (tmp_path / "x.parquet").write_text("")
        load_stats(tmp_path / "x.parquet")
    with pytest.raises(BadInputError, match="no such file"):
        load_stats(tmp_path / "none.npz")


def test_synth_is_seeded_and_consistent():
    cfg = SynthConfig(n_layers=4, n_experts=16, top_k=4, n_tokens=1000, seed=7)
    a, b = synth_stats(cfg), synth_stats(cfg)
    np.testing.assert_array_equal(a.tokens_per_expert, b.tokens_per_expert)
    np.testing.assert_array_equal(a.transitions, b.transitions)
    other = synth_stats(SynthConfig(n_layers=4, n_experts=16, top_k=4, n_tokens=1000, seed=8))
    assert not np.array_equal(a.tokens_per_expert, other.tokens_per_expert)
    # Every token picks top_k distinct experts: a layer holds tokens x top_k assignments ...
    assert a.tokens_per_expert.sum(axis=1).tolist() == [4000] * 4
    # ... and adds top_k x top_k pairs between consecutive layers, so T[l] sums to top_k x load[l] by row.
    np.testing.assert_array_equal(a.transitions.sum(axis=2), 4 * a.tokens_per_expert[:-1])
    np.testing.assert_array_equal(a.transitions.sum(axis=1), 4 * a.tokens_per_expert[1:])


def test_synth_skew_matches_published_imbalance():
    # TRT-LLM ep_load_balancer README: DeepSeek-R1 on EP32 without EPLB, average imbalance ratio
    # (max - mean) / mean over ranks = 1.564. The default Zipf exponent 0.8 should land near it (+-0.35).
    stats = synth_stats(SynthConfig(n_layers=8, n_experts=256, top_k=8, n_tokens=4096, seed=0))
    per_rank = stats.tokens_per_expert.reshape(8, 32, 8).sum(axis=2)  # 8 contiguous experts per rank
    ratio = float((per_rank.max(axis=1) / per_rank.mean(axis=1) - 1).mean())
    assert abs(ratio - 1.564) < 0.35


def test_affinity_concentrates_transitions():
    # With the affinity bonus, a layer-l expert's tokens go to its preferred successors far more often.
    def top_share(affinity: float) -> float:
        s = synth_stats(SynthConfig(n_layers=2, n_experts=32, top_k=2, n_tokens=4000, zipf_exponent=0.0,
                                    affinity_logit=affinity, seed=1))
        t = s.transitions[0]
        return float(np.sort(t, axis=1)[:, -2:].sum() / t.sum())  # mass on each row's 2 biggest successors

    assert top_share(0.0) < 0.1  # no affinity: about 2/32 plus sampling noise
    assert top_share(3.0) > 0.3


def test_make_stats_rejects_nan():
    with pytest.raises(BadInputError, match="NaN"):
        make_stats([[1.0, float("nan")]])
