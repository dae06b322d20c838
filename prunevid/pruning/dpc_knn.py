"""DPC-KNN clustering (density peaks with k-nearest-neighbour density), as PruneVid uses it.

This mirrors ``cluster_dpc_knn`` of the official PruneVid code (Visual-AI/PruneVid at b12600c,
``models/pllava/modeling_pllava.py``) operation for operation, for one batch element, in float32:

1. ``d_ij = ||x_i - x_j|| / sqrt(C)`` (``torch.cdist``);
2. ``rho_i = exp(-mean of the k smallest d_ij^2)``; the k nearest include ``i`` itself;
   then ``rho_i += 1e-6 * u_i`` where the official code draws ``u ~ U[0, 1)``;
3. ``delta_i = min_j d_ij`` over the ``j`` with ``rho_j > rho_i`` (strictly); the densest token
   gets the maximum of the whole distance matrix;
4. ``score = delta * rho``; the ``num_clusters`` best scores are the centres, in descending order,
   and that order defines the cluster ids;
5. every token joins its nearest centre (first centre wins ties), each centre its own cluster.

Only the tie rule of step 4 differs: the official code uses ``torch.topk``, whose order among
exactly equal scores is unspecified; here a stable descending sort puts the lower token index first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DENSITY_NOISE_SCALE = 1e-6


@dataclass(frozen=True)
class Clustering:
    """Result of :func:`dpc_knn` for ``N`` tokens and ``num_clusters`` clusters.

    Attributes:
        labels: ``[N]`` int64, cluster id of each token (cluster ``j`` is centred on ``centers[j]``).
        centers: ``[num_clusters]`` int64, token index of each centre, in descending score order.
        density: ``[N]`` float32 local density (noise included).
        delta: ``[N]`` float32 distance indicator.
        score: ``[N]`` float32, ``delta * density``.
    """

    labels: torch.Tensor
    centers: torch.Tensor
    density: torch.Tensor
    delta: torch.Tensor
    score: torch.Tensor


def pairwise_distance(x: torch.Tensor) -> torch.Tensor:
    """``[N, C] -> [N, N]`` Euclidean distances scaled by ``1/sqrt(C)``, in float32."""
    xf = x.float()
    return torch.cdist(xf, xf) / (x.shape[-1] ** 0.5)


def dpc_knn(
    x: torch.Tensor,
    num_clusters: int,
    k: int,
    noise: torch.Tensor | None = None,
) -> Clustering:
    """Cluster the rows of ``x`` with DPC-KNN.

    Args:
        x: ``[N, C]`` token features.
        num_clusters: number of centres, ``1 <= num_clusters <= N``.
        k: neighbours used for the density, ``1 <= k <= N`` (the token itself counts as one).
        noise: optional ``[N]`` raw ``U[0, 1)`` draws, added to the density as ``1e-6 * noise``
            exactly where the official code adds its ``torch.rand`` draw. ``None`` adds nothing,
            which makes the result deterministic; it then differs from the official code only in
            how exact ties are broken.

    Returns:
        A :class:`Clustering`.

    Raises:
        ValueError: for ``k > N``, ``k < 1``, ``num_clusters < 1`` or ``num_clusters > N``
            (the official code fails on the first and the third as well).
    """
    if x.dim() != 2:
        raise ValueError(f"dpc_knn expects [N, C] features, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if k < 1 or k > n:
        raise ValueError(f"dpc_knn needs 1 <= k <= N, got k={k} for N={n} tokens")
    if num_clusters < 1 or num_clusters > n:
        raise ValueError(f"dpc_knn needs 1 <= num_clusters <= N, got {num_clusters} for N={n} tokens")

    dist = pairwise_distance(x)  # [N, N]
    nearest = torch.topk(dist, k=k, dim=-1, largest=False).values  # [N, k]
    density = (-(nearest**2).mean(dim=-1)).exp()  # [N]
    if noise is not None:
        if noise.shape != (n,):
            raise ValueError(f"noise must have shape [{n}], got {tuple(noise.shape)}")
        density = density + noise.to(density.dtype) * DENSITY_NOISE_SCALE

    # mask[i, j] = rho_j > rho_i; masked entries take the global maximum distance.
    mask = (density[None, :] > density[:, None]).to(dist.dtype)  # [N, N]
    dist_max = dist.max()
    delta = (dist * mask + dist_max * (1 - mask)).min(dim=-1).values  # [N]
    score = delta * density  # [N]

    centers = torch.sort(score, descending=True, stable=True).indices[:num_clusters]  # [n_c]
    labels = dist[centers].argmin(dim=0)  # [n_c, N] -> [N], first centre wins ties
    labels[centers] = torch.arange(num_clusters, dtype=labels.dtype)
    return Clustering(labels=labels, centers=centers, density=density, delta=delta, score=score)


def cluster_means(x: torch.Tensor, labels: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """Plain mean of each cluster's members: ``[N, C], [N] -> [num_clusters, C]``.

    Row ``j`` is cluster ``j``, so the result follows centre-score order, not spatial order.
    Computed as a one-hot matrix product divided by the counts, as the official
    ``compute_cluster_vectors`` does (empty clusters, impossible after DPC-KNN, would give zeros).
    """
    onehot = torch.nn.functional.one_hot(labels, num_classes=num_clusters).to(x.dtype)  # [N, n_c]
    sums = onehot.t() @ x  # [n_c, C]
    counts = onehot.sum(dim=0)  # [n_c]
    means = sums / counts.clamp(min=1).unsqueeze(-1)
    return means.masked_fill((counts == 0).unsqueeze(-1), 0)
