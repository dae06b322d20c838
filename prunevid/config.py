"""PruneVid settings: one frozen dataclass, named presets, and validation with one-line errors.

The defaults are the official PLLaVA-7B settings of PruneVid's ``scripts/eval.sh`` for MVBench,
VideoMME and EgoSchema ("the default setting used in our paper"): K = 10, alpha = 0.4, tau = 0.8,
temporal segment ratio 0.25, cluster ratio 0.5, DPC k = 7, 16 frames, LoRA alpha 14.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from enum import Enum
from typing import Any

from prunevid.errors import ConfigError

# Far above any video LLM's context at one token per frame; keeps a typo from decoding gigabytes.
MAX_FRAMES = 512
# LoRA scale numerators in use are 4 to 64 (PLLaVA: 4 and 14); far larger ones overflow the merge.
MAX_LORA_ALPHA = 1000.0


class Mode(str, Enum):
    """How much of PruneVid runs."""

    PRUNEVID = "prunevid"  # merging before the LLM and selection after layer K
    MERGE = "merge"  # merging only; the LLM sees every merged token
    NONE = "none"  # baseline: neither merging nor selection


@dataclass(frozen=True)
class PruneConfig:
    """Hyperparameters of PruneVid (names as in the official config where one exists).

    Attributes:
        mode: see :class:`Mode`.
        layer: ``selected_layer`` K; layers ``0..K`` see every merged token.
        alpha: share kept per selection group, ``floor(alpha * n)``; in ``(0, 1]``.
        tau: static threshold on cross-frame cosine similarity; in ``[0, 1]``.
        temporal_segment_ratio: temporal clusters = ``floor(frames * ratio)``.
        cluster_ratio: spatial clusters = ``floor(n * ratio)`` per group of more than 14 tokens.
        temporal_k / spatial_k: DPC-KNN neighbours (7 in the official code).
        frames: frames sampled from the clip; ``None``: the checkpoint's ``num_frames`` (eager and
            export resolve it with :meth:`with_frames_from`).
        lora_alpha: LoRA scale numerator used when merging PLLaVA's LoRA at load.
    """

    mode: Mode = Mode.PRUNEVID
    layer: int = 10
    alpha: float = 0.4
    tau: float = 0.8
    temporal_segment_ratio: float = 0.25
    cluster_ratio: float = 0.5
    temporal_k: int = 7
    spatial_k: int = 7
    frames: int | None = None
    lora_alpha: float = 14.0

    @property
    def merges(self) -> bool:
        return self.mode is not Mode.NONE

    @property
    def selects(self) -> bool:
        return self.mode is Mode.PRUNEVID

    def with_overrides(self, **overrides: Any) -> PruneConfig:
        """A copy with the non-``None`` overrides applied, then validated."""
        values = {k: v for k, v in overrides.items() if v is not None}
        if "mode" in values:
            values["mode"] = Mode(values["mode"])
        return replace(self, **values).validate()

    def validate(self, num_layers: int | None = None) -> PruneConfig:
        """Check every setting (and K against ``num_layers`` when given); returns ``self``."""
        if self.frames is not None and not 1 <= self.frames <= MAX_FRAMES:
            raise ConfigError(f"--frames must be in [1, {MAX_FRAMES}], got {self.frames}")
        for name in ("tau", "alpha", "temporal_segment_ratio", "cluster_ratio", "lora_alpha"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number, got {getattr(self, name)}")
        if not 0 <= self.lora_alpha <= MAX_LORA_ALPHA:
            raise ConfigError(f"--lora-alpha must be in [0, {MAX_LORA_ALPHA:g}], got {self.lora_alpha:g}")
        if not 0.0 <= self.tau <= 1.0:
            raise ConfigError(f"--tau must be in [0, 1], got {self.tau}")
        if not 0.0 < self.alpha <= 1.0:
            raise ConfigError(f"--alpha must be in (0, 1], got {self.alpha}")
        for name in ("temporal_segment_ratio", "cluster_ratio"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ConfigError(f"--{name.replace('_', '-')} must be in (0, 1], got {getattr(self, name)}")
        if self.temporal_k < 1 or self.spatial_k < 1:
            raise ConfigError("DPC-KNN k must be at least 1")
        if self.layer < 0:
            raise ConfigError(f"--layer must be >= 0, got {self.layer}")
        if self.merges and self.frames is not None:
            self._check_clip_length()
        if num_layers is not None and self.selects and self.layer >= num_layers - 1:
            raise ConfigError(
                f"--layer {self.layer} leaves no layer to prune: the model has {num_layers} layers (K must be < {num_layers - 1})"
            )
        return self

    def _check_clip_length(self) -> None:
        if self.frames < self.temporal_k:
            raise ConfigError(
                f"merging needs at least temporal_k={self.temporal_k} frames, got --frames {self.frames}"
            )
        if int(self.frames * self.temporal_segment_ratio) < 1:
            raise ConfigError(
                f"--frames {self.frames} x temporal segment ratio {self.temporal_segment_ratio} gives no segment"
            )
        if int(15 * self.cluster_ratio) < 1:
            raise ConfigError(f"--cluster-ratio {self.cluster_ratio} leaves no cluster for a group of 15 tokens")
        if self.spatial_k > 15:
            # a group of 15 (the smallest that is clustered) must have at least k tokens
            raise ConfigError(f"spatial_k={self.spatial_k} exceeds the smallest clustered group (15 tokens)")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PruneConfig:
        """The inverse of :meth:`to_json` (e.g. the ``prune`` block of a manifest), validated."""
        return cls(**{**data, "mode": Mode(data["mode"])}).validate()

    def with_frames_from(self, num_frames: int) -> PruneConfig:
        """``frames`` defaulted to a checkpoint's ``num_frames`` (kept when set), validated."""
        return self if self.frames is not None else replace(self, frames=num_frames).validate()

    def to_json(self, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k not in exclude}
        data["mode"] = self.mode.value
        return data


PRESETS: dict[str, PruneConfig] = {
    # MVBench, VideoMME, EgoSchema settings of PruneVid's scripts/eval.sh.
    "pllava-mvbench": PruneConfig(),
    # VideoChatGPT-Bench: K = 5 and LoRA alpha 4.
    "pllava-vcg": PruneConfig(layer=5, lora_alpha=4.0),
}
DEFAULT_PRESET = "pllava-mvbench"

# The conversation template each preset's benchmarks were evaluated with (prunevid.runtime.templates).
PRESET_TEMPLATES: dict[str, str] = {
    "pllava-mvbench": "mvbench",
    "pllava-vcg": "vcg",
}


def preset(name: str) -> PruneConfig:
    """The named preset; raises :class:`ConfigError` listing the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset '{name}' (known: {', '.join(PRESETS)})") from None


def resolve_template(template: str | None, preset_name: str | None, default: str | None = None) -> str:
    """The conversation template: ``--template``, else the ``--preset``'s, else ``default`` (the
    model family's, :attr:`prunevid.model.config.Family.template`), else the default free-form
    one (:data:`prunevid.runtime.templates.DEFAULT_TEMPLATE`)."""
    from prunevid.runtime.templates import DEFAULT_TEMPLATE

    if template is not None:
        return template
    if preset_name is not None:
        preset(preset_name)  # an unknown preset is an error naming the known ones
        return PRESET_TEMPLATES[preset_name]
    return default or DEFAULT_TEMPLATE
