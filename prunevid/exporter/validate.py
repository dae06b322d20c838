"""``prunevid check``: every exported graph against the eager stages, then answers end to end.

Per graph, the torch stage (the same module that was exported, running eagerly on the original
weights) and ONNX Runtime get identical fresh inputs, at shapes other than the export's trace
shapes where the graph has dynamic dimensions (fewer frames, another question length, another
merged-token count, another cache length). Float outputs must satisfy
``|ort - torch| <= atol + rtol * |torch|`` elementwise; integer outputs must be equal. Then the
runtime's generated token ids must equal the eager reference's, with pruning on and off.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from prunevid import spec
from prunevid.config import PruneConfig

# (atol, rtol) per graph for float32 outputs; integer outputs are compared exactly.
TOLERANCES: dict[str, tuple[float, float]] = {
    "encoder": (1e-4, 1e-4),
    "merger": (1e-5, 1e-5),
    "embed": (0.0, 0.0),
    "decoder_early": (1e-4, 1e-4),
    "score": (1e-5, 1e-4),
    "select": (0.0, 0.0),
    "decoder_late": (1e-4, 1e-4),
}
CHECK_QUESTIONS = ("What happens in this video?", "Describe the main object and how it moves, step by step, in detail.")


@dataclass
class OutputCheck:
    graph: str
    output: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    ok: bool
    tolerance: tuple[float, float] | None = None  # (atol, rtol) when not TOLERANCES[graph] (quantized graphs)

    def line(self) -> str:
        atol, rtol = self.tolerance or TOLERANCES[self.graph]
        verdict = "ok" if self.ok else "FAIL"
        return (f"{self.graph:16s} {self.output:28s} {str(self.shape):18s} max_abs {self.max_abs:.2e} "
                f"max_rel {self.max_rel:.2e} (atol {atol:g}, rtol {rtol:g}) {verdict}")


@dataclass
class CheckReport:
    outputs: list[OutputCheck] = field(default_factory=list)
    end_to_end: list[tuple[str, str, bool]] = field(default_factory=list)  # (mode, question, equal)
    polygraphy: dict[str, bool] = field(default_factory=dict)  # graph -> Polygraphy's verdict
    quantized: str | None = None  # the format of a quantized export: its end-to-end tokens are reported, not gated

    @property
    def ok(self) -> bool:
        return (all(o.ok for o in self.outputs) and (self.quantized is not None or all(e[2] for e in self.end_to_end))
                and all(self.polygraphy.values()))

    def summary(self) -> list[OutputCheck]:
        """One row per output, the KV cache of each graph folded into one ``present.*`` row."""
        rows: list[OutputCheck] = []
        folded: dict[str, list[OutputCheck]] = {}
        for o in self.outputs:
            if o.output.startswith("present."):
                folded.setdefault(o.graph, []).append(o)
            else:
                rows.append(o)
        for graph, kv in folded.items():
            rows.append(OutputCheck(graph, f"present.* ({len(kv)} tensors)", kv[0].shape,
                                    max(o.max_abs for o in kv), max(o.max_rel for o in kv), all(o.ok for o in kv),
                                    kv[0].tolerance))
        order = {name: i for i, name in enumerate(spec.GRAPH_ORDER)}
        return sorted(rows, key=lambda o: order[o.graph])


def tolerance_of(manifest: dict, graph: str) -> tuple[float, float] | None:
    """``(atol, rtol)`` of a graph that ``prunevid quantize`` quantized: its format's, from the code's
    format table (:data:`prunevid.calibration.formats.FORMATS`), never a number read from the checked
    folder; None for a float graph (the float tolerances of :data:`TOLERANCES`). A format this version
    does not know is a one-line :class:`ArtifactError`."""
    from prunevid.calibration.formats import FORMATS
    from prunevid.errors import ArtifactError

    quant = manifest.get("quantization")
    if not quant or graph not in quant.get("graphs", {}):
        return None
    fmt = FORMATS.get(quant.get("format"))
    if fmt is None:
        raise ArtifactError(f"quantization format {quant.get('format')!r} of this export is unknown to this "
                            f"prunevid (known: {', '.join(FORMATS)})")
    return fmt.tolerance


def compare(graph: str, name: str, got: np.ndarray, want: np.ndarray,
            tolerance: tuple[float, float] | None = None) -> OutputCheck:
    atol, rtol = tolerance or TOLERANCES[graph]
    if got.shape != want.shape:
        return OutputCheck(graph, name, tuple(got.shape), float("inf"), float("inf"), False, tolerance)
    if not np.issubdtype(want.dtype, np.floating):
        equal = bool(np.array_equal(got, want))
        return OutputCheck(graph, name, tuple(got.shape), 0.0 if equal else float("inf"), 0.0, equal, tolerance)
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    scale = np.abs(want.astype(np.float64))
    rel = diff / np.maximum(scale, 1e-12)
    ok = bool(np.all(diff <= atol + rtol * scale))
    return OutputCheck(graph, name, tuple(got.shape), float(diff.max(initial=0.0)), float(rel.max(initial=0.0)), ok,
                       tolerance)


def polygraphy_verdict(path: Path, graph: spec.Graph, feeds: dict[str, np.ndarray],
                       torch_outputs: dict[str, np.ndarray]) -> bool:
    """The same comparison through Polygraphy: its ONNX Runtime runner against the torch outputs,
    with its simple (elementwise) compare function at this graph's tolerances (integer outputs exact)."""
    from polygraphy import comparator
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator.struct import IterationResult
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR
    atol, rtol = TOLERANCES[graph.name]
    exact = {t.name: 0.0 for t in graph.outputs if t.dtype in ("int64", "bool")}
    runner = OnnxrtRunner(SessionFromOnnx(str(path), providers=["cpu"]), name="onnxruntime")
    results = comparator.Comparator.run([runner], data_loader=[feeds])
    results.append(("torch-eager", [IterationResult(outputs=torch_outputs, runner_name="torch-eager")]))
    # SimpleCompareFunc since Polygraphy 0.50; CompareFunc.simple before (deprecated after)
    simple = getattr(comparator, "SimpleCompareFunc", None) or comparator.CompareFunc.simple
    compare = simple(atol={"": atol, **exact}, rtol={"": rtol, **exact}, check_error_stat="elemwise")
    return bool(comparator.Comparator.compare_accuracy(results, compare_func=compare))


