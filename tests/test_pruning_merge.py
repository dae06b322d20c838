"""Stages A-C: the static test, pass-through groups, centre-score order, token layout, noise order."""

import pytest
import torch

from prunevid.pruning import cluster_means, dpc_knn, merge_video_tokens
from prunevid.pruning.merge import static_mask


def one_hot_window(w: int, c: int = 16) -> torch.Tensor:
    """``[w, 2, c]``: location 0 is a different basis vector in every frame (cosine exactly 0),
    location 1 is the same vector in every frame (cosine 1)."""
    window = torch.zeros(w, 2, c)
    for t in range(w):
        window[t, 0, t] = 1.0
        window[t, 1, :] = torch.arange(c, dtype=torch.float32) + 1
    return window


def test_static_test_is_strictly_greater_than_tau():
    window = one_hot_window(4)
    assert static_mask(window, 0.0).tolist() == [False, True]  # sim 0 is not > 0
    assert static_mask(window, -1e-6).tolist() == [True, True]
    assert static_mask(window, 0.8).tolist() == [False, True]


def test_one_frame_window_is_all_dynamic():
    assert static_mask(one_hot_window(1), 0.0).tolist() == [False, False]


def scene_clip(t: int = 8, hw: int = 4, c: int = 32, static_locations: int = 2, seed: int = 0) -> torch.Tensor:
    """``[T, hw*hw, C]``: the first ``static_locations`` tokens are constant in time, the others
    random per frame (cross-frame cosine near 0, so dynamic at tau = 0.8)."""
    gen = torch.Generator().manual_seed(seed)
    video = torch.randn(t, hw * hw, c, generator=gen)
    video[:, :static_locations] = torch.randn(static_locations, c, generator=gen)
    return video


def test_small_groups_pass_through_in_raster_order():
    video = scene_clip(static_locations=2)  # static group of 2, dynamic groups of 14 per frame
    out = merge_video_tokens(video)
    offset, start = 0, 0
    for w, n_s, n_d in zip(out.window_sizes, out.static_sizes, out.dynamic_sizes):
        assert n_s == 2 and n_d == 14 * w
        assert torch.allclose(out.tokens[offset : offset + 2], video[start, :2], atol=1e-6)
        offset += 2
        for frame in range(start, start + w):
            assert torch.equal(out.tokens[offset : offset + 14], video[frame, 2:])
            offset += 14
        start += w
    assert offset == out.num_tokens == out.tokens.shape[0]


def test_fourteen_is_kept_fifteen_is_merged():
    video = scene_clip(hw=4, static_locations=1)  # 15 dynamic tokens per frame: clustered to 7
    out = merge_video_tokens(video)
    assert all(n_d == 7 * w for n_d, w in zip(out.dynamic_sizes, out.window_sizes))
    video = scene_clip(hw=4, static_locations=2)  # 14 dynamic tokens per frame: kept
    out = merge_video_tokens(video)
    assert all(n_d == 14 * w for n_d, w in zip(out.dynamic_sizes, out.window_sizes))


def test_merged_group_follows_centre_score_order():
    video = scene_clip(static_locations=0)  # 16 dynamic tokens per frame -> 8 clusters each
    out = merge_video_tokens(video)
    first_segment_static = out.static_sizes[0]
    frame0 = video[0]
    clustering = dpc_knn(frame0, 8, 7)
    expected = cluster_means(frame0, clustering.labels, 8)
    got = out.tokens[first_segment_static : first_segment_static + 8]
    assert torch.equal(got, expected)
    # row j is the cluster of the j-th best centre: that centre is a member of row j's cluster
    assert clustering.labels[clustering.centers].tolist() == list(range(8))


def test_static_tokens_are_time_means_merged_when_large():
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(16, 32, generator=gen)
    video = base.expand(8, 16, 32) + 0.01 * torch.randn(8, 16, 32, generator=gen)  # everything static
    out = merge_video_tokens(video)
    assert out.dynamic_sizes == [0] * len(out.window_sizes)
    assert out.static_sizes == [8] * len(out.window_sizes)  # 16 static tokens -> 8 clusters
    w0 = out.window_sizes[0]
    means = video[:w0].mean(0)
    clustering = dpc_knn(means, 8, 7)
    assert torch.allclose(out.tokens[:8], cluster_means(means, clustering.labels, 8), atol=1e-6)


def test_segments_cover_the_clip_and_sizes_add_up():
    video = torch.randn(16, 16, 24, generator=torch.Generator().manual_seed(4))
    video[8:] += 3.0  # a scene cut in the middle
    out = merge_video_tokens(video)
    assert sum(out.window_sizes) == 16
    assert sum(out.static_sizes) + sum(out.dynamic_sizes) == out.num_tokens
    assert out.temporal_labels.shape == (16,)


