"""Eager-reference benchmark: PruneVid vs the unpruned baseline on PLLaVA-7B's token geometry.

Builds (once, in a cache folder) a random PLLaVA with 16 frames of 12 x 12 = 2304 visual tokens and
a ~230M-parameter, 32-layer LLM (K = 10, PLLaVA's relative depth), then measures in one run:

* TTFT with PruneVid / TTFT without (encoder + merge + prefill; video decoding excluded),
* the share of TTFT spent merging (stages A-C),
* visual tokens at each stage.

Usage: python benchmarks/bench_eager.py [--repeats 3] [--out bench-eager.json] [--plot bench-eager.png]
Speed is reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
from common import DEFAULT_CACHE, bench_clip, bench_model, median_runs

from prunevid.config import Mode, PruneConfig
from prunevid.reference import EagerPipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=Path("bench-eager.json"))
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()

    clip = bench_clip(args.cache)
    mdir = bench_model(args.cache)
    results = {}
    for mode in (Mode.PRUNEVID, Mode.NONE):
        print(f"measuring {mode.value} ...", file=sys.stderr)
        results[mode.value] = median_runs(EagerPipeline(mdir, PruneConfig(mode=mode)), clip, args.repeats)

    pv, base = results["prunevid"], results["none"]
    summary = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "clip": clip.name,
        "ttft_ratio_prunevid_over_baseline": pv["ttft_ms"] / base["ttft_ms"],
        "prefill_ratio_prunevid_over_baseline": pv["timings_ms"]["prefill"] / base["timings_ms"]["prefill"],
        "merge_share_of_ttft": pv["timings_ms"]["merge"] / pv["ttft_ms"],
        "results": results,
    }
    args.out.write_text(json.dumps(summary, indent=2))
    if args.plot:
        from plot_stages import stage_bars

        stage_bars(results, args.plot, "time to first token (ms), eager PyTorch, CPU")
    vt = pv["visual_tokens"]
    print(f"visual tokens: encoder {vt['encoder']} -> merged {vt['merged']} -> kept {vt['kept']} "
          f"({100 * vt['kept'] / vt['encoder']:.1f}% retained)")
    print(f"TTFT  PruneVid {pv['ttft_ms']:.0f} ms / baseline {base['ttft_ms']:.0f} ms = "
          f"{summary['ttft_ratio_prunevid_over_baseline']:.3f}")
    print(f"prefill PruneVid / baseline = {summary['prefill_ratio_prunevid_over_baseline']:.3f}")
    print(f"merge share of PruneVid TTFT = {100 * summary['merge_share_of_ttft']:.1f}%")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
