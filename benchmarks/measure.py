"""What the runtime benchmarks measure and how they report it, written against the public entry
points only (``make_tiny``, ``export``, ``RuntimePipeline``, ``prunevid.costs``):

* a cached model and export per geometry, keyed by the geometry and the exporter's source,
* answers of several modes, interleaved (order rotated per repeat) or one mode after another,
* the machine's memory bandwidth (numpy streaming reads),
* resident memory of a fresh runtime process after warm-up (``resident.py``),
* the figures: TTFT ratio, prefill time ratio vs FLOPs ratio, merger share, decode vs bandwidth
  bound, resident memory vs weight bytes.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import DEFAULT_CACHE, QUESTION, bench_clip, bench_model

ROOT = Path(__file__).resolve().parents[1]
# The sources an export depends on: a change in any of them makes a cached export stale.
EXPORT_SOURCES = ("prunevid/exporter", "prunevid/model", "prunevid/plugins", "prunevid/pruning", "prunevid/spec.py")


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:10]


def source_digest() -> str:
    """Hash of the source files an export is built from."""
    files = []
    for name in EXPORT_SOURCES:
        path = ROOT / name
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return _digest(*(f"{p.relative_to(ROOT)}:{hashlib.sha256(p.read_bytes()).hexdigest()}" for p in files))


def model_and_export(cache: Path, geometry: str, layer: int) -> tuple[Path, Path]:
    """The random ``geometry`` model and its export with selection layer ``layer``, built on first use."""
    from prunevid.config import PruneConfig
    from prunevid.exporter.export import ExportOptions, export

    model = bench_model(cache, geometry)
    out = cache / f"{model.name}-export-k{layer}-{source_digest()}"
    if not (out / "manifest.json").is_file():
        print(f"exporting into {out} ...", file=sys.stderr)
        export(model, out, PruneConfig(layer=layer), ExportOptions(), force=True,
               progress=lambda m: print(m, file=sys.stderr))
    return model, out


def add_options(parser, name: str, layer: int) -> None:
    """The options both runtime benchmarks take; results default to ``benchmarks/<name>.{json,png}``
    (with --quick: ``<cache>/<name>-quick.{json,png}``, so a check never overwrites recorded results)."""
    parser.set_defaults(name=name)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: the runtime's default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="answers per mode before timing")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens per answer (EOS disabled)")
    parser.add_argument("--bandwidth-mib", type=int, default=1024, help="array size of the bandwidth measurement")
    parser.add_argument("--quick", action="store_true", help="tiny geometry, one repeat: checks the script end to end")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the model and export are built")
    parser.add_argument("--model-dir", type=Path, default=None, help="use this model instead of building one")
    parser.add_argument("--export", type=Path, default=None, help="use this export of --model-dir (built with --layer)")
    parser.add_argument("--layer", type=int, default=layer, help="selection layer K of the export")
    parser.add_argument("--skip-memory", action="store_true", help="do not measure resident memory (fresh processes)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)


def prepare(args, geometry: str):
    """Apply --quick, build or take the model and export; returns (model config, model dir, export dir, clip)."""
    from prunevid.model.config import read_config

    if args.quick:
        args.repeats, args.warmup, args.new_tokens, args.bandwidth_mib = 1, 1, 4, 16
        geometry = "tiny"
    folder, stem = (args.cache, f"{args.name}-quick") if args.quick else (ROOT / "benchmarks", args.name)
    args.out = args.out or folder / f"{stem}.json"
    args.plot = args.plot or folder / f"{stem}.png"
    if (args.model_dir is None) != (args.export is None):
        raise SystemExit("Error: --model-dir and --export go together")
    args.geometry = geometry if args.export is None else f"given ({args.model_dir.name})"
    if args.export is None:
        args.model_dir, args.export = model_and_export(args.cache, geometry, args.layer)
    return read_config(args.model_dir), args.model_dir, args.export, bench_clip(args.cache)


def open_pipeline(export_dir: Path, mode: str, threads: int):
    """A RuntimePipeline for ``mode``; ``threads`` is passed where the runtime takes it. EOS is
    disabled so every answer makes exactly ``max_new_tokens`` tokens. Returns (pipeline, threads applied)."""
    import inspect

    from prunevid.runtime.pipeline import RuntimePipeline

    kwargs = {"threads": threads} if threads and "threads" in inspect.signature(RuntimePipeline).parameters else {}
    pipe = RuntimePipeline(export_dir, mode=mode, **kwargs)
    pipe.tokenizer.eos_id = -1
    return pipe, bool(kwargs)


def answer_timed(pipe, clip: Path, new_tokens: int) -> tuple:
    """One answer and the wall time of each of its decode steps in ms (between successive tokens:
    step ``j`` feeds token ``j`` and yields token ``j + 1``)."""
    stamps: list[float] = []
    answer = pipe.run(clip, QUESTION, max_new_tokens=new_tokens, on_token=lambda _: stamps.append(time.perf_counter()))
    return answer, [1e3 * (b - a) for a, b in zip(stamps, stamps[1:])]


def flatness(step_ms: list[list[float]]) -> dict:
    """Per-token time across the answer: medians over answers of the first and last quarter of the
    steps (at least one step each) and their ratio (1.0: flat)."""
    if not step_ms or not step_ms[0]:
        return {"first_ms": math.nan, "last_ms": math.nan, "last_over_first": math.nan, "per_step_ms": []}
    n = len(step_ms[0])
    q = max(n // 4, 1)
    per_step = [statistics.median(run[j] for run in step_ms) for j in range(n)]
    first, last = statistics.median(per_step[:q]), statistics.median(per_step[-q:])
    return {"first_ms": first, "last_ms": last, "last_over_first": last / first, "quarter_steps": q,
            "per_step_ms": per_step}


def summarize(answers: list, step_ms: list[list[float]] | None = None) -> dict:
    """Medians over repeated answers of one mode (``step_ms``: each answer's decode step times)."""
    first = answers[0]
    steps = len(first.token_ids) - 1
    decode = [a.timings_ms["decode"] / steps for a in answers] if steps > 0 else [math.nan]
    return {
        "decode_flatness": flatness(step_ms or []),
        "timings_ms": {k: statistics.median(a.timings_ms.get(k, 0.0) for a in answers) for k in first.timings_ms},
        "ttft_ms": statistics.median(a.ttft_ms for a in answers),
        "ttft_ms_per_repeat": [a.ttft_ms for a in answers],
        "decode_steps": steps,
        "decode_ms_per_token": statistics.median(decode),
        "visual_tokens": first.visual_tokens,
        "prompt_tokens": first.prompt_tokens,
    }


def measure_modes(export_dir: Path, modes: tuple[str, ...], clip: Path, *, repeats: int, warmup: int,
                  new_tokens: int, threads: int, interleave: bool) -> tuple[dict, bool]:
    """Answers per mode after ``warmup`` answers each. Interleaved runs hold one pipeline per mode and
    rotate the order every repeat (fair under drifting load); otherwise modes run one after another
    and only one pipeline is resident at a time. Returns ({mode: summary}, threads applied)."""
    def answer(pipe):
        return answer_timed(pipe, clip, new_tokens)

    runs: dict[str, list] = {m: [] for m in modes}
    applied = False
    if interleave:
        pipes = {}
        for m in modes:
            pipes[m], applied = open_pipeline(export_dir, m, threads)
            for _ in range(warmup):
                answer(pipes[m])
        for r in range(repeats):
            for m in modes[r % len(modes):] + modes[: r % len(modes)]:
                print(f"  repeat {r + 1}/{repeats}: {m}", file=sys.stderr)
                runs[m].append(answer(pipes[m]))
        del pipes
    else:
        for m in modes:
            pipe, applied = open_pipeline(export_dir, m, threads)
            for _ in range(warmup):
                answer(pipe)
            for r in range(repeats):
                print(f"  {m}: repeat {r + 1}/{repeats}", file=sys.stderr)
                runs[m].append(answer(pipe))
            del pipe
            gc.collect()
    return {m: summarize([a for a, _ in r], [t for _, t in r]) for m, r in runs.items()}, applied


READ_KERNELS = {"np.max": "max", "np.dot(a, a)": "dot", "x @ A": "gemv"}
GEMV_COLUMNS = 1024  # "x @ A" reads the array as a row-major [rows, 1024] matrix


def _read(kernel: str, chunk):
    import numpy as np

    if kernel == "gemv":  # x [rows] @ A [rows, 1024]: BLAS sgemv, the decode step's own access pattern
        return np.ones(chunk.shape[0], chunk.dtype) @ chunk
    return np.max(chunk) if kernel == "max" else np.dot(chunk, chunk)


def _read_rate(kernel: str, data, threads: int, repeats: int) -> float:
    """GB/s of ``kernel`` reading ``data`` split across ``threads`` threads (numpy releases the GIL
    in reductions and BLAS calls); median of ``repeats`` after one."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    view = data.reshape(-1, GEMV_COLUMNS) if kernel == "gemv" else data  # rows split across threads
    chunks = np.array_split(view, max(threads, 1))
    times = []
    with ThreadPoolExecutor(len(chunks)) as pool:
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            list(pool.map(lambda c: _read(kernel, c), chunks))
            times.append(time.perf_counter() - t0)
    return data.nbytes / statistics.median(times[1:]) / 1e9


def bandwidth(mib: int, threads: int, repeats: int = 5) -> dict:
    """Streaming-read bandwidth of this machine: the fastest of three read kernels (``np.max``, the
    float32 ``np.dot`` of the array with itself, a BLAS sdot, and ``x @ A``, a BLAS sgemv over the array
    as a ``[rows, 1024]`` matrix, the decode step's own access pattern) over a ``mib`` MiB float32
    array, split across ``threads`` threads. Each kernel is also timed on a cache-resident 256 KiB
    array: a kernel is a bandwidth measurement only where that rate is well above its rate on the large
    array (on the development machine ``np.max`` alone, the first measurement, was near its own compute
    ceiling, about 18 GB/s in cache, so it understated the bandwidth and the decode bound was too
    lenient; sgemv, with several rows in flight, read a 14 MiB matrix at about 1.3x ``np.max``'s rate
    under the same load)."""
    import numpy as np

    data = np.ones(max(mib, 1) * 2**20 // 4, dtype=np.float32)  # every page touched before timing
    small = np.ones(2**16, dtype=np.float32)  # 256 KiB: 64 rows of the sgemv view
    kernels = {}
    for name, kernel in READ_KERNELS.items():
        kernels[name] = {"gbs": _read_rate(kernel, data, threads, repeats),
                         "in_cache_gbs": _read_rate(kernel, small, 1, 200)}
    best = max(kernels, key=lambda k: kernels[k]["gbs"])
    return {"array_mib": mib, "threads": max(threads, 1), "kernel": best, "gbs": kernels[best]["gbs"],
            "kernels": kernels}


def resident_memory(export_dir: Path, clip: Path, modes: dict[str, str], args, warmups: int = 2) -> dict | None:
    """Resident memory in MB of a fresh runtime process per mode ({name: mode}) at the points of
    ``resident.py`` (between answers after ``warmups`` warm-up answers, peak during the next answer's
    decode, VmHWM); None when skipped (--skip-memory) or when a process fails (say, killed for memory)."""
    if args.skip_memory:
        return None
    print("resident memory ...", file=sys.stderr)
    out = {}
    for name, mode in modes.items():
        cmd = [sys.executable, str(Path(__file__).with_name("resident.py")), str(export_dir), str(clip), mode,
               str(args.threads), str(args.new_tokens), str(warmups)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"resident memory of {mode} not measured: exit {done.returncode}", file=sys.stderr)
            return None
        out[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def export_bytes(export_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(export_dir).rglob("*") if p.is_file())


def figures(pv: dict, base: dict, cfg, layer: int, bandwidth_gbs: float, memory: dict | None = None,
            dtype_bytes: int = 4) -> dict:
    """The benchmark's figures from a PruneVid and a plain-baseline summary of the model ``cfg``."""
    from prunevid import costs

    seq_pv, kept = pv["prompt_tokens"]["prefill"], pv["prompt_tokens"]["kept"]
    seq_base = base["prompt_tokens"]["prefill"]
    flops_ratio = costs.prefill_flops(cfg.text, seq_pv, kept, layer) / costs.prefill_flops(cfg.text, seq_base)
    prefill_ratio = pv["timings_ms"]["prefill"] / base["timings_ms"]["prefill"]
    weights = costs.weight_bytes(cfg, dtype_bytes)
    out = {
        "ttft_ms": {"prunevid": pv["ttft_ms"], "baseline": base["ttft_ms"]},
        "ttft_ratio": pv["ttft_ms"] / base["ttft_ms"],
        "prefill_time_ratio": prefill_ratio,
        "prefill_flops_ratio": flops_ratio,
        "prefill_time_over_flops_ratio": prefill_ratio / flops_ratio,
        "ttft_flops_ratio": (costs.encoder_flops(cfg, cfg.num_frames) + costs.prefill_flops(cfg.text, seq_pv, kept, layer))
        / (costs.encoder_flops(cfg, cfg.num_frames) + costs.prefill_flops(cfg.text, seq_base)),
        "merger_share_of_ttft": pv["timings_ms"]["merge"] / pv["ttft_ms"],
        "encoder_share_of_baseline_ttft": base["timings_ms"]["encoder"] / base["ttft_ms"],
        "tokens": {"visual": pv["visual_tokens"], "prefill": {"prunevid": seq_pv, "baseline": seq_base},
                   "kept": kept},
        "bandwidth_gbs": bandwidth_gbs,
        "weight_bytes": weights.total,
        "decode": {},
    }
    for name, res, cache in (("prunevid", pv, kept), ("baseline", base, seq_base)):
        steps = res.get("decode_steps", 0)
        bound = costs.decode_bound_ms(cfg, cache + steps / 2, bandwidth_gbs, dtype_bytes)  # mean cache length
        ms = res.get("decode_ms_per_token", math.nan)
        flat = res.get("decode_flatness")
        if flat and flat.get("quarter_steps"):  # what the attention read alone adds from the first to the last quarter
            q = flat["quarter_steps"]
            flat = {**flat, "bound_last_over_first": costs.decode_bound_ms(cfg, cache + steps - q / 2, bandwidth_gbs, dtype_bytes)
                    / costs.decode_bound_ms(cfg, cache + q / 2, bandwidth_gbs, dtype_bytes)}
        out["decode"][name] = {"ms_per_token": ms, "bound_ms_per_token": bound, "fraction_of_bound": bound / ms,
                               "cache_positions": cache, "steps": steps, "flatness": flat}
    if memory is not None:
        out["memory"] = {}
        for name, res, cache in (("prunevid", pv, kept), ("baseline", base, seq_base)):
            kv = costs.kv_bytes(cfg.text, cache + res.get("decode_steps", 0), dtype_bytes)  # cache after the answer
            rss = memory[name]["rss_mb"] * 2**20
            entry = {**memory[name], "weights_mb": weights.total / 2**20, "kv_mb": kv / 2**20,
                     "resident_over_weights": rss / weights.total,
                     "resident_over_weights_plus_kv": rss / (weights.total + kv)}
            if "decode_peak_mb" in memory[name]:  # the defined point: peak during an answer's decode
                alloc = memory[name]["kv_alloc_bytes"]
                entry["decode_peak_over_weights_plus_kv"] = memory[name]["decode_peak_mb"] * 2**20 / (weights.total + alloc)
            out["memory"][name] = entry
    return out


def report(title: str, f: dict) -> None:
    """Print the figures of :func:`figures`."""
    vt = f["tokens"]["visual"]
    print(f"== {title}")
    print(f"visual tokens {vt['encoder']} -> merged {vt['merged']} -> kept {vt['kept']}; prefill tokens "
          f"{f['tokens']['prefill']['prunevid']} (PruneVid, {f['tokens']['kept']} kept after layer K) vs "
          f"{f['tokens']['prefill']['baseline']} (baseline)")
    print(f"TTFT PruneVid {f['ttft_ms']['prunevid']:.0f} ms / plain baseline {f['ttft_ms']['baseline']:.0f} ms = "
          f"{f['ttft_ratio']:.3f} (analytic FLOPs, encoder + prefill: {f['ttft_flops_ratio']:.3f})")
    print(f"prefill time ratio {f['prefill_time_ratio']:.3f} vs analytic FLOPs ratio {f['prefill_flops_ratio']:.3f} "
          f"(time / FLOPs = {f['prefill_time_over_flops_ratio']:.2f})")
    print(f"merger share of PruneVid TTFT {100 * f['merger_share_of_ttft']:.1f}%; encoder share of baseline TTFT "
          f"{100 * f['encoder_share_of_baseline_ttft']:.1f}%")
    for name, d in f["decode"].items():
        print(f"decode {name:8s}: {d['ms_per_token']:.2f} ms/token vs bandwidth bound {d['bound_ms_per_token']:.2f} ms "
              f"({100 * d['fraction_of_bound']:.0f}% of bound; {f['bandwidth_gbs']:.1f} GB/s, cache {d['cache_positions']} "
              f"+ {d['steps']} steps)")
    for name, d in f["decode"].items():
        fl = d.get("flatness")
        if fl:
            print(f"decode {name:8s}: per-token time first / last quarter of the answer {fl['first_ms']:.2f} / "
                  f"{fl['last_ms']:.2f} ms ({fl['last_over_first']:.3f}x; the attention read alone: "
                  f"{fl.get('bound_last_over_first', math.nan):.3f}x)")
    for name, m in f.get("memory", {}).items():
        print(f"memory {name:8s}: between answers {m['rss_mb']:.0f} MB vs weights {m['weights_mb']:.0f} MB "
              f"({m['resident_over_weights']:.2f}x)")
        if "decode_peak_over_weights_plus_kv" in m:
            print(f"memory {name:8s}: peak during decode {m['decode_peak_mb']:.0f} MB vs weights + the answer's KV block "
                  f"{m['weights_mb'] + m['kv_alloc_bytes'] / 2**20:.0f} MB ({m['decode_peak_over_weights_plus_kv']:.2f}x); "
                  f"process before any graph {m['base_mb']:.0f} MB, after loading {m['loaded_mb']:.0f} MB, "
                  f"VmHWM {m['hwm_mb']:.0f} MB")


def machine(threads: int, threads_applied: bool) -> dict:
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "onnxruntime": __import__("onnxruntime").__version__,
            "threads_requested": threads, "threads_passed_to_runtime": threads_applied,
            "load_average_at_end": os.getloadavg()}


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def extrapolate(results: dict, cfg, layer: int, target, target_layer: int, bandwidth_gbs: float) -> tuple[dict, dict]:
    """Per-layer times of a depth-truncated model and the whole ``target`` model's summaries built from them.

    ``results`` holds the ``prunevid``, ``merge`` and ``none`` summaries of ``cfg`` (``N`` LLM layers,
    selection after ``layer``). LLM layer times: baseline ``prefill_none / N`` at its ``S`` tokens,
    merged ``prefill_merge / N`` at PruneVid's ``S``, kept ``(prefill_prunevid - (K+1) merged) / (N-K-1)``
    (so the selection's own cost is charged to the kept layers). The encoder is scaled by FLOPs at its
    measured rate (the measured tower runs its projector and a few of the target's layers); the merger
    is taken as measured (same widths). Decode: the target's bandwidth bound at the efficiency measured
    on ``cfg``. Returns ({"prunevid": ..., "none": ...} target summaries, per-layer times in ms).
    """
    from prunevid import costs

    pv, merge, none = results["prunevid"], results["merge"], results["none"]
    n, k = cfg.text.num_hidden_layers, layer
    big_n, big_k = target.text.num_hidden_layers, target_layer
    l_base = none["timings_ms"]["prefill"] / n
    l_merged = merge["timings_ms"]["prefill"] / n
    l_kept = (pv["timings_ms"]["prefill"] - (k + 1) * l_merged) / (n - k - 1)
    encoder = statistics.median(r["timings_ms"]["encoder"] for r in (pv, merge, none))  # the same work in every mode
    enc_scale = costs.encoder_flops(target, cfg.num_frames) / costs.encoder_flops(cfg, cfg.num_frames)
    vit_share = cfg.num_frames * costs.vit_layer_flops(cfg.vision, cfg.vision.grid**2 + 1) / costs.encoder_flops(cfg, cfg.num_frames)
    per_layer = {"llm_layer_ms": {"baseline": l_base, "prunevid_merged": l_merged, "prunevid_kept": l_kept},
                 "vision_layer_ms": encoder * vit_share, "encoder_ms": encoder, "encoder_scale": enc_scale}
    prefill = {"prunevid": (big_k + 1) * l_merged + (big_n - big_k - 1) * l_kept, "none": big_n * l_base}
    out = {}
    for mode, res in (("prunevid", pv), ("none", none)):
        cache = res["prompt_tokens"]["kept"] + res["decode_steps"] / 2
        efficiency = costs.decode_bound_ms(cfg, cache, bandwidth_gbs) / res["decode_ms_per_token"]
        timings = {"encoder": encoder * enc_scale, "merge": res["timings_ms"].get("merge", 0.0),
                   "prefill": prefill[mode]}
        out[mode] = {**res, "timings_ms": timings, "ttft_ms": sum(timings.values()), "ttft_ms_per_repeat": [],
                     "decode_ms_per_token": costs.decode_bound_ms(target, cache, bandwidth_gbs) / efficiency}
    return out, per_layer
