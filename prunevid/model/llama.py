"""LLaMA decoder written as layer slices, so PruneVid can stop after layer K, score, gather the
KV cache and go on with fewer tokens. Sequences are unbatched (``[S, C]``): PruneVid runs with
batch size 1. Qwen2 (LLaVA-OneVision) is the same block with biases on q/k/v only
(``TextConfig.qkv_bias``).

Parameter names follow transformers' ``LlamaForCausalLM`` (``model.layers.N.self_attn.q_proj``).
The KV cache of a layer is ``(k, v)``, each ``[H_kv, S, d]``, with RoPE already applied to ``k``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from prunevid.model.config import TextConfig

KV = tuple[torch.Tensor, torch.Tensor]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``positions [S]`` (any order, gaps allowed) to ``cos, sin [S, d]``."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))  # [d/2]
    freqs = positions.float()[:, None] * inv_freq[None, :]  # [S, d/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [S, d]
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x [H, S, d]`` rotated by the tables ``[S, d]`` (rotate-half convention)."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def causal_mask(n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive ``[n, n]`` mask: 0 on and below the diagonal, -inf above."""
    return torch.full((n, n), float("-inf"), dtype=dtype).triu(1)


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KV,
                      cache_length: torch.Tensor) -> torch.Tensor:
    """``q [H, n, d]`` over ``cache`` (``[H_kv, R, d]`` each, first ``cache_length`` rows valid) and
    the new ``k, v [H_kv, n, d]`` (causal); ``[H, n, d]``.

    One softmax over both key blocks, without joining them: each block is exponentiated against the
    common row maximum and the two weighted sums are added, so neither the cache nor the logits are
    concatenated. Query head ``h`` uses key head ``h // (H / H_kv)``: the query heads of a key head
    are folded into rows, so no key or value is repeated.
    """
    h, n, d = q.shape
    kv_heads = k.shape[0]
    rows = q.reshape(kv_heads, (h // kv_heads) * n, d)  # [H_kv, rep*n, d]
    scale = 1.0 / (d ** 0.5)
    ck, cv = cache
    hidden = torch.arange(torch._shape_as_tensor(ck)[1]) >= cache_length  # [R], True past the valid prefix
    old = ((rows @ ck.transpose(1, 2)) * scale).masked_fill(hidden, float("-inf"))  # [H_kv, rep*n, R]
    new = ((rows @ k.transpose(1, 2)) * scale).reshape(kv_heads, h // kv_heads, n, n)  # [H_kv, rep, n, n]
    new = (new + causal_mask(n, new.dtype)).reshape(kv_heads, (h // kv_heads) * n, n)  # [H_kv, rep*n, n]
    top = torch.maximum(old.amax(-1, keepdim=True), new.amax(-1, keepdim=True))  # [H_kv, rep*n, 1], finite
    old, new = torch.exp(old - top), torch.exp(new - top)
    total = old.sum(-1, keepdim=True) + new.sum(-1, keepdim=True)  # [H_kv, rep*n, 1]
    out = (old @ cv + new @ v) / total  # [H_kv, rep*n, d]
    return out.reshape(h, n, d)


@dataclass
class LayerOutput:
    hidden: torch.Tensor  # [S, C]
    kv: KV  # cache of this layer including the new tokens, each [H_kv, P + S, d]
    q_pre_rope: torch.Tensor | None = None  # [H, S, d], only when requested
    k_pre_rope: torch.Tensor | None = None  # [H_kv, S, d], only when requested


class Attention(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        c, d = cfg.hidden_size, cfg.dim_per_head
        self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.kv_heads, d
        self.theta = cfg.rope_theta
        qkv_bias = cfg.attention_bias or cfg.qkv_bias  # Qwen2: biases on q/k/v only
        self.q_proj = nn.Linear(c, self.heads * d, bias=qkv_bias)
        self.k_proj = nn.Linear(c, self.kv_heads * d, bias=qkv_bias)
        self.v_proj = nn.Linear(c, self.kv_heads * d, bias=qkv_bias)
        self.o_proj = nn.Linear(self.heads * d, c, bias=cfg.attention_bias)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pre-RoPE ``q [H, S, d]``, ``k, v [H_kv, S, d]``."""
        s = x.shape[0]
        q = self.q_proj(x).view(s, self.heads, self.head_dim).transpose(0, 1)
        k = self.k_proj(x).view(s, self.kv_heads, self.head_dim).transpose(0, 1)
        v = self.v_proj(x).view(s, self.kv_heads, self.head_dim).transpose(0, 1)
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        past: KV | None,
        keep_pre_rope: bool,
    ) -> LayerOutput:
        q, k, v = self.project(x)
        cos, sin = rope
        q_rot, k_rot = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past is not None:
            k_rot = torch.cat([past[0], k_rot], dim=1)  # [H_kv, P+S, d]
            v = torch.cat([past[1], v], dim=1)
        rep = self.heads // self.kv_heads
        out = F.scaled_dot_product_attention(
            q_rot, k_rot.repeat_interleave(rep, dim=0), v.repeat_interleave(rep, dim=0), attn_mask=mask
        )  # [H, S, d]
        out = self.o_proj(out.transpose(0, 1).reshape(x.shape[0], -1))  # [S, C]
        return LayerOutput(out, (k_rot, v), q if keep_pre_rope else None, k if keep_pre_rope else None)

    def forward_cached(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], cache: KV,
                       cache_length: torch.Tensor) -> LayerOutput:
        """Attention of the ``n`` new rows ``x [n, C]`` over a fixed cache and themselves.

        ``cache`` is ``(k, v)``, each ``[H_kv, R, d]`` of which the first ``cache_length`` rows are
        valid; it is only read (no concatenation, no head repeat): the logits against the cache
        (under a length mask) and against the new rows (causal) are joined before one softmax.
        The returned ``kv`` holds only the new rows ``[H_kv, n, d]``; q/k pre-RoPE are returned too.
        """
        q, k, v = self.project(x)
        cos, sin = rope
        q_rot, k_rot = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = grouped_attention(q_rot, k_rot, v, cache, cache_length)  # [H, n, d]
        out = self.o_proj(out.transpose(0, 1).reshape(x.shape[0], -1))  # [n, C]
        return LayerOutput(out, (k_rot, v), q, k)


class MLP(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, rope, mask=None, past=None, keep_pre_rope=False) -> LayerOutput:
        """One pre-norm block. ``mask`` is additive ``[S, P+S]`` or ``None`` (attend to all)."""
        attn = self.self_attn(self.input_layernorm(x), rope, mask, past, keep_pre_rope)
        h = x + attn.hidden
        attn.hidden = h + self.mlp(self.post_attention_layernorm(h))
        return attn

    def forward_cached(self, x, rope, cache: KV, cache_length: torch.Tensor) -> LayerOutput:
        """The block over a fixed cache (see :meth:`Attention.forward_cached`); ``kv`` = new rows."""
        attn = self.self_attn.forward_cached(self.input_layernorm(x), rope, cache, cache_length)
        h = x + attn.hidden
        attn.hidden = h + self.mlp(self.post_attention_layernorm(h))
        return attn


class LlamaModel(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """Decoder plus LM head, with helpers that run any slice of layers."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.model = LlamaModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rope_tables(positions, self.cfg.dim_per_head, self.cfg.rope_theta)

    def run_layers(
        self,
        x: torch.Tensor,
        layers: range,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        past: list[KV] | None = None,
    ) -> tuple[torch.Tensor, list[KV]]:
        """Run ``layers`` on ``x [S, C]`` at ``positions [S]``; returns hidden and each layer's cache."""
        rope = self.rope(positions)
        caches: list[KV] = []
        for i, li in enumerate(layers):
            out = self.model.layers[li](x, rope, mask, None if past is None else past[i])
            x = out.hidden
            caches.append(out.kv)
        return x, caches

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head: ``[S, C] -> [S, V]``."""
        return self.lm_head(self.model.norm(x))
