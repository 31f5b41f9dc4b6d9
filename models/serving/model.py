"""Serving performance of one model instance (GPU type, tp, pp): memory, prefill time, decode step time.

One step of a continuous-batching engine processes `prefill_tokens` new prompt tokens (whole prompts or
chunks) plus one token of each of `decode_seqs` running sequences. Its time is

    t_step = t0 + t_seq * B + pp * [max(compute, memory) + 2 L/pp all-reduces]_stage + (pp-1) * p2p

(research/serving-models.md sec. 4.4-4.6): compute = FLOPs / (tp pp F eta_f), memory = (weights + KV read) /
(eta_bw BW) per GPU, a fixed per-step overhead t0 (scheduler, sampling, launches) and an optional
per-sequence overhead that a calibration sets. Every function takes numbers or numpy arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np

from clusterplan.errors import BadInputError
from clusterplan.hardware_db import GPU, get_link
from clusterplan.hardware_db.engines import EngineProfile
from clusterplan.models.architecture.shapes import require_priced
from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.models.hardware.comm import ArrayLike, all_reduce_s
from clusterplan.models.hardware.mamba_kernels import SSD_KERNEL_COPY_SHARE, forward_bytes, mixer_sizes
from clusterplan.models.serving.kv import (
    kv_bytes_per_token_per_gpu,
    kv_tokens_held,
    kv_window,
    mamba_state_bytes_per_seq_per_gpu,
    state_tokens_per_seq,
)

GIB = 2**30
MOE_READ_SHARE = 1.0
"""Share of the weight-read rate that grouped expert GEMMs reach at a few tokens per expert (fused MoE kernels
launch one tile per touched expert). Not fitted: no published MoE row isolates it yet; reported on the Mixtral
row of reference/data/serving_published.csv."""
MODEL_GEMM_SHARE = 0.77
"""Share of the best large-GEMM rate a whole forward pass reaches: A100 prefill fits 0.67 of peak in both the
Splitwise and DistServe data (tests/test_serving_model.py) against a 0.869 MAMF GEMM fraction."""
MAMBA_STATE_DTYPE = "bf16"
"""The Mamba conv state's dtype in serving: vLLM's mamba_cache_dtype "auto" takes the model's."""
MAMBA_SSM_DTYPES = ("bf16", "fp32")
"""What ServingInstance.mamba_ssm_dtype takes: the model's (bf16) or float32 (vLLM --mamba-ssm-cache-dtype
float32, SGLang --mamba-ssm-dtype float32; NVIDIA's Nemotron Nano 2 / Nemotron 3 serving recipes set it)."""
DTYPE_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "fp4": 0.5, "int4": 0.5}
# Tensor-core rate each weight format runs at: W8A8 int8 at the 8-bit rate; int4 weight-only (AWQ/GPTQ) kernels
# dequantise to bf16 and multiply there.
COMPUTE_DTYPE = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16", "fp8": "fp8", "int8": "fp8", "fp4": "fp4", "int4": "bf16"}


