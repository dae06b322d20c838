"""Temporal refinement (``refine_clusters`` of the official code): hand-checked label sequences."""

import pytest
import torch

from prunevid.pruning import refine_segments, segment_lengths


def refine(labels):
    return refine_segments(torch.tensor(labels)).tolist()


@pytest.mark.parametrize(
    "labels, expected",
    [
        # all singletons: every cluster is dropped, nothing is left to copy from -> one segment, label 0
        ([3, 1, 2, 0], [0, 0, 0, 0]),
        # a cluster split in two runs keeps its longest; the stray frame joins a neighbour
        ([0, 0, 0, 1, 1, 0, 2, 2], [0, 0, 0, 1, 1, 1, 2, 2]),
        # tied longest runs are both kept, so one label owns two segments
        ([0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0]),
        # equal neighbour runs: the left one wins
        ([0, 0, 5, 1, 1], [0, 0, 0, 1, 1]),
        # the longer neighbour wins, on either side
        ([0, 0, 0, 7, 2, 2], [0, 0, 0, 0, 2, 2]),
        ([0, 0, 7, 2, 2, 2], [0, 0, 2, 2, 2, 2]),
        # a block at the start has only a right neighbour; at the end only a left one
        ([9, 4, 4, 4], [4, 4, 4, 4]),
        ([4, 4, 4, 9], [4, 4, 4, 4]),
        # earlier fills count: frames 0-1 become 2 (run of 4), which then beats the run of 3 on the right
        ([1, 9, 2, 2, 8, 3, 3, 3], [2, 2, 2, 2, 2, 3, 3, 3]),
        # a multi-frame unassigned block (two different singleton clusters side by side)
        ([0, 0, 0, 5, 6, 1, 1], [0, 0, 0, 0, 0, 1, 1]),
        # a cluster whose only runs are singletons is dropped even if it has several frames
        ([0, 0, 3, 0, 0, 3, 1, 1], [0, 0, 0, 0, 0, 0, 1, 1]),
    ],
)
def test_refinement_cases(labels, expected):
    assert refine(labels) == expected


def test_all_singleton_input_becomes_one_segment():
    labels = list(range(16))
    assert refine(labels) == [0] * 16
    assert segment_lengths(refine_segments(torch.tensor(labels))) == [16]


def test_segment_lengths_split_where_labels_change():
    assert segment_lengths(torch.tensor([0, 0, 1, 1, 1, 0])) == [2, 3, 1]
    assert segment_lengths(torch.tensor([2])) == [1]


def test_refinement_keeps_dtype_and_never_produces_one_frame_segments():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        labels = torch.randint(0, 4, (16,), generator=gen)
        out = refine_segments(labels)
        assert out.dtype == labels.dtype
        assert min(segment_lengths(out)) >= 2
