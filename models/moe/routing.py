"""Routing statistics of an MoE model: tokens per expert per layer, and optional cross-layer transitions.

Formats (`load_stats` picks by extension; `save_stats` writes any of them atomically):

- **.npz** (recommended): array `tokens_per_expert` of shape [L, E]; optional `transitions` of shape
  [L-1, E, E]. L = MoE layers in order (layer 0 = the model's first MoE layer), E = routed experts.
- **.npy**: one [L, E] array of tokens per expert (no transitions).
- **.json**: `{"tokens_per_expert": [[...], ...], "transitions": [[[...]]]}` (`transitions` optional).
- **.csv**: long form with header `layer,expert,tokens`, one row per (layer, expert); missing rows are 0.
  Transitions go in a companion file next to it, `NAME.transitions.csv`, header
  `layer,from_expert,to_expert,tokens` (layer = the earlier of the two consecutive MoE layers).

Units: `tokens_per_expert[l, e]` counts token-to-expert assignments, so each layer sums to
tokens x top_k. `transitions[l, i, j]` counts tokens routed to expert i at MoE layer l and to expert j at
MoE layer l+1 (a token adds top_k x top_k pairs; MoETuner's layer-to-layer routing dependency).
"""

from __future__ import annotations

import csv
import io
import lzma
import math
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clusterplan.errors import BadInputError
from clusterplan.fileio import (
    MAX_DATA_BYTES,
    check_name,
    dumps_json,
    is_file,
    loads_json,
    read_text,
    show,
    write_atomic,
    write_atomic_bytes,
)
from clusterplan.models.architecture.spec import MAX_LAYERS

FORMATS = (".npz", ".npy", ".json", ".csv")


@dataclass(frozen=True, kw_only=True, slots=True)
class RoutingStats:
    tokens_per_expert: np.ndarray
    """[L, E] token-to-expert assignments per MoE layer (float64, >= 0)."""
    transitions: np.ndarray | None = None
    """[L-1, E, E] tokens at expert i of layer l that go to expert j of layer l+1, or None."""
    source: str = ""

    @property
    def n_layers(self) -> int:
        return int(self.tokens_per_expert.shape[0])

    @property
    def n_experts(self) -> int:
        return int(self.tokens_per_expert.shape[1])

    def tokens_per_layer(self, top_k: int) -> np.ndarray:
        """Tokens entering each MoE layer: assignments / top_k."""
        return self.tokens_per_expert.sum(axis=1) / top_k

    def layers(self, count: int) -> RoutingStats:
        """The first `count` layers (tests and quick looks)."""
        trans = None if self.transitions is None else self.transitions[: max(count - 1, 0)]
        return RoutingStats(tokens_per_expert=self.tokens_per_expert[:count], transitions=trans, source=self.source)


# ---- validation ---------------------------------------------------------------------------------
MAX_COUNT = 1e30
"""Largest token count accepted."""
MAX_EXPERTS = 2**16
"""Most routed experts per layer in a statistics file: 65,536 is 170x the most a released model routes over
(Kimi K2: 384); the placement's slot tables grow with it."""
MAX_STATS_CELLS = 2**25
"""Most numbers in one statistics file (all arrays): 33.5 M (256 MiB as float64) is 3.8x Kimi K2's full
transitions (60 MoE layers x 384 x 384 = 8.8 M); checked on .npy/.npz headers before any array is read."""


def _check_counts(arr: np.ndarray, what: str, where: str) -> None:
    if not np.all(np.isfinite(arr)):
        raise BadInputError(f"{where}: {what} has NaN or infinite entries; give finite token counts")
    if np.any(arr < 0):
        raise BadInputError(f"{where}: {what} has negative entries; token counts must be >= 0")
    if np.any(arr > MAX_COUNT):  # EPLB works in float32 (max 3.4e38); real counts are far below this
        raise BadInputError(f"{where}: {what} has entries over {MAX_COUNT:.0e}; give token counts")


