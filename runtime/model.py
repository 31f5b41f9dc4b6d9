"""A Llama-style decoder in plain torch, built from a ModelSpec (RMSNorm, RoPE, GQA, SwiGLU, optional MoE).

Module names follow torchtitan's llama3 model (tok_embeddings, layers.N.attention.wq, feed_forward.w1, norm,
output) so the tensor-parallel plans read the same. `layers` is a ModuleDict keyed by the layer index, so a
pipeline stage is the same class with the other layers deleted and, off the first or last stage, no
embedding or head (torchtitan's pipeline_parallel.py does the same).

Parameter counts equal ModelSpec.total_params() exactly (tests/test_validate_model.py checks the presets).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clusterplan.models.architecture.spec import ModelSpec
from clusterplan.runtime.supported import check_supported


class _RMSNormFn(torch.autograd.Function):
    """RMSNorm keeping only its input and 1/rms for backward, as fused kernels do (Apex/TE FusedRMSNorm); torch's
    composite rms_norm on CPU also keeps the normalised input, one more activation of the hidden size."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, weight: torch.Tensor,
                eps: float) -> torch.Tensor:
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, rstd, weight)
        return (xf * rstd).to(x.dtype) * weight

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx,
                 grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        x, rstd, weight = ctx.saved_tensors
        x_hat = x.to(rstd.dtype) * rstd
        grad_weight = (grad.to(rstd.dtype) * x_hat).sum(dim=tuple(range(grad.ndim - 1))).to(weight.dtype)
        g = grad.to(rstd.dtype) * weight.to(rstd.dtype)
        grad_x = rstd * (g - x_hat * (g * x_hat).mean(-1, keepdim=True))
        return grad_x.to(x.dtype), grad_weight, None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _RMSNormFn.apply(x, self.weight, self.eps)


def _norm(spec: ModelSpec, dim: int) -> nn.Module:
    return nn.LayerNorm(dim) if spec.norm == "layernorm" else RMSNorm(dim)


def rope_tables(head_dim: int, seq: int, theta: float = 500000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of RoPE angles, (seq, head_dim // 2) each (Su et al. 2021; Llama 3 base theta 500000)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = cos[None, :, None, :].to(x.dtype), sin[None, :, None, :].to(x.dtype)
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)


class _Rope(torch.autograd.Function):
    """RoPE that keeps only the angle tables for backward (a rotation's gradient is the inverse rotation), as
    fused RoPE kernels do (Transformer Engine, Megatron-Core `apply_rotary_pos_emb` with fusion)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, -sin), None, None


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of x (batch, seq, heads, head_dim) by the position angle (Su et al. 2021)."""
    return _Rope.apply(x, cos, sin)


def core_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of (batch, seq, heads, head_dim) tensors, output (batch, seq, heads, head_dim); the
    `selective` AC region. Grouped-query heads are not repeated (enable_gqa), as in flash attention."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                         enable_gqa=q.shape[2] != k.shape[2])
    return out.transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        d, h = spec.dim_head, spec.hidden
        self.head_dim = d
        self.wq = nn.Linear(h, spec.n_heads * d, bias=spec.attn_bias)
        self.wk = nn.Linear(h, spec.kv_heads * d, bias=spec.attn_bias)
        self.wv = nn.Linear(h, spec.kv_heads * d, bias=spec.attn_bias)
        self.wo = nn.Linear(spec.n_heads * d, h, bias=spec.linear_bias)
        self.q_norm = RMSNorm(d) if spec.qk_norm else None
        self.k_norm = RMSNorm(d) if spec.qk_norm else None
        self.core = core_attention

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        bs, seq, _ = x.shape
        # -1 heads: under tensor parallelism each rank holds n_heads / tp of them (torchtitan does the same).
        q = self.wq(x).view(bs, seq, -1, self.head_dim)
        k = self.wk(x).view(bs, seq, -1, self.head_dim)
        v = self.wv(x).view(bs, seq, -1, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if cos is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # The kernel's output is laid out (batch, seq, heads, head_dim), so this reshape is a view, not a copy.
        return self.wo(self.core(q, k, v).reshape(bs, seq, -1))


def _relu2(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).square()  # squared ReLU (Nemotron; transformers ACT2FN "relu2")


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)  # transformers ACT2FN "quick_gelu"


ACTIVATION_FNS = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu, "relu2": _relu2, "quick_gelu": _quick_gelu}
"""ModelSpec.activation_fn -> the function the MLP applies (to the gate of a gated MLP)."""


class FeedForward(nn.Module):
    def __init__(self, spec: ModelSpec, ffn: int) -> None:
        super().__init__()
        bias = spec.linear_bias
        self.gated = spec.gated_ffn
        self.act = ACTIVATION_FNS[spec.activation_fn]
        self.w1 = nn.Linear(spec.hidden, ffn, bias=bias)
        self.w2 = nn.Linear(ffn, spec.hidden, bias=bias)
        self.w3 = nn.Linear(spec.hidden, ffn, bias=False) if spec.gated_ffn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w3 is None:
            return self.w2(self.act(self.w1(x)))
        return self.w2(self.act(self.w1(x)) * self.w3(x))


