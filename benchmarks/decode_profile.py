"""Where a decode step's time goes: graph calls, Python between them, and each ONNX Runtime node.

Runs the runtime's own decode step (:meth:`prunevid.runtime.chain.Chain.step`) on an export over a
fixed cache of ``--cache-rows`` valid rows (random values: the step's work does not depend on them),
first plainly (wall time per step and per graph call; the rest is Python in the chain), then with
ONNX Runtime's per-node profiling (``SessionOptions.enable_profiling``) on the decoder graphs. Prints
per op type the kernel time and node count per step, the MatMul kernels' read rate (weight bytes of
the decoder's MatMuls / their kernel time), and the fixed per-node cost: the step time that is not
GEMV kernels, over the number of non-GEMV nodes. With ``--bandwidth`` also the bound of
``benchmarks/measure.py`` (weights + KV read / streaming rate, same thread count).

Usage: python benchmarks/decode_profile.py [--export DIR] [--threads 1] [--steps 16] [--cache-rows 456]
                                          [--bandwidth] [--shapes KxN,...] [--out FILE]
Without --export it builds (once) the ``bench`` export in --cache, as bench_runtime.py does.
Speed is reported, never asserted.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import DEFAULT_CACHE

from prunevid import spec

DECODERS = ("decoder_early", "decoder_late")


class TimedRunner:
    """Wraps a runner: wall time of every graph call, by graph."""

    def __init__(self, inner):
        self.inner, self.calls = inner, collections.defaultdict(list)

    def run(self, graph, feeds):
        t0 = time.perf_counter()
        out = self.inner.run(graph, feeds)
        self.calls[graph].append(time.perf_counter() - t0)
        return out


def open_chain(export_dir: Path, threads: int, profile_dir: Path | None = None):
    """(chain, backend, geometry) over the export's graphs; with ``profile_dir`` the decoder graphs
    write ONNX Runtime profiles there."""
    from prunevid import spec
    from prunevid.runtime.artifact import open_artifact
    from prunevid.runtime.backend import OrtBackend
    from prunevid.runtime.chain import Chain

    art = open_artifact(export_dir, verify=False)
    paths = {name: art.graph_path(name) for name in ("embed", *DECODERS)}

    class Profiling(OrtBackend):
        def configure(self, opts, name):
            if profile_dir is not None and name in DECODERS:
                opts.enable_profiling = True
                opts.profile_file_prefix = str(profile_dir / name)

    backend = Profiling(paths, ["CPUExecutionProvider"], threads)
    backend.warm_up()
    timed = TimedRunner(backend)
    return Chain(timed, art.geometry, np.float32), backend, timed, art.geometry, spec


def fill_state(chain, geometry, rows: int, steps: int):
    """A decode state whose cache holds ``rows`` valid rows (capacity for ``steps`` more)."""
    from prunevid.runtime.chain import KVCache, State

    cache = KVCache(geometry, rows + steps + 1, np.float32)
    rng = np.random.default_rng(0)
    cache.block[:, :, :rows] = rng.standard_normal(cache.block[:, :, :rows].shape, dtype=np.float32) * 0.5
    cache.advance(rows)
    return State(np.zeros(geometry.vocab, np.float32), cache, rows, rows, 0, np.arange(rows))


def run_steps(chain, state, steps: int) -> list[float]:
    times = []
    for j in range(steps):
        t0 = time.perf_counter()
        chain.step(state, 5 + j, state.seq_len + j)
        times.append(time.perf_counter() - t0)
    return times


def node_table(profile: Path, steps: int) -> dict:
    """Per op type: kernel microseconds and nodes per step, from one ONNX Runtime profile."""
    events = json.loads(profile.read_text())
    runs = [e["dur"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run"][-steps:]
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_run = len(nodes) / max(len([e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]), 1)
    nodes = nodes[-int(per_run * steps):]
    ops = collections.defaultdict(lambda: [0.0, 0])
    durations = collections.defaultdict(list)
    for e in nodes:
        op = e["args"]["op_name"]
        ops[op][0] += e["dur"] / steps
        ops[op][1] += 1 / steps
        durations[op].append(e["dur"])
    return {"model_run_us": statistics.median(runs), "nodes_per_run": per_run,
            "kernel_sum_us": sum(v[0] for v in ops.values()),
            "ops": {k: {"us": v[0], "nodes": v[1], "median_us": statistics.median(durations[k])}
                    for k, v in sorted(ops.items(), key=lambda kv: -kv[1][0])}}


def node_cost_us(threads: int, nodes: int = 1000, width: int = 768, repeats: int = 50) -> float:
    """ONNX Runtime's fixed cost of one node on this machine: a graph of ``nodes`` chained ``Add``s on
    ``[1, width]`` (no weights, no bandwidth), with the runtime's session options; microseconds per
    node, median of ``repeats`` runs."""
    import onnx
    from onnx import TensorProto, helper

    from prunevid.runtime.backend import OrtBackend

    one = helper.make_tensor("one", TensorProto.FLOAT, [1, width], [1.0] * width)
    chain = [helper.make_node("Add", ["x" if i == 0 else f"t{i}", "one"], [f"t{i + 1}"]) for i in range(nodes)]
    graph = helper.make_graph(chain, "adds", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info(f"t{nodes}", TensorProto.FLOAT, [1, width])], [one])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "adds.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        backend = OrtBackend({"adds": path}, ["CPUExecutionProvider"], threads)
        x = np.zeros((1, width), np.float32)
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            backend.run("adds", {"x": x})
            times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times[1:]) / nodes


def matmul_shapes(path: Path) -> dict[tuple[int, int], int]:
    """``{(K, N): count}`` of the constant 2-D right-hand operands of a graph's MatMul nodes."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dims = {init.name: tuple(init.dims) for init in model.graph.initializer}
    shapes = collections.Counter(dims[n.input[1]] for n in model.graph.node
                                 if n.op_type == "MatMul" and len(dims.get(n.input[1], ())) == 2)
    return dict(shapes)


