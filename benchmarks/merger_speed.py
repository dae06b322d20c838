"""Exported merger (ONNX Runtime, CPU) against the eager merger, measured interleaved.

    python benchmarks/merger_speed.py [--hidden 768 4096] [--repeats 7] [--threads 1]
                                      [--json benchmarks/merger-speed.json]

Four synthetic 16 x 144-token clips per width, chosen to move the work around: ``random`` (every
token dynamic, every frame's group clustered), ``two scenes`` (a cut at frame 8, 60 of 144 locations
still), ``four scenes`` (cuts at 4, 8, 12, 100 locations still: static groups larger than dynamic
ones) and ``still`` (one scene: nearly every location static). Each repeat runs the exported merger
(ONNX Runtime, the prunevid ops' function bodies) and the eager reference, in an order rotated per
repeat. Prints the median wall time of each (after one warm-up run of each) and the ratio exported
/ eager; writes them as JSON with the machine, and a plot beside it. ``--threads 0`` is each
library's default pool.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

CLIPS = ("random", "two scenes", "four scenes", "still")


def interleaved_ms(fns: dict, repeats: int) -> dict[str, float]:
    """Median ms of each callable over ``repeats`` rounds, the order rotated each round."""
    names = list(fns)
    for name in names:
        fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            fns[name]()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def clip(kind: str, hidden: int, frames: int = 16, tokens: int = 144):
    """One synthetic ``[frames, tokens, hidden]`` clip of the given kind (see the module docstring)."""
    import torch

    gen = torch.Generator().manual_seed(hidden)
    if kind == "still":
        return torch.randn(1, tokens, hidden, generator=gen) + 0.1 * torch.randn(frames, tokens, hidden, generator=gen)
    video = torch.randn(frames, tokens, hidden, generator=gen)
    cuts, still = {"random": ((), 0), "two scenes": ((8,), 60), "four scenes": ((4, 8, 12), 100)}[kind]
    for cut in cuts:
        video[cut:] += 2 * torch.randn(1, 1, hidden, generator=gen)
    video[:, :still] = video[:1, :still] + 0.05 * torch.randn(frames, still, hidden, generator=gen)
    return video


def plot(rows: list[dict], path: Path) -> None:
    """Grouped bars: ms per clip and width, exported / eager."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = sorted({r["hidden"] for r in rows})
    fig, axes = plt.subplots(1, len(widths), figsize=(5 * len(widths), 3.6), squeeze=False)
    for ax, c in zip(axes[0], widths):
        sub = [r for r in rows if r["hidden"] == c]
        for j, (key, label) in enumerate((("onnxruntime_ms", "exported merger (ONNX Runtime)"),
                                          ("eager_ms", "eager reference (torch)"))):
            ax.bar([i + 0.4 * (j - 0.5) for i in range(len(sub))], [r[key] for r in sub], width=0.4,
                   color=f"C{j}", label=label)
        ax.set_xticks(range(len(sub)), [f"{r['clip']}\n{r['merged_tokens']} tokens" for r in sub], fontsize=8)
        ax.set_title(f"16 x 144 x {c}, one thread")
        ax.set_ylabel("ms (median)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=120)


def main() -> None:
    import numpy as np
    import onnxruntime as ort
    import torch

    from measure import machine
    from prunevid.config import PruneConfig
    from prunevid.exporter.merger import merger_onnx
    from prunevid.pruning import merge_video_tokens

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[768, 4096])
    parser.add_argument("--clips", nargs="+", choices=CLIPS, default=list(CLIPS))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="write the results here (and a .png beside it)")
    args = parser.parse_args()
    cfg = PruneConfig()
    default_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for c in args.hidden:
        opts = ort.SessionOptions()
        if args.threads:
            opts.intra_op_num_threads = args.threads
        session = ort.InferenceSession(merger_onnx(cfg, 16, 144, c), opts, providers=["CPUExecutionProvider"])
        for kind in args.clips:
            video = clip(kind, c)
            feeds = {"visual_features": video.numpy()}
            fns = {"onnxruntime": lambda feeds=feeds: session.run(None, feeds),
                   "eager": lambda video=video: merge_video_tokens(video)}
            ms = interleaved_ms(fns, args.repeats)
            ref = merge_video_tokens(video)
            got = session.run(None, feeds)
            groups = [n for n_s, n_d, w in zip(ref.static_sizes, ref.dynamic_sizes, ref.window_sizes)
                      for n in [n_s] + [n_d // w] * w]  # token order: static of s, then its frames
            same = (int(got[1]) == ref.num_tokens and (got[4] == ref.token_of_cell.numpy()).all()
                    and np.allclose(got[0][: ref.num_tokens], ref.tokens.numpy(), atol=1e-5, rtol=0)
                    and not got[0][ref.num_tokens:].any()
                    and got[2].tolist() == groups + [0] * (len(got[2]) - len(groups))
                    and [int(w) for w in got[3] if w > 0] == ref.window_sizes)
            row = {"hidden": c, "clip": kind, "segments": ref.window_sizes, "merged_tokens": ref.num_tokens,
                   "same_tokens_as_eager": bool(same),
                   "onnxruntime_ms": ms["onnxruntime"], "eager_ms": ms["eager"],
                   "exported_over_eager": ms["onnxruntime"] / ms["eager"]}
            rows.append(row)
            print(f"16x144x{c} {kind:12s} segments {ref.window_sizes} -> {ref.num_tokens} tokens "
                  f"(all outputs as eager's: {row['same_tokens_as_eager']}): onnxruntime {ms['onnxruntime']:.1f} ms, "
                  f"eager {ms['eager']:.1f} ms; "
                  f"onnxruntime / eager {row['exported_over_eager']:.2f}", flush=True)
    torch.set_num_threads(default_threads)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"benchmark": "merger_speed", "repeats": args.repeats,
                                         "machine": machine(args.threads, True), "results": rows}, indent=2) + "\n")
        plot(rows, args.json.with_suffix(".png"))
        print(f"wrote {args.json} and {args.json.with_suffix('.png')}")


if __name__ == "__main__":
    main()
