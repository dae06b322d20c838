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
from prunevid.model.llama import KV, causal_mask
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


def question_scores_dynamic(q: torch.Tensor, k: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """:func:`prunevid.reference.question_scores` with tensor bounds: ``[Nv]`` importance.

    Only the query rows after the visual block are computed; each is a softmax over all keys of
    the pre-RoPE, non-causal logits, as PruneVid's scoring map.
    """
    rep = q.shape[0] // k.shape[0]
    q, k = q.float(), k.repeat_interleave(rep, dim=0).float()  # [H, S, d]; scores in float32
    rows = q.index_select(1, _range(end, _size(q, 1)))  # [H, Q, d]
    attn = torch.softmax(rows @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # [H, Q, S]
    block = attn.index_select(2, _range(start, end))  # [H, Q, Nv]
    return block.amax(dim=0).amax(dim=0)  # [Nv]


class PrefillStage(nn.Module):
    """Layers 0..K on the whole prompt with the merged tokens spliced in at ``image_pos``.

    ``input_ids [P+1+Q]`` (the placeholder at ``image_pos``), ``merged_tokens [R, C]`` of which the
    first ``num_merged`` rows are used -> ``hidden_k [S, C]``, ``visual_scores [M]``, and the KV
    cache of layers 0..K, each ``[H_kv, S, d]``.
    """

    def __init__(self, model: PllavaModel, select_layer: int):
        super().__init__()
        self.model, self.k_layer = model, select_layer

    def forward(self, input_ids, image_pos, merged_tokens, num_merged):
        lm = self.model.language_model
        text = self.model.embed(input_ids)  # [P+1+Q, C]
        n_text = _size(input_ids, 0)
        x = torch.cat(
            [
                text.index_select(0, _range(torch.tensor(0), image_pos)),  # [P, C]
                merged_tokens.index_select(0, _range(torch.tensor(0), num_merged)),  # [M, C]
                text.index_select(0, _range(image_pos + 1, n_text)),  # [Q, C]
            ]
        )  # [S, C]
        s = x.shape[0]
        rope, mask = lm.rope(torch.arange(s)), causal_mask(s, x.dtype)
        caches: list[KV] = []
        for i in range(self.k_layer + 1):
            out = lm.model.layers[i](x, rope, mask, keep_pre_rope=i == self.k_layer)
            x = out.hidden
            caches.append(out.kv)
        scores = question_scores_dynamic(out.q_pre_rope, out.k_pre_rope, image_pos, image_pos + num_merged)
        return (x, scores, *_flatten(caches))


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


class LateStage(nn.Module):
    """Gather with ``keep_index`` (hidden states and the KV cache of layers 0..K), then layers
    K+1.. at the original positions ``keep_index``; logits of the last kept position."""

    def __init__(self, model: PllavaModel, select_layer: int):
        super().__init__()
        self.model, self.k_layer = model, select_layer

    def forward(self, hidden_k, keep_index, *past):
        lm = self.model.language_model
        x = hidden_k.index_select(0, keep_index)  # [S', C]
        early = [(k.index_select(1, keep_index), v.index_select(1, keep_index)) for k, v in _pairs(past)]
        x, late = lm.run_layers(x, range(self.k_layer + 1, len(lm.model.layers)), keep_index, causal_mask(x.shape[0], x.dtype))
        logits = lm.logits(x[-1:])[0]  # [V]
        return (logits, *_flatten(early + late))


class DecodeStepStage(nn.Module):
    """One token at ``position`` over every layer's cache."""

    def __init__(self, model: PllavaModel):
        super().__init__()
        self.model = model

    def forward(self, input_id, position, *past):
        lm = self.model.language_model
        x = self.model.embed(input_id)  # [1, C]
        x, caches = lm.run_layers(x, range(len(lm.model.layers)), position, None, past=_pairs(past))
        return (lm.logits(x)[0], *_flatten(caches))


def build_stages(model: PllavaModel, cfg: PruneConfig, g: spec.Geometry) -> dict[str, nn.Module]:
    """The module behind every graph of :data:`prunevid.spec.GRAPH_ORDER`, sharing ``model``'s weights."""
    return {
        "encoder": EncoderStage(model),
        "merger": MergerStage(cfg, g.frames, g.tokens_per_frame),
        "decoder_prefill": PrefillStage(model, g.select_layer),
        "select": SelectStage(cfg, g.tokens_per_frame),
        "decoder_late": LateStage(model, g.select_layer),
        "decode_step": DecodeStepStage(model),
    }