def gemv_rates(shapes, threads: int, repeats: int = 21) -> dict:
    """Read rate (GB/s) of one-row products with weights of ``shapes`` ``[K, N]``, the cache flushed
    before each call: ONNX Runtime's MatMul with the runtime's session options (weights prepacked)
    and with prepacking off, against numpy's ``x @ W`` (BLAS sgemv) and ``np.max(W)`` (a streaming
    read). Interleaved, median of ``repeats``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from prunevid.runtime.backend import OrtBackend

    class NoPrepack(OrtBackend):
        def configure(self, opts, name):
            opts.add_session_config_entry("session.disable_prepacking", "1")

    rng = np.random.default_rng(0)
    flush = np.ones(128 * 2**20 // 4, np.float32)  # larger than the last-level cache
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, n in shapes:
            w = rng.standard_normal((k, n), dtype=np.float32)
            graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "gemv",
                                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
                                      [numpy_helper.from_array(w, "w")])
            path = Path(tmp) / f"gemv{k}x{n}.onnx"
            onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
            x = rng.standard_normal((1, k), dtype=np.float32)
            ort_pp = OrtBackend({"g": path}, ["CPUExecutionProvider"], threads)
            ort_np = NoPrepack({"g": path}, ["CPUExecutionProvider"], threads)
            kernels = {"ort MatMul (runtime options)": lambda: ort_pp.run("g", {"x": x}),
                       "ort MatMul, prepacking off": lambda: ort_np.run("g", {"x": x}),
                       "numpy x @ W (sgemv)": lambda: x @ w, "np.max(W)": lambda: np.max(w)}
            times = {name: [] for name in kernels}
            for r in range(repeats + 1):
                for name, fn in (kernels.items() if r % 2 == 0 else reversed(kernels.items())):
                    flush.max()
                    t0 = time.perf_counter()
                    fn()
                    if r:
                        times[name].append(time.perf_counter() - t0)
            out[f"{k}x{n}"] = {name: w.nbytes / statistics.median(t) / 1e9 for name, t in times.items()}
    return out


def weight_bytes_of_matmuls(path: Path) -> int:
    """Bytes of the constant right-hand operands of a graph's MatMul/Gemm nodes (what a decode step streams)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    sizes = {}
    for init in model.graph.initializer:
        n = 1
        for d in init.dims:
            n *= d
        sizes[init.name] = n * 4
    weights = {node.input[1] for node in model.graph.node if node.op_type in ("MatMul", "Gemm")}
    return sum(sizes.get(name, 0) for name in weights)  # each initializer once (the RoPE matrix is shared)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, default=None)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--cache-rows", type=int, default=456, help="valid cache rows (bench PruneVid: 456)")
    parser.add_argument("--bandwidth", action="store_true", help="also measure the streaming read rate and the bound")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    parser.add_argument("--shapes", default=None,
                        help="only compare one-row products at these weight shapes, e.g. 4096x4096,11008x4096 "
                             "(PLLaVA-7B's o_proj and down_proj)")
    args = parser.parse_args()
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        for shape, r in gemv_rates(shapes, args.threads, repeats=11).items():
            print(f"{shape}: " + ", ".join(f"{name} {v:.1f} GB/s" for name, v in r.items()))
        return
    if args.export is None:
        from measure import model_and_export

        _, args.export = model_and_export(args.cache, "bench", 10)

    chain, backend, timed, geometry, _ = open_chain(args.export, args.threads)
    state = fill_state(chain, geometry, args.cache_rows, args.steps + 2)
    run_steps(chain, state, 2)  # warm-up
    timed.calls.clear()
    wall = run_steps(chain, state, args.steps)
    graph_ms = {g: 1e3 * statistics.median(v) for g, v in timed.calls.items()}
    step_ms = 1e3 * statistics.median(wall)
    python_ms = step_ms - sum(graph_ms.values())
    print(f"decode step {step_ms:.2f} ms (median of {args.steps}, {args.cache_rows} cache rows, threads {args.threads}): "
          + ", ".join(f"{g} {t:.2f}" for g, t in graph_ms.items()) + f"; Python in the chain {python_ms:.2f} ms")
    print(f"first / last step {1e3 * wall[0]:.2f} / {1e3 * wall[-1]:.2f} ms")
    del chain, backend, timed

    with tempfile.TemporaryDirectory() as tmp:
        chain, backend, timed, geometry, _ = open_chain(args.export, args.threads, Path(tmp))
        state = fill_state(chain, geometry, args.cache_rows, args.steps + 2)
        run_steps(chain, state, args.steps + 2)
        tables = {}
        for g in DECODERS:
            prof = Path(backend.sessions[g].end_profiling())
            tables[g] = node_table(prof, args.steps)
            tables[g]["gemv_weight_bytes"] = weight_bytes_of_matmuls(backend.paths[g])
    total_run = sum(t["model_run_us"] for t in tables.values())
    gemv_us = sum(t["ops"].get("MatMul", {"us": 0})["us"] for t in tables.values())
    fused_us = sum(t["ops"].get("FusedMatMul", {"us": 0})["us"] for t in tables.values())
    nodes = sum(t["nodes_per_run"] for t in tables.values())
    mm_nodes = sum(t["ops"].get("MatMul", {"nodes": 0})["nodes"] for t in tables.values())
    weights = sum(t["gemv_weight_bytes"] for t in tables.values())
    for g, t in tables.items():
        print(f"== {g}: model_run {t['model_run_us'] / 1e3:.2f} ms, {t['nodes_per_run']:.0f} nodes per call")
        for op, v in list(t["ops"].items())[:12]:
            print(f"   {op:28s} {v['us'] / 1e3:7.2f} ms  {v['nodes']:5.0f} nodes  {v['us'] / max(v['nodes'], 1):7.1f} us/node "
                  f"(median {v['median_us']:.1f})")
        print(f"   between kernels (executor): {(t['model_run_us'] - t['kernel_sum_us']) / 1e3:.2f} ms")
    other_us = total_run - gemv_us
    print(f"MatMul kernels (weights and attention) {gemv_us / 1e3:.2f} ms of {total_run / 1e3:.2f} ms in the graphs; "
          f"weights {weights / 2**20:.0f} MiB -> at most {weights / (gemv_us * 1e3):.1f} GB/s over MatMul kernel time")
    print(f"everything else {other_us / 1e3:.2f} ms over {nodes - mm_nodes:.0f} other nodes = "
          f"{other_us / max(nodes - mm_nodes, 1):.1f} us per node (of which FusedMatMul {fused_us / 1e3:.2f} ms)")
    shapes = collections.Counter()
    for g in DECODERS:
        shapes.update(matmul_shapes(args.export / spec.GRAPH_DIR / f"{g}.onnx"))
    rates = gemv_rates(sorted(shapes), args.threads)
    print(f"one-row products at the decoder's weight shapes (GB/s, cache flushed before each call, threads {args.threads}):")
    for shape, r in rates.items():
        print(f"   {shape:11s} x{shapes[tuple(int(v) for v in shape.split('x'))]:3d}: "
              + ", ".join(f"{name} {v:.1f}" for name, v in r.items()))
    per_node = node_cost_us(args.threads)
    print(f"fixed cost of one ONNX Runtime node here: {per_node:.2f} us (1000 chained Adds on [1, 768]); "
          f"x {nodes:.0f} nodes per step = {per_node * nodes / 1e3:.2f} ms of the {step_ms:.2f} ms step")
    figures = {"gemv_rates_gbs": rates, "node_cost_us": per_node, "step_ms": step_ms, "graph_ms": graph_ms, "python_ms": python_ms, "first_last_step_ms": [1e3 * wall[0], 1e3 * wall[-1]],
               "tables": tables, "matmul_us": gemv_us, "other_us": other_us, "nodes": nodes, "matmul_nodes": mm_nodes,
               "matmul_weight_bytes": weights, "threads": args.threads, "cache_rows": args.cache_rows}
    if args.bandwidth:
        from measure import bandwidth

        from prunevid import costs
        from prunevid.model.config import read_config

        bw = bandwidth(1024, args.threads)
        cfg = read_config(Path(json.loads((args.export / "manifest.json").read_text())["source"]["path"]))
        bound = costs.decode_bound_ms(cfg, args.cache_rows, bw["gbs"])
        figures.update(bandwidth=bw, bound_ms=bound)
        print(f"bound {bound:.2f} ms at {bw['gbs']:.1f} GB/s ({bw['kernel']}): step at {100 * bound / step_ms:.0f}% of it")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
