"""The GPU check of the prunevid plugin library: one command a CUDA machine runs unchanged
(``scripts/gpu_check.sh`` or ``python -m prunevid.trt.gpu_check``), printing one table.

1. **kernels vs host core on the device**: ``csrc/pv_gpu_check.cu`` is built for the local GPU and
   runs every kernel against the host core (the same core functions) on random, tied, empty,
   single-token and near-static cases, then times each op at 16 groups x 144 tokens x 4096;
2. with TensorRT importable: the plugin library is built against ``--trt-include`` (or the
   installed headers), loaded, and a **one-node engine per op** is built and run on random inputs
   and compared with the torch kernels (CPU);
3. with ``--export DIR``: every graph of an export with prunevid nodes is **parsed with the plugin
   loaded** (functions stripped for TensorRT < 10.7) and the network must hold a plugin layer for
   every prunevid node (the plugin, not the function body, was chosen);
4. **the whole path on the tiny PLLaVA** (built and exported into the work folder): ONNX Runtime's
   CUDA provider token-identical to the eager reference; ``prunevid build`` for the target of this
   GPU's architecture (with the plugin library of step 2 when it built) and the TensorRT runner
   token-identical to the eager reference, PruneVid and baseline; ``prunevid profile`` (trtexec when
   it is on ``PATH``, else ONNX Runtime's profiler) with its table, report and plot;
5. with ``--bench``: the ``bench`` geometry exported in fp32 and fp16, fp16 engines built, and the
   first token's logits of the engines against ONNX Runtime on the fp32 export (same clip and
   question): relative max difference within :data:`FP16_LOGITS_RTOL` and the same top token.

Rows that cannot run (no TensorRT, no torch with CUDA) say so and count as skipped, not passed.
Exit status: 0 when no row failed, 1 otherwise, 2 without a CUDA device.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

STATUSES = ("PASS", "FAIL", "SKIP")


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    check: str
    status: str
    detail: str


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(prog="gpu_check", description="GPU check of the prunevid TensorRT plugins.")
    p.add_argument("--arch", default=None, help="GPU architecture, e.g. sm_90 [the local GPU's]")
    p.add_argument("--cases", type=int, default=200, help="random cases per kind and op on the device [200]")
    p.add_argument("--trt-include", default=None, help="TensorRT headers for the plugin build [installed ones]")
    p.add_argument("--cuda-home", default=None, help="CUDA toolkit [$CUDA_HOME, pip nvidia-cuda-nvcc, /usr/local/cuda]")
    p.add_argument("--export", default=None, help="an export folder whose graphs are parsed with the plugin")
    p.add_argument("--bench", action="store_true",
                   help="also the bench geometry: fp16 TensorRT engines' first logits against fp32 ONNX Runtime")
    p.add_argument("--work", default=None, help="folder for the built binaries [a temporary folder]")
    args = p.parse_args(argv)
    if args.cases < 1:
        p.error("--cases must be at least 1")
    return args


def format_table(rows: Sequence[Row]) -> str:
    """The one table: check | status | detail, then a summary line."""
    width = max([len(r.check) for r in rows] + [5])
    lines = [f"{'check':<{width}}  status  detail", f"{'-' * width}  ------  {'-' * 40}"]
    lines += [f"{r.check:<{width}}  {r.status:<6}  {r.detail}" for r in rows]
    counts = {s: sum(r.status == s for r in rows) for s in STATUSES}
    lines.append(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped")
    return "\n".join(lines)


def kernel_rows(report: dict) -> list[Row]:
    """Rows from the JSON of ``pv_gpu_check`` (kernels vs host core, timings)."""
    if "error" in report:
        return [Row("kernels", "FAIL", report["error"])]
    rows = []
    for op in ("dpc_knn", "group_topk"):
        for kind, r in report[op].items():
            ok = r["cases_differing"] == 0
            rows.append(Row(f"{op} kernel vs host [{kind}]", "PASS" if ok else "FAIL",
                            f"{r['cases']} cases, {r['cases_differing']} differ ({r['elements_differing']} elements)"))
    big = report["dpc_knn_16x144x4096"]
    rows.append(Row("dpc_knn 16x144x4096 time", "PASS" if big["elements_differing"] == 0 else "FAIL",
                    f"{big['ms']:.3f} ms per call, {big['elements_differing']} elements differ from host"))
    topk = report["group_topk_32x144"]
    rows.append(Row("group_topk 32 groups x 144 time", "PASS" if topk["elements_differing"] == 0 else "FAIL",
                    f"{topk['ms']:.3f} ms per call"))
    return rows


def _run_kernel_check(work: Path, arch: str, cuda_home, cases: int) -> list[Row]:
    from prunevid.plugins.build import CSRC, find_cuda_home

    home = find_cuda_home(cuda_home)
    if home is None:
        return [Row("kernels", "SKIP", "no CUDA toolkit (nvcc) found")]
    exe = work / "pv_gpu_check"
    num = arch[3:]
    cmd = [str(home / "bin" / "nvcc"), "-std=c++17", "-O2", "-Xcompiler", "-ffp-contract=off",
           "-gencode", f"arch=compute_{num},code=sm_{num}", "-I", str(CSRC),
           str(CSRC / "pv_gpu_check.cu"), str(CSRC / "pv_kernels.cu"), str(CSRC / "pv_host.cpp"), "-o", str(exe)]
    built = subprocess.run(cmd, capture_output=True, text=True)
    if built.returncode != 0:
        return [Row("kernels build", "FAIL", " | ".join(built.stderr.strip().splitlines()[-3:]))]
    try:
        ran = subprocess.run([str(exe), str(cases)], capture_output=True, text=True, timeout=420)
    except subprocess.TimeoutExpired:
        return [Row("kernels run", "FAIL", "no result within 420 s")]
    try:
        report = json.loads(ran.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return [Row("kernels run", "FAIL", f"exit {ran.returncode}: {ran.stderr.strip()[-200:]}")]
    return kernel_rows(report)


def _one_node_model(op_name: str, dims: dict, attrs: dict):
    """An ONNX model of one prunevid node (no function body: only the plugin can serve it)."""
    import onnx
    from onnx import helper

    from prunevid.plugins.ops import DOMAIN, DOMAIN_VERSION, OPS

    spec = OPS[op_name]
    types = {"float32": onnx.TensorProto.FLOAT, "int32": onnx.TensorProto.INT32, "int64": onnx.TensorProto.INT64}
    ins = [helper.make_tensor_value_info(t.name, types[t.dtype], [dims.get(d, d) for d in t.shape]) for t in spec.inputs]
    outs = [helper.make_tensor_value_info(t.name, types[t.dtype], [dims.get(d, d) for d in t.shape])
            for t in spec.outputs]
    node = helper.make_node(op_name, [t.name for t in spec.inputs], [t.name for t in spec.outputs], domain=DOMAIN,
                            **spec.node_attributes(**attrs))
    model = helper.make_model(helper.make_graph([node], op_name, ins, outs),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)])
    model.ir_version = 8
    return model


def _engine_outputs(trt, engine_bytes: bytes, feeds: dict) -> dict:
    """Run a serialized engine once on ``feeds`` (numpy) with torch CUDA buffers."""
    import numpy as np
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    ctx = engine.create_execution_context()
    buffers = {}
    for name, value in feeds.items():
        buffers[name] = torch.from_numpy(np.ascontiguousarray(value)).cuda()
        ctx.set_input_shape(name, tuple(value.shape))
    torch_types = {trt.int32: torch.int32, trt.float32: torch.float32, trt.int64: torch.int64}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            shape = tuple(ctx.get_tensor_shape(name))
            buffers[name] = torch.empty(shape, dtype=torch_types[engine.get_tensor_dtype(name)], device="cuda")
        ctx.set_tensor_address(name, buffers[name].data_ptr())
    stream = torch.cuda.Stream()
    ctx.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return {n: b.cpu().numpy() for n, b in buffers.items() if n not in feeds}


def _trt_rows(work: Path, arch: str, args) -> list[Row]:
    try:
        import tensorrt as trt
    except ImportError:
        return [Row("tensorrt", "SKIP", "tensorrt is not installed: no engine checks")]
    from prunevid.errors import PruneVidError
    from prunevid.plugins.build import build_plugin_library

    rows = []
    lib = work / "libprunevid_plugins.so"
    try:
        built = build_plugin_library(lib, trt_include=args.trt_include, cuda_home=args.cuda_home, archs=(arch,))
    except PruneVidError as exc:
        return [Row("plugin library build", "FAIL", str(exc)[:200])]
    rows.append(Row("plugin library build", "PASS", f"headers {built.metadata['tensorrt']}, running {trt.__version__}"))
    logger = trt.Logger(trt.Logger.WARNING)
    registry = trt.get_plugin_registry()
    if registry.load_library(str(lib)) is None:
        return rows + [Row("plugin library load", "FAIL", "IPluginRegistry.load_library returned None")]
    rows.append(Row("plugin library load", "PASS", "getCreators/setLoggerFinder through loadLibrary"))
    args.built_plugin_lib = str(lib)
    rows += _one_node_rows(trt, logger)
    if args.export:
        rows += _export_rows(trt, logger, Path(args.export))
    return rows


def _build(trt, logger, onnx_bytes_or_path, profile: dict | None = None):
    """(network layers' types, serialized engine or None, parse errors)."""
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    ok = (parser.parse_from_file(str(onnx_bytes_or_path)) if isinstance(onnx_bytes_or_path, Path)
          else parser.parse(onnx_bytes_or_path))
    if not ok:
        return None, None, [str(parser.get_error(i)) for i in range(parser.num_errors)]
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    kinds = [(layer.type, layer.name) for layer in layers]
    engine = None
    if profile is not None:
        config = builder.create_builder_config()
        opt = builder.create_optimization_profile()
        for name, shape in profile.items():
            opt.set_shape(name, shape, shape, shape)
        config.add_optimization_profile(opt)
        engine = builder.build_serialized_network(network, config)
    return kinds, engine, []


def _one_node_rows(trt, logger) -> list[Row]:
    import numpy as np

    try:
        import torch
    except ImportError:
        torch = None
    from prunevid.plugins import host
    from prunevid.plugins.ops import OPS

    rows = []
    rng = np.random.default_rng(0)
    # PvDpcKnn at PLLaVA-7B's merger size
    x = rng.standard_normal((16, 144, 4096)).astype(np.float32)
    nv = rng.integers(1, 145, size=16).astype(np.int32)
    nc = np.minimum(nv, rng.integers(1, 73, size=16)).astype(np.int32)
    dpc_feeds = {"x": x, "num_valid": nv, "num_clusters": nc}
    scores = rng.integers(0, 5, size=16 * 144).astype(np.float32)  # exact ties
    sizes = rng.integers(0, 200, size=20).astype(np.int32)
    sizes = (sizes * (16 * 144) // max(int(sizes.sum()), 1)).astype(np.int32)
    counts = (sizes * 2 // 5).astype(np.int32)
    topk_feeds = {"scores": scores, "group_sizes": sizes, "keep_counts": counts}
    cases = {"PvDpcKnn": (dpc_feeds, {"k": 7}, lambda f: host.dpc_knn(f["x"], f["num_valid"], f["num_clusters"], 7)),
             "PvGroupTopK": (topk_feeds, {}, lambda f: host.group_topk(f["scores"], f["group_sizes"], f["keep_counts"]))}
    for op, (feeds, attrs, reference) in cases.items():
        dims = {"B": 16, "N": 144, "C": 4096, "M": scores.size, "G": sizes.size}
        model = _one_node_model(op, dims, attrs)
        start = time.monotonic()
        kinds, engine, errs = _build(trt, logger, model.SerializeToString(), {n: v.shape for n, v in feeds.items()})
        if errs or engine is None:
            rows.append(Row(f"{op} one-node engine", "FAIL", (errs or ["build failed"])[0][:200]))
            continue
        plugin = any("PLUGIN" in str(kind) for kind, _ in kinds)
        rows.append(Row(f"{op} one-node engine", "PASS" if plugin else "FAIL",
                        f"built in {time.monotonic() - start:.1f}s, plugin layer {'present' if plugin else 'MISSING'}"))
        if torch is None or not torch.cuda.is_available():
            rows.append(Row(f"{op} engine vs host core", "SKIP", "needs torch with CUDA to feed the engine"))
            continue
        got = _engine_outputs(trt, bytes(engine), feeds)
        want = reference(feeds)
        names = [t.name for t in OPS[op].outputs]
        diff = sum(int((np.asarray(got[n]).reshape(-1) != np.asarray(w).reshape(-1)).sum()) for n, w in zip(names, want))
        rows.append(Row(f"{op} engine vs host core", "PASS" if diff == 0 else "FAIL", f"{diff} elements differ"))
        rows += _kernel_compare_row(op, feeds, got, names)
    return rows


def _kernel_compare_row(op: str, feeds: dict, got: dict, names: list[str]) -> list[Row]:
    """The engine's outputs against the torch kernels (CPU)."""
    import numpy as np
    import torch

    from prunevid.plugins import kernels

    args = [torch.from_numpy(v) for v in feeds.values()]
    out = kernels.dpc_knn_batched(*args, 7) if op == "PvDpcKnn" else kernels.group_topk(*args)
    diff = sum(int((np.asarray(got[n]).reshape(-1) != o.numpy().reshape(-1)).sum()) for n, o in zip(names, out))
    return [Row(f"{op} engine vs torch kernel", "PASS" if diff == 0 else "FAIL", f"{diff} elements differ")]


def _export_rows(trt, logger, export: Path) -> list[Row]:
    import onnx

    from prunevid.plugins.ops import DOMAIN
    from prunevid.trt.plugins import plugin_onnx

    rows = []
    for path in sorted((export).rglob("*.onnx")):
        if path.name.endswith((".plugins.onnx", ".trt.onnx")):
            continue
        model = onnx.load(str(path), load_external_data=False)
        wanted = [n.op_type for n in model.graph.node if n.domain == DOMAIN]
        if not wanted:
            continue
        source = plugin_onnx(path, trt.__version__)
        kinds, _, errs = _build(trt, logger, Path(source))
        if errs:
            rows.append(Row(f"parse {path.name}", "FAIL", errs[0][:200]))
            continue
        plugins = sum("PLUGIN" in str(kind) for kind, _ in kinds)
        ok = plugins >= len(wanted)
        rows.append(Row(f"parse {path.name}", "PASS" if ok else "FAIL",
                        f"{plugins} plugin layers for {len(wanted)} prunevid nodes ({', '.join(sorted(set(wanted)))})"))
    return rows


QUESTION = "What are the people in the video riding, and where are they going?"


def _pipeline_rows(work: Path, arch: str, args) -> list[Row]:
    """Step 4 of the module docstring: eager vs ONNX Runtime CUDA vs TensorRT engines on the tiny
    PLLaVA, then a profile report."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return [Row("tiny pipeline", "SKIP", "torch is not installed: no eager reference or export")]
    import onnxruntime as ort

    from prunevid.config import PruneConfig
    from prunevid.errors import PruneVidError
    from prunevid.exporter.export import ExportOptions, export
    from prunevid.model.tiny import make_tiny
    from prunevid.reference import EagerPipeline
    from prunevid.runtime.pipeline import RuntimePipeline
    from prunevid.runtime.video import bundled_clips, write_synthetic_clip

    clip = bundled_clips().get("bikes") or write_synthetic_clip(work / "scene_cut.mp4")
    model = make_tiny(work / "tiny-pllava")
    out = export(model, work / "tiny-export", PruneConfig(), ExportOptions())
    rows = []
    eager = {mode: EagerPipeline(model, PruneConfig().with_overrides(mode=mode)).run(clip, QUESTION, max_new_tokens=16).token_ids
             for mode in ("prunevid", "none")}

    def compare(label: str, make) -> None:
        try:
            got = {mode: make(mode).run(clip, QUESTION, max_new_tokens=16).token_ids for mode in eager}
        except PruneVidError as exc:
            rows.append(Row(label, "FAIL", str(exc)[:200]))
            return
        same = all(got[m] == eager[m] for m in eager)
        rows.append(Row(label, "PASS" if same else "FAIL",
                        f"token ids {'equal' if same else 'DIFFER'} to eager, PruneVid and baseline (16 tokens)"))

    if "CUDAExecutionProvider" in ort.get_available_providers():
        compare("ORT CUDA vs eager (tiny)",
                lambda mode: RuntimePipeline(out, mode=mode, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]))
    else:
        rows.append(Row("ORT CUDA vs eager (tiny)", "SKIP", "onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu)"))
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        rows.append(Row("TensorRT engines (tiny)", "SKIP", "tensorrt is not installed"))
    else:
        rows += _engine_rows(out, arch, args, compare)
    rows += _profile_rows(out, clip, work)
    return rows


def _engine_rows(export_dir: Path, arch: str, args, compare) -> list[Row]:
    from prunevid.errors import PruneVidError
    from prunevid.runtime.pipeline import RuntimePipeline
    from prunevid.trt.deploy import BuildRequest, build, prepare
    from prunevid.trt.targets import TARGETS

    target = next((t.name for t in TARGETS.values() if t.sm == arch), None)
    if target is None:
        return [Row("TensorRT engines (tiny)", "SKIP", f"no target with {arch} in prunevid.trt.targets")]
    lib = getattr(args, "built_plugin_lib", None)
    req = BuildRequest(export_dir, target, plugins="library" if lib else "inline", plugin_libs=(lib,) if lib else (),
                       max_prompt_tokens=128, max_new_tokens=16)
    start = time.monotonic()
    try:
        budget, plan = prepare(req)
        built = build(req, plan)
    except PruneVidError as exc:
        return [Row("TensorRT engines (tiny)", "FAIL", str(exc)[:200])]
    rows = [Row("TensorRT engines (tiny)", "PASS", f"{len(built)} engines for {target} ({plan.settings.plugins} plugins) "
                f"in {time.monotonic() - start:.0f}s; budget {budget.total / 2**30:.2f} GiB")]
    compare("TensorRT runner vs eager (tiny)", lambda mode: RuntimePipeline(export_dir, mode=mode, backend="trt"))
    return rows


def _profile_rows(export_dir: Path, clip: Path, work: Path) -> list[Row]:
    import shutil

    from prunevid.errors import PruneVidError
    from prunevid.trt.profile import ProfileRequest, profile

    backend = "trt" if shutil.which("trtexec") and (export_dir / "engines").is_dir() else "ort"
    out = work / "profile"
    try:
        data = profile(ProfileRequest(export_dir, clip, QUESTION, backend=backend, compare_baseline=True, out=out, runs=3))
    except PruneVidError as exc:
        return [Row(f"profile ({backend})", "FAIL", str(exc)[:200])]
    print("\n".join(data.get("table", [])))
    return [Row(f"profile ({backend})", "PASS" if data.get("table") else "FAIL", f"report {out / 'report.json'}")]


FP16_LOGITS_RTOL = 2e-2  # max |fp16 - fp32| / max |fp32| over the vocabulary, after 32 fp16 layers


class LogitsTap:
    """Wraps a runner; keeps the ``logits`` of the first ``decoder_late`` call (the prompt's)."""

    def __init__(self, inner):
        self.inner, self.logits = inner, None
        self.device = getattr(inner, "device", "cpu")
        self.name = getattr(inner, "name", f"onnxruntime-{self.device}")

    def warm_up(self) -> None:
        getattr(self.inner, "warm_up", lambda: None)()

    def run(self, graph, feeds):
        out = self.inner.run(graph, feeds)
        if graph == "decoder_late" and self.logits is None:
            self.logits = out["logits"].astype("float32")
        return out


def first_logits(export_dir: Path, runner, clip: Path, question: str):
    """The prompt's logits ``[V]`` of one answer of ``export_dir`` through ``runner``."""
    from prunevid.runtime.pipeline import RuntimePipeline

    tap = LogitsTap(runner)
    RuntimePipeline(export_dir, backend=tap).run(clip, question, max_new_tokens=1)
    return tap.logits


def logits_row(label: str, got, want) -> Row:
    """PASS when ``got`` is within :data:`FP16_LOGITS_RTOL` of ``want`` (relative to its largest
    magnitude) and both pick the same token."""
    import numpy as np

    rel = float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-30))
    same = int(np.argmax(got)) == int(np.argmax(want))
    ok = rel <= FP16_LOGITS_RTOL and same
    return Row(label, "PASS" if ok else "FAIL", f"max |diff| / max |logit| = {rel:.2e} (<= {FP16_LOGITS_RTOL:g}); "
               f"top token {'equal' if same else 'DIFFERS'}")


def _bench_rows(work: Path, arch: str) -> list[Row]:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return [Row("bench fp16 engines", "SKIP", "tensorrt is not installed")]
    from prunevid.config import PruneConfig
    from prunevid.errors import PruneVidError
    from prunevid.exporter.export import ExportOptions, export
    from prunevid.model.tiny import make_tiny
    from prunevid.runtime.artifact import open_artifact
    from prunevid.runtime.backend import OrtBackend
    from prunevid.runtime.video import bundled_clips, write_synthetic_clip
    from prunevid.trt.deploy import BuildRequest, build, prepare
    from prunevid.trt.runner import TrtRunner
    from prunevid.trt.targets import TARGETS

    target = next((t.name for t in TARGETS.values() if t.sm == arch), None)
    if target is None:
        return [Row("bench fp16 engines", "SKIP", f"no target with {arch}")]
    clip = bundled_clips().get("bikes") or write_synthetic_clip(work / "scene_cut.mp4")
    model = make_tiny(work / "bench-pllava", geometry="bench")
    fp32 = export(model, work / "bench-fp32", PruneConfig(), ExportOptions())
    fp16 = export(model, work / "bench-fp16", PruneConfig(), ExportOptions(dtype="fp16"))
    try:
        req = BuildRequest(fp16, target, max_prompt_tokens=256, max_new_tokens=8)
        _, plan = prepare(req)
        build(req, plan)
        art = open_artifact(fp32)
        want = first_logits(fp32, OrtBackend({n: art.graph_path(n) for n in spec_order()}, ["CPUExecutionProvider"]),
                            clip, QUESTION)
        got = first_logits(fp16, TrtRunner.from_export(fp16), clip, QUESTION)
    except PruneVidError as exc:
        return [Row("bench fp16 engines", "FAIL", str(exc)[:200])]
    return [logits_row("bench fp16 engines vs fp32 ORT logits", got, want)]


def spec_order() -> tuple[str, ...]:
    from prunevid import spec

    return spec.GRAPH_ORDER


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check and print the table; returns the exit status."""
    args = parse_args(argv)
    from prunevid.trt.plugins import gpu_arch

    arch = args.arch or gpu_arch()
    if arch is None:
        print(format_table([Row("cuda device", "FAIL", "no CUDA device (libcuda.so.1 / cuDeviceGetAttribute)")]))
        return 2
    with tempfile.TemporaryDirectory(prefix="pv-gpu-check-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = [Row("cuda device", "PASS", arch)]
        rows += _run_kernel_check(work, arch, args.cuda_home, args.cases)
        rows += _trt_rows(work, arch, args)
        rows += _pipeline_rows(work, arch, args)
        if args.bench:
            rows += _bench_rows(work, arch)
    print(format_table(rows))
    return 1 if any(r.status == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
