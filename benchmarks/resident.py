"""Resident memory of a fresh runtime process at defined points, printed as one JSON line:

* ``base_mb``: after the runtime's imports (numpy, ONNX Runtime, tokenizers), before any graph;
* ``loaded_mb``: after every session is created (weights loaded, prepacked, heap trimmed);
* ``rss_mb``: between answers, after WARMUPS (default 2) warm-up answers (the last answer's KV block
  already returned);
* ``decode_peak_mb``: the largest VmRSS sampled at every token of a third answer (its KV block
  allocated and being filled), to compare with weights + ``kv_alloc_bytes``, that answer's block
  (``2 N H_kv R d`` elements, ``R`` = rows kept + new tokens - 1);
* ``hwm_mb``: VmHWM, the process's peak (loading and the prompt's activations included).

Usage: python benchmarks/resident.py EXPORT_DIR CLIP MODE THREADS NEW_TOKENS [WARMUPS]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from common import QUESTION

PAGE = os.sysconf("SC_PAGE_SIZE")


def status_mb(key: str) -> float:
    """A ``/proc/self/status`` field in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def rss_mb() -> float:
    """VmRSS in MB from ``/proc/self/statm`` (cheap enough to read at every token)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def main() -> None:
    export_dir, clip, mode, threads, new_tokens = sys.argv[1:6]
    warmups = int(sys.argv[6]) if len(sys.argv) > 6 else 2
    import numpy as np
    import onnxruntime  # noqa: F401
    import tokenizers  # noqa: F401

    from measure import open_pipeline

    base = rss_mb()
    pipe, _ = open_pipeline(Path(export_dir), mode, int(threads))
    loaded = rss_mb()
    for _ in range(warmups):
        pipe.run(clip, QUESTION, max_new_tokens=int(new_tokens))
    between = rss_mb()
    samples: list[float] = []
    answer = pipe.run(clip, QUESTION, max_new_tokens=int(new_tokens), on_token=lambda _: samples.append(rss_mb()))
    g = pipe.geometry
    rows = answer.prompt_tokens["kept"] + max(int(new_tokens) - 1, 0)
    kv = 2 * g.num_layers * g.kv_heads * rows * g.head_dim * np.dtype(pipe.float_type).itemsize
    print(json.dumps({"base_mb": base, "loaded_mb": loaded, "rss_mb": between, "decode_peak_mb": max(samples),
                      "kv_rows": rows, "kv_alloc_bytes": kv, "hwm_mb": status_mb("VmHWM")}))


if __name__ == "__main__":
    main()
