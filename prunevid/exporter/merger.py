"""PruneVid's stages A-C as one fixed-input-shape torch module, exportable as the ``merger`` graph.

The eager reference (:func:`prunevid.pruning.merge_video_tokens`) loops over segments, frames and
groups with data-dependent sizes. This module computes the same tokens in the same order for a
fixed ``[T, L, C]`` input, batched, with the work sized by the real segments and groups (sizes
computed in the graph):

    frames [T,L,C] --mean--> [T,C] --PvDpcKnn--> labels [T] --refine (unrolled over T)--> segment of each frame
    static test per (segment, location) from the per-location frame Gram [L,T,T] --> static [S,L], means [S,L,C]
    static groups (one per segment, members = its static locations)   and   dynamic groups (one per frame)
      each kind apart: its clustered groups (> 14 tokens) compacted, cut to the longest    [G', N', C]
      PvDpcKnn on them, cluster means over their K' cluster rows (member-matrix product)  [G', K', C]
    groups sorted into token order (static of s, then its frames); each merged row gathered once
    from [cluster means; the first 14 members of every group; a zero row]                  [T*L, C]

Outputs: merged tokens ``[T*L, C]`` (rows past ``num_merged`` are zero), ``num_merged``, the group
sizes in token order ``[2T]`` (trailing zeros), the window sizes ``[T]`` (trailing zeros) and the
provenance ``token_of_cell [T, L]``. Gathers read flattened ``[rows, C]`` tensors with one index
per row. ``T`` is fixed per export; group sizes go through exact lookup tables (``int(n * ratio)``
computed in Python at build time), never float rounding in the graph.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
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


class MergedKind(NamedTuple):
    """Stage C's result for the groups of one kind (see :meth:`MergerStage.merge_groups`)."""

    means: torch.Tensor  # [G'*K', C] cluster means of the clustered groups, batch-major
    cluster_rows: torch.Tensor  # 0-d K': cluster rows per clustered group in ``means``
    place: torch.Tensor  # [G] a clustered group's index in the batch
    clustered: torch.Tensor  # [G] bool
    passthrough: torch.Tensor  # [G*P, C] the first P members of every group, raster order
    counts: torch.Tensor  # [G] output rows of each group
    row_of_location: torch.Tensor  # [G, L] the group's output row each member went into