@dataclass(frozen=True, kw_only=True, slots=True)
class ServingKnobs:
    """Engine constants a calibration may set; None means the hardware database default."""

    step_overhead_s: float = 0.003
    """Fixed time per engine step. A few ms for a CUDA-graph engine (vLLM >= 0.6); 13 ms for the 2023 Splitwise engine."""
    seq_overhead_s: float = 0.0
    """Extra time per running sequence per step (sampling, per-sequence bookkeeping)."""
    prefill_overhead_s: float = 0.002
    """Extra fixed time of a step that carries prompt tokens: engines replay CUDA graphs for decode only,
    so prefill pays eager kernel launches (vLLM captures decode batch sizes only)."""
    cuda_graph_max_batch: float = math.inf
    """Largest decode batch the engine replays as a CUDA graph; a larger one runs eagerly and pays
    prefill_overhead_s too (vLLM max_capture_size, SGLang --cuda-graph-max-bs)."""
    allreduce_latency_s: float | None = None
    """Per ring step latency of a tensor-parallel all-reduce (alpha); None = the scale-up link's."""
    allreduce_call_s: float | None = None
    """Latency of one decode-sized all-reduce call as the engine runs it (custom one-shot kernels, NCCL LL);
    set from the engine profile's table by tp; None = the ring model with alpha."""
    request_overhead_s: float = 0.0
    """Time to first token outside the GPU steps (HTTP, tokenization, first detokenization)."""
    busbw_fraction: float | None = None
    """Achieved all-reduce bus bandwidth as a fraction of link line rate; None = the link's."""
    compute_fraction: float | None = None
    """Achieved fraction of dense peak FLOP/s; None = MODEL_GEMM_SHARE of the GPU's best GEMM fraction."""
    hbm_fraction: float | None = None
    """Achieved fraction of peak memory bandwidth; None = the GPU's hbm_fraction."""
    memory_utilization: float = 0.9
    """Share of GPU memory the engine may use (vLLM --gpu-memory-utilization default 0.9)."""

    @classmethod
    def from_engine(cls, engine: EngineProfile, tp: int, **overrides: float) -> ServingKnobs:
        """An engine profile's per-step costs at this tp; `overrides` (e.g. a calibration's) win."""
        values: dict[str, Any] = {
            "step_overhead_s": engine.step_overhead_s, "seq_overhead_s": engine.seq_overhead_s,
            "prefill_overhead_s": engine.prefill_overhead_s, "request_overhead_s": engine.request_overhead_s,
            "cuda_graph_max_batch": engine.cuda_graph_max_batch if engine.cuda_graphs else 0,
            "allreduce_call_s": engine.allreduce_latency_s(tp) if tp > 1 else None}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def from_calibration(cls, calibration: Any = None, **overrides: float) -> ServingKnobs:
        """Knobs from a calibration object or mapping: any attribute/key named like a field is taken."""
        values: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            value = calibration.get(name) if isinstance(calibration, dict) else getattr(calibration, name, None)
            if value is not None:
                values[name] = float(value)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass(frozen=True, kw_only=True, slots=True)
class ServingMemory:
    weights_gib: float
    activation_gib: float
    reserve_gib: float
    kv_gib: float
    kv_capacity_tokens: int
    """KV-cache capacity of the whole instance in tokens."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ServingInstance:
    """One replica of a model: tp x pp GPUs of one type, with weight and KV precisions."""

    model: ModelSpec
    gpu: GPU
    tp: int = 1
    """GPUs per pipeline stage."""
    pp: int = 1
    ep: int = 1
    """Expert-parallel size: experts split whole over ep of the tp GPUs (the rest split each expert); 1 = none."""
    attention_dp: int = 1
    """Data-parallel attention groups among the tp GPUs (DeepSeek-style DP attention): attention runs at
    tp / attention_dp, each group on its own sequences and KV cache; 1 = attention split over all tp."""
    weight_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    mamba_ssm_dtype: str = "bf16"
    """A hybrid's SSM state dtype (MAMBA_SSM_DTYPES); the conv state stays at MAMBA_STATE_DTYPE."""
    engine: str = "vllm"
    """Engine profile name (hardware_db/data/engines.yaml): which launch line realises the instance."""
    usd_per_gpu_hour: float | None = None
    """Price from the price table under the answer's rule (hardware_db/prices.py choose_prices); None: unpriced."""
    knobs: ServingKnobs = field(default_factory=ServingKnobs)
    max_batched_tokens: int = 2048
    """Token budget of one step: the prefill chunk and the activation workspace the engine profiles for
    (vLLM --max-num-batched-tokens, SGLang --chunked-prefill-size; 2048 is vLLM's chunked-prefill default)."""

    def __post_init__(self) -> None:
        require_priced(self.model, serving=True)  # a hybrid without attention blocks: refused in one line
        if self.tp < 1 or self.pp < 1:
            raise BadInputError(f"tp and pp must be >= 1, got tp={self.tp} pp={self.pp}")
        for what, size in (("--ep", self.ep), ("--attention-dp", self.attention_dp)):
            if size < 1 or self.tp % size:
                raise BadInputError(f"{what} {size} must divide --tp {self.tp} (the GPUs of one stage)")
        if self.ep > 1 and not self.model.is_moe:
            raise BadInputError(f"--ep {self.ep}: {self.model.name} has no experts; use --ep 1")
        if self.ep > 1 and self.model.n_experts % self.ep:
            raise BadInputError(f"--ep {self.ep}: {self.model.name}'s {self.model.n_experts} experts split whole over "
                                "ep GPUs; pick an ep dividing them")
        if self.pp > self.model.n_layers:
            raise BadInputError(f"--pp {self.pp}: {self.model.name} has {self.model.n_layers} layers to split; use "
                                f"--pp {self.model.n_layers} at most")
        for dtype in (self.weight_dtype, self.kv_dtype):
            if dtype not in DTYPE_BYTES:
                raise BadInputError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_BYTES)}")
        if self.mamba_ssm_dtype not in MAMBA_SSM_DTYPES:
            raise BadInputError(f"--mamba-ssm-dtype {self.mamba_ssm_dtype!r}; use one of {', '.join(MAMBA_SSM_DTYPES)}")

    @property
    def mamba_state_bytes_per_seq(self) -> float:
        """One running sequence's Mamba state on one GPU (kv.mamba_state_bytes_per_seq_per_gpu): the conv state at
        MAMBA_STATE_DTYPE, the SSM state at mamba_ssm_dtype; 0 without Mamba blocks."""
        return mamba_state_bytes_per_seq_per_gpu(self.model, self.tp, self.pp, DTYPE_BYTES[MAMBA_STATE_DTYPE],
                                                 DTYPE_BYTES[self.mamba_ssm_dtype])

    @property
    def n_gpus(self) -> int:
        return self.tp * self.pp

    @property
    def attention_tp(self) -> int:
        return self.tp // self.attention_dp

    @property
    def label(self) -> str:
        extra = (f" ep{self.ep}" if self.ep > 1 else "") + (f" dp{self.attention_dp}" if self.attention_dp > 1 else "")
        return f"{self.gpu.name} tp{self.tp} pp{self.pp}{extra}"

    @property
    def usd_per_hour(self) -> float:
        if self.usd_per_gpu_hour is None:
            raise BadInputError(f"GPU {self.gpu.name} has no price here; price it with hardware_db/prices.py "
                                "choose_prices (serve-plan --provider / --pricing / --prices FILE)")
        return self.usd_per_gpu_hour * self.n_gpus


