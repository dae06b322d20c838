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
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

from prunevid.config import Mode, PruneConfig
from prunevid.model.tiny import make_tiny
from prunevid.reference import EagerPipeline
from prunevid.runtime.video import bundled_clips, write_synthetic_clip

QUESTION = "What are the people riding, in which direction do they move, and what is in the background?"


def model_dir(cache: Path) -> Path:
    path = cache / "bench-pllava"
    if not (path / "config.json").is_file():
        print(f"building the bench-geometry model in {path} ...", file=sys.stderr)
        make_tiny(path, geometry="bench", force=True)
    return path


def measure(pipe: EagerPipeline, clip: Path, repeats: int) -> dict:
    runs = [pipe.run(clip, QUESTION, max_new_tokens=8) for _ in range(repeats + 1)][1:]  # first is warm-up
    med = {k: statistics.median(r.timings_ms[k] for r in runs) for k in runs[0].timings_ms}
    return {
        "timings_ms": med,
        "ttft_ms": statistics.median(r.ttft_ms for r in runs),
        "visual_tokens": runs[0].visual_tokens,
        "prompt_tokens": runs[0].prompt_tokens,
        "token_ids": runs[0].token_ids,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("PRUNEVID_CACHE", Path.home() / ".cache/prunevid")))
    parser.add_argument("--out", type=Path, default=Path("bench-eager.json"))
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()

    clips = bundled_clips()
    clip = clips.get("bikes") or write_synthetic_clip(args.cache / "synthetic_scene_cut.mp4")
    mdir = model_dir(args.cache)
    results = {}
    for mode in (Mode.PRUNEVID, Mode.NONE):
        print(f"measuring {mode.value} ...", file=sys.stderr)
        results[mode.value] = measure(EagerPipeline(mdir, PruneConfig(mode=mode)), clip, args.repeats)

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