def make_stats(tokens_per_expert: object, transitions: object = None, *, where: str = "stats") -> RoutingStats:
    """Validate shapes and values and build RoutingStats (one-line BadInputError otherwise)."""
    try:
        load = np.asarray(tokens_per_expert, dtype=np.float64)
        trans = None if transitions is None else np.asarray(transitions, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"{where}: token counts must be numbers in rectangular arrays ({exc})") from exc
    if load.ndim != 2 or load.shape[0] < 1 or load.shape[1] < 1:
        raise BadInputError(f"{where}: tokens_per_expert must be a [layers, experts] table, got shape {load.shape}")
    _check_shape(load.shape, where)
    _check_counts(load, "tokens_per_expert", where)
    if np.any(load.sum(axis=1) <= 0):
        raise BadInputError(f"{where}: a layer has no tokens at all; every MoE layer needs routed tokens")
    n_layers, n_experts = load.shape
    if trans is not None:
        want = (n_layers - 1, n_experts, n_experts)
        if trans.shape != want:
            raise BadInputError(f"{where}: transitions must have shape [layers-1, experts, experts] = {list(want)}, "
                                f"got {list(trans.shape)}")
        _check_counts(trans, "transitions", where)
    return RoutingStats(tokens_per_expert=load, transitions=trans, source=where)


def _check_shape(shape: tuple[int, ...], where: str) -> None:
    """[layers, experts] within what any model has, before a table of that shape is made."""
    if shape[0] > MAX_LAYERS or shape[1] > MAX_EXPERTS:
        raise BadInputError(f"{where}: {shape[0]:,} layers x {shape[1]:,} experts; statistics hold at most "
                            f"{MAX_LAYERS:,} layers and {MAX_EXPERTS:,} experts (indices count from 0)")


def _check_cells(cells: int, where: str) -> None:
    if cells > MAX_STATS_CELLS:
        raise BadInputError(f"{where}: {cells:,} numbers, over the {MAX_STATS_CELLS:,} any model's statistics need; "
                            "is this the right file?")


def check_against_model(stats: RoutingStats, n_experts: int, n_moe_layers: int, model_name: str) -> None:
    """Stats must have the model's expert count and at most its number of MoE layers."""
    if stats.n_experts != n_experts:
        raise BadInputError(f"{stats.source}: {stats.n_experts} experts per layer, but {model_name} has {n_experts} "
                            "routed experts; give statistics of this model")
    if stats.n_layers > n_moe_layers:
        raise BadInputError(f"{stats.source}: {stats.n_layers} layers, but {model_name} has {n_moe_layers} MoE layers")


# ---- reading ------------------------------------------------------------------------------------
def load_stats(path: str | os.PathLike[str]) -> RoutingStats:
    p = check_name(path, "statistics")
    where = show(p)
    if not is_file(p):
        raise BadInputError(f"{where}: no such file; give routing statistics as {', '.join(FORMATS)} "
                            "(or make some with `clusterplan experts synth`)")
    suffix = p.suffix.lower()
    if suffix not in FORMATS:
        raise BadInputError(f"{where}: unknown statistics format {ascii(suffix)}; use one of {', '.join(FORMATS)}")
    try:
        if p.stat().st_size > MAX_DATA_BYTES:
            raise BadInputError(f"{where}: over the {MAX_DATA_BYTES >> 20} MiB a statistics file may have")
        if suffix == ".npz":
            return _load_npz(p, where)
        if suffix == ".npy":
            with p.open("rb") as fh:
                _npy_header(fh, where)
            return make_stats(np.load(p, allow_pickle=False), where=where)
        if suffix == ".json":
            return _load_json(p)
        return _load_csv(p)
    except BadInputError:
        raise
    except (OSError, ValueError, EOFError, KeyError, IndexError, NotImplementedError, RuntimeError, struct.error,
            zipfile.BadZipFile, zlib.error, lzma.LZMAError) as exc:  # a damaged or foreign file (zip versions, encryption, headers)
        raise BadInputError(f"{where}: cannot read statistics ({type(exc).__name__}: {exc}); check the file is a "
                            f"valid {suffix} file") from None


