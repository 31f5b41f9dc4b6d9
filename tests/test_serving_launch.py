"""Launch lines: golden strings whose every flag is checked against the engine's own argument parser source.

Sources (flag spellings as each parser declares them):
- vLLM: vllm-project/vllm vllm/engine/arg_utils.py, EngineArgs.add_cli_args: --tensor-parallel-size (-tp),
  --pipeline-parallel-size (-pp), --data-parallel-size (-dp), --enable-expert-parallel (-ep, a switch),
  --max-num-seqs, --max-model-len, --gpu-memory-utilization, --enable-chunked-prefill, --max-num-batched-tokens,
  --quantization (choices include fp8, awq, compressed-tensors), --kv-cache-dtype (auto, fp8, fp8_e4m3, ...),
  --kv-transfer-config (JSON).
- SGLang: sgl-project/sglang python/sglang/srt/server_args.py, ServerArgs.add_cli_args: --model-path,
  --tensor-parallel-size/--tp-size, --pipeline-parallel-size/--pp-size, --expert-parallel-size/--ep-size/--ep,
  --data-parallel-size/--dp-size, --enable-dp-attention, --max-running-requests, --context-length,
  --mem-fraction-static, --chunked-prefill-size, --quantization (fp8, awq, w8a8_int8, ...),
  --kv-cache-dtype (auto, fp8_e5m2, fp8_e4m3), --disaggregation-mode (null, prefill, decode).
- TensorRT-LLM: NVIDIA/TensorRT-LLM tensorrt_llm/commands/serve.py, trtllm-serve click options: --backend,
  --tp_size, --pp_size, --ep_size, --max_batch_size, --max_num_tokens, --max_seq_len,
  --kv_cache_free_gpu_memory_fraction, --extra_llm_api_options (YAML: kv_cache_config.dtype, enable_attention_dp,
  enable_chunked_prefill, cache_transceiver_config.backend: tensorrt_llm/llmapi/llm_args.py).
"""

from __future__ import annotations

import re

from clusterplan.models.architecture.catalog import hf_repo, presets
from clusterplan.models.serving.launch import LaunchConfig, sglang_line, trtllm_line, vllm_line

VLLM_FLAGS = {"--tensor-parallel-size", "--pipeline-parallel-size", "--data-parallel-size", "--enable-expert-parallel",
              "--max-num-seqs", "--max-model-len", "--gpu-memory-utilization", "--enable-chunked-prefill",
              "--max-num-batched-tokens", "--quantization", "--kv-cache-dtype", "--kv-transfer-config"}
SGLANG_FLAGS = {"--model-path", "--tp-size", "--pp-size", "--ep-size", "--dp-size", "--enable-dp-attention",
                "--max-running-requests", "--context-length", "--mem-fraction-static", "--chunked-prefill-size",
                "--quantization", "--kv-cache-dtype", "--disaggregation-mode"}
TRTLLM_FLAGS = {"--backend", "--tp_size", "--pp_size", "--ep_size", "--max_batch_size", "--max_num_tokens",
                "--max_seq_len", "--kv_cache_free_gpu_memory_fraction", "--extra_llm_api_options"}

DEEPSEEK = LaunchConfig(repo="deepseek-ai/DeepSeek-V3", tp=8, ep=8, attention_dp=8, weight_dtype="fp8", kv_dtype="fp8",
                        max_seqs=128, max_model_len=8192, chunk_tokens=4096, memory_utilization=0.85)


def _flags(line: str) -> set[str]:
    return set(re.findall(r"(?<=\s)--[a-z][a-z0-9_-]*", line.split("  #")[0]))


def test_golden_lines_dp_attention_ep_fp8() -> None:
    # vLLM runs --data-parallel-size engines of --tensor-parallel-size GPUs each: its DeepSeek-V3 recipe serves 8 H200
    # as "--data-parallel-size 8 --enable-expert-parallel" (docs.vllm.ai recipes DeepSeek-V3, DP8+EP), tp 1.
    assert vllm_line(DEEPSEEK) == (
        "vllm serve deepseek-ai/DeepSeek-V3 --tensor-parallel-size 1 --pipeline-parallel-size 1 --max-num-seqs 128 "
        "--max-model-len 8192 --gpu-memory-utilization 0.85 --enable-chunked-prefill --max-num-batched-tokens 4096 "
        "--data-parallel-size 8 --enable-expert-parallel --quantization fp8 --kv-cache-dtype fp8")
    assert sglang_line(DEEPSEEK) == (
        "python -m sglang.launch_server --model-path deepseek-ai/DeepSeek-V3 --tp-size 8 --pp-size 1 "
        "--max-running-requests 128 --context-length 8192 --mem-fraction-static 0.85 --chunked-prefill-size 4096 "
        "--ep-size 8 --dp-size 8 --enable-dp-attention --quantization fp8 --kv-cache-dtype fp8_e4m3")
    assert trtllm_line(DEEPSEEK) == (
        "trtllm-serve deepseek-ai/DeepSeek-V3 --backend pytorch --tp_size 8 --pp_size 1 --ep_size 8 --max_batch_size 128 "
        "--max_num_tokens 4096 --max_seq_len 8192 --kv_cache_free_gpu_memory_fraction 0.85 --extra_llm_api_options "
        "extra.yaml  # extra.yaml: kv_cache_config: {dtype: fp8}; enable_attention_dp: true; "
        "enable_chunked_prefill: true")


