"""Serving traffic: request-length distributions, arrival traces, and request-size buckets."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clusterplan.errors import BadInputError
from clusterplan.fileio import MAX_DATA_BYTES, bounded_int, check_name, is_file, read_text, show

MAX_TOKENS = 10**12
"""Longest request sampled or accepted; far beyond any context window (the planner then reports it unservable)."""
MAX_LOG_MU = 500.0
MAX_LOG_SIGMA = 30.0
"""Lognormal MU and SIGMA accepted: exp(500 + 6 x 30) still fits a float (exp overflows past 709); samples over
MAX_TOKENS are clipped to it, so the planner says such requests do not fit."""
MAX_ARRIVAL_S = 1e9
"""Latest arrival time in a trace, about 31 years in seconds; real traces (Azure, BurstGPT, Mooncake) span hours
to months, and gaps of 1e308 s overflow every rate computed from them."""
DIST_HELP = "give a token count (512), uniform:LOW:HIGH, normal:MEAN:STD, lognormal:MU:SIGMA or a histogram CSV (tokens,weight)"


@dataclass(frozen=True, kw_only=True, slots=True)
class LengthDist:
    """A token-length distribution; samples are integers >= 1."""

    kind: str
    """fixed, uniform, normal, lognormal (MU, SIGMA of the log) or histogram."""
    params: tuple[float, ...] = ()
    values: tuple[float, ...] = ()
    weights: tuple[float, ...] = ()

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "fixed":
            out = np.full(n, self.params[0])
        elif self.kind == "uniform":
            out = rng.integers(int(self.params[0]), int(self.params[1]) + 1, size=n)
        elif self.kind == "normal":
            out = rng.normal(self.params[0], self.params[1], size=n)
        elif self.kind == "lognormal":
            out = rng.lognormal(self.params[0], self.params[1], size=n)
        else:
            p = np.asarray(self.weights) / np.sum(self.weights)
            out = rng.choice(np.asarray(self.values), size=n, p=p)
        return np.clip(np.rint(out), 1, MAX_TOKENS).astype(np.int64)  # a wide lognormal overflows int64


def parse_length(text: str, what: str) -> LengthDist:
    """`512`, `uniform:A:B`, `normal:MU:SIGMA`, `lognormal:MU:SIGMA`, or the path of a histogram CSV."""
    parts = text.strip().split(":")
    if text.lower().endswith(".csv"):
        check_name(text, f"{what} histogram")  # a name the OS refuses is one line, not an OSError
    csv_file = is_file(text)
    try:
        if len(parts) == 1 and not csv_file:
            value = float(parts[0])
            if not 1 <= value <= MAX_TOKENS or value != int(value):  # a fixed length is a whole number of tokens
                raise ValueError
            return LengthDist(kind="fixed", params=(value,))
        if parts[0] in ("uniform", "normal", "lognormal") and len(parts) == 3:
            a, b = float(parts[1]), float(parts[2])
            if not (math.isfinite(a) and math.isfinite(b)):
                raise ValueError
            if parts[0] == "uniform" and not 1 <= a <= b <= MAX_TOKENS:
                raise ValueError
            if parts[0] == "normal" and not (abs(a) <= MAX_TOKENS and 0 <= b <= MAX_TOKENS):
                raise ValueError
            if parts[0] == "lognormal" and not (a <= MAX_LOG_MU and 0 <= b <= MAX_LOG_SIGMA):
                raise ValueError
            return LengthDist(kind=parts[0], params=(a, b))
    except ValueError:
        raise BadInputError(f"{what} {text[:200]!r} is not a valid length distribution; {DIST_HELP} "
                            f"(lengths up to {MAX_TOKENS:.0e}, lognormal MU up to {MAX_LOG_MU:g}, SIGMA up to "
                            f"{MAX_LOG_SIGMA:g})") from None
    if csv_file:
        return _histogram(Path(text), what)
    raise BadInputError(f"{what} {text[:200]!r} is not a valid length distribution; {DIST_HELP}")


def _histogram(path: Path, what: str) -> LengthDist:
    values, weights = [], []
    for row in csv.reader(line for line in _lines(path) if line.strip() and not line.startswith("#")):
        try:
            values.append(float(row[0]))
            weights.append(float(row[1]) if len(row) > 1 else 1.0)
        except (ValueError, IndexError):
            if values:
                raise BadInputError(f"{show(path)}: bad histogram row {str(row)[:80]}; expected tokens,weight") from None
    try:
        total = math.fsum(weights)
    except OverflowError:  # weights summing past the float range
        total = math.inf
    if not values or not all(math.isfinite(v) for v in values + weights) or min(values) < 1 \
            or max(values) > MAX_TOKENS or min(weights) < 0 or not 0 < total < math.inf:
        raise BadInputError(f"{show(path)}: {what} histogram needs rows tokens,weight with tokens from 1 to "
                            f"{MAX_TOKENS:.0e}, weights >= 0 and a finite, positive sum of weights")
    return LengthDist(kind="histogram", values=tuple(values), weights=tuple(weights))


def _lines(path: Path) -> list[str]:
    return read_text(path, "CSV", MAX_DATA_BYTES).splitlines(keepends=True)


@dataclass(frozen=True, kw_only=True, slots=True)
class Requests:
    """A set of requests: arrival times (seconds, from 0) and token counts."""

    arrival_s: tuple[float, ...]
    input_tokens: tuple[int, ...]
    output_tokens: tuple[int, ...]

    @property
    def rate_rps(self) -> float:
        span = self.arrival_s[-1] - self.arrival_s[0]
        return (len(self.arrival_s) - 1) / span if span > 0 else float(len(self.arrival_s))

    def unit_gaps(self) -> np.ndarray:
        """Inter-arrival gaps scaled to mean 1, so a simulation can replay the trace's burstiness at any rate."""
        gaps = np.diff(np.asarray(self.arrival_s))
        return gaps / gaps.mean() if len(gaps) and gaps.mean() > 0 else np.ones(max(len(gaps), 1))


