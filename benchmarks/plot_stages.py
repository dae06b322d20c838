"""Stacked per-stage TTFT bars from a benchmark JSON (bench_eager.py or bench_runtime.py).

Usage: python benchmarks/plot_stages.py bench-runtime.json bench-runtime.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

STAGES = ("encoder", "merge", "prefill")


def stage_bars(results: dict, path: Path, xlabel: str) -> None:
    """One horizontal bar per result, split into encoder / merge / prefill milliseconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.7 * len(results)))
    for i, res in enumerate(results.values()):
        left = 0.0
        for j, stage in enumerate(STAGES):
            ms = res["timings_ms"].get(stage, 0.0)
            ax.barh(i, ms, left=left, color=f"C{j}", label=stage if i == 0 else None)
            left += ms
    labels = [f"{name}\n{res['visual_tokens']['kept']} visual kept" for name, res in results.items()]
    ax.set_yticks(range(len(results)), labels)
    ax.set_xlabel(xlabel)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    data = json.loads(Path(sys.argv[1]).read_text())
    stage_bars(data["results"], Path(sys.argv[2]), "time to first token (ms), CPU")


if __name__ == "__main__":
    main()
