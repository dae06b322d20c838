"""trtexec as a profiler of real inputs: its flags per TensorRT line (a table with sources), the
``--loadInputs`` files and command lines for exactly the shapes one answer used, and parsers of
its ``--exportTimes`` / ``--exportProfile`` / ``--exportLayerInfo`` JSON. Torch- and TensorRT-free.

Flag table sources: ``samples/common/sampleOptions.cpp`` of NVIDIA/TensorRT at v10.3.0 and at the
11.1 release (the option parser and its help text), ``samples/trtexec/README.md``, and the
TensorRT 11 trtexec migration guide
(https://docs.nvidia.com/deeplearning/tensorrt/11.4.1/api/migration/tensorrt-10x-to-11x-trtexec.html).
JSON formats: ``samples/common/sampleReporting.cpp`` (``exportJSONTrace``, ``Profiler::exportJSONProfile``)
and the engine inspector (``--exportLayerInfo``; ``Bindings`` in 10.x, ``I/O Tensors`` in 11.x,
https://docs.nvidia.com/deeplearning/tensorrt/11.3.0/api/migration/tensorrt-10x-to-11x-IEngineInspector.html).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prunevid.errors import ArtifactError, ConfigError

SAMPLE_OPTIONS_10_3 = "NVIDIA/TensorRT v10.3.0 samples/common/sampleOptions.cpp"
SAMPLE_OPTIONS_11_1 = "NVIDIA/TensorRT 11.1 samples/common/sampleOptions.cpp"
MIGRATION_11 = "https://docs.nvidia.com/deeplearning/tensorrt/11.4.1/api/migration/tensorrt-10x-to-11x-trtexec.html"


@dataclass(frozen=True)
class Flag:
    """A trtexec option on the two TensorRT lines: ``"yes"`` (accepted, acts), ``"default"`` (accepted,
    a no-op because it became the default), ``"no"`` (removed or absent)."""

    name: str
    trt10: str
    trt11: str
    purpose: str
    source: str


FLAGS: dict[str, Flag] = {f.name: f for f in (
    Flag("--onnx", "yes", "yes", "model", SAMPLE_OPTIONS_10_3),
    Flag("--loadEngine", "yes", "yes", "run a built engine", SAMPLE_OPTIONS_10_3),
    Flag("--saveEngine", "yes", "yes", "write the engine", SAMPLE_OPTIONS_10_3),
    Flag("--timingCacheFile", "yes", "yes", "tactic timing cache", SAMPLE_OPTIONS_10_3),
    Flag("--minShapes", "yes", "yes", "profile (build)", SAMPLE_OPTIONS_10_3),
    Flag("--optShapes", "yes", "yes", "profile (build)", SAMPLE_OPTIONS_10_3),
    Flag("--maxShapes", "yes", "yes", "profile (build)", SAMPLE_OPTIONS_10_3),
    Flag("--shapes", "yes", "yes", "input shapes of the run (values for shape tensors)", SAMPLE_OPTIONS_10_3),
    Flag("--profile", "yes", "yes", "optimisation profile the run uses", SAMPLE_OPTIONS_10_3),
    Flag("--loadInputs", "yes", "yes", "input values from raw binary files (name:file)", SAMPLE_OPTIONS_10_3),
    Flag("--fp16", "yes", "no", "weak-typing precision (removed in 11)", MIGRATION_11),
    Flag("--stronglyTyped", "yes", "default", "strong typing (always on in 11)", MIGRATION_11),
    Flag("--useCudaGraph", "yes", "default", "CUDA graph launch (default in 11)", MIGRATION_11),
    Flag("--noCudaGraph", "no", "yes", "opt out of CUDA graphs (11)", SAMPLE_OPTIONS_11_1),
    Flag("--noDataTransfers", "yes", "default", "time compute only (default in 11)", MIGRATION_11),
    Flag("--includeDataTransfers", "no", "yes", "time H2D/D2H too (11)", SAMPLE_OPTIONS_11_1),
    Flag("--separateProfileRun", "yes", "default", "per-layer profile in a separate run (always in 11)", MIGRATION_11),
    Flag("--useSpinWait", "yes", "default", "spin-wait synchronisation (default in 11)", MIGRATION_11),
    Flag("--warmUp", "yes", "yes", "warm-up ms", SAMPLE_OPTIONS_10_3),
    Flag("--iterations", "yes", "yes", "minimum iterations", SAMPLE_OPTIONS_10_3),
    Flag("--duration", "yes", "yes", "minimum seconds", SAMPLE_OPTIONS_10_3),
    Flag("--avgRuns", "yes", "yes", "runs averaged per reported figure", SAMPLE_OPTIONS_10_3),
    Flag("--percentile", "yes", "yes", "reported percentiles", SAMPLE_OPTIONS_10_3),
    Flag("--exportTimes", "yes", "yes", "per-iteration timing JSON", SAMPLE_OPTIONS_10_3),
    Flag("--exportProfile", "yes", "yes", "per-layer profile JSON", SAMPLE_OPTIONS_10_3),
    Flag("--exportLayerInfo", "yes", "yes", "engine inspector JSON", SAMPLE_OPTIONS_10_3),
    Flag("--profilingVerbosity", "yes", "yes", "layer_names_only | detailed | none", SAMPLE_OPTIONS_10_3),
    Flag("--dynamicPlugins", "yes", "yes", "plugin library loaded through loadLibrary", SAMPLE_OPTIONS_10_3),
    Flag("--memPoolSize", "yes", "yes", "pool limits, e.g. workspace:1024 (MiB)", SAMPLE_OPTIONS_10_3),
    Flag("--useManagedMemory", "yes", "yes", "unified memory buffers (Jetson)", SAMPLE_OPTIONS_10_3),
)}


def flag_ok(flag: str, trt_major: int) -> bool:
    """Whether trtexec of ``trt_major`` accepts ``flag`` (``--name`` or ``--name=value``)."""
    entry = FLAGS.get(flag.split("=", 1)[0])
    if entry is None:
        raise ConfigError(f"{flag} is not in prunevid's trtexec flag table")
    return (entry.trt10 if trt_major < 11 else entry.trt11) != "no"


def timing_flags(trt_major: int) -> list[str]:
    """The timing hygiene the profiling driver wants: opt-in on 10.x, already the default on 11.x."""
    if trt_major < 11:
        return ["--useCudaGraph", "--noDataTransfers", "--separateProfileRun", "--useSpinWait"]
    return []


# --------------------------------------------------------------------------------------------
# captured inputs -> --loadInputs files and command lines
# --------------------------------------------------------------------------------------------


def _quoted(name: str) -> str:
    return f"'{name}'" if ("," in name or ":" in name) else name


def write_inputs(feeds: Mapping[str, np.ndarray], folder: Path) -> dict[str, Path]:
    """Each input as a raw little-endian, C-ordered binary file (what ``--loadInputs`` reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, value in feeds.items():
        path = folder / f"{name}.bin"
        np.ascontiguousarray(value).astype(np.asarray(value).dtype.newbyteorder("<"), copy=False).tofile(path)
        out[name] = path
    return out


def shapes_arg(feeds: Mapping[str, np.ndarray]) -> str:
    """``--shapes`` for exactly these inputs (scalars as an empty shape)."""
    return ",".join(f"{_quoted(n)}:{'x'.join(str(d) for d in np.shape(v))}" for n, v in feeds.items())


def run_command(engine: Path, shapes: Mapping[str, np.ndarray], files: Mapping[str, Path], out_prefix: Path, *,
                trt_major: int, profile_index: int = 0, plugin_libs: Sequence[str] = (), iterations: int = 50,
                trtexec: str = "trtexec") -> list[str]:
    """trtexec argv that times ``engine`` on the inputs in ``files`` (every input, values loaded) with
    ``shapes`` (the inputs of symbolic shape, at exactly their captured shapes) in optimisation profile
    ``profile_index``, exporting times, per-layer profile and layer info beside ``out_prefix``."""
    cmd = [trtexec, f"--loadEngine={engine}"]
    if shapes:
        cmd.append(f"--shapes={shapes_arg(shapes)}")
    if profile_index:
        cmd.append(f"--profile={profile_index}")
    cmd.append("--loadInputs=" + ",".join(f"{_quoted(n)}:{p}" for n, p in files.items()))
    cmd += [f"--dynamicPlugins={lib}" for lib in plugin_libs]
    cmd += timing_flags(trt_major)
    cmd += [f"--iterations={iterations}", "--warmUp=200", "--profilingVerbosity=detailed",
            f"--exportTimes={out_prefix}.times.json", f"--exportProfile={out_prefix}.profile.json",
            f"--exportLayerInfo={out_prefix}.layers.json"]
    bad = [f for f in cmd[1:] if not flag_ok(f, trt_major)]
    if bad:
        raise ConfigError(f"trtexec {trt_major}.x does not take {bad}")
    return cmd


# --------------------------------------------------------------------------------------------
# parsers
# --------------------------------------------------------------------------------------------


def _load(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read trtexec output {path}: {exc}") from None


@dataclass(frozen=True)
class Times:
    """``--exportTimes``: per-iteration ``latencyMs`` and ``computeMs`` (warm-up excluded)."""

    latency_ms: tuple[float, ...]
    compute_ms: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.compute_ms)

    @property
    def p90_ms(self) -> float:
        return percentile(self.compute_ms, 90)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default)."""
    return float(np.percentile(np.asarray(values, dtype=float), q))


def parse_times(path: Path) -> Times:
    """An ``--exportTimes`` file: a JSON array of one object per iteration."""
    data = _load(path)
    if not isinstance(data, list) or not data or not all(isinstance(r, dict) and "computeMs" in r for r in data):
        raise ArtifactError(f"{path} is not a trtexec --exportTimes file (an array of per-iteration objects)")
    return Times(tuple(float(r.get("latencyMs", r["computeMs"])) for r in data), tuple(float(r["computeMs"]) for r in data))


@dataclass(frozen=True)
class LayerTime:
    name: str
    average_ms: float
    median_ms: float
    percentage: float


def parse_profile(path: Path) -> tuple[int, list[LayerTime]]:
    """An ``--exportProfile`` file: ``[{"count": N}, {"name", "timeMs", "averageMs", "medianMs",
    "percentage"}, ...]``; returns N and the layers, slowest first."""
    data = _load(path)
    if not isinstance(data, list) or not data or not isinstance(data[0], dict) or "count" not in data[0]:
        raise ArtifactError(f"{path} is not a trtexec --exportProfile file (first element {{'count': N}})")
    layers = [LayerTime(str(r["name"]), float(r["averageMs"]), float(r.get("medianMs", r["averageMs"])),
                        float(r["percentage"])) for r in data[1:]]
    return int(data[0]["count"]), sorted(layers, key=lambda t: -t.average_ms)


@dataclass(frozen=True)
class LayerInfo:
    """``--exportLayerInfo``: the engine's layers and I/O tensor names."""

    layers: tuple[dict, ...]
    io_tensors: tuple[str, ...]


def parse_layer_info(path: Path) -> LayerInfo:
    """Engine-inspector JSON of either line: ``Layers`` (objects with ``--profilingVerbosity=detailed``,
    names otherwise) and ``Bindings`` (10.x, names) or ``I/O Tensors`` (11.x, objects with ``Name``)."""
    data = _load(path)
    if not isinstance(data, dict) or "Layers" not in data:
        raise ArtifactError(f"{path} is not a trtexec --exportLayerInfo file (no Layers)")
    layers = tuple(layer if isinstance(layer, dict) else {"Name": str(layer)} for layer in data["Layers"])
    if "I/O Tensors" in data:
        io = tuple(str(t["Name"]) for t in data["I/O Tensors"])
    else:
        io = tuple(str(t) for t in data.get("Bindings", []))
    return LayerInfo(layers, io)
