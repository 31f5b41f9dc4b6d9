"""Routing statistics that change over time: a sequence of windows of per-layer expert loads.

File: `.npz` with `tokens_per_expert_windows` of shape [W, L, E] (W windows in time order, each as
RoutingStats.tokens_per_expert). Engines record such windows as they serve (SGLang's expert distribution recorder,
vLLM's EPLB load window); `experts synth --windows W` writes seeded synthetic ones.

Synthetic drift: each window starts from the previous window's popularity order and swaps a share `drift` of
expert ranks at random (hot experts cool down, others heat up), then routes tokens as `synth_stats` does. Rank
swaps keep the Zipf skew (so the imbalance of each window stays calibrated) while moving which experts are hot.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clusterplan.errors import BadInputError
from clusterplan.fileio import write_atomic_bytes
from clusterplan.models.moe.routing import RoutingStats, gumbel_top_k, make_stats

WINDOWS_KEY = "tokens_per_expert_windows"
MAX_WINDOWS = 10_000
"""Most windows read: a day of 10-second windows; each window is re-placed and evaluated once per interval."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RoutingWindows:
    tokens_per_expert: np.ndarray
    """[W, L, E] token-to-expert assignments per window and MoE layer."""
    source: str = ""

    @property
    def n_windows(self) -> int:
        return int(self.tokens_per_expert.shape[0])

    def window(self, i: int) -> RoutingStats:
        return RoutingStats(tokens_per_expert=self.tokens_per_expert[i], transitions=None,
                            source=f"{self.source}[window {i}]")


def make_windows(array: object, *, where: str) -> RoutingWindows:
    arr = np.asarray(array, dtype=np.float64)
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise BadInputError(f"{where}: {WINDOWS_KEY} must be [windows, layers, experts], got shape {arr.shape}")
    if arr.shape[0] > MAX_WINDOWS:
        raise BadInputError(f"{where}: {arr.shape[0]} windows; give at most {MAX_WINDOWS}")
    for i in range(arr.shape[0]):  # every window passes the same checks as one set of statistics
        make_stats(arr[i], where=f"{where}[window {i}]")
    return RoutingWindows(tokens_per_expert=arr, source=where)


def load_windows(path: str | os.PathLike[str]) -> RoutingWindows:
    p = Path(path)
    if p.suffix.lower() != ".npz":
        raise BadInputError(f"{p}: windows of routing statistics come as .npz with {WINDOWS_KEY} [W, L, E]")
    if not p.is_file():
        raise BadInputError(f"{p}: no such file; write one with `clusterplan experts synth --windows N`")
    try:
        with np.load(p, allow_pickle=False) as data:
            if WINDOWS_KEY not in data:
                raise BadInputError(f"{p}: no {WINDOWS_KEY} array; give [windows, layers, experts] loads")
            array = data[WINDOWS_KEY]
    except BadInputError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise BadInputError(f"{p}: not a readable .npz file ({type(exc).__name__})") from None
    return make_windows(array, where=str(p))


def save_windows(windows: RoutingWindows, path: str | os.PathLike[str]) -> Path:
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **{WINDOWS_KEY: windows.tokens_per_expert})
    write_atomic_bytes(path, buf.getvalue())
    return Path(path)


def synth_windows(*, n_windows: int, n_layers: int, n_experts: int, top_k: int, n_tokens: int,
                  zipf_exponent: float, drift: float, seed: int) -> RoutingWindows:
    """Seeded windows whose hot experts move by `drift` (share of ranks swapped per window)."""
    if not 1 <= n_windows <= MAX_WINDOWS:
        raise BadInputError(f"synth: --windows must be in 1..{MAX_WINDOWS}")
    if not 0 <= drift <= 1:
        raise BadInputError("synth: --drift must be a share in [0, 1]")
    if n_windows * n_layers * n_tokens * n_experts > 4e9:
        raise BadInputError("synth: windows x layers x tokens x experts is too large to simulate; lower one")
    rng = np.random.default_rng(seed)
    rank_weight = -zipf_exponent * np.log(np.arange(1, n_experts + 1))
    order = np.array([rng.permutation(n_experts) for _ in range(n_layers)])  # [L, E] rank of each expert
    out = np.zeros((n_windows, n_layers, n_experts))
    swaps = int(round(drift * n_experts / 2))
    for w in range(n_windows):
        if w:
            for layer in range(n_layers):
                picks = rng.permutation(n_experts)[: 2 * swaps].reshape(-1, 2)
                order[layer, picks[:, 0]], order[layer, picks[:, 1]] = (order[layer, picks[:, 1]],
                                                                        order[layer, picks[:, 0]])
        for layer in range(n_layers):
            chosen = gumbel_top_k(rng, rank_weight[order[layer]], n_tokens, top_k)
            out[w, layer] = np.bincount(chosen.reshape(-1), minlength=n_experts)
    return RoutingWindows(tokens_per_expert=out, source=f"synth-windows(seed={seed}, drift={drift})")
