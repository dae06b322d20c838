"""ONNX Runtime as a runner of :mod:`prunevid.runtime.chain`: ``run(graph, feeds) -> outputs``.

Inputs and outputs are numpy arrays. On the CPU provider ONNX Runtime reads a C-contiguous numpy
input in place (no copy), so the runtime's fixed KV buffers are bound as they are. On CUDA every
graph input is copied to the device per call (the KV cache lives on the host): see the README's
"Known limits".

Resident memory (measured on the ``bench`` export, README "Benchmarks (runtime)"): the weights are
held once (one session per graph, MatMul weights prepacked in place of the originals, which ONNX
Runtime then releases); no CPU arena, so activations are freed after each call; and, because glibc
keeps freed heap pages (the loader's protobuf copies, the prompt's activations) mapped, the heap is
trimmed (``malloc_trim``) after loading and then whenever graph calls have run for
:data:`TRIM_AFTER_MS` since the last trim (after every long call, every few decode steps), so the
trims cost under 1% of the run time. Without them resident memory after warm-up was about 1.7x the
weights on the ``bench`` export.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# A trim walks the heap (about 0.3 ms after a decode step, up to tens of ms after a prompt of
# thousands of rows): done once per this much graph time, so it stays under 1% of it.
TRIM_AFTER_MS = 100.0


def heap_trimmer() -> Callable[[], Any] | None:
    """glibc's ``malloc_trim(0)`` (returns freed heap pages to the OS), None where there is none."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


class OrtBackend:
    """Lazily created ``InferenceSession``s, one per graph, sharing one device."""

    def __init__(self, paths: dict[str, Path], providers: list[str] | None = None, threads: int = 0,
                 trim_after_ms: float = TRIM_AFTER_MS, disabled_optimizers: dict[str, tuple[str, ...]] | None = None):
        """``disabled_optimizers``: per graph, ONNX Runtime optimizers to turn off (the manifest's, see
        :func:`prunevid.spec.disabled_optimizers`)."""
        import onnxruntime as ort

        self._ort = ort
        available = ort.get_available_providers()
        self.providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        first = self.providers[0] if isinstance(self.providers[0], str) else self.providers[0][0]  # (name, options)
        self.device = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "tensorrt"}.get(first, "cpu")
        self.paths, self.threads = paths, threads
        self.disabled_optimizers = dict(disabled_optimizers or {})
        self.sessions: dict[str, Any] = {}
        self._outputs: dict[str, list[str]] = {}  # output names per graph
        self.trim_after_ms = trim_after_ms
        self.trim = heap_trimmer()
        self.trims = 0  # how many times the heap was trimmed (tests, diagnostics)
        self._since_trim_ms = 0.0  # graph time since the last trim

    def options(self):
        """The session options every graph gets."""
        opts = self._ort.SessionOptions()
        opts.log_severity_level = 3
        # no arena: activation memory (the prompt's attention logits) goes back to the allocator after
        # each call instead of staying reserved, so resident memory stays near weights + KV
        opts.enable_cpu_mem_arena = False
        if self.threads:
            opts.intra_op_num_threads = self.threads
        return opts

    def session(self, name: str):
        if name not in self.sessions:
            opts = self.options()
            self.configure(opts, name)
            self.sessions[name] = self._ort.InferenceSession(
                str(self.paths[name]), opts, providers=self.providers,
                disabled_optimizers=list(self.disabled_optimizers.get(name, ())))
            self.release()  # the parsed protobuf and the unpacked weights are freed by now
        return self.sessions[name]

    def configure(self, opts, name: str) -> None:
        """Hook for subclasses (the profiler): adjust graph ``name``'s session options before it is created."""

    def release(self) -> None:
        """Return freed heap pages to the OS (no-op without glibc)."""
        if self.trim is not None:
            self.trim()
            self.trims += 1
        self._since_trim_ms = 0.0

    def warm_up(self) -> None:
        """Create every session now (graph loading is not part of any timed stage)."""
        for name in self.paths:
            self.session(name)

    def run(self, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run graph ``name`` on numpy inputs; numpy outputs keyed by name."""
        sess = self.session(name)
        # the KV buffers are already C-contiguous arrays: a flag test, not np.require (~10x dearer,
        # 44 of them per decode step)
        feeds = {k: v if type(v) is np.ndarray and v.flags.c_contiguous else np.ascontiguousarray(v)
                 for k, v in feeds.items()}
        names = self._outputs.get(name) or self._outputs.setdefault(name, [o.name for o in sess.get_outputs()])
        start = time.perf_counter()
        out = dict(zip(names, sess.run(names, feeds)))
        self._since_trim_ms += (time.perf_counter() - start) * 1e3
        if self._since_trim_ms >= self.trim_after_ms:
            self.release()  # the calls since the last trim left their activations freed on the heap
        return out


BACKENDS = ("ort", "ort-trt", "trt")


def open_backend(kind: str, paths: dict[str, Path], providers: list[str] | None = None, threads: int = 0,
                 engine_dir: Path | None = None, disabled_optimizers: dict[str, tuple[str, ...]] | None = None):
    """The runner ``kind`` names: ``ort`` (ONNX Runtime, CUDA if available, else CPU), ``ort-trt``
    (ONNX Runtime's TensorRT provider, engine cache under ``engine_dir/engines/ort-trt``) or ``trt``
    (:class:`prunevid.trt.runner.TrtRunner` on the engines ``prunevid build`` wrote)."""
    from prunevid.errors import ConfigError

    if kind == "ort":
        return OrtBackend(paths, providers, threads, disabled_optimizers=disabled_optimizers)
    if kind == "ort-trt":
        import onnxruntime as ort

        from prunevid.trt.runner import ort_trt_providers

        if "TensorrtExecutionProvider" not in ort.get_available_providers():
            raise ConfigError("--backend ort-trt needs ONNX Runtime with its TensorRT provider "
                              "(onnxruntime-gpu and TensorRT's libraries); this one has "
                              f"{', '.join(ort.get_available_providers())}")

        return OrtBackend(paths, ort_trt_providers(engine_dir), threads, disabled_optimizers=disabled_optimizers)
    if kind == "trt":
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            raise ConfigError("--backend trt needs TensorRT's Python package (pip install 'prunevid[trt]', or "
                              "JetPack's python3-libnvinfer) and engines from prunevid build") from None
        from prunevid.trt.runner import TrtRunner

        return TrtRunner.from_export(engine_dir)
    raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {kind}")
