"""Exported merger (ONNX Runtime, CPU) against the eager merger, measured interleaved.

    python benchmarks/merger_speed.py [--hidden 768 4096] [--repeats 7] [--threads 1]

On one near-static clip of 16 x 144 tokens per width, each repeat runs, in an order rotated per
repeat: the exported merger with the ONNX Runtime function bodies (DPC-KNN on the longest real
group), with the TensorRT variant's padded bodies, and the eager reference. Prints the median wall
time of each (after one warm-up run of each) and the ratio exported / eager. ``--threads 0`` is
each library's default pool.
"""

from __future__ import annotations

import argparse
import statistics
import time


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


def main() -> None:
    import onnxruntime as ort
    import torch

    from prunevid.config import PruneConfig
    from prunevid.exporter.merger import merger_onnx
    from prunevid.pruning import merge_video_tokens

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[768, 4096])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    cfg = PruneConfig()
    default_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    for c in args.hidden:
        gen = torch.Generator().manual_seed(c)
        video = torch.randn(16, 144, c, generator=gen)
        video[8:] += torch.randn(1, 1, c, generator=gen)  # two scenes
        video[:, :60] = video[:1, :60] + 0.05 * torch.randn(16, 60, c, generator=gen)  # static area
        feeds = {"visual_features": video.numpy()}
        fns = {}
        for label, padded in (("onnxruntime", False), ("onnxruntime padded (TensorRT bodies)", True)):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            sess = ort.InferenceSession(merger_onnx(cfg, 16, 144, c, padded=padded), opts,
                                        providers=["CPUExecutionProvider"])
            fns[label] = lambda sess=sess: sess.run(None, feeds)
        fns["eager"] = lambda: merge_video_tokens(video)
        row = interleaved_ms(fns, args.repeats)
        text = ", ".join(f"{k} {v:.1f} ms" for k, v in row.items())
        print(f"16x144x{c} (threads={args.threads or 'default'}): {text}; "
              f"onnxruntime / eager {row['onnxruntime'] / row['eager']:.2f}", flush=True)
    torch.set_num_threads(default_threads)


if __name__ == "__main__":
    main()
