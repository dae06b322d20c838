"""What a run reports: the answer, token ids, visual token counts and per-stage timings.

Shared by the eager reference and the runtime so ``prunevid run --json`` prints the same object
whichever backend answered. Torch-free.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Answer:
    """What ``prunevid run`` reports (``to_json`` is the ``--json`` output)."""

    answer: str
    token_ids: list[int]
    visual_tokens: dict[str, int]
    timings_ms: dict[str, float]
    prompt_tokens: dict[str, int]
    segments: dict[str, list[int]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def ttft_ms(self) -> float:
        t = self.timings_ms
        return t["encoder"] + t["merge"] + t["prefill"]

    def to_json(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "token_ids": self.token_ids,
            "visual_tokens": self.visual_tokens,
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "ttft_ms": round(self.ttft_ms, 3),
            "prompt_tokens": self.prompt_tokens,
            "segments": self.segments,
            "settings": self.settings,
        }


class Stopwatch:
    """Named wall-clock stages in milliseconds."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - t0) * 1e3


