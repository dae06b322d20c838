"""Runtime benchmark on PLLaVA-7B's token geometry: ONNX Runtime vs the eager reference, PruneVid vs
the unpruned baseline on the same export, the merger's share, peak memory, and the analytic FLOPs
ratio of the prefill for the token counts actually kept.

Usage: python benchmarks/bench_runtime.py [--repeats 3] [--out bench-runtime.json]
Builds (once, in $PRUNEVID_CACHE or ~/.cache/prunevid) the random `bench` model (32-layer, 768-wide
LLM, 16 frames of 12 x 12 visual tokens, K = 10) and its export. Speed is reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from common import DEFAULT_CACHE, QUESTION, bench_clip, bench_model, median_runs


def ensure_model_and_export(cache: Path) -> tuple[Path, Path]:
    from prunevid.config import PruneConfig
    from prunevid.exporter.export import ExportOptions, export

    model = bench_model(cache)
    out = cache / "bench-pllava-export"
    if not (out / "manifest.json").is_file():
        export(model, out, PruneConfig(), ExportOptions(), force=True, progress=lambda m: print(m, file=sys.stderr))
    return model, out


def peak_rss_mb(export_dir: Path, clip: Path, mode: str) -> dict[str, float]:
    """Resident memory of a fresh process: after loading the graphs, and the peak while answering.

    The peak counter (VmHWM) is reset after loading (``/proc/self/clear_refs``), so the answering
    peak is not hidden by the one-time cost of building the ONNX Runtime sessions.
    """
    code = (
        "import sys\n"
        "from prunevid.runtime.pipeline import RuntimePipeline\n"
        "def status(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key): return int(line.split()[1]) / 1024\n"
        "pipe = RuntimePipeline(sys.argv[1], mode=sys.argv[3])\n"
        "pipe.run(sys.argv[2], sys.argv[4], max_new_tokens=8)\n"
        "loaded = status('VmRSS')\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "pipe.run(sys.argv[2], sys.argv[4], max_new_tokens=8)\n"
        "print(loaded, status('VmHWM'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(export_dir), str(clip), mode, QUESTION],
                         capture_output=True, text=True, check=True)
    loaded, peak = map(float, out.stdout.strip().splitlines()[-1].split())
    return {"resident_after_warmup_mb": loaded, "peak_while_answering_mb": peak, "answer_increase_mb": peak - loaded}


def prefill_flops(g: dict, seq: int, kept: int, pruned: bool) -> float:
    """Multiply-adds x 2 of the prefill: projections and MLP per token, attention per token pair."""
    c, layers, k = g["hidden"], g["num_layers"], g["layer"]
    heads_dim = g["kv_heads"] * g["head_dim"]
    inter = g.get("intermediate", 4 * c)
    per_token = 2 * (2 * c * c + 2 * c * heads_dim + 3 * c * inter)  # q, o, k, v, gate/up/down

    def layer(n: int) -> float:
        return per_token * n + 2 * 2 * n * n * c / 2  # causal QK^T and AV: about n^2/2 pairs

    if not pruned:
        return layers * layer(seq)
    scoring = 2 * (seq - kept) * seq * c  # question rows x all keys at layer K (upper bound on rows)
    return (k + 1) * layer(seq) + (layers - k - 1) * layer(kept) + scoring


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=Path("bench-runtime.json"))
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from prunevid.config import Mode, PruneConfig
    from prunevid.reference import EagerPipeline
    from prunevid.runtime.pipeline import RuntimePipeline

    clip = bench_clip(args.cache)
    model_dir, export_dir = ensure_model_and_export(args.cache)
    results = {}
    for mode in ("prunevid", "none"):
        print(f"runtime {mode} ...", file=sys.stderr)
        results[f"runtime-{mode}"] = median_runs(RuntimePipeline(export_dir, mode=mode), clip, args.repeats)
        print(f"eager {mode} ...", file=sys.stderr)
        results[f"eager-{mode}"] = median_runs(EagerPipeline(model_dir, PruneConfig(mode=Mode(mode))), clip, args.repeats)
    memory = {mode: peak_rss_mb(export_dir, clip, mode) for mode in ("prunevid", "none")}

    manifest = json.loads((export_dir / "manifest.json").read_text())
    geo = {**manifest["geometry"], "intermediate": json.loads((model_dir / "config.json").read_text())["text_config"]["intermediate_size"]}
    rp, rn = results["runtime-prunevid"], results["runtime-none"]
    flops = prefill_flops(geo, rp["prompt_tokens"]["prefill"], rp["prompt_tokens"]["kept"], True) / prefill_flops(
        geo, rn["prompt_tokens"]["prefill"], rn["prompt_tokens"]["prefill"], False)
    prefill_ratio = rp["timings_ms"]["prefill"] / rn["timings_ms"]["prefill"]
    summary = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "onnxruntime": __import__("onnxruntime").__version__},
        "runtime_over_eager_ttft": {m: results[f"eager-{m}"]["ttft_ms"] / results[f"runtime-{m}"]["ttft_ms"]
                                    for m in ("prunevid", "none")},
        "ttft_prunevid_over_none_runtime": rp["ttft_ms"] / rn["ttft_ms"],
        "prefill_prunevid_over_none_runtime": prefill_ratio,
        "prefill_flops_ratio": flops,
        "prefill_time_ratio_over_flops_ratio": prefill_ratio / flops,
        "merger_share_of_ttft": rp["timings_ms"]["merge"] / rp["ttft_ms"],
        "peak_rss_mb": memory,
        "results": results,
    }
    args.out.write_text(json.dumps(summary, indent=2))
    if args.plot:
        from plot_stages import stage_bars

        stage_bars(results, args.plot, "time to first token (ms), CPU")
    vt = rp["visual_tokens"]
    print(f"visual tokens: encoder {vt['encoder']} -> merged {vt['merged']} -> kept {vt['kept']}")
    for m in ("prunevid", "none"):
        print(f"TTFT {m:8s}: runtime {results[f'runtime-{m}']['ttft_ms']:.0f} ms, eager {results[f'eager-{m}']['ttft_ms']:.0f} ms "
              f"-> runtime {summary['runtime_over_eager_ttft'][m]:.2f}x faster")
    print(f"runtime TTFT PruneVid / baseline = {summary['ttft_prunevid_over_none_runtime']:.3f}")
    print(f"prefill time ratio {prefill_ratio:.3f} vs analytic FLOPs ratio {flops:.3f} "
          f"(time/FLOPs = {summary['prefill_time_ratio_over_flops_ratio']:.2f})")
    print(f"merger share of runtime TTFT = {100 * summary['merger_share_of_ttft']:.1f}%")
    for m in ("prunevid", "none"):
        mem = memory[m]
        print(f"memory {m:8s}: {mem['resident_after_warmup_mb']:.0f} MB resident after a warm-up answer, peak {mem['peak_while_answering_mb']:.0f} MB "
              f"while answering (+{mem['answer_increase_mb']:.0f} MB)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
