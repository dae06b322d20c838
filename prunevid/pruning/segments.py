"""Temporal contiguity refinement of frame cluster labels (``refine_clusters`` in PruneVid).

The refinement looks only at the label sequence, never at features:

1. for each cluster, find its maximal runs of consecutive frames;
2. a cluster whose longest run is a single frame is dropped entirely (its frames become
   unassigned); otherwise every run of the longest length is kept (so one label may own two
   separate segments) and its other runs become unassigned;
3. scanning left to right, each block of unassigned frames takes the label of the longer
   neighbouring run, measured on the labels as already updated (earlier fills count); a tie goes to
   the left neighbour; with no neighbour at all the block gets label 0.
"""

from __future__ import annotations

import torch

UNASSIGNED = -1


def _runs(labels: list[int]) -> list[tuple[int, int, int]]:
    """Maximal runs of equal labels as ``(label, start, end_exclusive)``."""
    runs: list[tuple[int, int, int]] = []
    start = 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            runs.append((labels[start], start, i))
            start = i
    return runs


def _drop_short_runs(labels: list[int]) -> list[int]:
    """Step 1-2: keep each cluster's longest run(s); unassign the rest and single-frame clusters."""
    longest: dict[int, int] = {}
    runs = _runs(labels)
    for label, start, end in runs:
        longest[label] = max(longest.get(label, 0), end - start)
    out = list(labels)
    for label, start, end in runs:
        if longest[label] == 1 or end - start != longest[label]:
            out[start:end] = [UNASSIGNED] * (end - start)
    return out


def _run_length_left(labels: list[int], last: int) -> int:
    """Length of the run of ``labels[last]`` ending at index ``last``."""
    i = last
    while i >= 0 and labels[i] == labels[last]:
        i -= 1
    return last - i


def _run_length_right(labels: list[int], first: int) -> int:
    """Length of the run of ``labels[first]`` starting at index ``first``."""
    i = first
    while i < len(labels) and labels[i] == labels[first]:
        i += 1
    return i - first


def _fill_unassigned(labels: list[int]) -> list[int]:
    """Step 3: give each unassigned block the label of its longer neighbour run (ties: left)."""
    out = list(labels)
    n = len(out)
    i = 0
    while i < n:
        if out[i] != UNASSIGNED:
            i += 1
            continue
        start = i
        while i < n and out[i] == UNASSIGNED:
            i += 1
        end = i  # exclusive
        left_len = _run_length_left(out, start - 1) if start > 0 else 0
        right_len = _run_length_right(out, end) if end < n else 0
        if left_len == 0 and right_len == 0:
            new = 0
        elif left_len >= right_len and start > 0:
            new = out[start - 1]
        else:
            new = out[end]
        out[start:end] = [new] * (end - start)
    return out


def refine_segments(labels: torch.Tensor) -> torch.Tensor:
    """Refine per-frame cluster labels ``[T]`` into temporally contiguous segments ``[T]``.

    Reproduces the official ``refine_clusters`` exactly, including its tie rules (see the module
    docstring). The result keeps the original label values, so two segments may share a label.
    """
    if labels.dim() != 1:
        raise ValueError(f"refine_segments expects [T] labels, got shape {tuple(labels.shape)}")
    values = [int(v) for v in labels.tolist()]
    refined = _fill_unassigned(_drop_short_runs(values))
    return torch.tensor(refined, dtype=labels.dtype)


def segment_lengths(labels: torch.Tensor) -> list[int]:
    """Lengths of the runs of equal consecutive labels, left to right (``[T] -> [S]``)."""
    return [end - start for _, start, end in _runs([int(v) for v in labels.tolist()])]