def load_trace(path: str | Path) -> Requests:
    """A CSV with columns arrival_s,input_tokens,output_tokens (header required), its rows in arrival order from 0 or
    later (a log's own clock: the first arrival is time 0). A negative or out-of-order arrival is refused by its line:
    it is a wrong column or a merge of logs, and sorting it silently would replay another trace."""
    p = check_name(path, "trace")
    if not is_file(p):
        raise BadInputError(f"{show(p)}: no such trace file; give a CSV with arrival_s,input_tokens,output_tokens")
    kept = [(n, line) for n, line in enumerate(_lines(p), start=1) if not line.startswith("#")]
    reader = csv.DictReader(line for _, line in kept)
    need = {"arrival_s", "input_tokens", "output_tokens"}
    if not need <= set(reader.fieldnames or ()):
        raise BadInputError(f"{show(p)}: trace header must name arrival_s,input_tokens,output_tokens")
    rows, line_of = [], []  # line_of: each row's line in the file (comments counted), for the messages
    try:
        for r in reader:
            rows.append((float(r["arrival_s"]), bounded_int(r["input_tokens"], show(p)),
                         bounded_int(r["output_tokens"], show(p))))
            line_of.append(kept[reader.line_num - 1][0])
    except BadInputError:
        raise
    except (TypeError, ValueError, AttributeError) as exc:
        raise BadInputError(f"{show(p)}: bad trace row ({exc}); arrival_s is seconds, token counts are integers") from None
    if not all(math.isfinite(r[0]) and abs(r[0]) <= MAX_ARRIVAL_S for r in rows):
        raise BadInputError(f"{show(p)}: arrival_s must be a finite number of seconds up to {MAX_ARRIVAL_S:.0e} "
                            "in every row")
    for i, (arrival, *_) in enumerate(rows):
        if arrival < 0:
            raise BadInputError(f"{show(p)}: line {line_of[i]}: arrival_s {arrival:g} is negative; give seconds from "
                                "the trace's start, 0 or later")
        if i and arrival < rows[i - 1][0]:
            raise BadInputError(f"{show(p)}: line {line_of[i]}: arrival_s {arrival:g} comes before line "
                                f"{line_of[i - 1]}'s {rows[i - 1][0]:g}; sort the rows by arrival_s")
    if len(rows) < 2 or min(min(r[1], r[2]) for r in rows) < 1:
        raise BadInputError(f"{show(p)}: a trace needs at least 2 requests with input and output tokens >= 1")
    if max(max(r[1], r[2]) for r in rows) > MAX_TOKENS:
        raise BadInputError(f"{show(p)}: token counts must be at most {MAX_TOKENS:.0e}")
    arr, inp, out = zip(*rows, strict=True)
    return Requests(arrival_s=tuple(a - arr[0] for a in arr), input_tokens=inp, output_tokens=out)


@dataclass(frozen=True, kw_only=True, slots=True)
class Bucket:
    """Requests of similar size: input-length bin x output-length bin, with the member lengths kept."""

    input_edges: tuple[int, int]
    output_edges: tuple[int, int]
    share: float
    input_tokens: tuple[int, ...]
    output_tokens: tuple[int, ...]

    @property
    def label(self) -> str:
        return f"in {self.input_edges[0]}-{self.input_edges[1]} / out {self.output_edges[0]}-{self.output_edges[1]}"


def make_buckets(input_tokens: np.ndarray, output_tokens: np.ndarray, per_axis: int = 4) -> list[Bucket]:
    """Split requests into up to per_axis x per_axis buckets at quantiles of input and output length."""
    inp, out = np.asarray(input_tokens), np.asarray(output_tokens)
    in_edges = np.unique(np.quantile(inp, np.linspace(0, 1, per_axis + 1)).round().astype(int))
    out_edges = np.unique(np.quantile(out, np.linspace(0, 1, per_axis + 1)).round().astype(int))
    in_bin = np.clip(np.searchsorted(in_edges, inp, side="right") - 1, 0, max(len(in_edges) - 2, 0))
    out_bin = np.clip(np.searchsorted(out_edges, out, side="right") - 1, 0, max(len(out_edges) - 2, 0))
    buckets = []
    for i in range(max(len(in_edges) - 1, 1)):
        for j in range(max(len(out_edges) - 1, 1)):
            mask = (in_bin == i) & (out_bin == j)
            if mask.any():
                buckets.append(Bucket(
                    input_edges=(int(in_edges[i]), int(in_edges[min(i + 1, len(in_edges) - 1)])),
                    output_edges=(int(out_edges[j]), int(out_edges[min(j + 1, len(out_edges) - 1)])),
                    share=float(mask.mean()), input_tokens=tuple(int(v) for v in inp[mask]),
                    output_tokens=tuple(int(v) for v in out[mask])))
    return buckets
