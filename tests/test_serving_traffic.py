"""Request-length distributions, traces and size buckets for serve-plan."""

from __future__ import annotations

import re

import numpy as np
import pytest

from clusterplan.errors import BadInputError
from clusterplan.models.serving.traffic import load_trace, make_buckets, parse_length


@pytest.mark.parametrize(("text", "mean", "tol"), [
    ("512", 512, 0), ("uniform:100:300", 200, 3), ("normal:1000:100", 1000, 5),
    ("lognormal:6:0.5", float(np.exp(6 + 0.125)), 8)])
def test_length_forms_sample_their_mean(text: str, mean: float, tol: float) -> None:
    values = parse_length(text, "--input-len").sample(np.random.default_rng(0), 20000)
    assert values.min() >= 1 and values.dtype == np.int64
    assert abs(values.mean() - mean) <= tol


def test_histogram_file(tmp_path) -> None:
    path = tmp_path / "lens.csv"
    path.write_text("tokens,weight\n100,3\n1000,1\n", encoding="utf-8")
    values = parse_length(str(path), "--output-len").sample(np.random.default_rng(0), 20000)
    assert set(np.unique(values)) == {100, 1000}
    assert (values == 100).mean() == pytest.approx(0.75, abs=0.01)


@pytest.mark.parametrize("text", ["0", "uniform:5:1", "normal:10", "gamma:1:2", "abc"])
def test_bad_length_names_the_forms(text: str) -> None:
    with pytest.raises(BadInputError, match="uniform:LOW:HIGH"):
        parse_length(text, "--input-len")


def test_trace_rate_and_errors(tmp_path) -> None:
    good = tmp_path / "t.csv"
    good.write_text("arrival_s,input_tokens,output_tokens\n1.0,20,6\n2.0,10,5\n3.0,30,7\n", encoding="utf-8")
    reqs = load_trace(good)  # a log's own clock: the first arrival is time 0
    assert reqs.arrival_s == (0.0, 1.0, 2.0) and reqs.input_tokens == (20, 10, 30)
    assert reqs.rate_rps == pytest.approx(1.0) and list(reqs.unit_gaps()) == [1.0, 1.0]
    bad = tmp_path / "b.csv"
    bad.write_text("time,in,out\n1,2,3\n", encoding="utf-8")
    with pytest.raises(BadInputError, match="arrival_s,input_tokens,output_tokens"):
        load_trace(bad)


def test_sixteen_buckets_cover_every_request() -> None:
    rng = np.random.default_rng(1)
    inp, out = rng.integers(10, 4000, 4000), rng.integers(5, 800, 4000)
    buckets = make_buckets(inp, out)
    assert len(buckets) == 16
    assert sum(b.share for b in buckets) == pytest.approx(1.0)
    assert sum(len(b.input_tokens) for b in buckets) == 4000
    for b in buckets:
        assert b.input_edges[0] <= min(b.input_tokens) and max(b.input_tokens) <= b.input_edges[1]


@pytest.mark.parametrize(("rows", "message"), [
    # a negative arrival (a wrong column, or a clock before the log's start), named by its line in the file
    ("0,100,10\n-1,100,10\n", "line 3: arrival_s -1 is negative; give seconds from the trace's start, 0 or later"),
    # out of order (a merge of logs): refused, not sorted into another trace; comment lines count in the numbering
    ("# merged\n0,100,10\n2,100,10\n1,100,10\n",
     "line 5: arrival_s 1 comes before line 4's 2; sort the rows by arrival_s"),
])
def test_a_trace_out_of_order_or_before_zero_is_refused_by_its_line(tmp_path, rows: str, message: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,input_tokens,output_tokens\n" + rows, encoding="utf-8")
    with pytest.raises(BadInputError, match=re.escape(message)):
        load_trace(path)
