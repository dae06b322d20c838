"""Stage D of PruneVid: question-guided selection of visual tokens after LLM layer K.

The scoring map of layer K is ``softmax(q k^T / sqrt(d))`` from the **pre-RoPE** ``q`` and ``k``,
with **no causal mask**, normalised over all ``S`` keys, in float32. A visual token's importance is
the maximum over heads, then over every query row after the visual block. Each segment keeps the
top ``floor(alpha * n)`` of its static group and of each frame's dynamic group; kept indices are
sorted ascending so the merged order survives.
"""

from __future__ import annotations

import math

import torch


def scoring_attention(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Non-causal, position-free attention map used only for scoring.

    Args:
        q: ``[H, S, d]`` pre-RoPE queries.
        k: ``[H, S, d]`` or ``[H_kv, S, d]`` pre-RoPE keys; with grouped-query attention each key
            head serves ``H // H_kv`` consecutive query heads (the official code, written for
            multi-head Llama, has no such repeat).

    Returns:
        ``[H, S, S]`` float32 probabilities, softmax over all keys.
    """
    h, kv = q.shape[0], k.shape[0]
    if h % kv:
        raise ValueError(f"{h} query heads cannot share {kv} key heads")
    k = k.repeat_interleave(h // kv, dim=0)  # [H, S, d]
    logits = q.float() @ k.float().transpose(-1, -2) / math.sqrt(q.shape[-1])  # [H, S, S]
    return torch.softmax(logits, dim=-1, dtype=torch.float32)


def visual_token_scores(attn: torch.Tensor, visual_start: int, visual_end: int) -> torch.Tensor:
    """``[H, S, S] -> [Nv]``: max over heads, then over every query after the visual block.

    The visual block is ``[visual_start, visual_end)``; queries are rows ``visual_end..S-1``.
    """
    if visual_end >= attn.shape[-1]:
        raise ValueError("no query token after the visual block")
    block = attn[:, visual_end:, visual_start:visual_end]  # [H, Q, Nv]
    return block.amax(dim=0).amax(dim=0)  # [Nv]


def keep_count(alpha: float, n: int) -> int:
    """Tokens kept from a group of ``n``: ``int(alpha * n)``, in float64 as the official code."""
    return int(alpha * n)


def group_layout(
    static_sizes: list[int], dynamic_sizes: list[int], window_sizes: list[int]
) -> list[int]:
    """Sizes of the selection groups in token order: per segment, static then each frame."""
    groups: list[int] = []
    for n_s, n_d, w in zip(static_sizes, dynamic_sizes, window_sizes, strict=True):
        if n_d % w:
            raise ValueError(f"dynamic size {n_d} is not a multiple of the window size {w}")
        groups.append(n_s)
        groups.extend([n_d // w] * w)
    return groups


def _top(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` largest scores; exact ties go to the lower index."""
    return torch.sort(scores, descending=True, stable=True).indices[:count]


def select_visual_tokens(
    scores: torch.Tensor,
    static_sizes: list[int],
    dynamic_sizes: list[int],
    window_sizes: list[int],
    alpha: float,
) -> torch.Tensor:
    """Kept visual-relative indices ``[Nv'] (int64)``, sorted ascending.

    Keeps the top ``floor(alpha * n)`` of every static group and of every frame's dynamic group,
    so a group of fewer than ``1/alpha`` tokens loses everything. Exact ties go to the lower index
    (the official CUDA ``topk`` leaves that order unspecified).
    """
    groups = group_layout(static_sizes, dynamic_sizes, window_sizes)
    if sum(groups) != scores.shape[0]:
        raise ValueError(f"layout covers {sum(groups)} tokens but {scores.shape[0]} scores were given")
    kept: list[torch.Tensor] = []
    offset = 0
    for n in groups:
        kept.append(offset + _top(scores[offset : offset + n], keep_count(alpha, n)))
        offset += n
    return torch.sort(torch.cat(kept)).values if kept else torch.zeros(0, dtype=torch.long)
