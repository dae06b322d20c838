"""Import a script of ``benchmarks/`` from a test, as the scripts import each other."""

from __future__ import annotations

import contextlib
import importlib
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@contextlib.contextmanager
def benchmark_script(name: str):
    """``benchmarks/<name>.py`` as a module, with its folder on ``sys.path`` while in use (for its
    sibling imports such as ``common``)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))
