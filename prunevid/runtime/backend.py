"""ONNX Runtime as a runner of :mod:`prunevid.runtime.chain`: ``run(graph, feeds) -> outputs``.

Inputs and outputs are numpy arrays. On the CPU provider ONNX Runtime reads a C-contiguous numpy
input in place (no copy), so the runtime's fixed KV buffers are bound as they are. On CUDA every
graph input is copied to the device per call (the KV cache lives on the host): see the README's
"Known limits".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class OrtBackend:
    """Lazily created ``InferenceSession``s, one per graph, sharing one device."""

    def __init__(self, paths: dict[str, Path], providers: list[str] | None = None, threads: int = 0):
        import onnxruntime as ort

        self._ort = ort
        available = ort.get_available_providers()
        self.providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        first = self.providers[0] if isinstance(self.providers[0], str) else self.providers[0][0]  # (name, options)
        self.device = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "tensorrt"}.get(first, "cpu")
        self.paths, self.threads = paths, threads
        self.sessions: dict[str, Any] = {}

    def session(self, name: str):
        if name not in self.sessions:
            opts = self._ort.SessionOptions()
            opts.log_severity_level = 3
            # no arena: activation memory (the prompt's attention logits) goes back to the OS after
            # each call instead of staying reserved, so resident memory stays near weights + KV
            opts.enable_cpu_mem_arena = False
            if self.threads:
                opts.intra_op_num_threads = self.threads
            self.configure(opts, name)
            self.sessions[name] = self._ort.InferenceSession(str(self.paths[name]), opts, providers=self.providers)
        return self.sessions[name]

    def configure(self, opts, name: str) -> None:
        """Hook for subclasses (the profiler): adjust graph ``name``'s session options before it is created."""

    def warm_up(self) -> None:
        """Create every session now (graph loading is not part of any timed stage)."""
        for name in self.paths:
            self.session(name)

    def run(self, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run graph ``name`` on numpy inputs; numpy outputs keyed by name."""
        sess = self.session(name)
        feeds = {k: np.require(v, requirements="C") for k, v in feeds.items()}
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, feeds)))


BACKENDS = ("ort", "ort-trt", "trt")


def open_backend(kind: str, paths: dict[str, Path], providers: list[str] | None = None, threads: int = 0,
                 engine_dir: Path | None = None):
    """The runner ``kind`` names: ``ort`` (ONNX Runtime, CUDA if available, else CPU), ``ort-trt``
    (ONNX Runtime's TensorRT provider, engine cache under ``engine_dir/engines/ort-trt``) or ``trt``
    (:class:`prunevid.trt.runner.TrtRunner` on the engines ``prunevid build`` wrote)."""
    from prunevid.errors import ConfigError

    if kind == "ort":
        return OrtBackend(paths, providers, threads)
    if kind == "ort-trt":
        import onnxruntime as ort

        from prunevid.trt.runner import ort_trt_providers

        if "TensorrtExecutionProvider" not in ort.get_available_providers():
            raise ConfigError("--backend ort-trt needs ONNX Runtime with its TensorRT provider "
                              "(onnxruntime-gpu and TensorRT's libraries); this one has "
                              f"{', '.join(ort.get_available_providers())}")

        return OrtBackend(paths, ort_trt_providers(engine_dir), threads)
    if kind == "trt":
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            raise ConfigError("--backend trt needs TensorRT's Python package (pip install 'prunevid[trt]', or "
                              "JetPack's python3-libnvinfer) and engines from prunevid build") from None
        from prunevid.trt.runner import TrtRunner

        return TrtRunner.from_export(engine_dir)
    raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {kind}")
