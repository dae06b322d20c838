"""PruneVid's stages A-C as one fixed-shape torch module, exportable as the ``merger`` graph.

The eager reference (:func:`prunevid.pruning.merge_video_tokens`) loops over segments, frames and
groups with data-dependent sizes. This module computes the same tokens in the same order for a
fixed ``[T, L, C]`` input, batched over all groups at once:

    frames [T,L,C] --mean--> [T,C] --PvDpcKnn--> labels [T] --refine (unrolled over T)--> segment of each frame
    static test per (segment, location) --> static means [S,L,C] and dynamic masks
    groups: T static slots + T frames, members in raster order                     [2T, L] masks
    clustered groups only (> 14 tokens), compacted and batched at their number       [G', L, C]
    PvDpcKnn on them, cluster means over the Kmax cluster rows (member-matrix product) [G', Kmax, C]
    groups sorted into token order (static of s, then its frames); each merged row gathered once,
    from the cluster means or, for a pass-through group, from its member token      [T*L, C]

Outputs: merged tokens ``[T*L, C]`` (rows past ``num_merged`` are zero), ``num_merged``, the group
sizes in token order ``[2T]`` (trailing zeros), the window sizes ``[T]`` (trailing zeros) and the
provenance ``token_of_cell [T, L]``. Gathers read flattened ``[rows, C]`` tensors with one index
per row (no ``[G, L, C]`` index tensors).
``T`` is fixed per export; data-dependent sizes live in masks. Group sizes go through exact lookup
tables (``int(n * ratio)`` computed in Python at build time), never float rounding in the graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunevid.config import PruneConfig
from prunevid.pruning.merge import MERGE_MIN_GROUP


def _scalar(value: int) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.int64)


def _size0(x: torch.Tensor) -> torch.Tensor:
    """``x.shape[0]`` as a 0-d int64 tensor that stays dynamic when traced."""
    return torch._shape_as_tensor(x)[0]


def _range(end: torch.Tensor) -> torch.Tensor:
    """``arange(end)`` for a 0-d tensor ``end``, kept dynamic in the graph (a ``Range`` node)."""
    return torch.arange(_scalar(0), end, dtype=torch.int64)


def refine_unrolled(labels: torch.Tensor) -> torch.Tensor:
    """:func:`prunevid.pruning.refine_segments` for a fixed length ``T``, as tensor ops only.

    The left-to-right fill is unrolled over ``T`` (a Python loop at trace time), each step reading
    the labels already filled, exactly as the official scan does.
    """
    t = labels.shape[0]
    change = torch.cat([torch.ones(1, dtype=torch.bool), labels[1:] != labels[:-1]])  # [T]
    run_id = torch.cumsum(change.long(), 0) - 1  # [T]
    run_len = (run_id[:, None] == run_id[None, :]).long().sum(1)  # [T]
    same_label = labels[:, None] == labels[None, :]  # [T, T]
    longest = (same_label.long() * run_len[None, :]).amax(1)  # [T]
    unassigned = (longest == 1) | (run_len != longest)
    out = torch.where(unassigned, torch.full_like(labels, -1), labels)  # [T]

    # Right-hand information on the labels before filling: the length of the run starting at j,
    # and the first assigned index at or after i (t when there is none).
    right_len: list[torch.Tensor] = [_scalar(1)] * t
    next_assigned: list[torch.Tensor] = [_scalar(t)] * (t + 1)
    for j in range(t - 1, -1, -1):
        if j < t - 1:
            right_len[j] = torch.where(out[j] == out[j + 1], right_len[j + 1] + 1, _scalar(1))
        next_assigned[j] = torch.where(out[j] != -1, _scalar(j), next_assigned[j + 1])
    right_len_t = torch.stack(right_len)  # [T]

    filled: list[torch.Tensor] = []
    left_run: list[torch.Tensor] = []
    for i in range(t):
        nxt = next_assigned[i]
        has_right = nxt < t
        at = nxt.clamp(max=t - 1).reshape(1)
        right_label = torch.where(has_right, out.index_select(0, at)[0], _scalar(0))
        right_run = torch.where(has_right, right_len_t.index_select(0, at)[0], _scalar(0))
        if i == 0:
            value = torch.where(out[0] == -1, right_label, out[0])
            run = _scalar(1)
        else:
            choose = torch.where(left_run[i - 1] >= right_run, filled[i - 1], right_label)
            start = out[i - 1] != -1
            value = torch.where(out[i] == -1, torch.where(start, choose, filled[i - 1]), out[i])
            run = torch.where(value == filled[i - 1], left_run[i - 1] + 1, _scalar(1))
        filled.append(value)
        left_run.append(run)
    return torch.stack(filled)  # [T]


class MergerStage(nn.Module):
    """Stages A-C for clips of exactly ``frames`` frames of ``tokens_per_frame`` tokens."""

    def __init__(self, cfg: PruneConfig, frames: int, tokens_per_frame: int):
        super().__init__()
        self.cfg = cfg
        self.frames, self.tokens = frames, tokens_per_frame
        self.temporal_clusters = int(frames * cfg.temporal_segment_ratio)
        sizes = range(tokens_per_frame + 1)
        clustered = [n >= MERGE_MIN_GROUP for n in sizes]
        self.register_buffer("clustered", torch.tensor(clustered), persistent=False)  # [L+1]
        self.register_buffer(
            "num_clusters", torch.tensor([int(n * cfg.cluster_ratio) if c else 0 for n, c in zip(sizes, clustered)]),
            persistent=False,
        )  # [L+1]

    def segments(self, video: torch.Tensor) -> torch.Tensor:
        """Stage A: ``[T, L, C] -> [T]`` segment index of each frame (0, 0, 1, 1, 1, 2, ...)."""
        from prunevid.plugins.torch_ops import dpc_knn_op

        t = video.shape[0]
        frame = video.mean(dim=1).unsqueeze(0)  # [1, T, C]
        labels, _ = dpc_knn_op(frame, torch.full((1,), t, dtype=torch.int32),
                               torch.full((1,), self.temporal_clusters, dtype=torch.int32), self.cfg.temporal_k)
        refined = refine_unrolled(labels[0])  # [T]
        change = torch.cat([torch.zeros(1, dtype=torch.int64), (refined[1:] != refined[:-1]).long()])
        return torch.cumsum(change, 0)  # [T]

    def static_split(self, video: torch.Tensor, seg: torch.Tensor):
        """Stage B: static mask ``[S, L]`` (S = T slots), window sizes ``[S]``, static means ``[S, L, C]``."""
        t, l, c = video.shape
        member = seg[None, :] == torch.arange(t)[:, None]  # [S, T]: frame t in segment s
        w = member.long().sum(1)  # [S]
        normed = F.normalize(video, p=2, dim=-1)  # [T, L, C]
        gram = torch.einsum("tlc,ulc->ltu", normed, normed)  # [L, T, T]
        same = (seg[:, None] == seg[None, :]).float()  # [T, T]
        inner = (gram * same).sum(-1) - 1  # [L, T]: sum over the frame's own window, minus 1
        sim = member.float() @ inner.t()  # [S, L]
        pairs = (w * (w - 1)).clamp(min=1).float()  # [S]
        static = ((sim / pairs[:, None]).clamp(max=1.0) > self.cfg.tau) & (w > 1)[:, None]  # [S, L]
        means = (member.float() @ video.reshape(t, l * c)).reshape(t, l, c)  # [S, L, C] sums
        means = means / w.clamp(min=1).float()[:, None, None]
        return static, w, means

    def merge_groups(self, tokens: torch.Tensor, mask: torch.Tensor):
        """Stage C on all groups: ``[G, L, C]`` with member masks ``[G, L]``.

        Work follows the real groups: DPC-KNN and the cluster sums run only on the clustered groups
        (more than 14 members), compacted to the front of a batch sized by their number, and the
        sums only over the ``Kmax`` cluster rows any group can have; pass-through groups are never
        copied (the output gathers their rows from ``tokens``). Gathers read flattened ``[rows, C]``
        tensors with one index per row.

        Returns ``means [G'*Kmax, C]`` (cluster means of the clustered groups, group-major),
        ``place [G]`` (a clustered group's index in that batch), ``clustered [G]``, ``src [G, L]``
        (the token slot of a group's ``w``-th member, raster order), the output counts ``[G]`` and,
        per group and location, the group's output row the member went into (``[G, L]``).
        """
        from prunevid.plugins.torch_ops import dpc_knn_op

        g, l, c = tokens.shape
        kmax = int(self.num_clusters.max())
        slots = torch.arange(l)
        groups = torch.arange(g)
        pos = torch.cumsum(mask.long(), 1) - 1  # [G, L] slot of each member
        src = torch.argsort(torch.where(mask, slots[None, :], slots[None, :] + l), dim=1)  # [G, L(slot)]: members first, raster order
        n = mask.long().sum(1)  # [G]
        clustered = self.clustered.index_select(0, n)  # [G]

        # the clustered groups only, compacted to the front (at least one row, a dummy)
        order = torch.argsort(torch.where(clustered, groups, groups + g))  # [G]: clustered first
        batch = clustered.long().sum().clamp(min=1)
        picked = order.index_select(0, _range(batch))  # [G']
        rows = (picked[:, None] * l + src.index_select(0, picked)).reshape(-1)  # [G'*L]
        compact = tokens.reshape(g * l, c).index_select(0, rows).reshape(-1, l, c)  # [G', L, C], members first
        sub_n = n.index_select(0, picked)  # [G']
        sub_clusters = self.num_clusters.index_select(0, sub_n).clamp(min=1)  # [G']
        labels, _ = dpc_knn_op(compact, sub_n.int(), sub_clusters.int(), self.cfg.spatial_k)  # [G', L], -1 past n

        # cluster sums as one batched product with the member matrix of the Kmax cluster rows (a GEMM;
        # measured: ONNX Runtime's ScatterElements-add, the TensorRT-compatible segment sum, was 3x slower)
        member = (labels[:, None, :] == torch.arange(kmax)[None, :, None]).float()  # [G', Kmax, L]
        means = (member @ compact) / member.sum(-1).clamp(min=1)[:, :, None]  # [G', Kmax, C]

        place = torch.zeros_like(order).scatter(0, order, groups)  # [G]: position of each group in order
        labels = labels.index_select(0, place.clamp(max=batch - 1))  # [G, L], rows of clustered groups
        row_of_slot = torch.where(clustered[:, None], labels, slots[None, :])  # [G, L(slot)]
        row_of_location = torch.gather(row_of_slot, 1, pos.clamp(min=0))  # [G, L(loc)], members only
        clusters = self.num_clusters.index_select(0, n)  # [G]
        counts = torch.where(clustered, clusters, n)
        return means.reshape(-1, c), place, clustered, src, counts, row_of_location

    def forward(self, video: torch.Tensor):
        dtype = video.dtype  # float16 exports still merge in float32: the decisions are thresholds
        video = video.float()
        t, l, c = video.shape
        seg = self.segments(video)  # [T]
        static, w, means = self.static_split(video, seg)
        dynamic = ~static.index_select(0, seg)  # [T, L]: frame t's dynamic locations
        tokens = torch.cat([means, video]).reshape(2 * t * l, c)  # [2T*L, C]: static slot s, then frame t
        mask = torch.cat([static & (w > 0)[:, None], dynamic])  # [2T, L]
        cluster_means, place, clustered, src, counts, row_of_location = self.merge_groups(
            tokens.reshape(2 * t, l, c), mask)

        # token order: static group of segment s at key 2*start_s, frame t at 2t + 1; unused slots last
        member = seg[None, :] == torch.arange(t)[:, None]  # [S, T]
        start = torch.argmax(member.long(), dim=1)  # [S]: first frame of each segment
        slot_key = torch.where(w > 0, 2 * start, 4 * t + torch.arange(t))  # [S]
        keys = torch.cat([slot_key, 2 * torch.arange(t) + 1])  # [2T]
        order = torch.argsort(keys)  # [2T]
        group_start = torch.cumsum(counts.index_select(0, order), 0) - counts.index_select(0, order)  # [2T]
        group_start = torch.zeros_like(group_start).scatter(0, order, group_start)  # [2T], slot order
        token_of_cell = self.provenance(row_of_location + group_start[:, None], static, seg)  # [T, L]
        counts = counts.index_select(0, order)  # [2T], token order
        ends = torch.cumsum(counts, 0)  # [2T]
        total = ends[-1]
        rows = torch.arange(t * l)  # [T*L]
        group = (ends[None, :] <= rows[:, None]).long().sum(1).clamp(max=2 * t - 1)  # [T*L], token order
        within = (rows - (ends - counts).index_select(0, group)).clamp(min=0, max=l - 1)  # [T*L]
        slot = order.index_select(0, group)  # [T*L]: the group's slot
        # each merged row gathered once: a cluster mean, or a pass-through group's member token
        kmax = int(self.num_clusters.max())
        mean_row = (place.index_select(0, slot) * kmax + within.clamp(max=kmax - 1))  # [T*L]
        mean_row = mean_row.clamp(max=_size0(cluster_means) - 1)
        token_row = slot * l + src.reshape(-1).index_select(0, slot * l + within)  # [T*L]
        merged = torch.where(clustered.index_select(0, slot)[:, None], cluster_means.index_select(0, mean_row),
                             tokens.index_select(0, token_row))  # [T*L, C]
        merged = merged * (rows < total).float()[:, None]
        return merged.to(dtype), total, counts, w, token_of_cell

    @staticmethod
    def provenance(token_at: torch.Tensor, static: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """``token_of_cell [T, L]`` from ``token_at [2T, L]`` (merged row of each member location of
        static slot s, then of frame t) and the static mask ``[S, L]``: a cell takes its segment's
        static group when static there, else its frame's dynamic group."""
        t = seg.shape[0]
        static_token = token_at[:t].index_select(0, seg)  # [T, L]
        return torch.where(static.index_select(0, seg), static_token, token_at[t:])  # [T, L]


def merger_onnx(cfg: PruneConfig, frames: int, tokens_per_frame: int, hidden: int, opset: int = 18,
                padded: bool = False) -> bytes:
    """The ``merger`` graph alone (no checkpoint needed), serialised, with its function bodies
    (``padded``: the TensorRT variant's, see :func:`prunevid.plugins.onnx_functions.function_proto`).

    Its inputs and outputs are those of :mod:`prunevid.spec`'s ``merger`` entry; used by tests and
    benchmarks that compare the exported merger with the eager reference on synthetic features.
    """
    import io
    import warnings

    import onnx

    from prunevid import spec
    from prunevid.plugins.onnx_functions import attach_functions
    from prunevid.plugins.ops import DOMAIN, DOMAIN_VERSION

    graph = spec.graphs(spec.Geometry(frames=frames, tokens_per_frame=tokens_per_frame, hidden=hidden, image_size=1,
                                       num_layers=1, layer=0, heads=1, kv_heads=1, head_dim=1, vocab=1))["merger"]
    example = torch.randn(frames, tokens_per_frame, hidden, generator=torch.Generator().manual_seed(0))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(MergerStage(cfg, frames, tokens_per_frame), (example,), buf, dynamo=False,
                          opset_version=opset, input_names=graph.input_names, output_names=graph.output_names,
                          custom_opsets={DOMAIN: DOMAIN_VERSION}, do_constant_folding=True)
    model = onnx.load_from_string(buf.getvalue())
    attach_functions(model, padded)
    return model.SerializeToString()