def weight_bytes_split(inst: ServingInstance) -> tuple[float, float]:
    """(non-expert, expert) weight bytes on one GPU.

    Experts split evenly over all tp x pp GPUs (ep whole experts per GPU times tp/ep shards each, the same bytes);
    everything else (attention, embeddings, dense FFN) over attention_tp x pp, replicated across DP-attention
    groups (SGLang --enable-dp-attention keeps a full attention copy per group).
    """
    spec = inst.model
    w_bytes = DTYPE_BYTES[inst.weight_dtype]
    expert_params = 0.0
    if spec.is_moe:  # all experts of all MoE layers: the routed-out share scaled back to E experts
        expert_params = (spec.moe_params() - spec.moe_params(active=True)) * spec.n_moe_layers
        expert_params *= spec.n_experts / max(spec.n_experts - spec.top_k, 1)
    dense = (spec.total_params() - expert_params) * w_bytes / (inst.attention_tp * inst.pp)
    return dense, expert_params * w_bytes / inst.n_gpus


def weights_bytes_per_gpu(inst: ServingInstance) -> float:
    # Weights split over tp x pp (vocab-parallel embeddings and head included); DP attention replicates the
    # non-expert part per attention group.
    return sum(weight_bytes_split(inst))


def activation_bytes_per_gpu(inst: ServingInstance) -> float:
    # Peak transient of one forward over max_batched_tokens: hidden states, qkv and the gated MLP intermediate
    # (vLLM profile_run), plus fp32 logits of up to 256 sampled rows (vLLM sampler warm-up).
    spec = inst.model
    ffn = max(spec.ffn_hidden, spec.expert_ffn_hidden * max(spec.top_k, 1))
    per_token = 4 * spec.hidden + (3 if spec.gated_ffn else 1) * ffn / inst.tp
    return inst.max_batched_tokens * per_token * 2.0 + 256 * spec.vocab * 4.0 / inst.tp


def reserve_bytes_per_gpu(inst: ServingInstance) -> float:
    # CUDA context and CUDA-graph pools ~0.5 GiB, NCCL buffers ~0.37 GiB at tp >= 2 (aiconfigurator systems YAML).
    return 0.5 * GIB + (0.37 * GIB if inst.tp > 1 else 0.0)