class GraphChecker:
    """A runner of :mod:`prunevid.runtime.chain` that runs each torch stage and its ONNX graph on
    the same feeds, records the comparison, and hands the torch outputs on down the chain."""

    def __init__(self, artifact, model, cfg: PruneConfig, tokenizer, use_polygraphy: bool = False):
        from prunevid.exporter.runners import TorchRunner
        from prunevid.exporter.stages import build_stages
        from prunevid.runtime.backend import OrtBackend

        g = artifact.geometry
        self.artifact, self.geometry, self.tokenizer = artifact, g, tokenizer
        self.graphs = spec.graphs(g)
        self.torch = TorchRunner(build_stages(model, cfg, g), self.graphs)
        self.backend = OrtBackend({n: artifact.graph_path(n) for n in spec.GRAPH_ORDER},
                                  disabled_optimizers=artifact.disabled_optimizers)
        self.report = CheckReport()
        self.use_polygraphy = use_polygraphy

    def run(self, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run graph ``name`` both ways, record the comparison, return the torch outputs."""
        want = self.torch.run(name, feeds)
        got = self.backend.run(name, feeds)
        tolerance = tolerance_of(self.artifact.manifest, name)
        for t in self.graphs[name].outputs:
            self.report.outputs.append(compare(name, t.name, got[t.name], want[t.name], tolerance))
        if self.use_polygraphy:
            feeds = {k: np.require(v, requirements="C") for k, v in feeds.items()}
            verdict = polygraphy_verdict(self.artifact.graph_path(name), self.graphs[name], feeds, want)
            self.report.polygraphy[name] = self.report.polygraphy.get(name, True) and verdict
        return want

    def run_all(self, seed: int = 1) -> None:
        """The chain with selection and two decode steps on a random clip with a scene cut, the
        encoder also at another frame count, and a question that is not the export's."""
        from prunevid.runtime.chain import Chain
        from prunevid.runtime.text import build_prompt

        g = self.geometry
        gen = torch.Generator().manual_seed(seed)
        chain = Chain(self, g)
        chain.encode(torch.randn(max(1, g.frames - 3), 3, g.image_size, g.image_size, generator=gen).numpy())
        video = torch.randn(g.frames, 3, g.image_size, g.image_size, generator=gen)
        video[g.frames // 2 :] += 1.5  # a scene cut, so several segments
        visual = chain.visual(chain.encode(video.numpy()), merge=True)
        model = self.artifact.manifest["model"]
        prompt = build_prompt(self.tokenizer, CHECK_QUESTIONS[1], model["template"], model["image_token_index"],
                              model.get("after_visual_ids", ()))
        state = chain.prefill(np.asarray(prompt.ids, dtype=np.int64), prompt.image_pos, visual, True, 3)
        list(chain.greedy(state, 3, None))


def end_to_end(engine_dir: Path, checkpoint: Path, cfg: PruneConfig, clip: Path, progress) -> list[tuple[str, str, bool]]:
    """Generated token ids of the runtime against the eager reference, pruning on and off."""
    from prunevid.reference import EagerPipeline
    from prunevid.runtime.pipeline import RuntimePipeline

    results = []
    for mode in ("prunevid", "none"):
        runtime = RuntimePipeline(engine_dir, mode=mode)
        eager = EagerPipeline(checkpoint, cfg.with_overrides(mode=mode))
        for question in CHECK_QUESTIONS:
            a = runtime.run(clip, question, max_new_tokens=12)
            b = eager.run(clip, question, max_new_tokens=12)
            same = a.token_ids == b.token_ids and a.visual_tokens == b.visual_tokens
            progress(f"end to end [{mode}] {'same' if same else 'DIFFERENT'} tokens: {question!r}")
            results.append((mode, question, same))
    return results


def check_export(engine_dir: str | Path, checkpoint: str | Path | None = None, *, clip: Path | None = None,
                 use_polygraphy: bool = False, progress: Callable[[str], None] = lambda _m: None) -> CheckReport:
    """Check every graph of ``engine_dir`` against the eager stages of its source checkpoint."""
    from prunevid.errors import ArtifactError
    from prunevid.exporter.export import checkpoint_hash
    from prunevid.model.checkpoint import load_model
    from prunevid.runtime.artifact import open_artifact
    from prunevid.runtime.text import TextTokenizer

    artifact = open_artifact(engine_dir)
    source = Path(checkpoint or artifact.manifest["source"]["path"])
    if not source.is_dir():
        raise ArtifactError(f"source checkpoint {source} not found; pass --checkpoint DIR")
    if checkpoint_hash(source) != artifact.manifest["source"]["sha256"]:
        raise ArtifactError(f"{source} is not the checkpoint this folder was exported from (sha256 differs)")
    cfg = PruneConfig.from_json(artifact.prune)
    progress(f"loading {source}")
    model, _ = load_model(source, cfg.lora_alpha)
    checker = GraphChecker(artifact, model, cfg, TextTokenizer.from_dir(artifact.root), use_polygraphy)
    progress("comparing each graph with its torch stage on fresh inputs")
    checker.run_all()
    report = checker.report
    report.quantized = artifact.manifest.get("quantization", {}).get("format")
    if clip is not None:
        report.end_to_end = end_to_end(Path(engine_dir), source, cfg, clip, progress)
    return report