def test_noise_is_drawn_in_official_order():
    calls = []

    def noise(n):
        calls.append(n)
        return torch.rand(n, generator=torch.Generator().manual_seed(len(calls)))

    video = scene_clip(t=8, static_locations=1)  # static group 1 (skipped), dynamic 15 per frame
    out = merge_video_tokens(video, noise=noise)
    assert calls == [8] + [15] * 8  # temporal first, then each frame's dynamic group
    assert out.num_tokens == sum(out.static_sizes) + sum(out.dynamic_sizes)


def test_deterministic_without_noise():
    video = torch.randn(16, 16, 24, generator=torch.Generator().manual_seed(5))
    a, b = merge_video_tokens(video), merge_video_tokens(video)
    assert torch.equal(a.tokens, b.tokens) and a.window_sizes == b.window_sizes


@pytest.mark.parametrize("frames, kwargs", [(6, {}), (8, {"temporal_segment_ratio": 0.1}), (8, {"cluster_ratio": 0.05})])
def test_impossible_settings_raise(frames, kwargs):
    video = scene_clip(t=frames, static_locations=0)
    with pytest.raises(ValueError):
        merge_video_tokens(video, **kwargs)


# ---------------------------------------------------------------- provenance (token_of_cell)


def assert_provenance_consistent(video: torch.Tensor, out, cluster_ratio: float = 0.5) -> None:
    """``out.token_of_cell`` is a complete, layout-respecting map from cells to merged tokens."""
    t, l, _ = video.shape
    cells = out.token_of_cell
    assert cells.shape == (t, l) and cells.dtype == torch.int64
    assert int(cells.min()) >= 0 and int(cells.max()) < out.num_tokens
    hits = torch.bincount(cells.reshape(-1), minlength=out.num_tokens)
    assert bool((hits > 0).all()), "a merged token absorbed no cell"
    # every merged token is the mean of the cells mapped to it (static tokens: time means, clustered)
    sums = torch.zeros(out.num_tokens, video.shape[2]).index_add_(0, cells.reshape(-1), video.reshape(t * l, -1))
    assert torch.allclose(out.tokens, sums / hits[:, None], atol=1e-5)
    offset = start = 0
    for w, n_s, n_d in zip(out.window_sizes, out.static_sizes, out.dynamic_sizes):
        seg = cells[start : start + w]  # [w, L]
        static = (seg >= offset) & (seg < offset + n_s)  # [w, L]
        assert bool((static == static[:1]).all()), "static cells differ between frames of a segment"
        assert bool((seg[:, static[0]] == seg[:1, static[0]]).all()), "a static cell changes token in time"
        groups = [(static[0], seg[0], n_s)]
        offset += n_s
        for i in range(w):
            frame_out = n_d // w
            dynamic = ~static[i]
            mine = (seg[i, dynamic] >= offset) & (seg[i, dynamic] < offset + frame_out)
            assert bool(mine.all()), "a dynamic cell left its frame's group"
            groups.append((dynamic, seg[i], frame_out))
            offset += frame_out
        for members, tokens, size_out in groups:
            n_in = int(members.sum())
            got = tokens[members]
            if n_in < 15:  # passes through: one-to-one, raster order
                assert size_out == n_in and got.tolist() == sorted(set(got.tolist()))
            else:
                assert size_out == int(n_in * cluster_ratio) == len(set(got.tolist()))
        start += w
    assert offset == out.num_tokens


@pytest.mark.parametrize("seed", range(6))
def test_token_of_cell_maps_every_cell_consistently(seed):
    gen = torch.Generator().manual_seed(seed)
    video = torch.randn(16, 36, 24, generator=gen)
    video[int(torch.randint(4, 12, (1,), generator=gen)) :] += 2 * torch.randn(1, 1, 24, generator=gen)
    still = torch.randperm(36, generator=gen)[: int(torch.randint(0, 36, (1,), generator=gen))]
    video[:, still] = video[:1, still] + 0.05 * torch.randn(16, len(still), 24, generator=gen)
    out = merge_video_tokens(video)
    assert sum(out.static_sizes) > 0 and len(out.window_sizes) > 1  # static groups, several segments
    assert_provenance_consistent(video, out)


def test_token_of_cell_on_small_and_all_static_groups():
    video = scene_clip(static_locations=2)  # static pass-through of 2, dynamic pass-through of 14
    out = merge_video_tokens(video)
    assert_provenance_consistent(video, out)
    assert out.token_of_cell[0].tolist() == list(range(16))  # first frame: 2 static, then 14 own
    gen = torch.Generator().manual_seed(3)
    still = torch.randn(16, 32, generator=gen).expand(8, 16, 32) + 0.01 * torch.randn(8, 16, 32, generator=gen)
    out = merge_video_tokens(still)  # every cell static and clustered
    assert_provenance_consistent(still, out)
    assert int(out.token_of_cell.max()) == out.num_tokens - 1
