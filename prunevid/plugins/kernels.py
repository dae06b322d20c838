"""Vectorised torch kernels of the prunevid custom ops (see :mod:`prunevid.plugins.ops`).

These are the eager implementations behind :mod:`prunevid.plugins.torch_ops` and the numerical
twins of the ONNX function bodies in :mod:`prunevid.plugins.onnx_functions`: both follow the same
steps in the same order, so that integer outputs agree exactly. No Python loop runs over the batch,
the tokens or the groups; exact ties are broken by a pairwise-comparison rank (not ``topk``/``sort``)
so that the ONNX body, which has no stable sort, can do the same.
"""

from __future__ import annotations

import torch


def _pairwise_distance(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[B, N, C], [B, N] -> [B, N, N]``: Euclidean distances / sqrt(C) of each group's centred rows.

    ``y = x - mu`` with ``mu`` the mean of the group's valid rows (distances are translation
    invariant), then ``d_ij = sqrt(max(|y_i|^2 + |y_j|^2 - 2 y_i.y_j, 0)) / sqrt(C)``. Centring keeps
    the expansion from cancelling catastrophically on near-identical rows (a still scene): the
    rounding error scales with ``|y|^2``, the spread of the group, instead of ``|x|^2``. Exactly
    symmetric, with ``d_ii = 0`` exactly. Pairs with an invalid row get unspecified values.
    """
    n, c = x.shape[1], x.shape[2]
    weight = valid.to(x.dtype)[:, :, None]  # [B, N, 1]
    count = weight.sum(dim=1, keepdim=True).clamp(min=1)  # [B, 1, 1]
    mu = (x * weight).sum(dim=1, keepdim=True) / count  # [B, 1, C]
    y = x - mu  # [B, N, C]
    gram = y @ y.transpose(1, 2)  # [B, N, N]
    # |y_i|^2 from the same GEMM (its diagonal), so that duplicated rows are exactly at distance 0
    sq = torch.diagonal(gram, dim1=1, dim2=2)  # [B, N]
    # a GEMM need not give y_i.y_j and y_j.y_i the same rounding: keep the upper triangle so that
    # d is exactly symmetric (mutual nearest neighbours then get exactly equal densities)
    idx = torch.arange(n, device=x.device)
    upper = idx[None, :] >= idx[:, None]  # [i, j]: j >= i
    gram = torch.where(upper, gram, gram.transpose(1, 2))
    d2 = sq[:, :, None] + sq[:, None, :] - 2 * gram
    # sqrt(C) in float32, as the ONNX body computes it (Cast then Sqrt)
    scale = torch.tensor(float(c), dtype=torch.float32, device=x.device).sqrt()
    dist = d2.clamp(min=0).sqrt() / scale
    eye = idx[None, :] == idx[:, None]
    return dist.masked_fill(eye, 0.0)


def _rank_before(
    score_j: torch.Tensor, score_i: torch.Tensor, lower_j: torch.Tensor, eligible_j: torch.Tensor
) -> torch.Tensor:
    """``before[..., i, j]``: ``j`` ranks ahead of ``i`` (higher score, or tie and lower index)."""
    return ((score_j > score_i) | ((score_j == score_i) & lower_j)) & eligible_j


def dpc_knn_batched(
    x: torch.Tensor, num_valid: torch.Tensor, num_clusters: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched, masked DPC-KNN (op ``PvDpcKnn``).

    Args:
        x: ``[B, N, C]`` float32 token features of ``B`` independent groups.
        num_valid: ``[B]`` int32, group ``b``'s tokens are rows ``0 .. num_valid[b]-1``.
        num_clusters: ``[B]`` int32, clusters wanted per group.
        k: neighbours of the density, the token itself included.

    Returns:
        ``(labels, centers)``, both ``[B, N]`` int32: ``labels[b, i]`` is the cluster of valid token
        ``i`` (-1 for invalid ones); ``centers[b, j]`` is the centre token of cluster ``j`` (the
        token of ``j``-th best score, exact ties to the lower index) for ``j < min(num_clusters, n)``,
        else -1. For a group with ``n`` valid tokens, ``1 <= num_clusters <= n`` and ``k <= n`` this
        equals :func:`prunevid.pruning.dpc_knn` on the valid tokens (up to float rounding of the
        distances); other groups give unspecified values but never raise.
    """
    if x.dim() != 3 or num_valid.shape != x.shape[:1] or num_clusters.shape != x.shape[:1]:
        raise ValueError(
            f"dpc_knn_batched expects x [B,N,C], num_valid [B], num_clusters [B]; got "
            f"{tuple(x.shape)}, {tuple(num_valid.shape)}, {tuple(num_clusters.shape)}"
        )
    bsz, n = x.shape[0], x.shape[1]
    device = x.device
    if n == 0:
        empty = torch.zeros(bsz, 0, dtype=torch.int32, device=device)
        return empty, empty.clone()
    x = x.float()
    num_clusters = num_clusters.long()
    idx = torch.arange(n, dtype=torch.int64, device=device)  # [N]
    valid = idx[None, :] < num_valid.long()[:, None]  # [B, N], a prefix of each group

    dist = _pairwise_distance(x, valid)  # [B, N, N]
    pair_valid = valid[:, :, None] & valid[:, None, :]  # [B, N, N]

    # density: exp(-mean of the k smallest squared distances over valid neighbours)
    kk = min(max(int(k), 1), n)
    knn_dist = dist.masked_fill(~pair_valid, float("inf"))
    nearest = torch.topk(knn_dist, k=kk, dim=-1, largest=False, sorted=True).values  # [B, N, kk]
    # the squares summed in ascending order, one after the other, as the C++ core and the ONNX body
    density = (-((nearest * nearest).cumsum(dim=-1)[..., -1] / kk)).exp()  # [B, N]

    # delta: min distance to a denser valid token, else the group's maximum distance
    dist0 = dist.masked_fill(~pair_valid, 0.0)
    dist_max = dist0.amax(dim=(1, 2), keepdim=True)  # [B, 1, 1]
    denser = (density[:, None, :] > density[:, :, None]) & pair_valid  # [b, i, j]: rho_j > rho_i
    delta = torch.where(denser, dist, dist_max).amin(dim=-1)  # [B, N]
    score = delta * density  # [B, N]

    # rank_i = #valid j ahead of i (higher score, or equal score and lower index)
    lower = idx[None, :] < idx[:, None]  # [i, j]: j < i
    before = _rank_before(score[:, None, :], score[:, :, None], lower, valid[:, None, :])
    rank = before.long().sum(dim=-1)  # [B, N]

    # centres: slot r holds the valid token of rank r, for r < num_clusters
    match = (rank[:, None, :] == idx[None, :, None]) & valid[:, None, :]  # [b, r, i]
    center_raw = torch.where(match, idx[None, None, :], torch.full_like(idx, -1)[None, None, :])
    center_raw = center_raw.amax(dim=-1)  # [B, N]
    slot_ok = idx[None, :] < num_clusters[:, None]  # [B, N]
    centers = torch.where(slot_ok, center_raw, torch.full_like(center_raw, -1))

    # labels: nearest valid centre (first slot on ties); centres take their own slot
    center_idx = centers.clamp(min=0)  # [B, N]
    center_dist = torch.gather(dist, 1, center_idx[:, :, None].expand(bsz, n, n))  # [b, r, i]
    center_dist = center_dist.masked_fill(~(centers >= 0)[:, :, None], float("inf"))
    nearest_center = center_dist.argmin(dim=1)  # [B, N]
    is_center = valid & (rank < num_clusters[:, None])
    labels = torch.where(is_center, rank, nearest_center)
    labels = torch.where(valid, labels, torch.full_like(labels, -1))
    return labels.int(), centers.int()


