"""Serving engine profiles (data/engines.yaml): per-step costs and scheduler defaults of vLLM, SGLang, TensorRT-LLM."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from clusterplan.errors import BadInputError
from clusterplan.fileio import load_shipped_yaml
from clusterplan.hardware_db.catalog import DATA_DIR, find_name

ENGINE_SOURCE_KEYS = ("step_overhead_s", "seq_overhead_s", "prefill_overhead_s", "request_overhead_s", "cuda_graphs",
                      "chunk_tokens", "max_seqs", "kv_block_tokens", "allreduce_latency_us")
DEFAULT_ENGINE = "vllm"


@dataclass(frozen=True, kw_only=True, slots=True)
class EngineProfile:
    name: str
    engine: str
    """vllm, sglang or trtllm: which launch line realises it."""
    versions: str
    step_overhead_s: float
    """Time per engine step not hidden behind GPU work (scheduling, launches, sampling setup)."""
    seq_overhead_s: float
    """Added per running sequence per step (sampling, detokenization, bookkeeping): the growth with batch."""
    prefill_overhead_s: float
    """Added to a step that carries prompt tokens (eager launches; CUDA graphs cover decode only)."""
    request_overhead_s: float
    """Fixed time to first token per request outside the GPU steps (HTTP, tokenization, first detokenization)."""
    cuda_graphs: bool
    cuda_graph_max_batch: int
    chunk_tokens: int
    """Default token budget of one step (chunked-prefill size)."""
    chunked_prefill: bool
    """Prompts split across steps (vLLM, SGLang) or run whole (TensorRT-LLM default)."""
    max_seqs: int
    kv_block_tokens: int
    allreduce: str
    allreduce_latency_us: Mapping[int, float]
    """Latency of one decode-sized tensor-parallel all-reduce by tp size (small-message kernels)."""
    attention_prefill: str
    attention_decode: str
    sources: Mapping[str, str]

    def allreduce_latency_s(self, tp: int) -> float:
        """Small-message all-reduce latency at this tp; between tabulated sizes the next larger one's."""
        if tp <= 1:
            return 0.0
        sizes = sorted(self.allreduce_latency_us)
        pick = next((s for s in sizes if s >= tp), sizes[-1])
        return self.allreduce_latency_us[pick] * 1e-6


def _num(where: str, raw: Mapping[str, Any], key: str) -> float:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise BadInputError(f"{where}: field {key!r} must be a number >= 0, got {value!r}")
    return float(value)


def _parse(name: str, raw: Mapping[str, Any]) -> EngineProfile:
    where = f"engines.yaml: {name}"
    sources = dict(raw.get("sources") or {})
    missing = [k for k in ENGINE_SOURCE_KEYS if not str(sources.get(k, "")).strip()]
    if missing:
        raise BadInputError(f"{where}: every number needs a source; missing sources for {', '.join(missing)}")
    ar = raw.get("allreduce_latency_us") or {}
    if not ar or not all(int(k) >= 2 and float(v) > 0 for k, v in ar.items()):
        raise BadInputError(f"{where}: allreduce_latency_us must map tp sizes >= 2 to microseconds > 0")
    if raw.get("engine") not in ("vllm", "sglang", "trtllm"):
        raise BadInputError(f"{where}: engine must be vllm, sglang or trtllm")
    return EngineProfile(
        name=name, engine=str(raw["engine"]), versions=str(raw.get("versions", "")),
        step_overhead_s=_num(where, raw, "step_overhead_s"), seq_overhead_s=_num(where, raw, "seq_overhead_s"),
        prefill_overhead_s=_num(where, raw, "prefill_overhead_s"),
        request_overhead_s=_num(where, raw, "request_overhead_s"), cuda_graphs=bool(raw.get("cuda_graphs")),
        cuda_graph_max_batch=int(_num(where, raw, "cuda_graph_max_batch")),
        chunk_tokens=int(_num(where, raw, "chunk_tokens")), chunked_prefill=bool(raw.get("chunked_prefill", True)),
        max_seqs=int(_num(where, raw, "max_seqs")),
        kv_block_tokens=int(_num(where, raw, "kv_block_tokens")), allreduce=str(raw.get("allreduce", "nccl")),
        allreduce_latency_us=MappingProxyType({int(k): float(v) for k, v in ar.items()}),
        attention_prefill=str(raw.get("attention_prefill", "")), attention_decode=str(raw.get("attention_decode", "")),
        sources=MappingProxyType(sources))


@lru_cache(maxsize=1)
def engines() -> Mapping[str, EngineProfile]:
    raw = load_shipped_yaml(DATA_DIR / "engines.yaml") or {}
    return MappingProxyType({name: _parse(name, body) for name, body in (raw.get("engines") or {}).items()})


def get_engine(name: str | None = None) -> EngineProfile:
    """An engine profile by name (vllm, vllm-v0, sglang, trtllm); None = vllm; an empty name is bad input, not the
    default."""
    if name is not None and not name.strip():
        raise BadInputError(f"--engine '': give an engine name, one of {', '.join(engines())}")
    return find_name("serving engine", name or DEFAULT_ENGINE, engines(), list_cmd="serve-estimate --help")
