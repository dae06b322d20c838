"""Stages A-C of PruneVid: temporal segmentation, static/dynamic split, spatial merging.

Follows ``PllavaForConditionalGeneration.merge_frames_dynamic`` of the official code. For a clip
``video [T, L, C]`` (``L = H*W`` tokens per frame, row-major) the output is, segment by segment:

    [static tokens of segment s] [dynamic tokens of frame a_s] ... [dynamic tokens of frame a_s+w_s-1]

A group of more than ``MERGE_MIN_GROUP - 1`` (14) tokens is replaced by DPC-KNN cluster means in
centre-score order; smaller groups pass through in raster order.

Policies where the official code crashes or is undefined (documented deviations):
* ``T < temporal_k`` or ``floor(T * temporal_segment_ratio) == 0``: ``ValueError`` (the official
  code raises too; the CLI turns it into a one-line message).
* a one-frame segment (only possible when ``T == 1`` with ``temporal_k == 1``): the official code
  divides 0 by 0; here every token of that frame is dynamic.
* a group whose cluster count ``floor(n * cluster_ratio)`` is 0: ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prunevid.pruning.dpc_knn import cluster_means, dpc_knn
from prunevid.pruning.segments import refine_segments, segment_lengths

# The official code clusters a group only when it has more than 14 tokens.
MERGE_MIN_GROUP = 15

NoiseFn = Callable[[int], torch.Tensor]


@dataclass(frozen=True)
class MergedVideo:
    """Output of :func:`merge_video_tokens`.

    Attributes:
        tokens: ``[M, C]`` merged visual tokens in the official order.
        window_sizes: frames per segment, ``w_s``.
        static_sizes: static tokens per segment after merging.
        dynamic_sizes: dynamic tokens per segment after merging (``w_s`` times the per-frame count).
        temporal_labels: ``[T]`` refined frame labels (for inspection).
        token_of_cell: ``[T, L]`` int64 provenance: the row of ``tokens`` into which the visual
            token of frame ``t``, grid cell ``l`` (row-major) went. A static cell of segment ``s``
            maps to a token of ``s``'s static group (the same one for every frame of ``s``), a
            dynamic cell to a token of its own frame's dynamic group; the token is the cell's own
            when its group passes through unmerged, else its cluster's mean.
    """

    tokens: torch.Tensor
    window_sizes: list[int]
    static_sizes: list[int]
    dynamic_sizes: list[int]
    temporal_labels: torch.Tensor
    token_of_cell: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])


def _draw(noise: NoiseFn | None, n: int) -> torch.Tensor | None:
    return None if noise is None else noise(n)


def merge_group(
    tokens: torch.Tensor, cluster_ratio: float, k: int, noise: NoiseFn | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatially merge one group ``[n, C] -> [n', C]`` (unchanged when ``n <= 14``).

    Also returns ``[n]`` int64: the output row each input token went into (``arange(n)`` for a
    group that passes through, the DPC-KNN cluster labels otherwise).
    """
    n = tokens.shape[0]
    if n < MERGE_MIN_GROUP:
        return tokens, torch.arange(n, dtype=torch.int64)
    num_clusters = int(n * cluster_ratio)
    if num_clusters < 1:
        raise ValueError(f"cluster_ratio {cluster_ratio} leaves no cluster for a group of {n} tokens")
    clustering = dpc_knn(tokens, num_clusters, k, noise=_draw(noise, n))
    return cluster_means(tokens, clustering.labels, num_clusters), clustering.labels.long()


def static_mask(window: torch.Tensor, tau: float) -> torch.Tensor:
    """``[w, L, C] -> [L]`` bool: locations whose mean cross-frame cosine similarity is ``> tau``.

    ``sim_l = (sum_i (sum_j cos(x_il, x_jl) - 1)) / (w (w - 1))``: the self-similarity is removed
    by subtracting exactly 1 per frame, as in the official code. One-frame windows are all dynamic.
    ``sim`` is clamped at 1 before the test: float32 rounding can lift the mean cosine of identical
    frames a few ulps above 1, which would make them static even at ``tau = 1`` (the spec: nothing
    is static at ``tau = 1``) and would depend on the backend's summation order.
    """
    w, L, _ = window.shape
    if w == 1:
        return torch.zeros(L, dtype=torch.bool)
    normed = F.normalize(window, p=2, dim=-1)  # [w, L, C]
    sim = torch.einsum("wlc,tlc->wtl", normed, normed)  # [w, w, L]
    sim = (sim.sum(dim=-2) - 1).sum(dim=-2) / (w * (w - 1))  # [L]
    return sim.clamp(max=1.0) > tau  # rounding must not lift a mean of cosines above 1


