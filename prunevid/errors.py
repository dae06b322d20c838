"""Typed, user-facing errors.

Every failure a user can cause (a bad file, a bad folder, an impossible setting) raises a
subclass of :class:`PruneVidError`. The CLI prints ``Error: <message>`` on one line and exits
with status 1 for these; anything else is a bug and keeps its traceback.
"""


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