def _npy_header(fh: Any, where: str) -> tuple[int, ...]:
    """Shape of one .npy array from its header, refused when not a numeric array of bounded size."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise BadInputError(f"{where}: .npy format version {version} is not supported; save with numpy.save")
    if dtype.kind not in "biuf":
        raise BadInputError(f"{where}: array of {dtype} values; token counts must be numbers")
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BadInputError(f"{where}: bad array shape {shape}")
    _check_cells(math.prod(shape), where)
    return shape


def _load_npz(p: Path, where: str) -> RoutingStats:
    with zipfile.ZipFile(p) as zf:
        cells = 0
        for info in zf.infolist():
            with zf.open(info) as fh:
                cells += math.prod(_npy_header(fh, f"{where}: {ascii(info.filename)}"))
        _check_cells(cells, where)
    with np.load(p, allow_pickle=False) as data:
        if "tokens_per_expert" not in data:
            raise BadInputError(f"{where}: missing array `tokens_per_expert` (found {', '.join(map(ascii, data.files))})")
        trans = data["transitions"] if "transitions" in data else None
        return make_stats(data["tokens_per_expert"], trans, where=where)


def _load_json(p: Path) -> RoutingStats:
    data = loads_json(read_text(p, "statistics JSON", MAX_DATA_BYTES), show(p))
    if not isinstance(data, dict) or "tokens_per_expert" not in data:
        raise BadInputError(f"{show(p)}: expected a JSON object with `tokens_per_expert` ([layers][experts] counts)")
    return make_stats(data["tokens_per_expert"], data.get("transitions"), where=show(p))


def _read_csv_rows(p: Path, columns: tuple[str, ...]) -> list[tuple[float, ...]]:
    reader = csv.DictReader(io.StringIO(read_text(p, "statistics CSV", MAX_DATA_BYTES), newline=""))
    if reader.fieldnames is None or any(c not in reader.fieldnames for c in columns):
        raise BadInputError(f"{show(p)}: CSV header must contain {','.join(columns)}; got {reader.fieldnames}")
    rows = []
    for n, row in enumerate(reader, start=2):
        try:
            rows.append(tuple(float(row[c]) for c in columns))
        except (TypeError, ValueError) as exc:
            raise BadInputError(f"{show(p)}: line {n}: {','.join(columns)} must be numbers") from exc
    if not rows:
        raise BadInputError(f"{show(p)}: no data rows")
    return rows


def _index(values: np.ndarray, p: Path, what: str, limit: int) -> np.ndarray:
    """Whole numbers in [0, limit), checked as floats before they become int64 (1e20 would wrap around)."""
    if not np.all((values >= 0) & (values < limit) & (values == np.round(values))):  # NaN fails too
        raise BadInputError(f"{show(p)}: {what} must be whole numbers from 0 to {limit - 1:,} (indices counted from 0)")
    return values.astype(np.int64)


def _load_csv(p: Path) -> RoutingStats:
    rows = np.array(_read_csv_rows(p, ("layer", "expert", "tokens")))
    layer, expert = _index(rows[:, 0], p, "layer", MAX_LAYERS), _index(rows[:, 1], p, "expert", MAX_EXPERTS)
    if (int(layer.max()) + 1) * (int(expert.max()) + 1) > MAX_STATS_CELLS:
        raise BadInputError(f"{show(p)}: layer {layer.max()} x expert {expert.max()} is far too large a table; "
                            "layer and expert are indices counted from 0")
    load = np.zeros((layer.max() + 1, expert.max() + 1))
    np.add.at(load, (layer, expert), rows[:, 2])
    companion = p.with_name(p.stem + ".transitions.csv")
    trans = None
    if is_file(companion):
        t = np.array(_read_csv_rows(companion, ("layer", "from_expert", "to_expert", "tokens")))
        tl = _index(t[:, 0], companion, "layer", MAX_LAYERS)
        ti = _index(t[:, 1], companion, "from_expert", MAX_EXPERTS)
        tj = _index(t[:, 2], companion, "to_expert", MAX_EXPERTS)
        if tl.max() >= load.shape[0] - 1 or max(ti.max(), tj.max()) >= load.shape[1]:
            raise BadInputError(f"{show(companion)}: layer or expert index outside {show(p.name)}'s {load.shape[0]} "
                                f"layers x {load.shape[1]} experts")
        _check_cells((load.shape[0] - 1) * load.shape[1] ** 2, show(companion))
        trans = np.zeros((load.shape[0] - 1, load.shape[1], load.shape[1]))
        np.add.at(trans, (tl, ti, tj), t[:, 3])
    return make_stats(load, trans, where=show(p))


# ---- writing ------------------------------------------------------------------------------------
def _counts(arr: np.ndarray) -> list:
    """Whole-number counts as ints in JSON/CSV, fractional ones as floats."""
    return arr.astype(np.int64).tolist() if np.all(arr == np.round(arr)) else arr.tolist()


def save_stats(stats: RoutingStats, path: str | os.PathLike[str]) -> list[Path]:
    """Write `stats` in the format given by the extension; returns the files written."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".npz":
        buf = io.BytesIO()
        arrays = {"tokens_per_expert": stats.tokens_per_expert}
        if stats.transitions is not None:
            arrays["transitions"] = stats.transitions
        np.savez_compressed(buf, **arrays)
        write_atomic_bytes(p, buf.getvalue())
        return [p]
    if suffix == ".npy":
        buf = io.BytesIO()
        np.save(buf, stats.tokens_per_expert)
        write_atomic_bytes(p, buf.getvalue())
        return [p]
    if suffix == ".json":
        data = {"tokens_per_expert": _counts(stats.tokens_per_expert)}
        if stats.transitions is not None:
            data["transitions"] = _counts(stats.transitions)
        write_atomic(p, dumps_json(data))
        return [p]
    if suffix == ".csv":
        return _save_csv(stats, p)
    raise BadInputError(f"{p}: unknown statistics format {suffix!r}; use one of {', '.join(FORMATS)}")


