"""One ``nn.Module`` per exported graph; each ``forward`` is exactly the graph's contract in
:mod:`prunevid.spec` (same input and output order). The modules share the eager model's weights
and building blocks, and avoid Python-side data dependence so the TorchScript exporter records
dynamic sizes (slices are ``index_select`` over ``arange`` of tensors, masks are built from shapes).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from prunevid import spec
from prunevid.config import PruneConfig
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


class DecoderStage(nn.Module):
    """A range of decoder layers serving both prefill (``n`` rows) and decode (one row).

    ``hidden [n, C]`` at ``positions [n]`` attends to each layer's fixed cache
    ``past_key_values.i.* [H_kv, R, d]`` (first ``cache_length`` rows valid) and to itself
    (causal). Outputs: the hidden states (or, for the last range, the logits of the last row),
    the pre-RoPE q/k of the first layer of the range when ``scoring`` (layer K of the early
    range: the scoring map's inputs), and each layer's NEW key/value rows ``[H_kv, n, d]``; the
    runtime writes them into its caches.
    """

    def __init__(self, model: PllavaModel, layers: range, scoring_layer: int | None, last: bool):
        super().__init__()
        self.model, self.layers, self.scoring_layer, self.last = model, layers, scoring_layer, last

    def forward(self, hidden, positions, cache_length, *past):
        lm = self.model.language_model
        rope = lm.rope(positions)
        x, new, scoring = hidden, [], ()
        for i, cache in zip(self.layers, _pairs(past)):
            out = lm.model.layers[i].forward_cached(x, rope, cache, cache_length)
            x = out.hidden
            new.append(out.kv)
            if i == self.scoring_layer:
                scoring = (out.q_pre_rope, out.k_pre_rope)
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
