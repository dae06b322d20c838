"""Stacked per-stage TTFT bars (bench_eager.py), and those beside decode vs its bandwidth bound (runtime benchmarks).

Usage: python benchmarks/plot_stages.py bench-runtime.json bench-runtime.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

STAGES = ("encoder", "merge", "prefill")


def _draw_stages(ax, results: dict, xlabel: str) -> None:
    """One horizontal bar per result on ``ax``, split into encoder / merge / prefill milliseconds."""
    for i, res in enumerate(results.values()):
        left = 0.0
        for j, stage in enumerate(STAGES):
            ms = res["timings_ms"].get(stage, 0.0)
            ax.barh(i, ms, left=left, color=f"C{j}", label=stage if i == 0 else None)
            left += ms
    ax.set_yticks(range(len(results)), [f"{name}\n{res['visual_tokens']['kept']} visual kept" for name, res in results.items()])
    ax.set_xlabel(xlabel)
    ax.legend(loc="best")


def stage_bars(results: dict, path: Path, xlabel: str) -> None:
    """One horizontal bar per result, split into encoder / merge / prefill milliseconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.7 * len(results)))
    _draw_stages(ax, results, xlabel)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def figures_plot(path: Path, title: str, configs: dict[str, dict], decode: dict[str, dict]) -> None:
    """Left: per-stage TTFT bars of ``configs`` ({name: summary}); right: decode ms/token of
    ``decode`` ({name: {"ms_per_token", "bound_ms_per_token"}}) beside its bandwidth bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 1.4 + 0.8 * max(len(configs), len(decode))),
                                      gridspec_kw={"width_ratios": [2, 1]})
    _draw_stages(left, configs, "time to first token (ms)")
    left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=3, fontsize="small")  # clear of the bars
    names = list(decode)
    right.barh([i + 0.2 for i in range(len(names))], [decode[n]["ms_per_token"] for n in names], height=0.4,
               color="C3", label="measured")
    right.barh([i - 0.2 for i in range(len(names))], [decode[n]["bound_ms_per_token"] for n in names], height=0.4,
               color="C7", label="bandwidth bound")
    right.set_yticks(range(len(names)), names)
    right.set_xlabel("decode ms / token")
    right.legend(loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=2, fontsize="small")  # under the axis
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    data = json.loads(Path(sys.argv[1]).read_text())
    stage_bars(data["results"], Path(sys.argv[2]), "time to first token (ms), CPU")


if __name__ == "__main__":
    main()
