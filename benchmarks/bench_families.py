"""Families side by side on the runtime: PLLaVA and LLaVA-OneVision token counts at each stage and the
TTFT ratio (PruneVid / unpruned baseline), each at its own token geometry.

Rows: PLLaVA `medium` (16 frames of 12 x 12 = 2304 visual tokens) and LLaVA-OneVision `ov32`
(32 frames of 14 x 14 = 6272 visual tokens + the newline row), both with the tiny towers and the
tiny 12-layer 64-wide LLM (K = 10), so the TTFT ratio here says how much of the prompt pruning
removes, not what a 7B model gains (see bench_runtime.py for a compute-representative geometry).
Token counts are exact; times are medians of --repeats answers, modes interleaved.

Usage: python benchmarks/bench_families.py [--repeats 3] [--quick] [--out benchmarks/bench-families.json]
--quick uses the `tiny` geometry of both families and one repeat (checks the script end to end).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

from common import DEFAULT_CACHE, bench_clip
from measure import ROOT, machine, measure_modes, source_digest, write_json

ROWS = (("pllava", "medium"), ("llava-onevision", "ov32"))
QUICK_ROWS = (("pllava", "tiny"), ("llava-onevision", "tiny"))


def model_and_export(cache: Path, family: str, geometry: str) -> tuple[Path, Path]:
    """The random model of ``family`` at ``geometry`` and its default export, built on first use."""
    from prunevid.config import PruneConfig
    from prunevid.exporter.export import ExportOptions, export
    from prunevid.model.tiny import TINY_MODELS, make_tiny

    digest = hashlib.sha256(repr(TINY_MODELS[family][geometry]).encode()).hexdigest()[:10]
    model = cache / f"{geometry}-{family}-{digest}"
    if not (model / "config.json").is_file():
        print(f"building {family} ({geometry}) in {model} ...", file=sys.stderr)
        make_tiny(model, geometry=geometry, model=family, force=True)
    out = cache / f"{model.name}-export-{source_digest()}"
    if not (out / "manifest.json").is_file():
        print(f"exporting into {out} ...", file=sys.stderr)
        export(model, out, PruneConfig(), ExportOptions(), force=True, progress=lambda m: print(m, file=sys.stderr))
    return model, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = QUICK_ROWS if args.quick else ROWS
    if args.quick:
        args.repeats, args.warmup, args.new_tokens = 1, 0, 4
    out = args.out or (args.cache / "bench-families-quick.json" if args.quick else ROOT / "benchmarks/bench-families.json")
    clip = bench_clip(args.cache)
    exports = [model_and_export(args.cache, family, geometry)[1] for family, geometry in rows]  # all built first
    load_at_start = os.getloadavg()  # the machine is shared: the load says how much to trust the times
    table = []
    for (family, geometry), export_dir in zip(rows, exports):
        results, _ = measure_modes(export_dir, ("prunevid", "none"), clip, repeats=args.repeats, warmup=args.warmup,
                                   new_tokens=args.new_tokens, threads=0, interleave=True)
        pv, base = results["prunevid"], results["none"]
        table.append({"family": family, "geometry": geometry, "visual_tokens": pv["visual_tokens"],
                      "prompt_tokens": {"prunevid": pv["prompt_tokens"], "none": base["prompt_tokens"]},
                      "ttft_ms": {"prunevid": pv["ttft_ms"], "none": base["ttft_ms"]},
                      "ttft_ms_per_repeat": {"prunevid": pv["ttft_ms_per_repeat"], "none": base["ttft_ms_per_repeat"]},
                      "timings_ms": {"prunevid": pv["timings_ms"], "none": base["timings_ms"]},
                      "ttft_ratio": pv["ttft_ms"] / base["ttft_ms"]})
    write_json(out, {"benchmark": "bench_families", "clip": clip.name, "repeats": args.repeats,
                     "new_tokens": args.new_tokens, "machine": {**machine(0, False), "load_average_at_start": load_at_start},
                     "rows": table})
    print(f"{'family':16s} {'geometry':8s} {'encoder':>8s} {'merged':>7s} {'kept':>6s} {'prefill':>8s} "
          f"{'kept rows':>9s} {'TTFT ratio':>10s}")
    for r in table:
        v, p = r["visual_tokens"], r["prompt_tokens"]["prunevid"]
        print(f"{r['family']:16s} {r['geometry']:8s} {v['encoder']:8d} {v['merged']:7d} {v['kept']:6d} "
              f"{p['prefill']:8d} {p['kept']:9d} {r['ttft_ratio']:10.2f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