def temporal_segments(
    video: torch.Tensor, ratio: float, k: int, noise: NoiseFn | None
) -> torch.Tensor:
    """Stage A: ``[T, L, C] -> [T]`` refined segment labels."""
    t = video.shape[0]
    num_clusters = int(t * ratio)
    if t < k:
        raise ValueError(f"temporal clustering needs at least temporal_k={k} frames, got {t}")
    if num_clusters < 1:
        raise ValueError(f"temporal_segment_ratio {ratio} gives no segment for {t} frames")
    frame_features = video.mean(dim=1)  # [T, C]
    clustering = dpc_knn(frame_features, num_clusters, k, noise=_draw(noise, t))
    return refine_segments(clustering.labels)


def merge_video_tokens(
    video: torch.Tensor,
    *,
    tau: float = 0.8,
    temporal_segment_ratio: float = 0.25,
    cluster_ratio: float = 0.5,
    temporal_k: int = 7,
    spatial_k: int = 7,
    noise: NoiseFn | None = None,
) -> MergedVideo:
    """Run PruneVid's stages A-C on one clip.

    Args:
        video: ``[T, L, C]`` visual tokens, ``L = H*W`` in row-major order.
        tau: static threshold on the mean cross-frame cosine similarity (strictly greater).
        temporal_segment_ratio: temporal clusters = ``floor(T * ratio)``.
        cluster_ratio: spatial clusters per group = ``floor(n * ratio)``.
        temporal_k: DPC-KNN neighbours for the frame clustering (official: 7).
        spatial_k: DPC-KNN neighbours for the spatial clustering (official: 7).
        noise: ``None`` (deterministic) or a callable ``n -> [n]`` tensor of ``U[0, 1)`` draws,
            called once per DPC-KNN call in the official order: the temporal clustering first,
            then segment by segment the static group, then each frame's dynamic group, skipping the
            groups too small to cluster.

    Returns:
        A :class:`MergedVideo`.
    """
    if video.dim() != 3:
        raise ValueError(f"merge_video_tokens expects [T, L, C], got shape {tuple(video.shape)}")
    labels = temporal_segments(video, temporal_segment_ratio, temporal_k, noise)
    windows = segment_lengths(labels)

    pieces: list[torch.Tensor] = []
    static_sizes: list[int] = []
    dynamic_sizes: list[int] = []
    token_of_cell = torch.empty(video.shape[:2], dtype=torch.int64)  # [T, L]
    offset = start = 0
    for w in windows:
        window = video[start : start + w]  # [w, L, C]
        is_static = static_mask(window, tau)  # [L]
        static, into = merge_group(window[:, is_static].mean(dim=0), cluster_ratio, spatial_k, noise)  # [n_s, C]
        pieces.append(static)
        token_of_cell[start : start + w, is_static] = offset + into  # same token in every frame of s
        offset += static.shape[0]
        static_sizes.append(int(static.shape[0]))
        dynamic_total = 0
        for t, frame in enumerate(window[:, ~is_static], start=start):  # each [n_d, C], raster order
            merged, into = merge_group(frame, cluster_ratio, spatial_k, noise)
            pieces.append(merged)
            token_of_cell[t, ~is_static] = offset + into
            offset += merged.shape[0]
            dynamic_total += int(merged.shape[0])
        dynamic_sizes.append(dynamic_total)
        start += w

    tokens = torch.cat(pieces, dim=0)  # [M, C]
    return MergedVideo(tokens, windows, static_sizes, dynamic_sizes, labels, token_of_cell)
