"""The server's limits and switches, one frozen record, with a default and a smaller Jetson profile."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

MiB = 1024 * 1024

# Caps per profile. "jetson": an Orin whose 8-64 GB are shared by the CPU, the GPU and the decoder.
PROFILES: dict[str, dict[str, float | int]] = {
    "default": {"max_video_bytes": 256 * MiB, "max_video_seconds": 900.0, "max_frame_pixels": 4096 * 2160,
                "max_new_tokens": 512, "decode_timeout_s": 60.0, "queue": 8},
    "jetson": {"max_video_bytes": 64 * MiB, "max_video_seconds": 300.0, "max_frame_pixels": 1920 * 1080,
               "max_new_tokens": 256, "decode_timeout_s": 60.0, "queue": 4},
}


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``prunevid serve`` can be told; every limit is enforced per request."""

    host: str = "127.0.0.1"
    port: int = 8000
    queue: int = 8  # requests allowed to wait beside the one generating; more -> 429
    queue_timeout_s: float = 120.0  # longest wait for the generation slot -> 429
    allow_modes: tuple[str, ...] = ()  # modes a request may ask for; () -> the export's mode only
    media_dir: Path | None = None  # file:// URLs must resolve below it; None -> file:// refused
    allow_remote_media: bool = False  # http(s) URLs (public addresses only)
    allowed_media_domains: tuple[str, ...] = ()  # when set, remote hosts must be one of these (or below)
    max_video_bytes: int = 256 * MiB
    max_video_seconds: float = 900.0
    max_frame_pixels: int = 4096 * 2160
    max_new_tokens: int = 512
    fetch_timeout_s: float = 30.0
    decode_timeout_s: float = 60.0
    max_redirects: int = 3
    drain_timeout_s: float = 60.0  # SIGTERM: longest wait for in-flight answers before exiting
    threads: int = 0  # ONNX Runtime intra-op threads; 0: its default
    served_model_name: str | None = None
    # Fault injection for tests and benchmarks only (hidden CLI options): sleep per generated token /
    # before decoding in the decode worker.
    step_delay_s: float = 0.0
    decode_delay_s: float = 0.0

    @property
    def max_request_bytes(self) -> int:
        """Largest request body: a base64 video of the largest size (4/3) plus room for the JSON."""
        return self.max_video_bytes * 4 // 3 + 64 * 1024

    @classmethod
    def profile(cls, name: str, **overrides) -> ServeSettings:
        """The named profile's caps, then ``overrides`` (None values are ignored)."""
        from prunevid.errors import ConfigError

        if name not in PROFILES:
            raise ConfigError(f"profile must be one of {', '.join(PROFILES)}, got {name}")
        given = {k: v for k, v in overrides.items() if v is not None}
        settings = replace(cls(), **{**PROFILES[name], **given})
        settings.check()
        return settings

    def check(self) -> None:
        """Raise :class:`ConfigError` for a limit outside its range."""
        from prunevid.errors import ConfigError
        from prunevid.runtime.pipeline import MODES

        for name in ("queue", "max_redirects"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{_named(name)} must be >= 0, got {getattr(self, name)}")
        for name in ("max_video_bytes", "max_video_seconds", "max_frame_pixels", "max_new_tokens", "fetch_timeout_s",
                     "decode_timeout_s", "queue_timeout_s", "drain_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{_named(name)} must be > 0, got {getattr(self, name)}")
        bad = [m for m in self.allow_modes if m not in MODES]
        if bad:
            raise ConfigError(f"--allow-modes: {bad[0]} is not one of {', '.join(MODES)}")
        if self.media_dir is not None and not Path(self.media_dir).is_dir():
            raise ConfigError(f"--media-dir {self.media_dir} is not a folder")


# The `prunevid serve` option of each checked setting; the others are set from Python only.
OPTIONS = {"queue": "--queue", "queue_timeout_s": "--queue-timeout", "decode_timeout_s": "--decode-timeout",
           "max_video_bytes": "--max-video-bytes", "max_video_seconds": "--max-video-seconds",
           "max_new_tokens": "--max-new-tokens"}


def _named(name: str) -> str:
    """A setting as a user knows it: its CLI option, else its ServeSettings field."""
    return OPTIONS.get(name, f"the {name} setting")
