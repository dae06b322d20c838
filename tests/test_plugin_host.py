"""The C++ core of the TensorRT plugins, compiled for the CPU and called through ctypes, against an
independent numpy reference of the op table's formula, the vectorised torch kernels and the
unbatched reference of the algorithm (prunevid.pruning)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plugin_cases import KINDS, dpc_case, ref_dpc_knn, ref_group_topk, topk_case
from prunevid.plugins import kernels
from prunevid.pruning import dpc_knn
from prunevid.pruning.select import _top

CASES_PER_KIND = 420  # 5 kinds -> 2100 cases per op


@pytest.fixture(scope="module")
def host():
    from prunevid.plugins import build, host

    if build.find_cxx() is None:
        pytest.skip("no C++ compiler (g++): the host core cannot be built here")
    host.load()
    return host


def torch_dpc(x, num_valid, num_clusters, k):
    """The vectorised torch kernel, numpy in and out."""
    labels, centers = kernels.dpc_knn_batched(
        torch.from_numpy(x), torch.from_numpy(num_valid), torch.from_numpy(num_clusters), k)
    return labels.numpy(), centers.numpy()


def torch_topk(scores, sizes, counts):
    """The vectorised torch kernel, numpy in and out."""
    keep, count = kernels.group_topk(torch.from_numpy(scores), torch.from_numpy(sizes), torch.from_numpy(counts))
    return keep.numpy(), count.numpy().reshape(1)


@pytest.mark.parametrize("kind", KINDS)
def test_host_dpc_knn_equals_references(host, kind):
    rng = np.random.default_rng(1000 + KINDS.index(kind))
    compared_unbatched = 0
    kernel_differs: list[int] = []
    for case in range(CASES_PER_KIND):
        x, num_valid, num_clusters, k = dpc_case(rng, kind)
        labels, centers = host.dpc_knn(x, num_valid, num_clusters, k)
        assert labels.dtype == np.int32 and labels.shape == x.shape[:2]
        want_l, want_c = ref_dpc_knn(x, num_valid, num_clusters, k)
        np.testing.assert_array_equal(labels, want_l, err_msg=f"{kind} case {case}: labels vs numpy reference")
        np.testing.assert_array_equal(centers, want_c, err_msg=f"{kind} case {case}: centers vs numpy reference")

        t_labels, t_centers = torch_dpc(x, num_valid, num_clusters, k)
        if not (np.array_equal(labels, t_labels) and np.array_equal(centers, t_centers)):
            kernel_differs.append(case)

        for b in range(x.shape[0]):
            n = int(num_valid[b])
            if n == 0:
                assert (labels[b] == -1).all() and (centers[b] == -1).all()
                continue
            ref = dpc_knn(torch.from_numpy(x[b, :n]), int(num_clusters[b]), k)
            np.testing.assert_array_equal(labels[b, :n], ref.labels.numpy(), err_msg=f"{kind} case {case} group {b}")
            np.testing.assert_array_equal(centers[b, : num_clusters[b]], ref.centers.numpy(),
                                          err_msg=f"{kind} case {case} group {b}")
            assert (labels[b, n:] == -1).all() and (centers[b, num_clusters[b]:] == -1).all()
            compared_unbatched += 1
    assert compared_unbatched > 0 or kind == "empty"
    if kernel_differs:
        # every case here had the host core equal to the unbatched reference (asserted above)
        assert kind == "ties", f"{kind}: the torch kernel differs from the host core on cases {kernel_differs[:10]}"
        pytest.xfail(f"the torch kernel differs from the unbatched reference and the host core on "
                     f"{len(kernel_differs)} of {CASES_PER_KIND} cases with duplicated rows (first: case "
                     f"{kernel_differs[0]}): its GEMM need not round y_i.y_j of two equal rows as it rounds "
                     f"y_i.y_i, so duplicated tokens are not always exactly at distance 0 there")


@pytest.mark.parametrize("kind", KINDS)
def test_host_group_topk_equals_references(host, kind):
    rng = np.random.default_rng(2000 + KINDS.index(kind))
    for case in range(CASES_PER_KIND):
        scores, sizes, counts = topk_case(rng, kind)
        keep, count = host.group_topk(scores, sizes, counts)
        want_keep, want_count = ref_group_topk(scores, sizes, counts)
        np.testing.assert_array_equal(keep, want_keep, err_msg=f"{kind} case {case}: vs numpy reference")
        np.testing.assert_array_equal(count, want_count)
        t_keep, t_count = torch_topk(scores, sizes, counts)
        np.testing.assert_array_equal(keep, t_keep, err_msg=f"{kind} case {case}: vs torch kernel")
        np.testing.assert_array_equal(count, t_count)
        # the unbatched reference: per group the stable top floor(...) -- here the given counts
        start, kept = 0, []
        for size, cnt in zip(sizes.tolist(), counts.tolist()):
            kept.append(start + _top(torch.from_numpy(scores[start : start + size]), cnt).numpy())
            start += size
        ref = np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)
        np.testing.assert_array_equal(keep[: int(count[0])], ref)


def test_host_group_topk_matches_select_visual_tokens(host):
    """The op with PruneVid's counts floor(alpha * n) gives select_visual_tokens' result."""
    from prunevid.pruning import group_layout, keep_count, select_visual_tokens

    rng = np.random.default_rng(7)
    for _ in range(200):
        segs = int(rng.integers(1, 4))
        windows = rng.integers(1, 4, size=segs).tolist()
        static = rng.integers(0, 12, size=segs).tolist()
        dynamic = [int(w * rng.integers(0, 6)) for w in windows]
        groups = group_layout(static, dynamic, windows)
        m = sum(groups)
        scores = rng.integers(0, 4, size=m).astype(np.float32)  # many exact ties
        counts = np.array([keep_count(0.4, g) for g in groups], dtype=np.int32)
        keep, count = host.group_topk(scores, np.array(groups, dtype=np.int32), counts)
        ref = select_visual_tokens(torch.from_numpy(scores), static, dynamic, windows, 0.4).numpy()
        assert int(count[0]) == ref.size
        np.testing.assert_array_equal(keep[: ref.size], ref)
        assert (keep[ref.size:] == m).all()


def test_host_dpc_knn_hand_case(host):
    """Two identical three-point clusters: their middles tie for the highest score (the lower index
    ranks first) and every point joins its own cluster's middle."""
    pts = [[0, 0], [1, 0], [-1, 0], [10, 10], [11, 10], [9, 10], [50, 50]]
    x = np.array([pts], dtype=np.float32)
    labels, centers = host.dpc_knn(x, np.array([6], np.int32), np.array([2], np.int32), 3)
    assert centers[0].tolist() == [0, 3, -1, -1, -1, -1, -1]
    assert labels[0].tolist() == [0, 0, 0, 1, 1, 1, -1]


def test_host_rejects_bad_shapes(host):
    with pytest.raises(ValueError, match="num_valid"):
        host.dpc_knn(np.zeros((2, 3, 4), np.float32), np.array([1], np.int32), np.array([1, 1], np.int32), 1)
    with pytest.raises(ValueError, match="keep_counts"):
        host.group_topk(np.zeros(4, np.float32), np.array([2, 2], np.int32), np.array([1], np.int32))


def test_host_group_topk_groups_past_the_scores_stay_inside_them(host):
    """Group sizes that add up past M (outside the contract) are clipped to the M scores: no read
    past them (it was a heap overflow under ASan), and the result is the clipped group's top-k."""
    keep, count = host.group_topk(np.array([0.0, 1.0, 2.0]), np.array([8]), np.array([2]))
    assert keep.tolist() == [1, 2, 3] and count.tolist() == [2]
    keep, count = host.group_topk(np.array([5.0, 1.0, 2.0]), np.array([1, 2**31 - 1, 4]), np.array([1, 1, 3]))
    assert keep.tolist() == [0, 2, 3] and count.tolist() == [2]
