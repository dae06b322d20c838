"""The progress helper: live steps on a terminal, silent elsewhere and when disabled."""

from __future__ import annotations

import io
import re
import time

from prunevid.progress import TICK_S, Progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_silent_when_not_a_terminal_or_disabled() -> None:
    for progress, stream in ((Progress(stream=(s := io.StringIO())), s),
                             (Progress(enabled=False, stream=(t := FakeTerminal())), t)):
        progress("exporting encoder")
        with progress.step("building"):
            pass
        progress.finish()
        assert stream.getvalue() == ""


def test_forced_on_a_log_prints_one_line_per_start_and_end() -> None:
    stream = io.StringIO()
    progress = Progress(enabled=True, stream=stream)
    progress("[1/2] exporting encoder")
    progress("[2/2] exporting merger")
    progress.finish()
    progress.finish()  # closing twice prints nothing more
    lines = stream.getvalue().splitlines()
    assert [line.split(" done in ")[0] for line in lines] == [
        "[1/2] exporting encoder ...", "[1/2] exporting encoder", "[2/2] exporting merger ...", "[2/2] exporting merger"]
    assert lines[1].endswith("s") and lines[3].endswith("s")


def test_terminal_redraws_the_step_with_elapsed_seconds() -> None:
    stream = FakeTerminal()
    progress = Progress(stream=stream)
    with progress.step("building the model"):
        time.sleep(3 * TICK_S)
    text = stream.getvalue()
    assert text.startswith("building the model ... 0s")
    assert text.count("\r\x1b[Kbuilding the model ... ") >= 2  # redrawn while it ran
    assert re.search(r"\r\x1b\[Kbuilding the model done in \d+\.\ds\n$", text), text
