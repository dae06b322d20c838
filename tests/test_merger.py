"""The fixed-shape merger graph's torch module against the loop reference of stages A-C."""

from __future__ import annotations

import pytest
import torch

from prunevid.config import PruneConfig
from prunevid.exporter.merger import MergerStage, refine_unrolled
from prunevid.pruning import merge_video_tokens, refine_segments
from prunevid.pruning.merge import static_mask


def reference(video: torch.Tensor, cfg: PruneConfig):
    return merge_video_tokens(video, tau=cfg.tau, temporal_segment_ratio=cfg.temporal_segment_ratio,
                              cluster_ratio=cfg.cluster_ratio, temporal_k=cfg.temporal_k, spatial_k=cfg.spatial_k)


def assert_same(video: torch.Tensor, cfg: PruneConfig) -> None:
    t, l, _ = video.shape
    ref = reference(video, cfg)
    merged, num, groups, windows, token_of_cell = MergerStage(cfg, t, l)(video)
    m = ref.num_tokens
    assert token_of_cell.dtype == torch.int64
    assert torch.equal(token_of_cell, ref.token_of_cell)  # provenance agrees exactly
    assert int(num) == m
    assert torch.allclose(merged[:m], ref.tokens, atol=1e-5)
    assert torch.all(merged[m:] == 0)
    assert [int(w) for w in windows if w > 0] == ref.window_sizes
    expected_groups = []
    for n_s, n_d, w in zip(ref.static_sizes, ref.dynamic_sizes, ref.window_sizes):
        expected_groups += [n_s] + [n_d // w] * w
    assert groups.tolist()[: len(expected_groups)] == expected_groups
    assert all(g == 0 for g in groups.tolist()[len(expected_groups):])


@pytest.mark.parametrize("t", [1, 2, 5, 8, 16, 24])
def test_unrolled_refinement_equals_reference(t):
    gen = torch.Generator().manual_seed(t)
    for _ in range(300):
        labels = torch.randint(0, 5, (t,), generator=gen)
        assert torch.equal(refine_unrolled(labels), refine_segments(labels))


def scene_clip(seed: int, t: int = 16, l: int = 16, c: int = 32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    video = torch.randn(t, l, c, generator=gen)
    for cut in sorted(torch.randint(1, t, (3,), generator=gen).tolist()):
        video[cut:] += 2 * torch.randn(1, 1, c, generator=gen)
    static = torch.randperm(l, generator=gen)[: int(torch.randint(0, l, (1,), generator=gen))]
    video[:, static] = video[:1, static] + 0.05 * torch.randn(t, len(static), c, generator=gen)
    return video


@pytest.mark.parametrize("seed", range(12))
def test_merger_equals_reference_on_scene_clips(seed):
    assert_same(scene_clip(seed), PruneConfig())


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0])
def test_merger_equals_reference_across_tau(tau):
    assert_same(scene_clip(100, l=144, c=24), PruneConfig(tau=tau))


def test_identical_frames_are_not_static_at_tau_one():
    """The spec: with tau = 1 nothing is static; rounding must not lift identical frames above 1."""
    frame = torch.randn(1, 16, 64, generator=torch.Generator().manual_seed(7))
    video = frame.expand(16, 16, 64).contiguous()
    assert not static_mask(video[:8], 1.0).any()
    assert static_mask(video[:8], 0.999).all()
    assert_same(video, PruneConfig(tau=1.0))
    assert_same(video, PruneConfig())


def _merger_session(cfg: PruneConfig, t: int, l: int, c: int):
    import onnxruntime as ort

    from prunevid.exporter.merger import merger_onnx

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(merger_onnx(cfg, t, l, c), opts, providers=["CPUExecutionProvider"])


def test_exported_merger_segments_duplicated_frames_as_eager():
    """Runs of identical frames (a paused or frame-doubled video): their frame means are duplicated
    rows of the temporal DPC-KNN, which must keep their density tie on ONNX Runtime as in eager
    (with the ReduceSum density body 2 of these 40 clips segmented or merged differently)."""
    cfg = PruneConfig()
    sess = _merger_session(cfg, 16, 16, 8)
    for seed in range(40):
        gen = torch.Generator().manual_seed(seed)
        video = torch.randn(16, 16, 8, generator=gen)
        for cut in (5, 11):
            video[cut:] += 2 * torch.randn(1, 1, 8, generator=gen)
        for t in range(1, 16):
            if t % 3:  # runs of three identical frames
                video[t] = video[t - 1]
        ref = reference(video, cfg)
        merged, num, _, windows, token_of_cell = sess.run(None, {"visual_features": video.numpy()})
        assert [int(w) for w in windows if w > 0] == ref.window_sizes, seed
        assert int(num) == ref.num_tokens and (token_of_cell == ref.token_of_cell.numpy()).all(), seed


def test_exported_merger_keeps_ties_between_duplicated_tokens():
    """Exactly duplicated tokens (a black letterbox: the same features in several cells of every
    frame) cluster as in the eager reference on ONNX Runtime too. PvDpcKnn's body once summed the k
    smallest squared distances with ReduceSum, which ONNX Runtime rounds by each row's memory
    alignment: duplicated rows got densities an ulp apart and lost their tie (10 of these 20 clips
    differed from eager). The sum is now sequential, as in the C++ core."""
    cfg = PruneConfig()
    sess = _merger_session(cfg, 16, 16, 8)
    for seed in range(20):
        video = torch.randn(16, 16, 8, generator=torch.Generator().manual_seed(seed))
        video[:, :3] = 0  # three identical (zero) tokens in every frame
        ref = reference(video, cfg)
        merged, num, _, _, token_of_cell = sess.run(None, {"visual_features": video.numpy()})
        assert int(num) == ref.num_tokens, seed
        assert (token_of_cell == ref.token_of_cell.numpy()).all(), seed
        assert torch.allclose(torch.from_numpy(merged[: ref.num_tokens]), ref.tokens, atol=1e-5), seed
