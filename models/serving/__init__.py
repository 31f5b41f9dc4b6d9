"""Serving cost model: KV cache, prefill/decode step times, request traffic, the batching simulator."""