class GroupedExperts(nn.Module):
    """Routed experts as stacked weights (expert, out, in); expert parallelism shards dim 0 (this rank's experts)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        e, h, f = spec.n_experts, spec.hidden, spec.expert_ffn_hidden
        self.w1 = nn.Parameter(torch.empty(e, f, h))
        self.w2 = nn.Parameter(torch.empty(e, h, f))
        self.w3 = nn.Parameter(torch.empty(e, f, h)) if spec.gated_ffn else None
        self.act = ACTIVATION_FNS[spec.activation_fn]

    def forward(self, x: torch.Tensor, expert_ids: torch.Tensor) -> torch.Tensor:
        """Row i of x (rows, hidden) through local expert expert_ids[i]. Every expert runs, even on no rows, so
        every rank records the same backward (and the same FSDP/all-to-all collectives)."""
        w1, w2, w3 = (w.to_local() if hasattr(w, "to_local") else w for w in (self.w1, self.w2, self.w3))
        out = torch.zeros_like(x)
        for j in range(w1.shape[0]):
            idx = (expert_ids == j).nonzero(as_tuple=True)[0]
            rows = x[idx]
            hidden = rows @ w1[j].t()
            hidden = self.act(hidden) * (rows @ w3[j].t()) if w3 is not None else self.act(hidden)
            out = out.index_add(0, idx, hidden @ w2[j].t())
        return out


class MoE(nn.Module):
    """Top-k routed experts plus optional shared experts (Mixtral, Qwen2-MoE style)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.top_k = spec.top_k
        self.router = nn.Linear(spec.hidden, spec.n_experts, bias=False)
        self.experts = GroupedExperts(spec)
        self.shared = FeedForward(spec, spec.shared_ffn) if spec.shared_ffn else None
        self.shared_gate = nn.Linear(spec.hidden, 1, bias=False) if spec.shared_expert_gate else None
        self.ep_group = None
        """Set by apply_ep for a real run: experts live across this group and tokens travel by all-to-all."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        scores = F.softmax(self.router(tokens), dim=-1, dtype=torch.float32)
        weights, chosen = scores.topk(self.top_k, dim=-1)
        flat = chosen.reshape(-1)
        order = torch.argsort(flat, stable=True)  # token copies grouped by expert
        token_of = torch.arange(tokens.shape[0], device=x.device).repeat_interleave(self.top_k)[order]
        if self.ep_group is not None:
            from clusterplan.runtime.expert_dispatch import dispatch_combine

            routed = dispatch_combine(tokens[token_of], flat[order], self.experts, self.ep_group)
        else:
            routed = self.experts(tokens[token_of], flat[order])
        gate = weights.reshape(-1)[order].to(tokens.dtype)
        out = torch.zeros_like(tokens).index_add(0, token_of, routed * gate[:, None])
        if self.shared is not None:
            shared = self.shared(tokens)
            if self.shared_gate is not None:
                shared = torch.sigmoid(self.shared_gate(tokens)) * shared
            out = out + shared
        return out.view(shape)


class TransformerBlock(nn.Module):
    def __init__(self, spec: ModelSpec, index: int) -> None:
        super().__init__()
        self.attention_norm = _norm(spec, spec.hidden)
        self.attention = Attention(spec)
        self.ffn_norm = _norm(spec, spec.hidden)
        self.feed_forward = MoE(spec) if spec.is_moe_layer(index) else FeedForward(spec, spec.ffn_hidden)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin)
        return x + self.feed_forward(self.ffn_norm(x))


class Decoder(nn.Module):
    """tokens (batch, seq) -> logits (batch, seq, vocab); a pipeline stage maps hidden states in between."""

    def __init__(self, spec: ModelSpec, seq: int) -> None:
        super().__init__()
        check_supported(spec)
        self.spec = spec
        self.tok_embeddings: nn.Module | None = nn.Embedding(spec.vocab, spec.hidden)
        self.pos_embeddings = nn.Embedding(spec.max_positions, spec.hidden) if spec.position == "learned" else None
        self.embed_norm = _norm(spec, spec.hidden) if spec.embed_norm else None
        self.layers = nn.ModuleDict({str(i): TransformerBlock(spec, i) for i in range(spec.n_layers)})
        self.norm: nn.Module | None = _norm(spec, spec.hidden)
        self.output: nn.Module | None = None if spec.tied_embeddings else nn.Linear(spec.hidden, spec.vocab, bias=False)
        if spec.position == "rope":
            cos, sin = rope_tables(spec.dim_head, seq)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        else:
            self.rope_cos = self.rope_sin = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.tok_embeddings is not None:
            h = self.tok_embeddings(h)
            if self.pos_embeddings is not None:
                h = h + self.pos_embeddings.weight[: h.shape[1]]
            if self.embed_norm is not None:
                h = self.embed_norm(h)
        for layer in self.layers.values():
            h = layer(h, self.rope_cos, self.rope_sin)
        if self.norm is not None:
            h = self.norm(h)
            if self.output is not None:
                return self.output(h)
            return F.linear(h, self.tok_embeddings.weight)  # tied embeddings (pp = 1 only)
        return h


def keep_stage(model: Decoder, layer_ids: list[int], first: bool, last: bool) -> Decoder:
    """Reduce a full Decoder in place to one pipeline stage: `layer_ids`, plus embedding/head at the ends."""
    for name in list(model.layers.keys()):
        if int(name) not in layer_ids:
            del model.layers[name]
    if not first:
        model.tok_embeddings = model.pos_embeddings = model.embed_norm = None
    if not last:
        model.norm = model.output = None
    return model


def materialize(module: nn.Module, device: torch.device, spec: ModelSpec, seq: int, seed: int) -> None:
    """Allocate a meta-built module (or stage) on `device` and fill its local shards; RoPE tables for `seq`."""
    module.to_empty(device=device)
    torch.manual_seed(seed)
    with torch.no_grad():  # local shards drawn locally: values do not matter for what is measured
        for name, p in module.named_parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            if p.ndim == 1 and "bias" not in name:
                local.fill_(1.0)  # norm scales
            else:
                local.normal_(0.0, 0.02)
    if getattr(module, "rope_cos", None) is not None:
        module.rope_cos, module.rope_sin = (t.to(device) for t in rope_tables(spec.dim_head, seq))
