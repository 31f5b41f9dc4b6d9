"""Launch lines that realise a serving configuration in vLLM, SGLang and TensorRT-LLM.

Flag names as each engine's own argument parser defines them (tests/test_serving_launch.py cites the source
of every flag): vLLM vllm/engine/arg_utils.py (EngineArgs.add_cli_args), SGLang python/sglang/srt/server_args.py
(ServerArgs.add_cli_args), TensorRT-LLM tensorrt_llm/commands/serve.py (trtllm-serve click options; kv-cache
dtype, attention DP, chunked prefill and the disaggregated KV transfer live in the --extra_llm_api_options YAML there:
tensorrt_llm/llmapi/llm_args.py enable_chunked_prefill (default False), cache_transceiver_config.backend).
"""

from __future__ import annotations

from dataclasses import dataclass

VLLM_QUANTIZATION = {"fp8": "fp8", "int8": "compressed-tensors", "int4": "awq"}
"""vLLM --quantization per weight format: fp8 quantizes a bf16 checkpoint on load; int8 (W8A8) and int4 (AWQ)
need a checkpoint quantized ahead of time."""
SGLANG_QUANTIZATION = {"fp8": "fp8", "int8": "w8a8_int8", "int4": "awq"}
PRECOMPUTED_FORMATS = ("int8", "int4", "fp4")
"""Weight formats that need a pre-quantized checkpoint (the line names the base repository; swap in the
quantized release)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class LaunchConfig:
    repo: str
    """Hugging Face repository id (or a local path) the engine loads."""
    tp: int = 1
    pp: int = 1
    ep: int = 1
    """Expert-parallel size (1 = experts sharded by tp)."""
    attention_dp: int = 1
    """Data-parallel attention ranks (DeepSeek-style DP attention with EP MoE); 1 = off."""
    weight_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    mamba_ssm_dtype: str = "bf16"
    """A hybrid's SSM state dtype (ServingInstance.mamba_ssm_dtype): fp32 sets the engines' flags."""
    max_seqs: int = 256
    max_model_len: int = 8192
    chunk_tokens: int = 2048
    memory_utilization: float = 0.9
    role: str = "colocated"
    """colocated, prefill or decode (disaggregated pools)."""
    chunked_prefill: bool = True
    """The priced engine splits prompts across steps to fill chunk_tokens (engines.yaml chunked_prefill: vLLM and
    SGLang do; TensorRT-LLM by default does not, a longer prompt running alone)."""


def vllm_line(c: LaunchConfig) -> str:
    # vLLM's data-parallel attention runs --data-parallel-size ranks of --tensor-parallel-size GPUs each: the
    # instance's tp GPUs are tp / attention_dp per rank (vllm/config/parallel.py world_size = tp x pp x dp).
    tp = c.tp // c.attention_dp if c.attention_dp > 1 else c.tp
    line = (f"vllm serve {c.repo} --tensor-parallel-size {tp} --pipeline-parallel-size {c.pp} "
            f"--max-num-seqs {c.max_seqs} --max-model-len {c.max_model_len} "
            f"--gpu-memory-utilization {c.memory_utilization:g} "
            f"--enable-chunked-prefill --max-num-batched-tokens {c.chunk_tokens}")
    if c.attention_dp > 1:
        line += f" --data-parallel-size {c.attention_dp}"
    if c.ep > 1:  # vLLM's expert parallelism is a switch: EP width = tp x dp
        line += " --enable-expert-parallel"
    if c.weight_dtype in VLLM_QUANTIZATION:
        line += f" --quantization {VLLM_QUANTIZATION[c.weight_dtype]}"
    if c.kv_dtype == "fp8":
        line += " --kv-cache-dtype fp8"
    if c.mamba_ssm_dtype == "fp32":  # vLLM --mamba-ssm-cache-dtype {auto, float32, ...}
        line += " --mamba-ssm-cache-dtype float32"
    if c.role != "colocated":
        line += ' --kv-transfer-config \'{"kv_connector":"NixlConnector","kv_role":"kv_both"}\''
    return line


def sglang_line(c: LaunchConfig) -> str:
    line = (f"python -m sglang.launch_server --model-path {c.repo} --tp-size {c.tp} --pp-size {c.pp} "
            f"--max-running-requests {c.max_seqs} --context-length {c.max_model_len} "
            f"--mem-fraction-static {c.memory_utilization:g} --chunked-prefill-size {c.chunk_tokens}")
    if c.ep > 1:
        line += f" --ep-size {c.ep}"
    if c.attention_dp > 1:
        line += f" --dp-size {c.attention_dp} --enable-dp-attention"
    if c.weight_dtype in SGLANG_QUANTIZATION:
        line += f" --quantization {SGLANG_QUANTIZATION[c.weight_dtype]}"
    if c.kv_dtype == "fp8":
        line += " --kv-cache-dtype fp8_e4m3"
    if c.mamba_ssm_dtype == "fp32":  # SGLang --mamba-ssm-dtype
        line += " --mamba-ssm-dtype float32"
    if c.role != "colocated":
        line += f" --disaggregation-mode {c.role}"
    return line


def trtllm_line(c: LaunchConfig) -> str:
    """trtllm-serve (PyTorch backend). fp8 KV cache, attention DP, chunked prefill and a disaggregated pool's KV
    transfer go in the LLM API options YAML."""
    line = (f"trtllm-serve {c.repo} --backend pytorch --tp_size {c.tp} --pp_size {c.pp} --ep_size {c.ep} "
            f"--max_batch_size {c.max_seqs} --max_num_tokens {c.chunk_tokens} --max_seq_len {c.max_model_len} "
            f"--kv_cache_free_gpu_memory_fraction {c.memory_utilization:g}")
    extra = []
    if c.kv_dtype == "fp8":
        extra.append("kv_cache_config: {dtype: fp8}")
    if c.attention_dp > 1:
        extra.append("enable_attention_dp: true")
    if c.chunk_tokens < c.max_model_len and c.chunked_prefill:
        # Priced in chunks of --max_num_tokens (an engine that chunks): TRT-LLM chunks only with enable_chunked_prefill
        # (off by default; without it, it cannot schedule a prompt longer than --max_num_tokens).
        extra.append("enable_chunked_prefill: true")
    if c.role != "colocated":
        # A context (prefill) or generation (decode) server sends / receives KV caches through its cache transceiver.
        extra.append("cache_transceiver_config: {backend: DEFAULT}")
    if extra:
        line += f" --extra_llm_api_options extra.yaml  # extra.yaml: {'; '.join(extra)}"
    return line


def launch_lines(c: LaunchConfig) -> dict[str, str]:
    return {"vllm": vllm_line(c), "sglang": sglang_line(c), "trtllm": trtllm_line(c)}


LAUNCH_KV_DTYPES = ("bf16", "fp16", "fp8")
"""KV-cache dtypes every launch line carries (the checkpoint's own, or an fp8 cache)."""


def launch_notes(c: LaunchConfig) -> list[str]:
    """What the launch lines cannot carry of the priced configuration, one line each."""
    notes = []
    if c.kv_dtype not in LAUNCH_KV_DTYPES:
        notes.append(f"KV cache {c.kv_dtype}: priced, but no line sets it (the engines' flags take fp8 at the "
                     "lowest); the lines launch the checkpoint's own KV dtype")
    if c.mamba_ssm_dtype == "fp32":
        notes.append("SSM state fp32: the vLLM and SGLang lines set it; the TensorRT-LLM line carries no flag for it: "
                     "set its Mamba cache dtype by hand")
    if c.weight_dtype in PRECOMPUTED_FORMATS:
        notes.append(f"weights {c.weight_dtype}: need a checkpoint quantized ahead of time; the lines name the base "
                     "repository: swap in its quantized release")
    elif c.weight_dtype in ("fp16", "fp32"):
        notes.append(f"weights {c.weight_dtype}: the lines load the checkpoint's own dtype (add vLLM / SGLang "
                     f"--dtype {'float16' if c.weight_dtype == 'fp16' else 'float32'})")
    if c.chunk_tokens < c.max_seqs:
        notes.append(f"--max-num-batched-tokens {c.chunk_tokens} < --max-num-seqs {c.max_seqs}: vLLM refuses it "
                     "(vllm/config/scheduler.py SchedulerConfig._verify_args: max_num_batched_tokens >= max_num_seqs); raise the "
                     "chunk to "
                     f"{c.max_seqs} or more")
    if c.chunk_tokens < c.max_model_len and not c.chunked_prefill:
        notes.append(f"priced with whole-prompt prefill (TensorRT-LLM's default), a prompt over the {c.chunk_tokens}-"
                     f"token budget running alone; trtllm-serve refuses a prompt longer than --max_num_tokens "
                     f"{c.chunk_tokens}: raise it to {c.max_model_len} for such prompts, or price a chunking engine")
    if c.role != "colocated":
        notes.append(f"{c.role} pool: each engine needs a front end that pairs the pools: TensorRT-LLM `trtllm-serve "
                     "disaggregated -c <config>` with the servers' URLs under context_servers / generation_servers; "
                     "SGLang its router in PD mode; vLLM a proxy in front of the NixlConnector instances")
    if c.ep > 1 and c.ep != c.tp:
        notes.append(f"ep {c.ep}: vLLM's --enable-expert-parallel spans all {c.tp} GPUs of the instance (EP = tp x "
                     "dp), not the priced ep")
    return notes
