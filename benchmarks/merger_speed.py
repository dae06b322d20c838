"""Exported merger (ONNX Runtime, CPU, 1 thread and the default pool) against the eager merger.

    python benchmarks/merger_speed.py [--hidden 768 4096] [--repeats 7]

Prints the median wall time of each over ``--repeats`` runs on one near-static clip of 16 x 144
tokens per width (after one warm-up run).
"""

from __future__ import annotations

import argparse
import statistics
import time


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    import onnxruntime as ort
    import torch

    from prunevid.config import PruneConfig
    from prunevid.exporter.merger import merger_onnx
    from prunevid.pruning import merge_video_tokens

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[768, 4096])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    cfg = PruneConfig()
    for c in args.hidden:
        gen = torch.Generator().manual_seed(c)
        video = torch.randn(16, 144, c, generator=gen)
        video[8:] += torch.randn(1, 1, c, generator=gen)  # two scenes
        video[:, :60] = video[:1, :60] + 0.05 * torch.randn(16, 60, c, generator=gen)  # static area
        model = merger_onnx(cfg, 16, 144, c)
        feeds = {"visual_features": video.numpy()}
        row = {}
        for threads in (1, 0):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
            row[f"onnxruntime threads={threads or 'default'}"] = median_ms(lambda: sess.run(None, feeds), args.repeats)
        for threads in (1, 0):
            if threads:
                default = torch.get_num_threads()
                torch.set_num_threads(1)
            row[f"eager threads={threads or 'default'}"] = median_ms(lambda: merge_video_tokens(video), args.repeats)
            if threads:
                torch.set_num_threads(default)
        print(f"16x144x{c}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
