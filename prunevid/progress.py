"""Progress of long steps on stderr: one live line per step with its elapsed seconds.

A :class:`Progress` is the ``progress`` callable the long-running functions take (``export``, the
model builder, later engine builds and calibration): calling it with a message starts a new step and
closes the previous one with its duration. On a terminal the current step's line is redrawn with the
elapsed time while it runs; it is silent when disabled (``--json``) or when the stream is not a
terminal, so logs and pipes stay clean. Torch-free.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

TICK_S = 0.25


class Progress:
    """Step-by-step progress; ``progress("exporting encoder")`` starts a step.

    Args:
        enabled: ``None`` (default) shows progress only when ``stream`` is a terminal; ``False``
            silences it (``--json``); ``True`` forces it on (tests, or a caller that knows better).
        stream: where to write (defaults to ``sys.stderr`` at construction).
    """

    def __init__(self, enabled: bool | None = None, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.live = bool(isatty and isatty())
        self.enabled = self.live if enabled is None else enabled
        self._lock = threading.Lock()
        self._step: str | None = None
        self._start = 0.0
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __call__(self, message: str) -> None:
        """Close the current step (with its duration) and start ``message``."""
        self.finish()
        if not self.enabled:
            return
        with self._lock:
            self._step, self._start = message, time.monotonic()
            self._write(self._line(), end="" if self.live else "\n")
        if self.live:
            self._stop = threading.Event()
            self._ticker = threading.Thread(target=self._tick, args=(self._stop,), daemon=True)
            self._ticker.start()

    def finish(self) -> None:
        """Close the current step, if any: ``<step> done in X.Xs`` on its line."""
        if self._ticker is not None:
            self._stop.set()
            self._ticker.join()
            self._ticker = None
        with self._lock:
            if self._step is None:
                return
            elapsed = time.monotonic() - self._start
            prefix = "\r\x1b[K" if self.live else ""
            self._write(f"{prefix}{self._step} done in {elapsed:.1f}s")
            self._step = None

    @contextmanager
    def step(self, message: str) -> Iterator[None]:
        """``with progress.step("building the model"):`` one step around an opaque call."""
        self(message)
        try:
            yield
        finally:
            self.finish()

    def _line(self) -> str:
        return f"{self._step} ... {time.monotonic() - self._start:.0f}s" if self.live else f"{self._step} ..."

    def _tick(self, stop: threading.Event) -> None:
        while not stop.wait(TICK_S):
            with self._lock:
                if self._step is not None:
                    self._write(f"\r\x1b[K{self._line()}", end="")

    def _write(self, text: str, end: str = "\n") -> None:
        self.stream.write(text + end)
        self.stream.flush()


def silent() -> Progress:
    """A progress that prints nothing (the default of library calls)."""
    return Progress(enabled=False)
