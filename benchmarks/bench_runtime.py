"""Runtime benchmark on the `bench` geometry: PruneVid vs the plain baseline on one export.

The `bench` model has PLLaVA-7B's token geometry (16 frames of 12 x 12 = 2304 visual tokens), a
32-layer 768-wide LLM (K = 10) and a vision tower whose FLOPs are the same share of the unpruned
TTFT as CLIP ViT-L/14-336's in PLLaVA-7B (prunevid.costs). One run prints: TTFT ratio (PruneVid /
plain baseline), prefill time ratio vs its analytic FLOPs ratio, merger share of TTFT, decode ms/token
vs the bandwidth bound measured on this machine, resident memory vs weight bytes; writes JSON + PNG.

Usage: python benchmarks/bench_runtime.py [--threads N] [--repeats 3] [--quick]
           [--out benchmarks/bench-runtime.json] [--plot benchmarks/bench-runtime.png]
Builds (once, in --cache, default $PRUNEVID_CACHE or ~/.cache/prunevid) the random model and its
export. Modes are interleaved, order rotated per repeat. Speed is reported, never asserted.
"""

from __future__ import annotations

import argparse

from measure import (add_options, bandwidth, export_bytes, figures, machine, measure_modes, prepare, report,
                     resident_memory, write_json)

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(parser, "bench-runtime", layer=10)  # PLLaVA's K
    args = parser.parse_args()
    cfg, _, export_dir, clip = prepare(args, "bench")

    results, applied = measure_modes(export_dir, ("prunevid", "none"), clip, repeats=args.repeats, warmup=args.warmup,
                                     new_tokens=args.new_tokens, threads=args.threads, interleave=True)
    write_json(args.out, {"partial": True, "results": results})  # kept if a later step fails
    memory = resident_memory(export_dir, clip, {"prunevid": "prunevid", "baseline": "none"}, args)
    bw = bandwidth(args.bandwidth_mib, args.threads or 1)
    pv, base = results["prunevid"], results["none"]
    figs = figures(pv, base, cfg, args.layer, bw["gbs"], memory)
    figs["export_bytes"] = export_bytes(export_dir)
    summary = {
        "benchmark": "bench_runtime", "geometry": args.geometry, "clip": clip.name,
        "machine": machine(args.threads, applied),
        "settings": {"repeats": args.repeats, "warmup": args.warmup, "new_tokens": args.new_tokens, "layer": args.layer},
        "bandwidth": bw, "figures": figs,
        "ttft_ratio_per_repeat": [p / b for p, b in zip(pv["ttft_ms_per_repeat"], base["ttft_ms_per_repeat"])],
        "results": results,
    }
    write_json(args.out, summary)
    report(f"runtime, {args.geometry} geometry ({summary['machine']['cpu']}, threads {args.threads or 'default'})", figs)
    print(f"export folder {figs['export_bytes'] / 2**20:.0f} MB vs weights {figs['weight_bytes'] / 2**20:.0f} MB "
          f"({100 * (figs['export_bytes'] / figs['weight_bytes'] - 1):+.2f}%, tokenizer and merger included)")
    print("bandwidth: " + ", ".join(f"{k} {v['gbs']:.1f} GB/s (in cache {v['in_cache_gbs']:.1f})"
                                    for k, v in bw["kernels"].items()) + f"; bound uses {bw['kernel']}")
    if args.plot:
        from plot_stages import figures_plot

        figures_plot(args.plot, f"runtime, {args.geometry} geometry, CPU", {"PruneVid": pv, "plain baseline": base},
                     figs["decode"])
    print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))


if __name__ == "__main__":
    main()