def group_topk(
    scores: torch.Tensor, group_sizes: torch.Tensor, keep_counts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grouped top-k (op ``PvGroupTopK``).

    Args:
        scores: ``[M]`` float32 importance of each token.
        group_sizes: ``[G]`` int32 sizes of consecutive groups covering a prefix of the ``M`` tokens.
        keep_counts: ``[G]`` int32 tokens kept in each group.

    Returns:
        ``(keep, count)``: ``keep [M]`` int32, the kept token indices ascending (in every group the
        ``keep_counts[g]`` highest scores, exact ties to the lower index), then the value ``M`` in the
        remaining slots; ``count [1]`` int32, how many are kept. Tokens past ``sum(group_sizes)``
        are never kept.
    """
    if scores.dim() != 1 or group_sizes.dim() != 1 or keep_counts.shape != group_sizes.shape:
        raise ValueError(
            f"group_topk expects scores [M], group_sizes [G], keep_counts [G]; got "
            f"{tuple(scores.shape)}, {tuple(group_sizes.shape)}, {tuple(keep_counts.shape)}"
        )
    m = scores.shape[0]
    device = scores.device
    scores = scores.float()
    idx = torch.arange(m, dtype=torch.int64, device=device)  # [M]
    ends = torch.cumsum(group_sizes.long(), dim=0)  # [G]
    group_id = (ends[None, :] <= idx[:, None]).long().sum(dim=-1)  # [M], G past the last group
    counts = torch.cat([keep_counts.long(), torch.zeros(1, dtype=torch.int64, device=device)])
    quota = counts[group_id]  # [M]

    same_group = group_id[None, :] == group_id[:, None]  # [i, j]
    lower = idx[None, :] < idx[:, None]  # [i, j]: j < i
    before = _rank_before(scores[None, :], scores[:, None], lower, same_group)
    rank = before.long().sum(dim=-1)  # [M]
    kept = rank < quota  # [M]
    # slot r holds the kept token with r kept tokens before it, then the pad value M (no sort)
    slot = torch.cumsum(kept.long(), 0) - kept.long()  # [M]
    match = (slot[None, :] == idx[:, None]) & kept[None, :]  # [r, i]
    found = torch.where(match, idx[None, :], torch.full_like(idx, -1)[None, :]).amax(dim=-1) if m else idx
    keep = torch.where(found < 0, torch.full_like(found, m), found)  # [M]
    return keep.int(), kept.sum(dtype=torch.int32).reshape(1)