def test_trtllm_chunks_prefill_and_configures_a_disaggregated_pools_kv_transfer() -> None:
    # TensorRT-LLM's LLM API (tensorrt_llm/llmapi/llm_args.py): enable_chunked_prefill defaults to False, so a prompt
    # longer than --max_num_tokens needs it; a context / generation server sets cache_transceiver_config.backend
    # (DEFAULT, UCX, NIXL or MPI: docs/source/features/disagg-serving.md). The pools are joined by `trtllm-serve
    # disaggregated -c` (a launch note).
    whole = LaunchConfig(repo="r", chunk_tokens=8192, max_model_len=8192)
    assert "--extra_llm_api_options" not in trtllm_line(whole)
    prefill = LaunchConfig(repo="r", role="prefill")
    assert trtllm_line(prefill).endswith(
        "--extra_llm_api_options extra.yaml  # extra.yaml: enable_chunked_prefill: true; "
        "cache_transceiver_config: {backend: DEFAULT}")
    from clusterplan.models.serving.launch import launch_notes

    assert any("trtllm-serve disaggregated -c" in n for n in launch_notes(prefill))
    assert not any("front end" in n for n in launch_notes(whole))


def test_every_flag_is_one_the_engine_parses() -> None:
    for cfg in (DEEPSEEK, LaunchConfig(repo="meta-llama/Llama-3.1-70B-Instruct", tp=4, weight_dtype="int4", role="prefill"),
                LaunchConfig(repo="Qwen/Qwen3-32B", tp=2, pp=2, weight_dtype="int8", role="decode")):
        assert _flags(vllm_line(cfg)) <= VLLM_FLAGS
        assert _flags(sglang_line(cfg)) <= SGLANG_FLAGS
        assert _flags(trtllm_line(cfg)) <= TRTLLM_FLAGS


def test_quantized_weights_name_their_format() -> None:
    int4 = LaunchConfig(repo="r", tp=4, weight_dtype="int4")
    assert "--quantization awq" in vllm_line(int4) and "--quantization awq" in sglang_line(int4)
    int8 = LaunchConfig(repo="r", weight_dtype="int8")
    assert "--quantization compressed-tensors" in vllm_line(int8) and "--quantization w8a8_int8" in sglang_line(int8)
    plain = LaunchConfig(repo="r")
    assert "--quantization" not in vllm_line(plain) + sglang_line(plain)
    assert "--enable-expert-parallel" not in vllm_line(plain) and "--enable-dp-attention" not in sglang_line(plain)


def test_presets_name_a_hugging_face_repo() -> None:
    assert hf_repo("llama3.1-70b") == "meta-llama/Llama-3.1-70B-Instruct"
    assert hf_repo("deepseek-v3") == "deepseek-ai/DeepSeek-V3"
    # Every released open-weight preset has one; the Megatron-paper GPTs and Nemotron-4 15B (never released) have none.
    for name in presets():
        repo = hf_repo(name)
        assert (repo is None) == (name.startswith(("megatron-gpt", "gpt-22b", "gpt3-", "opt-175b", "nemotron4-15b"))), name
        assert repo is None or re.fullmatch(r"[\w.-]+/[\w.-]+", repo)


def test_trtllm_line_launches_the_prefill_that_was_priced() -> None:
    # Priced on TensorRT-LLM itself (engines.yaml trtllm chunked_prefill false: whole prompts, a longer one alone), the
    # line keeps TRT-LLM's default and a note says --max_num_tokens must hold the longest prompt; priced on a chunking
    # engine, it turns chunked prefill on.
    from clusterplan.models.serving.launch import launch_notes

    whole = LaunchConfig(repo="r", chunk_tokens=8192, max_model_len=32768, chunked_prefill=False)
    assert "enable_chunked_prefill" not in trtllm_line(whole)
    assert any("whole-prompt prefill" in n and "--max_num_tokens 8192" in n for n in launch_notes(whole))
    chunked = LaunchConfig(repo="r", chunk_tokens=8192, max_model_len=32768)
    assert "enable_chunked_prefill: true" in trtllm_line(chunked)
    assert not any("whole-prompt" in n for n in launch_notes(chunked))