def _save_csv(stats: RoutingStats, p: Path) -> list[Path]:
    load = _counts(stats.tokens_per_expert)
    lines = ["layer,expert,tokens"] + [f"{lay},{e},{v}" for lay, row in enumerate(load) for e, v in enumerate(row)]
    write_atomic(p, "\n".join(lines) + "\n")
    if stats.transitions is None:
        return [p]
    companion = p.with_name(p.stem + ".transitions.csv")
    trans = stats.transitions
    rows = [f"{lay},{i},{j},{_counts(trans[lay, i, j])}" for lay, i, j in zip(*np.nonzero(trans), strict=True)]
    write_atomic(companion, "\n".join(["layer,from_expert,to_expert,tokens", *rows]) + "\n")
    return [p, companion]


# ---- synthetic statistics -----------------------------------------------------------------------
SYNTH_MAX_CELLS = 2**31
"""Largest layers x tokens x experts simulated (DeepSeek-V3 at the default 16384 tokens: 2.4e8)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SynthConfig:
    n_layers: int
    n_experts: int
    top_k: int
    n_tokens: int = 16384
    zipf_exponent: float = 0.8
    """Expert popularity p ~ rank^-s, ranks shuffled per layer. 0.8 gives DeepSeek-V3 on EP32 (8 contiguous experts
    per GPU, no EPLB, 4,096 tokens per step) an imbalance ratio (max - mean) / mean of about 1.5 averaged over
    layers, against the 1.564 TensorRT-LLM measured for DeepSeek-R1 (examples/ep_load_balancer README, the same
    definition: 0.115 after EPLB); i.e. the busiest GPU carries about 2.5x the mean. Held by
    tests/test_experts_plan.py and tests/test_experts_routing.py."""
    affinity_logit: float = 2.0
    """Logit bonus at layer l+1 for each of a token's layer-l experts that lists the candidate as a successor."""
    successors: int = 0
    """Preferred successors per expert in the next layer; 0 means top_k."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_layers", "n_experts", "top_k", "n_tokens"):
            if getattr(self, name) < 1:
                raise BadInputError(f"synth: {name} must be >= 1")
        if self.top_k > self.n_experts:
            raise BadInputError(f"synth: top_k ({self.top_k}) must be <= experts ({self.n_experts})")
        if not (self.zipf_exponent >= 0 and self.affinity_logit >= 0 and self.successors >= 0):  # NaN fails too
            raise BadInputError("synth: zipf exponent, affinity and successors must be >= 0")
        if not (math.isfinite(self.zipf_exponent) and math.isfinite(self.affinity_logit)):
            raise BadInputError("synth: zipf exponent and affinity must be finite (inf gives NaN popularities)")
        if self.seed < 0:
            raise BadInputError(f"synth: seed must be >= 0, got {self.seed}")
        # The simulation holds tokens x experts scores per layer and experts x experts transitions per layer.
        if self.n_tokens * self.n_experts * self.n_layers > SYNTH_MAX_CELLS \
                or self.n_experts ** 2 * self.n_layers > SYNTH_MAX_CELLS:
            raise BadInputError(f"synth: {self.n_layers} layers x {self.n_tokens} tokens x {self.n_experts} experts is "
                                f"too large to simulate (over {SYNTH_MAX_CELLS:,} cells); lower --tokens or --layers")


def gumbel_top_k(rng: np.random.Generator, log_weight: np.ndarray, n: int, k: int) -> np.ndarray:
    """[n, k] expert indices: n tokens each draw k distinct experts without replacement in proportion to
    exp(log_weight) (Gumbel-top-k, Kool et al. 2019: the k largest of log_weight + Gumbel noise). The noise is
    -log(-log(U)) of float32 uniforms computed in place: a sampler needs no more precision, and the float32 arrays
    halve the memory traffic of the step that dominates `experts synth` (order inside the k does not matter)."""
    e = log_weight.shape[-1]
    g = rng.random((n, e), dtype=np.float32)
    with np.errstate(divide="ignore"):  # U = 0 gives -inf noise: that expert is never drawn, as its odds say
        np.log(g, out=g)
        np.negative(g, out=g)
        np.log(g, out=g)
    np.subtract(log_weight.astype(np.float32), g, out=g)  # log_weight - log(-log U) = log_weight + Gumbel
    return np.argpartition(g, e - k, axis=1)[:, e - k:]


def synth_stats(cfg: SynthConfig) -> RoutingStats:
    """Seeded token-level routing simulation: Zipf popularity, Gumbel top-k choice, cross-layer successors.

    Each token picks top_k distinct experts by Gumbel-top-k on log-popularity (sampling without
    replacement in proportion to popularity, Kool et al. 2019); at layer l+1 each of its layer-l experts adds
    `affinity_logit` to its preferred successors, which makes transitions concentrated as MoETuner observed.
    """
    rng = np.random.default_rng(cfg.seed)
    n, e, k = cfg.n_tokens, cfg.n_experts, cfg.top_k
    m = min(cfg.successors or k, e)
    load = np.zeros((cfg.n_layers, e))
    trans = np.zeros((max(cfg.n_layers - 1, 0), e, e))
    rank_weight = -cfg.zipf_exponent * np.log(np.arange(1, e + 1))
    prev: np.ndarray | None = None
    succ: np.ndarray | None = None
    for layer in range(cfg.n_layers):
        log_pop = rank_weight[rng.permutation(e)]
        if prev is not None and succ is not None:
            # each of a token's layer-l experts adds affinity_logit to its preferred successors at layer l+1
            log_pop = np.broadcast_to(log_pop, (n, e)).copy()
            np.add.at(log_pop, (np.repeat(np.arange(n), k * m), succ[prev].reshape(-1)), cfg.affinity_logit)
        chosen = gumbel_top_k(rng, log_pop, n, k)
        load[layer] = np.bincount(chosen.reshape(-1), minlength=e)
        if prev is not None:
            pairs = (prev[:, :, None] * e + chosen[:, None, :]).reshape(-1)
            trans[layer - 1] = np.bincount(pairs, minlength=e * e).reshape(e, e)
        succ = np.argsort(rng.random((e, e)), axis=1)[:, :m]
        prev = chosen
    return RoutingStats(tokens_per_expert=load, transitions=trans if cfg.n_layers > 1 else None,
                        source=f"synth(seed={cfg.seed})")
