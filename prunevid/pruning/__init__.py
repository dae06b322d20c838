"""PruneVid's algorithm on torch tensors (float32 semantics of the official code).

Public API (see each docstring): :func:`dpc_knn`, :func:`refine_segments`, :func:`segment_lengths`,
:func:`merge_video_tokens`, :func:`scoring_attention`, :func:`visual_token_scores`,
:func:`select_visual_tokens`.
"""

from prunevid.pruning.dpc_knn import Clustering, cluster_means, dpc_knn
from prunevid.pruning.merge import MERGE_MIN_GROUP, MergedVideo, merge_video_tokens
from prunevid.pruning.segments import refine_segments, segment_lengths
from prunevid.pruning.select import (
    group_layout,
    keep_count,
    scoring_attention,
    select_visual_tokens,
    visual_token_scores,
)

__all__ = [
    "Clustering",
    "MERGE_MIN_GROUP",
    "MergedVideo",
    "cluster_means",
    "dpc_knn",
    "group_layout",
    "keep_count",
    "merge_video_tokens",
    "refine_segments",
    "scoring_attention",
    "segment_lengths",
    "select_visual_tokens",
    "visual_token_scores",
]
