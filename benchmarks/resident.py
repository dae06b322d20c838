"""Resident memory of a fresh runtime process: loads an export, answers twice (warm-up), prints
``{"rss_mb": ..., "hwm_mb": ...}`` (VmRSS now, VmHWM the process's peak) as one JSON line.

Usage: python benchmarks/resident.py EXPORT_DIR CLIP MODE THREADS NEW_TOKENS
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from common import QUESTION
from measure import open_pipeline


def status_mb(key: str) -> float:
    """A ``/proc/self/status`` field in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def main() -> None:
    export_dir, clip, mode, threads, new_tokens = sys.argv[1:6]
    pipe, _ = open_pipeline(Path(export_dir), mode, int(threads))
    for _ in range(2):
        pipe.run(clip, QUESTION, max_new_tokens=int(new_tokens))
    print(json.dumps({"rss_mb": status_mb("VmRSS"), "hwm_mb": status_mb("VmHWM")}))


if __name__ == "__main__":
    main()
