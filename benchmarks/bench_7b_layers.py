"""PruneVid vs the plain baseline at PLLaVA-7B's real widths, extrapolated from truncated depth.

The `pllava7b-slice` model has one CLIP ViT-L/14-336 layer (1024 wide, MLP 4096, 577 tokens per
frame), the 1024 -> 4096 -> 4096 projector and two LLaMA-7B layers (4096 wide, 32 heads, MLP 11008),
selection after layer 0. The runtime answers the real clip in three modes (PruneVid, merge only,
plain baseline), one mode after another so only one set of weights is resident; the merger runs at
C = 4096 and gives PruneVid's merged and kept counts. From the prefill times it derives the time of
one LLaMA-7B layer at the baseline's S, at PruneVid's S and at the kept count, and extrapolates TTFT
to PLLaVA-7B's 24 + 32 layers (K = 10): prefill 11 layers at PruneVid's S + 21 at the kept count vs
32 at the baseline's S; the encoder scaled by FLOPs at its measured rate (23 of 24 CLIP layers run);
the merger as measured. One run prints, for the measured slice and for the extrapolated 7B: TTFT
ratio, prefill time ratio vs its analytic FLOPs ratio, merger share, decode ms/token vs the bandwidth
bound measured on this machine, and (slice) resident memory vs weight bytes; writes JSON + PNG.

Usage: python benchmarks/bench_7b_layers.py [--threads N] [--repeats 2] [--warmup 1] [--quick]
           [--out benchmarks/bench-7b-layers.json] [--plot benchmarks/bench-7b-layers.png]
Needs about 2 GB of disk for the model and 4 GB for the export (in --cache) and ~8 GB of memory.
Speed is reported, never asserted.
"""

from __future__ import annotations

import argparse

from measure import (add_options, bandwidth, export_bytes, extrapolate, figures, machine, measure_modes, prepare,
                     report, resident_memory, write_json)

def main() -> None:
    from prunevid import costs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(parser, "bench-7b-layers", layer=0)
    # shorter than bench_runtime: sessions are created before any answer, so one warm-up answer per mode
    # reaches steady state, and two repeats of prefills of seconds each (not three, at tens of ms)
    parser.set_defaults(repeats=2, warmup=1)
    args = parser.parse_args()
    cfg, _, export_dir, clip = prepare(args, "pllava7b-slice")

    results, applied = measure_modes(export_dir, ("prunevid", "merge", "none"), clip, repeats=args.repeats,
                                     warmup=args.warmup, new_tokens=args.new_tokens, threads=args.threads,
                                     interleave=False)
    write_json(args.out, {"partial": True, "results": results})  # kept if a later step fails
    memory = resident_memory(export_dir, clip, {"prunevid": "prunevid", "baseline": "none"}, args, warmups=1)
    bw = bandwidth(args.bandwidth_mib, args.threads or 1)
    measured = figures(results["prunevid"], results["none"], cfg, args.layer, bw["gbs"], memory)
    measured["export_bytes"] = export_bytes(export_dir)
    target, per_layer = extrapolate(results, cfg, args.layer, costs.PLLAVA_7B, costs.PLLAVA_7B_LAYER, bw["gbs"])
    full = figures(target["prunevid"], target["none"], costs.PLLAVA_7B, costs.PLLAVA_7B_LAYER, bw["gbs"])
    summary = {
        "benchmark": "bench_7b_layers", "geometry": args.geometry, "clip": clip.name,
        "machine": machine(args.threads, applied),
        "settings": {"repeats": args.repeats, "warmup": args.warmup, "new_tokens": args.new_tokens, "layer": args.layer,
                     "target_layer": costs.PLLAVA_7B_LAYER},
        "bandwidth": bw, "per_layer": per_layer, "figures": full, "measured_slice_figures": measured,
        "results": results, "extrapolated": target,
    }
    write_json(args.out, summary)
    report(f"measured: {args.geometry}, {cfg.text.num_hidden_layers} LLM layers, K = {args.layer} "
           f"({summary['machine']['cpu']}, threads {args.threads or 'default'})", measured)
    lay = per_layer["llm_layer_ms"]
    print(f"per LLM layer: {lay['baseline']:.1f} ms at S = {full['tokens']['prefill']['baseline']}, "
          f"{lay['prunevid_merged']:.1f} ms at S = {full['tokens']['prefill']['prunevid']}, "
          f"{lay['prunevid_kept']:.1f} ms at {full['tokens']['kept']} kept (selection included); "
          f"per CLIP layer {per_layer['vision_layer_ms']:.1f} ms (FLOPs share of the encoder)")
    if min(lay.values()) <= 0:
        print("WARNING: a per-layer time came out <= 0: the timings are noisier than the layer difference; "
              "re-run on a quiet machine or with more --repeats")
    report(f"extrapolated to PLLaVA-7B: 23 of 24 CLIP layers + 32 LLaMA layers, K = {costs.PLLAVA_7B_LAYER}", full)
    if args.plot:
        from plot_stages import figures_plot

        figures_plot(args.plot, "PLLaVA-7B widths, TTFT extrapolated from measured layers, CPU",
                     {"PruneVid (7B, extrapolated)": target["prunevid"], "plain baseline (7B, extrapolated)": target["none"]},
                     {f"{name} (slice)": d for name, d in measured["decode"].items()})
    print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))


if __name__ == "__main__":
    main()
