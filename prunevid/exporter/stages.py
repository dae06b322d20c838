"""One ``nn.Module`` per exported graph; each ``forward`` is exactly the graph's contract in
:mod:`prunevid.spec` (same input and output order). The modules share the eager model's weights
and building blocks, and avoid Python-side data dependence so the TorchScript exporter records
dynamic sizes (slices are ``index_select`` over ``arange`` of tensors, masks are built from shapes).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from prunevid import spec
from prunevid.config import PruneConfig
from prunevid.exporter.attention import cached_attention
from prunevid.exporter.merger import MergerStage
from prunevid.model.llama import KV
from prunevid.model.pllava import PllavaModel
from prunevid.pruning.select import keep_count


def _range(start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """``arange(start, end)`` that stays dynamic in the graph (a ``Range`` node)."""
    return torch.arange(start, end, dtype=torch.int64)


def _size(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x.shape[dim]`` as a 0-d int64 tensor that stays dynamic when traced."""
    return torch._shape_as_tensor(x)[dim]


def _flatten(caches: list[KV]) -> list[torch.Tensor]:
    return [t for kv in caches for t in kv]


def _pairs(flat: tuple[torch.Tensor, ...]) -> list[KV]:
    return [(flat[2 * i], flat[2 * i + 1]) for i in range(len(flat) // 2)]


class EncoderStage(nn.Module):
    """``pixel_values [T, 3, S, S] -> visual_features [T, L, C]``."""

    def __init__(self, model: PllavaModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode(pixel_values)


class ScoreStage(nn.Module):
    """PruneVid's scoring map at layer K: ``score_query [H, Q, d]`` (pre-RoPE queries of the rows
    after the visual block) against ``score_key [H_kv, S, d]`` (pre-RoPE keys of every row), a
    non-causal softmax over all ``S`` keys, max over heads and query rows -> ``key_scores [S]``.
    The runtime reads the visual block's columns; no position enters the graph."""

    def forward(self, score_query, score_key):
        rep = score_query.shape[0] // score_key.shape[0]
        q, k = score_query.float(), score_key.repeat_interleave(rep, dim=0).float()  # [H, Q|S, d]
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # [H, Q, S]
        return attn.amax(dim=0).amax(dim=0)  # [S]


class EmbedStage(nn.Module):
    """``input_ids [n] -> embeds [n, C]``: the token table, stored once."""

    def __init__(self, model: PllavaModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model.embed(input_ids)


def _fused(*linears: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weights of ``linears`` side by side as one ``[in, sum(out)]`` matrix (and their biases):
    one MatMul node instead of several, each weight still stored once."""
    weight = torch.cat([lin.weight.detach() for lin in linears], 0).t().contiguous()  # [in, sum(out)]
    biases = [lin.bias for lin in linears]
    bias = None if biases[0] is None else torch.cat([b.detach() for b in biases]).contiguous()
    return weight, bias


class _Linear(nn.Module):
    """``x [n, in] @ W [in, out] (+ b)``, the weight stored transposed once."""

    def __init__(self, *linears: nn.Linear):
        super().__init__()
        weight, bias = _fused(*linears)
        self.register_buffer("weight", weight)  # persistent: exported as an initializer
        self.register_buffer("bias", bias)

    def forward(self, x):
        y = x @ self.weight
        return y if self.bias is None else y + self.bias


class DecoderLayerStage(nn.Module):
    """One LLaMA layer over the fixed cache in the export's lean form (the eager model's
    ``forward_cached`` computes the same values): q/k/v as one MatMul, gate/up as one, RoPE of q and
    k together (rotate-half as a signed permutation MatMul), reshapes with constant shapes, and one
    softmax over the cache logits and the new rows' logits joined, under masks built once per graph.
    So a decode step runs about half the nodes of the eager form (each node costs microseconds of
    dispatch at one row)."""

    def __init__(self, layer, heads: int, kv_heads: int, head_dim: int):
        super().__init__()
        attn, mlp = layer.self_attn, layer.mlp
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.input_layernorm, self.post_attention_layernorm = layer.input_layernorm, layer.post_attention_layernorm
        self.qkv = _Linear(attn.q_proj, attn.k_proj, attn.v_proj)
        self.o_proj = _Linear(attn.o_proj)
        self.gate_up = _Linear(mlp.gate_proj, mlp.up_proj)
        self.down = _Linear(mlp.down_proj)
        self.inter = mlp.gate_proj.out_features

    def forward(self, x, rope, past_k, past_v, mask, cache_length):
        """``x [n, C]``; ``rope`` = (cos, sin, rot) with ``cos, sin [n, d]``, ``rot [d, d]``; cache
        ``[H_kv, R, d]``; ``mask [rep*n, R+n]`` additive (length mask, then causal); the attention is
        :func:`prunevid.exporter.attention.cached_attention` (per-target ONNX forms). Returns the new
        hidden ``[n, C]``, the new rows ``k, v [H_kv, n, d]`` and pre-RoPE ``q [H, n, d]``, ``k``."""
        h, hk, d = self.heads, self.kv_heads, self.head_dim
        cos, sin, rot = rope
        qkv = self.qkv(self.input_layernorm(x)).reshape(-1, h + 2 * hk, d).transpose(0, 1)  # [H+2Hkv, n, d]
        qk, v = qkv[: h + hk], qkv[h + hk :]  # [H+Hkv, n, d], [Hkv, n, d]
        qk_rot = qk * cos + (qk @ rot) * sin  # RoPE, rotate-half convention
        q, k = qk_rot[:h], qk_rot[h:]  # [H, n, d], [Hkv, n, d]
        out = cached_attention(q, k, v, past_k, past_v, mask, cache_length)  # [n, H*d]
        hidden = x + self.o_proj(out)
        gate, up = self.gate_up(self.post_attention_layernorm(hidden)).split(self.inter, dim=-1)  # [n, I] each
        hidden = hidden + self.down(F.silu(gate) * up)
        return hidden, k, v, qk[:h], qk[h:]


class DecoderStage(nn.Module):
    """A range of decoder layers serving both prefill (``n`` rows) and decode (one row).

    ``hidden [n, C]`` at ``positions [n]`` attends to each layer's fixed cache
    ``past_key_values.i.* [H_kv, R, d]`` (first ``cache_length`` rows valid) and to itself
    (causal). Outputs: the hidden states (or, for the last range, the logits of the last row),
    the pre-RoPE q/k of the first layer of the range when ``scoring`` (layer K of the early
    range: the scoring map's inputs), and each layer's NEW key/value rows ``[H_kv, n, d]``; the
    runtime writes them into its caches. The RoPE tables and the masks are built once per call
    and shared by every layer.
    """

    def __init__(self, model: PllavaModel, layers: range, scoring_layer: int | None, last: bool):
        super().__init__()
        lm = model.language_model
        cfg = lm.cfg
        self.model, self.layers, self.scoring_layer, self.last = model, layers, scoring_layer, last
        self.rep = cfg.num_attention_heads // cfg.kv_heads
        self.blocks = nn.ModuleList(DecoderLayerStage(lm.model.layers[i], cfg.num_attention_heads, cfg.kv_heads,
                                                      cfg.dim_per_head) for i in layers)
        d, half = cfg.dim_per_head, cfg.dim_per_head // 2
        rot = torch.zeros(d, d)  # x @ rot == cat(-x[half:], x[:half])
        rot[torch.arange(half) + half, torch.arange(half)] = -1.0
        rot[torch.arange(half), torch.arange(half) + half] = 1.0
        self.register_buffer("rot", rot)

    def masks(self, hidden, cache_length, past_k, dtype):
        """Additive ``[rep*n, R+n]``: cache rows past ``cache_length`` and later new rows hidden."""
        n, r = _size(hidden, 0), _size(past_k, 1)
        cols = _range(torch.tensor(0), r)  # [R]
        old = torch.where(cols >= cache_length, float("-inf"), 0.0)  # [R]
        i = _range(torch.tensor(0), n)  # [n]
        new = torch.where(i[None, :] > i[:, None], float("-inf"), 0.0)  # [n, n]
        new = new.repeat(self.rep, 1) if self.rep > 1 else new  # [rep*n, n], head-major rows
        return torch.cat([old[None, :].expand(new.shape[0], -1), new], dim=1).to(dtype)  # [rep*n, R+n]

    def forward(self, hidden, positions, cache_length, *past):
        lm = self.model.language_model
        cos, sin = lm.rope(positions)
        rope = (cos.to(hidden.dtype), sin.to(hidden.dtype), self.rot.to(hidden.dtype))
        mask = self.masks(hidden, cache_length, past[0], hidden.dtype)
        x, new, scoring = hidden, [], ()
        for i, block, (past_k, past_v) in zip(self.layers, self.blocks, _pairs(past)):
            x, k, v, q_pre, k_pre = block(x, rope, past_k, past_v, mask, cache_length)
            new.append((k, v))
            if i == self.scoring_layer:
                scoring = (q_pre, k_pre)
        head = (lm.logits(x[-1:])[0],) if self.last else (x,)  # [V] or [n, C]
        return (*head, *scoring, *_flatten(new))


class SelectStage(nn.Module):
    """Stage D's keep index: ``floor(alpha * n)`` per group via PvGroupTopK, text always kept.

    The per-group counts come from a lookup table computed in Python (``int(alpha * n)`` exactly as
    the official code), so no float rounding happens in the graph. The output has the fixed size
    ``S`` of the prefill (no value-dependent shape): the ``num_kept`` kept positions ascending, then
    the pad value ``S``; the runtime slices ``keep_index[:num_kept]``.
    """

    def __init__(self, cfg: PruneConfig, max_group: int):
        super().__init__()
        table = [keep_count(cfg.alpha, n) for n in range(max_group + 1)]
        self.register_buffer("keep_table", torch.tensor(table, dtype=torch.int64), persistent=False)

    def forward(self, visual_scores, group_sizes, image_pos, input_ids):
        from prunevid.plugins.torch_ops import group_topk_op

        counts = self.keep_table.index_select(0, group_sizes)  # [G]
        keep_visual, kept = group_topk_op(visual_scores, group_sizes, counts)  # [M] padded with M, [1]
        m = _size(visual_scores, 0)
        s = _size(input_ids, 0) - 1 + m
        # slot j of the output: prefix position j, then kept visual j - P, then the question, then S
        j = _range(torch.tensor(0), s)  # [S]
        visual_end = image_pos + kept[0]  # first slot of the question
        num_kept = s - m + kept[0]
        visual = image_pos + keep_visual.index_select(0, (j - image_pos).clamp(min=0, max=m - 1))  # [S]
        question = j - visual_end + image_pos + m  # [S]
        out = torch.where(j < image_pos, j, torch.where(j < visual_end, visual, question))
        return torch.where(j < num_kept, out, s), num_kept


def build_stages(model: PllavaModel, cfg: PruneConfig, g: spec.Geometry) -> dict[str, nn.Module]:
    """The module behind every graph of :data:`prunevid.spec.GRAPH_ORDER`, sharing ``model``'s weights."""
    early, late = spec.early_layers(g), spec.late_layers(g)
    return {
        "encoder": EncoderStage(model),
        "merger": MergerStage(cfg, g.frames, g.tokens_per_frame),
        "embed": EmbedStage(model),
        "decoder_early": DecoderStage(model, early, g.layer, last=False),
        "score": ScoreStage(),
        "select": SelectStage(cfg, g.tokens_per_frame),
        "decoder_late": DecoderStage(model, late, None, last=True),
    }
