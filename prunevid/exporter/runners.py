"""Runners of :mod:`prunevid.runtime.chain` on the torch side: the stages themselves (export
tracing, ``check``), and a recorder that keeps the first feeds each graph received (the trace
inputs of the export)."""

from __future__ import annotations

import numpy as np
import torch

from prunevid import spec


class TorchRunner:
    """The torch stage behind each graph, called with the graph's inputs in spec order."""

    def __init__(self, stages: dict[str, torch.nn.Module], graphs: dict[str, spec.Graph]):
        self.stages, self.graphs = stages, graphs

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        g = self.graphs[graph]
        args = [torch.from_numpy(np.require(feeds[t.name], requirements="C")) for t in g.inputs]
        with torch.inference_mode():
            out = self.stages[graph](*args)
        out = out if isinstance(out, tuple) else (out,)
        return {t.name: o.numpy() for t, o in zip(g.outputs, out)}


class RecordingRunner:
    """Wraps a runner; keeps a copy of the first feeds of every graph it runs."""

    def __init__(self, inner):
        self.inner = inner
        self.feeds: dict[str, dict[str, np.ndarray]] = {}

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.feeds.setdefault(graph, {k: np.array(v) for k, v in feeds.items()})
        return self.inner.run(graph, feeds)
