"""ONNX Runtime as the runtime's one backend.

Graphs run through I/O binding: outputs stay as ``OrtValue``s on the session's device and are
bound directly as the next graph's inputs, so on CUDA the visual tokens, hidden states and KV
cache never leave the GPU between graphs. Only small values (token counts, group sizes, the keep
index, the logits of one position) are read back to the host.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

Value = Any  # numpy array or onnxruntime.OrtValue


class OrtBackend:
    """Lazily created ``InferenceSession``s, one per graph, sharing one device."""

    def __init__(self, paths: dict[str, Path], providers: list[str] | None = None, threads: int = 0):
        import onnxruntime as ort

        self._ort = ort
        available = ort.get_available_providers()
        self.providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        self.paths, self.threads = paths, threads
        self.sessions: dict[str, Any] = {}

    def session(self, name: str):
        if name not in self.sessions:
            opts = self._ort.SessionOptions()
            opts.log_severity_level = 3
            if self.threads:
                opts.intra_op_num_threads = self.threads
            self.sessions[name] = self._ort.InferenceSession(str(self.paths[name]), opts, providers=self.providers)
        return self.sessions[name]

    def warm_up(self) -> None:
        """Create every session now (graph loading is not part of any timed stage)."""
        for name in self.paths:
            self.session(name)

    def run(self, name: str, feeds: dict[str, Value]) -> dict[str, Value]:
        """Run graph ``name``; inputs may be numpy arrays or OrtValues; outputs are OrtValues."""
        sess = self.session(name)
        binding = sess.io_binding()
        for key, value in feeds.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(key, value if value.flags.c_contiguous else value.copy())  # keeps 0-d
            else:
                binding.bind_ortvalue_input(key, value)
        names = [o.name for o in sess.get_outputs()]
        for key in names:
            binding.bind_output(key, self.device)
        sess.run_with_iobinding(binding)
        return dict(zip(names, binding.get_outputs()))

    @staticmethod
    def host(value: Value) -> np.ndarray:
        """A value as a numpy array (a device-to-host copy on CUDA)."""
        return value if isinstance(value, np.ndarray) else value.numpy()
