"""Write an output folder atomically: build it beside the target, then rename it into place.

An interrupted run leaves only a hidden ``.<name>.partial-*`` folder, never a folder that looks
complete, and a refused run changes nothing.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from prunevid.errors import ArtifactError


def check_target(out: Path, force: bool) -> None:
    """Refuse a non-empty ``out`` unless ``force``; refuse a file in its place."""
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ArtifactError(f"{out} is not empty; pass --force to replace it")


@contextlib.contextmanager
def atomic_dir(out: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder that replaces ``out`` when the block succeeds."""
    out = Path(out)
    check_target(out, force)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as exc:
        raise ArtifactError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.chmod(0o755)  # mkdtemp creates 0700
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
