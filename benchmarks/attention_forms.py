"""Prompt (prefill) time and peak memory of the decoder graphs in both attention forms.

    python benchmarks/attention_forms.py EXPORT [--rows 1200 2390] [--repeats 5] [--threads 1]
                                                [--graphs decoder_early decoder_late]

EXPORT is an export folder (its decoder graphs are stored in the ``ort`` form: fused
GroupQueryAttention for the prompt). The ``standard`` form (the TensorRT variant's attention,
the form every export had before) is derived from it into a temporary folder. For each row count
S, both decoder graphs run a prompt of S rows through every layer (random hidden states, empty
cache), the two forms interleaved (order rotated per repeat, after one warm-up each); prints the
median ms of each and their ratio. Peak memory: a fresh process per form loads the graphs, runs one
prompt of the largest S, and reports the growth of its peak resident set during that call (Linux:
the peak is reset through ``/proc/self/clear_refs`` just before it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRAPHS = ("decoder_early", "decoder_late")


def derive_standard(export: Path, out: Path, graphs=GRAPHS) -> dict[str, Path]:
    """The decoder graphs of ``export`` with their attention in the standard form, under ``out``."""
    import onnx

    from prunevid.exporter.attention import to_standard

    paths = {}
    for name in graphs:
        model = onnx.load(str(export / "graphs" / f"{name}.onnx"))
        to_standard(model)
        paths[name] = out / f"{name}.onnx"
        onnx.save(model, str(paths[name]))
    return paths


def sessions(paths: dict[str, Path], threads: int) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.enable_cpu_mem_arena = False  # as the runtime (prunevid.runtime.backend)
    return {name: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for name, p in paths.items()}


def feeds(sess, rows: int, seed: int = 0) -> dict:
    """A prompt of ``rows`` rows for one decoder graph, with the runtime's one-row empty cache."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = {}
    for i in sess.get_inputs():
        if i.name == "hidden":
            out[i.name] = rng.standard_normal((rows, i.shape[1]), dtype=np.float32)
        elif i.name == "positions":
            out[i.name] = np.arange(rows, dtype=np.int64)
        elif i.name == "cache_length":
            out[i.name] = np.asarray(0, dtype=np.int64)
        else:  # past_key_values.*: [H_kv, 1, d], masked
            out[i.name] = np.zeros((i.shape[0], 1, i.shape[2]), dtype=np.float32)
    return out


def prefill(sess: dict, rows: int) -> None:
    for name, graph in sess.items():
        graph.run(None, feeds(graph, rows))


def child(paths: dict[str, Path], rows: int, threads: int) -> None:
    """One prompt in a fresh process: peak resident growth (MiB) during it, and its time."""
    sess = sessions(paths, threads)
    from prunevid.runtime.backend import heap_trimmer

    data = {name: feeds(graph, rows) for name, graph in sess.items()}
    trim = heap_trimmer()
    if trim is not None:
        trim()  # the loader's freed protobuf pages go back before the baseline is read
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current resident set
    start = time.perf_counter()
    for name, graph in sess.items():
        graph.run(None, data[name])
    ms = (time.perf_counter() - start) * 1e3
    print(json.dumps({"peak_growth_mib": (_status_kib("VmHWM") - before) / 1024, "ms": ms}))


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` size field in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path)
    parser.add_argument("--rows", type=int, nargs="+", default=[1200, 2390])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--graphs", nargs="+", default=list(GRAPHS), choices=GRAPHS)
    parser.add_argument("--child", nargs=2, metavar=("FORM_DIR", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        folder = Path(args.child[0])
        child({n: folder / f"{n}.onnx" for n in args.graphs}, int(args.child[1]), args.threads)
        return
    with tempfile.TemporaryDirectory(prefix="attn-forms-", dir=args.export.parent) as tmp:
        forms = {"ort (stored)": {n: args.export / "graphs" / f"{n}.onnx" for n in args.graphs},
                 "standard (derived)": derive_standard(args.export, Path(tmp), args.graphs)}
        results: dict = {"rows": {}, "peak_growth_mib": {}}
        for label, paths in forms.items():
            folder = next(iter(paths.values())).parent
            proc = subprocess.run([sys.executable, __file__, str(args.export), "--threads", str(args.threads),
                                   "--graphs", *args.graphs, "--child", str(folder), str(max(args.rows))],
                                  capture_output=True, text=True, check=True)
            results["peak_growth_mib"][label] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_growth_mib"]
        loaded = {label: sessions(paths, args.threads) for label, paths in forms.items()}
        labels = list(loaded)
        for rows in args.rows:
            for label in labels:
                prefill(loaded[label], rows)  # warm-up
            times: dict[str, list[float]] = {label: [] for label in labels}
            for r in range(args.repeats):
                for label in labels[r % 2:] + labels[: r % 2]:
                    start = time.perf_counter()
                    prefill(loaded[label], rows)
                    times[label].append((time.perf_counter() - start) * 1e3)
            med = {label: statistics.median(t) for label, t in times.items()}
            results["rows"][rows] = med
            print(f"prompt of {rows} rows through {' + '.join(args.graphs)}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in med.items())
                  + f"; ort / standard {med[labels[0]] / med[labels[1]]:.2f}", flush=True)
        print(f"peak resident growth during one prompt of {max(args.rows)} rows: "
              + ", ".join(f"{k} {v:.0f} MiB" for k, v in results["peak_growth_mib"].items()), flush=True)


if __name__ == "__main__":
    main()
