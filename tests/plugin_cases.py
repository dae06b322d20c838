"""Random cases and an independent numpy reference of the prunevid ops (contract v2), shared by
the host-core tests and the GPU check's expectations.

The reference evaluates the op-table formula with numpy in float32, accumulating the mean over
rows and the centred Gram product over columns in increasing order (the order the C++ core
documents), and ranks with a stable sort instead of the core's pairwise counts.
"""

from __future__ import annotations

import math

import numpy as np

KINDS = ("random", "ties", "empty", "single", "near_static")


def dpc_case(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``(x [B,N,C] f32, num_valid [B] i32, num_clusters [B] i32, k)`` of one kind (:data:`KINDS`),
    with ``1 <= num_clusters <= n`` and ``k <= n`` in every non-empty group."""
    b = int(rng.integers(1, 4))
    n = int(rng.integers(1, 20))
    c = int(rng.integers(1, 12))
    x = rng.standard_normal((b, n, c)).astype(np.float32)
    num_valid = rng.integers(1, n + 1, size=b)
    if kind == "ties":
        # duplicated rows: exactly equal distances, densities and scores in any implementation
        # (equal sums of different terms, e.g. from integer features, are near-ties whose outcome
        # depends on the summation order, which the contract leaves to each implementation)
        for g in range(b):
            src = rng.integers(0, n, size=n)
            dup = rng.random(n) < 0.5
            x[g, dup] = x[g, src[dup]]
    elif kind == "empty":
        num_valid[rng.random(b) < 0.6] = 0
    elif kind == "single":
        num_valid[:] = 1
    elif kind == "near_static":
        base = (rng.standard_normal((b, 1, c)) * rng.choice([1.0, 10.0, 100.0])).astype(np.float32)
        x = (base + np.float32(1e-4) * rng.standard_normal((b, n, c)).astype(np.float32)).astype(np.float32)
    num_valid = num_valid.astype(np.int32)
    top = max(int(num_valid.max()), 1)
    k = int(rng.integers(1, top + 1))
    # every non-empty group must admit k neighbours: the smallest non-empty group bounds k
    nonempty = num_valid[num_valid > 0]
    if nonempty.size:
        k = min(k, int(nonempty.min()))
    num_clusters = np.array([int(rng.integers(1, max(int(v), 1) + 1)) for v in num_valid], dtype=np.int32)
    return x, num_valid, num_clusters, k


def topk_case(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(scores [M] f32, group_sizes [G] i32, keep_counts [G] i32)``; groups cover a prefix of
    the tokens, ``keep_counts <= group_sizes``."""
    g = int(rng.integers(0, 7))
    sizes = rng.integers(0, 9, size=g)
    if kind == "empty":
        sizes[rng.random(g) < 0.5] = 0
    elif kind == "single":
        sizes[:] = 1
    tail = int(rng.integers(0, 4))  # tokens past the last group
    m = int(sizes.sum()) + tail
    if kind == "ties":
        scores = rng.integers(0, 3, size=m).astype(np.float32)
    elif kind == "near_static":
        scores = (np.float32(0.5) + np.float32(1e-6) * rng.standard_normal(m)).astype(np.float32)
    else:
        scores = rng.standard_normal(m).astype(np.float32)
    keep = np.array([int(rng.integers(0, s + 1)) for s in sizes], dtype=np.int64)
    return scores, sizes.astype(np.int32), keep.astype(np.int32)


def ref_dpc_knn(x: np.ndarray, num_valid: np.ndarray, num_clusters: np.ndarray, k: int):
    """``(labels, centers)`` int32 ``[B, N]`` by the contract-v2 formula."""
    bsz, n_max, c = x.shape
    f32 = np.float32
    labels = np.full((bsz, n_max), -1, dtype=np.int32)
    centers = np.full((bsz, n_max), -1, dtype=np.int32)
    sqrtc = np.sqrt(f32(c))
    for b in range(bsz):
        n = int(min(max(num_valid[b], 0), n_max))
        if n == 0:
            continue
        nc = int(min(max(num_clusters[b], 0), n))
        kk = int(min(max(k, 1), n))
        xb = x[b, :n].astype(f32)
        s = np.zeros(c, dtype=f32)
        for i in range(n):
            s = (s + xb[i]).astype(f32)
        mu = (s / f32(n)).astype(f32)
        y = (xb - mu).astype(f32)
        g = np.zeros((n, n), dtype=f32)
        for col in range(c):
            g = (g + (y[:, col, None] * y[None, :, col]).astype(f32)).astype(f32)
        sq = np.diag(g).copy()
        d2 = ((sq[:, None] + sq[None, :]).astype(f32) - (f32(2) * g).astype(f32)).astype(f32)
        d = (np.sqrt(np.maximum(d2, f32(0))) / sqrtc).astype(f32)
        np.fill_diagonal(d, 0)
        dmax = d.max()
        srt = np.sort(d, axis=1)
        acc = np.zeros(n, dtype=f32)
        for t in range(kk):
            acc = (acc + (srt[:, t] * srt[:, t]).astype(f32)).astype(f32)
        mean = (acc / f32(kk)).astype(f32)
        rho = np.array([f32(math.exp(-float(v))) for v in mean], dtype=f32)
        delta = np.where(rho[None, :] > rho[:, None], d, dmax).min(axis=1).astype(f32)
        score = (delta * rho).astype(f32)
        order = np.argsort(-score, kind="stable")
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        centers[b, :nc] = order[:nc]
        for i in range(n):
            if rank[i] < nc:
                labels[b, i] = rank[i]
            elif nc > 0:
                labels[b, i] = int(np.argmin(d[order[:nc], i]))
    return labels, centers


def ref_group_topk(scores: np.ndarray, group_sizes: np.ndarray, keep_counts: np.ndarray):
    """``(keep [M], count [1])`` int32 by the contract."""
    m = scores.shape[0]
    kept = []
    start = 0
    for size, cnt in zip(group_sizes.tolist(), keep_counts.tolist()):
        size = max(size, 0)
        order = np.argsort(-scores[start : start + size], kind="stable")[: max(cnt, 0)]
        kept.extend((start + order).tolist())
        start += size
    kept.sort()
    keep = np.full(m, m, dtype=np.int32)
    keep[: len(kept)] = kept
    return keep, np.array([len(kept)], dtype=np.int32)
