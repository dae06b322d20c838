"""Typed, user-facing errors.

Every failure a user can cause (a bad file, a bad folder, an impossible setting) raises a
subclass of :class:`PruneVidError`. The CLI prints ``Error: <message>`` on one line and exits
with status 1 for these; anything else is a bug and keeps its traceback.
"""


import json
from pathlib import Path
from typing import Any


class PruneVidError(Exception):
    """Base class of every error caused by user input or environment, not by a bug."""


class VideoError(PruneVidError):
    """The video file is missing, empty, corrupt or has no decodable frames."""


class ModelDirError(PruneVidError):
    """The model folder is missing files, has an unknown architecture or inconsistent weights."""


class ConfigError(PruneVidError):
    """A setting is outside its valid range or impossible for the model or clip."""


class PromptError(PruneVidError):
    """The question is empty or the prompt does not fit the model's context."""


class ArtifactError(PruneVidError):
    """An export folder is missing files, fails its hash check, or would be overwritten."""


class ToolchainError(PruneVidError):
    """A compiler, CUDA or TensorRT header set is missing, or compiling the plugin library failed."""


class ServerError(PruneVidError):
    """A prunevid server refused a request or could not be reached (``prunevid ask``)."""


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (user-facing errors are one line)."""
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def read_json_object(path: Path, error: type[PruneVidError], what: str | None = None) -> dict[str, Any]:
    """Parse ``path`` as a JSON object; any failure raises ``error`` naming ``what`` (or the path)."""
    what = what or str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"cannot read {what}: {one_line(exc)}") from None
    if not isinstance(data, dict):
        raise error(f"{what} is not a JSON object")
    return data