def serving_memory(inst: ServingInstance) -> ServingMemory:
    """Per-GPU memory budget and the instance's KV capacity (research/serving-models.md sec. 4.1-4.3)."""
    budget = inst.knobs.memory_utilization * inst.gpu.memory_bytes
    weights = weights_bytes_per_gpu(inst)
    act = activation_bytes_per_gpu(inst)
    reserve = reserve_bytes_per_gpu(inst)
    free = budget - weights - act - reserve
    per_token = kv_bytes_per_token_per_gpu(inst.model, inst.attention_tp, inst.pp, DTYPE_BYTES[inst.kv_dtype])
    # Each DP-attention group caches its own sequences: the instance holds attention_dp times one group's tokens.
    tokens = int(max(free, 0.0) // per_token) * inst.attention_dp
    return ServingMemory(weights_gib=weights / GIB, activation_gib=act / GIB, reserve_gib=reserve / GIB,
                         kv_gib=max(free, 0.0) / GIB, kv_capacity_tokens=tokens)


def kv_accounting(inst: ServingInstance) -> dict[str, int | float]:
    """What a sequence reserves beside its KV tokens, as the scheduler (sim.Engine) takes it: the model's attention
    window (kv.kv_window) and a hybrid's Mamba state in KV-token units (kv.state_tokens_per_seq)."""
    out: dict[str, int | float] = dict(kv_window(inst.model))
    state = state_tokens_per_seq(inst.model, inst.tp, inst.attention_tp, inst.pp, DTYPE_BYTES[inst.kv_dtype],
                                 DTYPE_BYTES[MAMBA_STATE_DTYPE], DTYPE_BYTES[inst.mamba_ssm_dtype])
    if state:
        out["state_tokens_per_seq"] = state
    return out


def max_batch(inst: ServingInstance, context_tokens: float) -> int:
    """Largest number of sequences whose KV at `context_tokens` each fits (0 when not even one does); windowed
    layers hold at most their window (kv.kv_tokens_held), a hybrid's sequences their Mamba state too."""
    acc = kv_accounting(inst)
    state = float(acc.pop("state_tokens_per_seq", 0))
    held = float(kv_tokens_held(max(context_tokens, 1.0), **acc)) + state
    return int(serving_memory(inst).kv_capacity_tokens // held)


class StepTerms(NamedTuple):
    """One step's parts; per pipeline stage for compute, memory and all-reduce (a token passes all pp stages).
    A NamedTuple: the simulator builds one per step, and tuple construction is several times cheaper."""

    pp: int
    overhead_s: ArrayLike
    """Engine time per step: scheduler, launches, sampling (not overlapped with the GPU work)."""
    compute_s: ArrayLike
    memory_s: ArrayLike
    allreduce_s: ArrayLike
    p2p_s: ArrayLike

    @property
    def total_s(self) -> ArrayLike:
        # t = t0 + pp [max(compute, memory) + all-reduces] + (pp-1) p2p; the max written so floats and arrays both work.
        bound = (self.compute_s + self.memory_s + abs(self.compute_s - self.memory_s)) * 0.5
        return self.overhead_s + self.pp * (bound + self.allreduce_s) + self.p2p_s


@dataclass(frozen=True, kw_only=True, slots=True)
class StepModel:
    """Per-GPU constants of one instance, precomputed so a step costs a few arithmetic operations.

    `time_s` is THE step-time formula (module docstring); the simulator calls it with floats, the capacity
    bounds and tests with numpy arrays. Nothing else prices a step.
    """

    pp: int
    tp: int
    step_overhead_s: float
    seq_overhead_s: float
    prefill_overhead_s: float
    compute_s_per_token: float
    """Linear-layer FLOPs of one token over all layers, as time on the whole instance."""
    compute_s_per_pair: float
    """Attention score and value FLOPs per (query, key) pair over all layers, as time."""
    head_s_per_seq: float
    dense_weights_s: float
    expert_weights_s: float
    expert_hit_per_token: float
    """top_k / n_experts: chance one token routes to a given expert (0 for a dense model)."""
    kv_read_s_per_token: float
    ar_count_per_stage: float
    ar_fixed_s: float
    """Latency part of one tensor-parallel all-reduce (0 at tp 1)."""
    ar_s_per_token: float
    """Bandwidth part of one tensor-parallel all-reduce per token of the step (0 at tp 1)."""
    p2p_latency_s: float
    p2p_s_per_token: float
    """Pipeline send of one token's activations to the next stage."""
    cuda_graph_max_batch: float = math.inf
    """Decode batches above this run eagerly (prefill_overhead_s added, as for a prefill step)."""
    kv_window_tokens: int = 0
    """Keys a windowed layer attends to and reads at most (kv.kv_window); 0: every layer reads the whole context."""
    kv_windowed_share: float = 0.0
    """Share of the layers that are windowed."""
    state_s_per_seq: float = 0.0
    """A hybrid's Mamba state of one decoding sequence read and written once per step (selective_state_update,
    causal_conv1d_update), as time on one GPU."""
    ssd_s_per_prefill_token: float = 0.0
    """A hybrid's Mamba mixer kernels per prompt token (hardware.mamba_kernels.forward_bytes: conv1d, the chunked scan,
    the group norm) at the SSD kernels' measured HBM share (SSD_KERNEL_COPY_SHARE), as time on one GPU."""

    coefficients: tuple[float, ...] = field(init=False, repr=False, compare=False)
    """The fields above folded per pipeline stage, read in one unpacking by `terms` (the simulator's hot path)."""

    def __post_init__(self) -> None:
        pp = self.pp
        object.__setattr__(self, "coefficients", (
            float(pp), self.compute_s_per_token, self.compute_s_per_pair / pp, self.head_s_per_seq / pp,
            self.dense_weights_s, self.kv_read_s_per_token / pp, self.expert_weights_s, 1.0 - self.expert_hit_per_token,
            self.ar_count_per_stage, self.ar_fixed_s, self.ar_s_per_token, self.p2p_latency_s, self.p2p_s_per_token,
            self.step_overhead_s, self.prefill_overhead_s, self.seq_overhead_s, float(self.cuda_graph_max_batch),
            float(self.kv_window_tokens), self.kv_windowed_share, self.state_s_per_seq / pp,
            self.ssd_s_per_prefill_token / pp))

    def terms(self, n_p: ArrayLike, pairs: ArrayLike, b: ArrayLike, ctx: ArrayLike) -> StepTerms:
        """The parts of one engine step: n_p prompt tokens with `pairs` causal (query, key) pairs, plus one token of
        each of b running sequences whose contexts sum to ctx. Floats or numpy arrays (broadcast)."""
        pp, ct, cp, ch, mw, mk, mx, miss, ar_n, ar_0, ar_t, p2p_0, p2p_t, t0, t_pre, t_seq, graphs, w, f, ms, cs = \
            self.coefficients
        if f:
            # Windowed layers attend to and read at most w keys per sequence: (1 - f) ctx + f min(ctx, b w) (kv.py
            # kv_tokens_held summed over the batch; exact when every context is on the same side of w). The min is
            # written so floats and arrays both work.
            ctx = (1.0 - f) * ctx + f * 0.5 * (ctx + b * w - abs(ctx - b * w))
        tok = (n_p + b) / pp  # tokens each pipeline stage processes
        # A hybrid's Mamba mixers: the prompt tokens' chunked scan, and each decoding sequence's state read and
        # written (ms, cs: 0 for a transformer).
        compute = tok * ct + (pairs + ctx) * cp + b * ch + n_p * cs
        # Experts touched by `tok` routed tokens: 1 - (1 - k/E)^tok of them are read (uniform routing).
        memory = mw + ctx * mk + mx * (1.0 - miss ** tok) + b * ms
        allreduce = ar_n * (ar_0 + ar_t * tok)
        p2p = (pp - 1) * (p2p_0 + p2p_t * tok)
        # Eager launches when the step carries prompt tokens or its decode batch exceeds the captured CUDA graphs.
        overhead = t0 + t_pre * ((n_p > 0) | (b > graphs)) + t_seq * b
        return StepTerms(self.pp, overhead, compute, memory, allreduce, p2p)

    def time_s(self, n_p: ArrayLike, pairs: ArrayLike, b: ArrayLike, ctx: ArrayLike) -> ArrayLike:
        """Time of one engine step (arguments as `terms`): THE step formula; the simulator calls it with floats."""
        return self.terms(n_p, pairs, b, ctx).total_s

    def step_s(self, prefill_tokens: ArrayLike = 0.0, prefill_pairs: ArrayLike = 0.0, decode_seqs: ArrayLike = 0.0,
               decode_context_tokens: ArrayLike = 0.0) -> ArrayLike:
        """`time_s` on numpy arrays, by keyword."""
        return self.time_s(np.asarray(prefill_tokens, dtype=float), np.asarray(prefill_pairs, dtype=float),
                           np.asarray(decode_seqs, dtype=float), np.asarray(decode_context_tokens, dtype=float))

    def prefill_s(self, prompt_tokens: ArrayLike, batch: ArrayLike = 1) -> ArrayLike:
        """Prefill of `batch` prompts of `prompt_tokens` each in one step (causal attention: l^2/2 pairs each)."""
        l_tok = np.asarray(prompt_tokens, dtype=float)
        b = np.asarray(batch, dtype=float)
        return self.step_s(prefill_tokens=b * l_tok, prefill_pairs=b * l_tok * l_tok / 2.0)

    def decode_s(self, batch: ArrayLike, context_tokens: ArrayLike) -> ArrayLike:
        """One decode step of `batch` sequences with `context_tokens` of context each."""
        b = np.asarray(batch, dtype=float)
        return self.step_s(decode_seqs=b, decode_context_tokens=b * np.asarray(context_tokens, dtype=float))


def step_model(inst: ServingInstance) -> StepModel:
    """Precompute the step-time constants of an instance from its model, GPU and knobs."""
    spec, gpu, knobs = inst.model, inst.gpu, inst.knobs
    flops_per_s = gpu.tflops(COMPUTE_DTYPE[inst.weight_dtype]) * 1e12
    flops_per_s *= knobs.compute_fraction or gpu.gemm_peak_fraction * MODEL_GEMM_SHARE
    hbm_bytes_per_s = gpu.hbm_bytes_per_s * (knobs.hbm_fraction or gpu.hbm_fraction)
    weight_bytes_per_s = hbm_bytes_per_s  # a fitted decode read share came out at 1.0 (coord/serve.md)
    n_gpus = inst.n_gpus
    layer_params = spec.active_params() - spec.embedding_params() - spec.head_params()
    dense_bytes, expert_bytes = weight_bytes_split(inst)
    link = get_link(gpu.scale_up_link)
    busbw = link.gb_per_s * 1e9 * (knobs.busbw_fraction or link.busbw_fraction)
    alpha = knobs.allreduce_latency_s if knobs.allreduce_latency_s is not None else link.latency_us * 1e-6
    act_bytes = spec.hidden * 2.0  # one token's hidden state in bf16
    ring_fixed = float(all_reduce_s(0.0, inst.tp, busbw, alpha))
    # A decode-sized all-reduce costs the engine's small-message kernel latency (one-shot custom all-reduce or
    # NCCL LL) when the engine profile gives it, else the ring's 2 (tp - 1) alpha.
    ar_fixed = knobs.allreduce_call_s if knobs.allreduce_call_s is not None and inst.tp > 1 else ring_fixed
    kv_per_token = kv_bytes_per_token_per_gpu(spec, inst.attention_tp, inst.pp, DTYPE_BYTES[inst.kv_dtype])
    state_bytes = inst.mamba_state_bytes_per_seq
    ssd_bytes = 0.0
    if state_bytes:  # per prompt token on one GPU: the stage's Mamba layers' mixer forward (one token, mbs 1)
        one = np.ones(1)
        sizes = mixer_sizes(spec.mamba_inner, spec.mamba_heads, spec.mamba_groups, spec.mamba_state_dim,
                            spec.mamba_chunk, one * inst.tp)
        ssd_bytes = -(-spec.hybrid_pattern.count("M") // inst.pp) * float(forward_bytes(sizes, one, one)[0])
    return StepModel(
        pp=inst.pp,
        tp=inst.tp,
        step_overhead_s=knobs.step_overhead_s,
        seq_overhead_s=knobs.seq_overhead_s,
        prefill_overhead_s=knobs.prefill_overhead_s,
        cuda_graph_max_batch=knobs.cuda_graph_max_batch,
        # 2 FLOPs per parameter per token (Kaplan et al. 2020), split over tp x pp GPUs.
        compute_s_per_token=2.0 * layer_params / (n_gpus * flops_per_s),
        # QK^T and AV: 2 (q_dim + v_dim) FLOPs per (query, key) pair per layer (Narayanan et al. 2021 sec. 5.1).
        compute_s_per_pair=2.0 * (spec.q_dim + spec.v_dim) * spec.n_attention_layers / (n_gpus * flops_per_s),
        head_s_per_seq=2.0 * spec.vocab * spec.hidden / (n_gpus * flops_per_s),
        dense_weights_s=dense_bytes / weight_bytes_per_s,
        expert_weights_s=expert_bytes / (weight_bytes_per_s * MOE_READ_SHARE),
        expert_hit_per_token=spec.top_k / spec.n_experts if spec.is_moe else 0.0,
        # Each GPU reads the KV of its own DP-attention group: 1 / attention_dp of the batch's context.
        kv_read_s_per_token=kv_per_token / inst.attention_dp / hbm_bytes_per_s,
        **kv_window(spec),
        # Megatron tensor parallelism: two all-reduces of the hidden state per layer (Shoeybi et al. 2019); one per
        # block of a hybrid pattern.
        ar_count_per_stage=(1.0 if spec.is_hybrid else 2.0) * spec.n_layers / inst.pp,
        state_s_per_seq=2.0 * state_bytes / hbm_bytes_per_s,
        ssd_s_per_prefill_token=ssd_bytes / (SSD_KERNEL_COPY_SHARE * hbm_bytes_per_s),
        # The ring all-reduce of models/hardware/comm.py, split into its latency and per-byte parts.
        ar_fixed_s=ar_fixed,
        ar_s_per_token=float(all_reduce_s(act_bytes, inst.tp, busbw, alpha)) - ring_fixed,
        p2p_latency_s=alpha,
        p2p_s_per_token=act_bytes / (link.gb_per_s * 1e9 * link.busbw_fraction),
    )


def knobs_for_gpu(gpu: GPU, calibration: Any = None, dtype: str = "bf16", engine: EngineProfile | None = None,
                  tp: int = 1) -> ServingKnobs:
    """ServingKnobs of an engine profile at this tp (None: the ServingKnobs defaults), overridden by a
    models.calibration.Calibration (duck-typed) measured on this GPU type.

    Calibration fields named like ServingKnobs are taken as they are; a profile's decode_step_overhead_s, GEMM
    max_tflops, copy bandwidth and scale-up all-reduce fit map onto step overhead, compute and HBM fractions and
    alpha (a measured alpha replaces the engine's all-reduce table: the ring model then prices it).
    """
    base = ServingKnobs.from_engine(engine, tp) if engine is not None else ServingKnobs()
    if calibration is None or not _measured_on(gpu, calibration):
        return base
    extra: dict[str, float | None] = {"step_overhead_s": getattr(calibration, "decode_step_overhead_s", None)}
    curve = calibration.gemm_curve(dtype) if hasattr(calibration, "gemm_curve") else None
    if curve is not None:
        extra["compute_fraction"] = min(curve.max_tflops / gpu.tflops(dtype), 1.0)
    copy = getattr(calibration, "copy_bytes_per_s", None)
    if copy:
        extra["hbm_fraction"] = min(copy / gpu.hbm_bytes_per_s, 1.0)
    fit = calibration.collective("all_reduce", "scale_up") if hasattr(calibration, "collective") else None
    if fit is not None:
        extra["allreduce_latency_s"] = fit.latency_s
    measured = ServingKnobs.from_calibration(calibration, **extra)
    changed = {name: getattr(measured, name) for name in ServingKnobs.__dataclass_fields__
               if getattr(measured, name) != getattr(ServingKnobs(), name)}
    if "allreduce_latency_s" in changed:
        changed["allreduce_call_s"] = None
    return replace(base, **changed)


def _measured_on(gpu: GPU, calibration: Any) -> bool:
    device = str((getattr(calibration, "meta", None) or {}).get("device_name", "")).lower().replace("-", " ")
    names = [gpu.name, *gpu.aliases]
    return not device or any(n.lower().replace("-", " ") in device for n in names)