class MergerStage(nn.Module):
    """Stages A-C for clips of exactly ``frames`` frames of ``tokens_per_frame`` tokens."""

    def __init__(self, cfg: PruneConfig, frames: int, tokens_per_frame: int):
        super().__init__()
        self.cfg = cfg
        self.frames, self.tokens = frames, tokens_per_frame
        self.temporal_clusters = int(frames * cfg.temporal_segment_ratio)
        # a group that passes through has at most this many members (gathered per group up front)
        self.pass_width = min(tokens_per_frame, MERGE_MIN_GROUP - 1)
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
        """Stage B on the ``S = seg[-1] + 1`` real segments: static mask ``[S, L]``, window sizes
        ``[S]`` (each at least 1) and static means ``[S, L, C]``.

        The mean cross-frame cosine of a location comes from the per-location frame Gram
        ``[L, T, T]``, whose diagonal gives the norms: no normalised copy of the clip is made.
        """
        t, l, c = video.shape
        member = seg[None, :] == _range(seg[-1] + 1)[:, None]  # [S, T]: frame t in segment s
        w = member.long().sum(1)  # [S]
        per_location = video.transpose(0, 1)  # [L, T, C]
        gram = per_location @ per_location.transpose(1, 2)  # [L, T, T]
        frames = torch.arange(t)
        eye = frames[:, None] == frames[None, :]  # [T, T]
        norm = (gram * eye).sum(-1).clamp(min=0).sqrt().clamp(min=1e-12)  # [L, T], as F.normalize's eps
        cos = gram / (norm[:, :, None] * norm[:, None, :])  # [L, T, T]
        same = (seg[:, None] == seg[None, :]).float()  # [T, T]
        inner = (cos * same).sum(-1) - 1  # [L, T]: sum over the frame's own window, minus 1
        sim = member.float() @ inner.t()  # [S, L]
        pairs = (w * (w - 1)).clamp(min=1).float()  # [S]
        static = ((sim / pairs[:, None]).clamp(max=1.0) > self.cfg.tau) & (w > 1)[:, None]  # [S, L]
        means = (member.float() @ video.reshape(t, l * c)).reshape(-1, l, c)  # [S, L, C] sums
        means = means / w.float()[:, None, None]
        return static, w, means

    def merge_groups(self, source: torch.Tensor, mask: torch.Tensor) -> MergedKind:
        """Stage C on the ``G`` groups of one kind (the static groups, or the frames' dynamic groups):
        group ``g`` has the members ``mask[g]`` of row ``g`` of ``source [G, L, C]``.

        Work follows the real groups: DPC-KNN and the cluster sums run only on the clustered groups
        (more than 14 members), compacted to the front of a batch sized by their number and cut to
        the longest of them (``N'`` member columns); the sums run over the ``K'`` cluster rows they
        have. The two kinds are batched apart because their sizes differ (a static group has the
        locations a dynamic group lacks), so neither pads the other. Gathers read the flattened
        ``[G*L, C]`` source with one index per row. ``G'`` is the number of clustered groups in the
        batch (at least 1: a dummy when there is none).
        """
        from prunevid.plugins.torch_ops import dpc_knn_op

        l, c = mask.shape[1], source.shape[-1]
        flat = source.reshape(-1, c)  # [G*L, C]
        num_groups = _size0(mask)  # G
        slots = torch.arange(l)
        groups = _range(num_groups)  # [G]
        pos = torch.cumsum(mask.long(), 1) - 1  # [G, L] slot of each member
        src = torch.argsort(torch.where(mask, slots[None, :], slots[None, :] + l), dim=1)  # [G, L(slot)]: members first, raster order
        n = mask.long().sum(1)  # [G]
        clustered = self.clustered.index_select(0, n)  # [G]

        # the clustered groups only, compacted to the front (at least one row, a dummy)
        order = torch.argsort(torch.where(clustered, groups, groups + num_groups))  # [G]: clustered first
        batch = clustered.long().sum().clamp(min=1)
        picked = order.index_select(0, _range(batch))  # [G']
        sub_n = n.index_select(0, picked)  # [G']
        width = sub_n.max().clamp(min=1)  # N': the longest clustered group
        member_slot = src.index_select(0, picked).index_select(1, _range(width))  # [G', N'], members first
        rows = (picked[:, None] * l + member_slot).reshape(-1)  # [G'*N']
        compact = flat.index_select(0, rows).reshape(-1, width, c)  # [G', N', C]
        sub_clusters = self.num_clusters.index_select(0, sub_n).clamp(min=1)  # [G']
        labels, _ = dpc_knn_op(compact, sub_n.int(), sub_clusters.int(), self.cfg.spatial_k)  # [G', N'], -1 past n

        # cluster sums as one batched product with the member matrix of the K' cluster rows, as the
        # eager reference (measured: ONNX Runtime's ScatterElements-add, the TensorRT-compatible
        # segment sum, was 3x slower; ScatterND-add is not in TensorRT)
        kr = sub_clusters.max()  # K'
        member = (labels[:, None, :] == _range(kr)[None, :, None]).float()  # [G', K', N']
        means = (member @ compact) / member.sum(-1).clamp(min=1)[:, :, None]  # [G', K', C]

        # pass-through groups have at most P members: the first P of every group, gathered once
        passthrough = flat.index_select(0, (groups[:, None] * l + src.index_select(1, torch.arange(self.pass_width)))
                                        .reshape(-1))  # [G*P, C]

        place = torch.zeros_like(order).scatter(0, order, groups)  # [G]: position of each group in order
        labels = labels.index_select(0, place.clamp(max=batch - 1))  # [G, N'], rows of clustered groups
        label_of_location = torch.gather(labels, 1, torch.minimum(pos.clamp(min=0), width - 1))  # [G, L(loc)]
        row_of_location = torch.where(clustered[:, None], label_of_location, pos)  # [G, L(loc)], members only
        counts = torch.where(clustered, self.num_clusters.index_select(0, n), n)  # [G]
        return MergedKind(means.reshape(-1, c), kr, place, clustered, passthrough, counts, row_of_location)

    def forward(self, video: torch.Tensor):
        dtype = video.dtype  # float16 exports still merge in float32: the decisions are thresholds
        if dtype != torch.float32:
            video = video.float()
        t, l, c = video.shape
        seg = self.segments(video)  # [T]
        static, w, static_means = self.static_split(video, seg)  # [S, L], [S], [S, L, C]
        num_static = _size0(w)  # S
        dynamic = ~static.index_select(0, seg)  # [T, L]: frame t's dynamic locations
        kinds = [self.merge_groups(static_means, static), self.merge_groups(video, dynamic)]

        # the G = S + T groups in slot order (static group of segment s, then frame t), their rows in
        # source = [static cluster means; dynamic cluster means; static pass-through; dynamic
        # pass-through; a zero row]
        static_kind, dynamic_kind = kinds
        n_means = _size0(static_kind.means) + _size0(dynamic_kind.means)
        mean_base = [_scalar(0), _size0(static_kind.means)]
        pass_base = [n_means, n_means + _size0(static_kind.passthrough)]
        first_mean = torch.cat([kind.place * kind.cluster_rows + base for kind, base in zip(kinds, mean_base)])  # [G]
        first_pass = torch.cat([_range(_size0(kind.clustered)) * self.pass_width + base
                                for kind, base in zip(kinds, pass_base)])  # [G]
        clustered = torch.cat([kind.clustered for kind in kinds])  # [G]
        counts = torch.cat([kind.counts for kind in kinds])  # [G]
        row_of_location = torch.cat([kind.row_of_location for kind in kinds])  # [G, L]

        # token order: static group of segment s at key 2*start_s, frame t at 2t + 1
        start = torch.cumsum(w, 0) - w  # [S]: first frame of each segment (segments are contiguous runs)
        frames = torch.arange(t)
        order = torch.argsort(torch.cat([2 * start, 2 * frames + 1]))  # [G]: groups in token order
        g = _size0(order)
        counts = counts.index_select(0, order)  # [G], token order
        ends = torch.cumsum(counts, 0)  # [G]
        group_start = torch.zeros_like(ends).scatter(0, order, ends - counts)  # [G], slot order
        token_at = row_of_location + group_start[:, None]  # [G, L]: merged row of each member location
        static_token = token_at.index_select(0, seg)  # [T, L]: the frame's segment's static group
        token_of_cell = torch.where(static.index_select(0, seg), static_token,
                                    token_at.index_select(0, num_static + frames))  # [T, L]
        total = ends[-1]

        # each merged row gathered once from the source
        source = torch.cat([*(kind.means for kind in kinds), *(kind.passthrough for kind in kinds),
                            torch.zeros(1, c)])  # [R, C]
        rows = torch.arange(t * l)  # [T*L]
        group = torch.minimum((ends[None, :] <= rows[:, None]).long().sum(1), g - 1)  # [T*L], token order
        within = rows - (ends - counts).index_select(0, group)  # [T*L]
        slot = order.index_select(0, group)  # [T*L]: the group's slot
        index = torch.where(clustered.index_select(0, slot), first_mean.index_select(0, slot),
                            first_pass.index_select(0, slot)) + within
        index = torch.where(rows < total, index, _size0(source) - 1)  # rows past the total: zeros
        merged = source.index_select(0, index)  # [T*L, C]
        if dtype != torch.float32:
            merged = merged.to(dtype)
        pad = torch.zeros(2 * t, dtype=torch.int64)
        group_sizes = torch.cat([counts, pad]).index_select(0, torch.arange(2 * t))  # [2T], trailing zeros
        window_sizes = torch.cat([w, pad]).index_select(0, torch.arange(t))  # [T], trailing zeros
        return merged, total, group_sizes, window_sizes, token_of_cell


def merger_onnx(cfg: PruneConfig, frames: int, tokens_per_frame: int, hidden: int, opset: int = 18) -> bytes:
    """The ``merger`` graph alone (no checkpoint needed), serialised, with its function bodies.

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
    attach_functions(model)
    return model.SerializeToString()
