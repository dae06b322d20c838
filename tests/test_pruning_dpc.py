"""DPC-KNN against an independent loop implementation of the spec's formulas, plus its contract."""

import math

import pytest
import torch

from prunevid.pruning import cluster_means, dpc_knn


def naive_dpc(x: torch.Tensor, num_clusters: int, k: int):
    """Straight from prunevid-algorithm.md section 3, one token at a time, float64."""
    n, c = x.shape
    xd = x.double()
    d = [[math.dist(xd[i].tolist(), xd[j].tolist()) / math.sqrt(c) for j in range(n)] for i in range(n)]
    rho = [math.exp(-sum(v * v for v in sorted(row)[:k]) / k) for row in d]
    dmax = max(max(row) for row in d)
    delta = [min([d[i][j] for j in range(n) if rho[j] > rho[i]], default=dmax) for i in range(n)]
    score = [delta[i] * rho[i] for i in range(n)]
    centers = sorted(range(n), key=lambda i: -score[i])[:num_clusters]
    labels = [min(range(num_clusters), key=lambda j: d[centers[j]][i]) for i in range(n)]
    for j, ctr in enumerate(centers):
        labels[ctr] = j
    return centers, labels, rho, delta


@pytest.mark.parametrize("seed", range(5))
def test_matches_naive_implementation(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(24, 8, generator=gen) + 3 * torch.randn(24, 1, generator=gen).round()
    out = dpc_knn(x, 6, 7)
    centers, labels, rho, delta = naive_dpc(x, 6, 7)
    assert out.centers.tolist() == centers
    assert out.labels.tolist() == labels
    assert torch.allclose(out.density.double(), torch.tensor(rho, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(out.delta.double(), torch.tensor(delta, dtype=torch.float64), atol=1e-6)


def test_two_blobs_get_two_clusters():
    gen = torch.Generator().manual_seed(1)
    blob_a = torch.randn(10, 4, generator=gen) * 0.01
    blob_b = torch.randn(10, 4, generator=gen) * 0.01 + 5.0
    x = torch.cat([blob_a, blob_b])
    out = dpc_knn(x, 2, 5)
    assert set(out.labels[:10].tolist()) == {out.labels[0].item()}
    assert set(out.labels[10:].tolist()) == {out.labels[10].item()}
    assert out.labels[0] != out.labels[10]


def test_centres_in_descending_score_order_and_own_their_cluster():
    x = torch.randn(30, 16, generator=torch.Generator().manual_seed(2))
    out = dpc_knn(x, 9, 7)
    scores = out.score[out.centers]
    assert torch.all(scores[:-1] >= scores[1:])
    assert out.labels[out.centers].tolist() == list(range(9))
    assert out.labels.dtype == torch.int64 and out.centers.dtype == torch.int64


def test_noise_is_added_to_the_density_scaled_by_1e_minus_6():
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(3))
    noise = torch.rand(20, generator=torch.Generator().manual_seed(4))
    plain, noisy = dpc_knn(x, 4, 7), dpc_knn(x, 4, 7, noise=noise)
    # exactly the float32 sum the official code computes
    assert torch.equal(noisy.density, plain.density + noise * 1e-6)
    assert not torch.equal(noisy.density, plain.density)


def test_noise_breaks_exact_density_ties():
    # the corners of a square have equal densities; without noise the lowest index wins the tie
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    assert dpc_knn(x, 1, 2).centers.tolist() == [0]
    noise = torch.tensor([0.1, 0.2, 0.9, 0.3])
    assert dpc_knn(x, 1, 2, noise=noise).centers.tolist() == [2]


def test_k_counts_the_token_itself():
    # with k = 1 the only neighbour is the token itself (distance 0), so every density is 1
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(dpc_knn(x, 2, 1).density, torch.ones(6))


@pytest.mark.parametrize("clusters, k", [(2, 11), (0, 3), (11, 3), (-1, 3), (2, 0)])
def test_invalid_arguments_raise(clusters, k):
    with pytest.raises(ValueError):
        dpc_knn(torch.randn(10, 4), clusters, k)


def test_cluster_means_are_plain_means_in_cluster_order():
    x = torch.arange(12, dtype=torch.float32).view(6, 2)
    labels = torch.tensor([1, 0, 1, 2, 0, 1])
    means = cluster_means(x, labels, 3)
    assert torch.allclose(means[0], x[[1, 4]].mean(0))
    assert torch.allclose(means[1], x[[0, 2, 5]].mean(0))
    assert torch.allclose(means[2], x[3])
