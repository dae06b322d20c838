"""TensorRT as a runner of :mod:`prunevid.runtime.chain` (``run(graph, feeds) -> outputs``), and
ONNX Runtime's TensorRT provider options. Torch-free: TensorRT's Python API for the engines and
Polygraphy's ctypes wrapper of ``libcudart`` for device memory.

What stays on the device:

* **The KV cache**, one device buffer per ``past_key_values.*`` input, allocated once at the decode
  profile's capacity. The chain keeps its host cache (the runner protocol speaks numpy); the runner
  mirrors it and, per call, uploads only the rows that changed since the last call (rows
  ``synced..cache_length`` of every head, one 2-D copy per buffer): one row per layer per decode
  step, not the whole cache. A new answer (another host buffer, or a shorter valid length) uploads
  the valid rows again.
* **Outputs that come straight back as inputs** (``visual_features`` from the encoder into the
  merger, ``score_query``/``score_key`` when passed whole): every output's device buffer is
  remembered by the host array it was copied to, and a feed that is that same array is bound to the
  device buffer without an upload.
* **Scratch**: every execution context is created without device memory and shares one block of
  the largest engine's size (the graphs run one after another on one stream).

Decoder graphs (and ``embed``) have two optimisation profiles (:mod:`prunevid.trt.engines`): 0
for the prompt, 1 for one decode row; each has its own execution context. Decode-profile launches
are captured into a CUDA graph once they repeat with the same shapes and addresses (every step of
one answer) and replayed (:class:`GraphPlan`); a failed capture falls back to plain launches, as
Edge-LLM's runtime does. None of this has run on a GPU yet.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from prunevid import spec
from prunevid.errors import ArtifactError, ConfigError

PAST = "past_key_values."


# --------------------------------------------------------------------------------------------
# pure logic (tested without a GPU)
# --------------------------------------------------------------------------------------------


def choose_profile(ranges: Sequence[Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]]],
                   shapes: Mapping[str, tuple[int, ...]]) -> int:
    """The first profile whose ``{input: (min, max)}`` contains every given shape; a
    :class:`ConfigError` names the input and the engine's limits when none does (build the engines
    with larger --max-* options)."""
    for i, prof in enumerate(ranges):
        if all(name not in prof or (len(shape) == len(prof[name][0])
                                    and all(lo <= d <= hi for d, lo, hi in zip(shape, *prof[name])))
               for name, shape in shapes.items()):
            return i
    name, shape = next((n, s) for n, s in shapes.items() if n in ranges[0])
    limits = " or ".join(f"{p[name][0]}..{p[name][1]}" for p in ranges if name in p)
    raise ConfigError(f"input {name} of shape {tuple(shape)} is outside the engine's profiles ({limits}); "
                      f"build the engines with larger --max-prompt-tokens / --max-new-tokens")


@dataclass(frozen=True)
class Copy2D:
    """``height`` rows of ``width`` bytes from ``src + i * spitch`` to ``dst + i * dpitch`` (cudaMemcpy2D)."""

    dst_offset: int
    src_offset: int
    width: int
    height: int
    pitch: int  # the same on both sides: host and device lay out [H_kv, R, d] alike


def kv_rows_copy(synced: int, length: int, heads: int, rows: int, row_bytes: int) -> Copy2D | None:
    """The copy that brings rows ``synced..length`` of every head of a ``[heads, rows, d]`` buffer to
    the device (None when nothing changed)."""
    if length <= synced:
        return None
    return Copy2D(synced * row_bytes, synced * row_bytes, (length - synced) * row_bytes, heads, rows * row_bytes)


class Device(Protocol):
    """Device memory as the runner uses it (pointers are ints)."""

    def malloc(self, nbytes: int) -> int: ...

    def h2d(self, dst: int, host: np.ndarray) -> None: ...

    def h2d_2d(self, dst: int, host: np.ndarray, copy: Copy2D) -> None: ...

    def d2h(self, host: np.ndarray, src: int) -> None: ...


class KVMirror:
    """Device copies of the chain's host KV buffers, allocated once at ``capacity`` bytes each.

    Which rows are already on the device is tracked per input against the host array object (a weak
    reference, so a new buffer that numpy happens to place at a freed one's address is still new)."""

    def __init__(self, device: Device, capacity: int):
        self.device, self.capacity = device, capacity
        self.ptr: dict[str, int] = {}
        self.state: dict[str, tuple[weakref.ref, int]] = {}  # name -> (host array, rows synced)

    def bind(self, name: str, host: np.ndarray, length: int) -> int:
        """The device pointer of ``name`` holding the host buffer's valid rows ``0..length-1``."""
        if host.nbytes > self.capacity:
            raise ConfigError(f"{name}: a KV buffer of {host.nbytes} bytes exceeds the engine's capacity "
                              f"{self.capacity}; build the engines with larger --max-new-tokens / --max-prompt-tokens")
        if name not in self.ptr:
            self.ptr[name] = self.device.malloc(self.capacity)
        host = np.ascontiguousarray(host)
        heads, rows, d = host.shape  # [H_kv, R, d]
        prev = self.state.get(name)
        same = prev is not None and prev[0]() is host and prev[1] <= length
        synced = prev[1] if same else 0
        copy = kv_rows_copy(synced, length, heads, rows, d * host.itemsize)
        if copy is not None:
            self.device.h2d_2d(self.ptr[name], host, copy)
        self.state[name] = (weakref.ref(host), max(length, synced))
        return self.ptr[name]


class Resident:
    """Device buffers of earlier outputs with the host array each was copied to, so that feeding that
    very array back (the same object, not an equal one) binds the device buffer without an upload.
    A device buffer written again forgets its previous host array."""

    def __init__(self):
        self.host_of: dict[int, np.ndarray] = {}  # device pointer -> host array last copied from it

    def remember(self, host: np.ndarray, ptr: int) -> None:
        self.host_of[ptr] = host

    def lookup(self, host: np.ndarray) -> int | None:
        return next((ptr for ptr, h in self.host_of.items() if h is host), None)

    def forget(self) -> None:
        self.host_of.clear()


class GraphPlan:
    """When to capture and replay a CUDA graph of one execution context: a graph replays only the
    exact launch it captured (same shapes and tensor addresses). After a change the context first runs
    once uncaptured (TensorRT sets up shape-dependent state on the first enqueue), is captured on the
    next identical call, and replays from then on."""

    def __init__(self):
        self.captured: dict[Any, Any] = {}  # context id -> key of its captured launch
        self.seen: dict[Any, Any] = {}  # context id -> key of its last uncaptured launch

    def action(self, context: Any, key: Any) -> str:
        """``"replay"``, ``"capture"`` or ``"run"`` for this launch."""
        if self.captured.get(context) == key:
            return "replay"
        if self.seen.get(context) == key:
            return "capture"
        self.seen[context] = key
        return "run"

    def stored(self, context: Any, key: Any) -> None:
        self.captured[context] = key


# --------------------------------------------------------------------------------------------
# the TensorRT runner (needs TensorRT and a GPU)
# --------------------------------------------------------------------------------------------


class PolygraphyDevice:
    """:class:`Device` over Polygraphy's ``libcudart`` wrapper, on one stream."""

    def __init__(self):
        from polygraphy import cuda

        self.cuda, self.lib = cuda, cuda.wrapper()
        self.stream = cuda.Stream()
        self.allocations: list[int] = []

    def malloc(self, nbytes: int) -> int:
        ptr = self.lib.malloc(max(int(nbytes), 1))
        self.allocations.append(ptr)
        return ptr

    def h2d(self, dst: int, host: np.ndarray) -> None:
        host = np.ascontiguousarray(host)
        self.lib.memcpy(dst, host.ctypes.data, host.nbytes, self.cuda.MemcpyKind.HostToDevice, self.stream.ptr)

    def h2d_2d(self, dst: int, host: np.ndarray, copy: Copy2D) -> None:
        import ctypes

        vp = ctypes.c_void_p
        self.lib.check(self.lib.handle.cudaMemcpy2DAsync(
            vp(dst + copy.dst_offset), ctypes.c_size_t(copy.pitch), vp(host.ctypes.data + copy.src_offset),
            ctypes.c_size_t(copy.pitch), ctypes.c_size_t(copy.width), ctypes.c_size_t(copy.height),
            int(self.cuda.MemcpyKind.HostToDevice), vp(self.stream.ptr)))

    def d2h(self, host: np.ndarray, src: int) -> None:
        self.lib.memcpy(host.ctypes.data, src, host.nbytes, self.cuda.MemcpyKind.DeviceToHost, self.stream.ptr)

    def sync(self) -> None:
        self.stream.synchronize()

    def capture(self, launch) -> int:
        """Capture what ``launch()`` enqueues on the stream into an instantiated CUDA graph (its handle)."""
        import ctypes

        h, vp = self.lib.handle, ctypes.c_void_p
        self.lib.check(h.cudaStreamBeginCapture(vp(self.stream.ptr), 0))  # cudaStreamCaptureModeGlobal
        ok = launch()
        graph, exe = vp(), vp()
        self.lib.check(h.cudaStreamEndCapture(vp(self.stream.ptr), ctypes.byref(graph)))
        if not ok:
            raise RuntimeError("enqueue failed during capture")
        self.lib.check(h.cudaGraphInstantiate(ctypes.byref(exe), graph, ctypes.c_ulonglong(0)))
        self.lib.check(h.cudaGraphDestroy(graph))
        return exe.value

    def replay(self, exe: int) -> None:
        import ctypes

        self.lib.check(self.lib.handle.cudaGraphLaunch(ctypes.c_void_p(exe), ctypes.c_void_p(self.stream.ptr)))

    def free(self) -> None:
        for ptr in self.allocations:
            self.lib.free(ptr)
        self.allocations.clear()


class TrtRunner:
    """One engine per graph (``prunevid build``), run on numpy feeds; see the module docstring."""

    name = "tensorrt"
    device = "cuda"

    def __init__(self, engines: Mapping[str, Path], plugin_libs: Sequence[str] = (), cuda_graph: bool = True):
        import tensorrt as trt

        from prunevid.trt.plugins import load_plugins

        self.trt = trt
        logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(logger, "")
        if plugin_libs:
            load_plugins(list(plugin_libs))
        runtime = trt.Runtime(logger)
        self.dev = PolygraphyDevice()
        self.engines, self.contexts, self.outputs = {}, {}, {}
        for name, path in engines.items():
            engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
            if engine is None:
                raise ArtifactError(f"TensorRT {trt.__version__} could not load {path} (built by another "
                                    f"TensorRT or GPU? run prunevid build again)")
            self.engines[name] = engine
        scratch = max(e.device_memory_size_v2 for e in self.engines.values())
        self.scratch = self.dev.malloc(scratch)
        kv_capacity = 0
        for name, engine in self.engines.items():
            self.contexts[name] = []
            for p in range(engine.num_optimization_profiles):
                ctx = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
                ctx.set_device_memory(self.scratch, scratch)
                ctx.set_optimization_profile_async(p, self.dev.stream.ptr)
                self.contexts[name].append(ctx)
            for t in self._io(engine, trt.TensorIOMode.INPUT):
                if t.startswith(PAST):
                    _, _, hi = engine.get_tensor_profile_shape(t, engine.num_optimization_profiles - 1)
                    kv_capacity = max(kv_capacity, int(np.prod(hi)) * np.dtype(trt.nptype(engine.get_tensor_dtype(t))).itemsize)
        self.kv = KVMirror(self.dev, kv_capacity)
        self.resident = Resident()
        self.inputs: dict[tuple[str, str], tuple[int, int]] = {}  # (graph, tensor) -> (ptr, capacity)
        self.profile_ranges: dict[str, list] = {}
        self.cuda_graph, self.graph_plan, self.graph_exec = cuda_graph, GraphPlan(), {}

    @staticmethod
    def _io(engine, mode) -> list[str]:
        return [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)
                if engine.get_tensor_mode(engine.get_tensor_name(i)) == mode]

    @classmethod
    def from_export(cls, export_dir: Path, folder: Path | None = None) -> TrtRunner:
        """The runner on the engines ``prunevid build`` wrote under ``export_dir/engines`` (the folder
        of the installed TensorRT's version; its plan names the plugin library it was built with)."""
        import json

        import tensorrt as trt

        version = ".".join(trt.__version__.split(".")[:2])
        root = Path(export_dir) / "engines"
        found = folder or next(iter(sorted(root.glob(f"trt{version}-*"))), None)
        if found is None or not (found / "plan.json").is_file():
            raise ArtifactError(f"no engines for TensorRT {version} under {root}; run prunevid build {export_dir} --target ...")
        plan = json.loads((found / "plan.json").read_text())
        preflight(Path(export_dir), plan)
        libs = [plan["plugin_library"]] if plan.get("plugin_library") else []
        return cls({n: found / f"{n}.engine" for n in spec.GRAPH_ORDER}, libs)

    def warm_up(self) -> None:
        """Engines are loaded in the constructor."""

    def _ranges(self, graph: str) -> list[dict[str, tuple[tuple[int, ...], tuple[int, ...]]]]:
        """``[{input: (min, max)}]`` per optimisation profile of ``graph``'s engine (read once)."""
        if graph in self.profile_ranges:
            return self.profile_ranges[graph]
        engine = self.engines[graph]
        out = []
        for p in range(engine.num_optimization_profiles):
            prof = {}
            for t in self._io(engine, self.trt.TensorIOMode.INPUT):
                lo, _, hi = engine.get_tensor_profile_shape(t, p)
                if len(lo):
                    prof[t] = (tuple(lo), tuple(hi))
            out.append(prof)
        self.profile_ranges[graph] = out
        return out

    def _input_ptr(self, graph: str, name: str, host: np.ndarray) -> int:
        key = (graph, name)
        ptr, cap = self.inputs.get(key, (0, -1))
        if host.nbytes > cap:
            ptr, cap = self.dev.malloc(host.nbytes), host.nbytes
            self.inputs[key] = (ptr, cap)
        self.dev.h2d(ptr, host)
        return ptr

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run ``graph`` on numpy feeds; numpy outputs (copied back; device copies remembered)."""
        trt, engine = self.trt, self.engines[graph]
        resident = {k: self.resident.lookup(v) for k, v in feeds.items()}  # before any copy makes new objects
        feeds = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
        profile = choose_profile(self._ranges(graph), {k: v.shape for k, v in feeds.items()})
        ctx = self.contexts[graph][profile]
        bound: dict[str, int] = {}  # input -> device address it is bound to
        length = int(feeds["cache_length"]) if "cache_length" in feeds else 0
        for name, host in feeds.items():
            ctx.set_input_shape(name, host.shape)
            if name.startswith(PAST):
                ptr = self.kv.bind(name, host, max(length, 1))
            else:
                ptr = resident[name] if resident[name] is not None else self._input_ptr(graph, name, host)
            ctx.set_tensor_address(name, ptr)
            bound[name] = ptr
        outs = {}
        for name in self._io(engine, trt.TensorIOMode.OUTPUT):
            shape = tuple(ctx.get_tensor_shape(name))
            host = np.empty(shape, trt.nptype(engine.get_tensor_dtype(name)))
            key = (graph, name)
            ptr, cap = self.inputs.get(key, (0, -1))
            if host.nbytes > cap:
                ptr, cap = self.dev.malloc(host.nbytes), host.nbytes
                self.inputs[key] = (ptr, cap)
            ctx.set_tensor_address(name, ptr)
            outs[name] = (host, ptr)
        self._launch(ctx, profile, feeds, bound, outs, graph)
        for host, ptr in outs.values():
            self.dev.d2h(host, ptr)
            self.resident.remember(host, ptr)
        self.dev.sync()
        return {name: host for name, (host, _) in outs.items()}

    def _launch(self, ctx, profile: int, feeds, bound: dict[str, int], outs, graph: str) -> None:
        """Enqueue ``ctx``; decode-profile launches (profile >= 1) go through a CUDA graph when the same
        launch repeats (:class:`GraphPlan`). Any capture failure turns CUDA graphs off for the runner."""
        def enqueue() -> bool:
            return bool(ctx.execute_async_v3(self.dev.stream.ptr))

        action = "run"
        if self.cuda_graph and profile >= 1:
            key = (tuple((n, v.shape) for n, v in feeds.items()), tuple(sorted(bound.items())),
                   tuple(ptr for _, ptr in outs.values()))
            action = self.graph_plan.action(id(ctx), key)
        if action == "replay":
            self.dev.replay(self.graph_exec[id(ctx)])
            return
        if action == "capture":
            try:
                self.graph_exec[id(ctx)] = self.dev.capture(enqueue)
                self.graph_plan.stored(id(ctx), key)
                self.dev.replay(self.graph_exec[id(ctx)])
                return
            except Exception:  # noqa: BLE001 - capture not allowed here: plain launches from now on
                self.cuda_graph = False
        if not enqueue():
            raise ArtifactError(f"TensorRT failed to run {graph}")


def plan_budget(export_dir: Path, plan: Mapping[str, Any]):
    """The memory budget of the deployment a ``plan.json`` was built for, on its target."""
    from prunevid.runtime.artifact import open_artifact
    from prunevid.trt.budget import budget
    from prunevid.trt.deploy import deployment_of
    from prunevid.trt.engines import Limits
    from prunevid.trt.targets import get_target

    settings = plan["settings"]
    d = deployment_of(open_artifact(export_dir, verify=False), settings["precision"], Limits(**settings["limits"]))
    return budget(d, get_target(plan["target"]), settings["workspace_mib"])


def preflight(export_dir: Path, plan: Mapping[str, Any]) -> None:
    """Before loading any engine: the plan's budget against the device's free memory (cudaMemGetInfo)."""
    import ctypes

    from polygraphy import cuda

    from prunevid.trt.budget import check_free

    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    lib = cuda.wrapper()
    lib.check(lib.handle.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)))
    check_free(plan_budget(export_dir, plan), free.value, what=f"the engines of {export_dir}")


def ort_trt_providers(engine_dir: Path | None, plugin_libs: Sequence[str] = (), fp16: bool = False) -> list:
    """ONNX Runtime provider list for its TensorRT execution provider, with its engine and timing
    caches under ``engine_dir/engines/ort-trt`` and the plugin library, then CUDA and CPU for what
    TensorRT does not take. (ONNX Runtime inlines the prunevid functions itself, so the library is
    only listed, not used by these graphs: see the README's TensorRT plugins section.)"""
    options: dict[str, Any] = {"trt_engine_cache_enable": "True", "trt_timing_cache_enable": "True",
                               "trt_fp16_enable": "True" if fp16 else "False"}
    if engine_dir is not None:
        cache = Path(engine_dir) / "engines" / "ort-trt"
        options["trt_engine_cache_path"] = str(cache)
        options["trt_timing_cache_path"] = str(cache)
    if plugin_libs:
        options["trt_extra_plugin_lib_paths"] = ";".join(str(p) for p in plugin_libs)
    return [("TensorrtExecutionProvider", options), "CUDAExecutionProvider", "CPUExecutionProvider"]
