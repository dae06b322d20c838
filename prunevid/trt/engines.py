"""The engine plan of an export for one target: one engine per graph, optimisation profiles from
the manifest's dimensions clipped to the deployment's limits, a reuse key per engine, and the thin
build with Polygraphy's loaders.

Layout: ``OUT/engines/trt<major.minor>-<sm>/`` holds ``<graph>.engine``, ``<graph>.engine.json``
(the key and the settings it was built with), ``timing.cache`` (shared by the graphs) and
``plan.json``. An engine whose key (graph sha256, TensorRT version, GPU, plugin library sha256,
settings) is unchanged is reused, not rebuilt.

Profiles: profile 0 serves the prompt (every symbolic dimension over its range); graphs with new
rows (``embed`` and both decoders) get profile 1 for one decode row over the whole cache, so the
decode context keeps one shape per answer (what a CUDA graph needs). Everything here but
:func:`build_engines` works without TensorRT.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prunevid import spec
from prunevid.errors import ArtifactError, ConfigError
from prunevid.trt.build import ShapeRange
from prunevid.trt.targets import Target

ENGINE_DIR = "engines"
TIMING_CACHE = "timing.cache"
PLUGIN_MODES = ("auto", "library", "inline")
DECODE_DIM = "new"  # graphs with this dimension serve decode steps (one row) too

# The bound of every symbolic dimension of spec.py under the limits (P prompt text tokens, T frames,
# L tokens per frame, N new tokens): prompt rows include every visual token (the unpruned baseline).
DIM_LIMITS: dict[str, Callable[[int, int, int, int], int]] = {
    "frames": lambda p, t, l, n: t,
    "visual_rows": lambda p, t, l, n: t * l,
    "merged": lambda p, t, l, n: t * l,
    "text_len": lambda p, t, l, n: p,
    "question": lambda p, t, l, n: p,
    "seq": lambda p, t, l, n: p + t * l,
    "kept": lambda p, t, l, n: p + t * l,
    "new": lambda p, t, l, n: p + t * l,
    "cache": lambda p, t, l, n: p + t * l + n - 1,
}


@dataclass(frozen=True)
class Limits:
    """What the engines are built for."""

    frames: int
    max_prompt_tokens: int
    max_new_tokens: int


def dim_ranges(manifest_dims: Mapping[str, Mapping[str, int]], limits: Limits, tokens_per_frame: int) -> dict[str, ShapeRange]:
    """``{dim: (min, opt, max)}`` of the manifest clipped to ``limits`` (scalars as 1-tuples)."""
    out = {}
    for name, rng in manifest_dims.items():
        hi = int(rng["max"])
        if name in DIM_LIMITS:
            hi = min(hi, DIM_LIMITS[name](limits.max_prompt_tokens, limits.frames, tokens_per_frame, limits.max_new_tokens))
        lo = min(int(rng["min"]), hi)
        out[name] = ShapeRange((lo,), (min(max(int(rng["opt"]), lo), hi),), (hi,))
    return out


def _shape(dims: list, ranges: Mapping[str, ShapeRange], which: str, fixed: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(int(d) if isinstance(d, int) else fixed.get(d, getattr(ranges[d], which)[0]) for d in dims)


def graph_profiles(entry: Mapping[str, Any], ranges: Mapping[str, ShapeRange]) -> list[dict[str, ShapeRange]]:
    """Optimisation profiles of one manifest graph entry: the prompt profile, plus a decode profile
    (one new row, the cache at its full range, opt at capacity) for graphs with new rows.
    Static inputs get no entry; shape-value inputs (``values`` in the manifest) get their values."""
    dynamic = [t for t in entry["inputs"] if any(isinstance(d, str) for d in t["dims"])]
    profiles = []
    decode = any(DECODE_DIM in t["dims"] for t in dynamic)
    for fixed in ({}, {DECODE_DIM: 1}) if decode else ({},):
        prof = {}
        for t in dynamic:
            fix = dict(fixed)
            if fixed and "cache" in t["dims"]:
                fix_opt = ranges["cache"].max[0]
                prof[t["name"]] = ShapeRange(_shape(t["dims"], ranges, "min", fix), _shape(t["dims"], ranges, "opt", {**fix, "cache": fix_opt}),
                                             _shape(t["dims"], ranges, "max", fix))
                continue
            prof[t["name"]] = ShapeRange(*(_shape(t["dims"], ranges, k, fix) for k in ("min", "opt", "max")))
        for t in entry["inputs"]:
            if "values" in t:
                prof[t["name"]] = ShapeRange(*(tuple(int(v) for v in (t["values"][k] if isinstance(t["values"][k], list) else [t["values"][k]]))
                                               for k in ("min", "opt", "max")))
        profiles.append(prof)
    return profiles


@dataclass(frozen=True)
class EngineSpec:
    """One engine of the plan."""

    graph: str
    onnx: Path
    engine: Path
    profiles: tuple[dict[str, ShapeRange], ...]
    key: str
    reuse: bool  # an engine with this key is already there

    def to_json(self) -> dict[str, Any]:
        return {"graph": self.graph, "onnx": str(self.onnx), "engine": str(self.engine), "key": self.key,
                "reuse": self.reuse,
                "profiles": [{n: asdict(r) for n, r in p.items()} for p in self.profiles]}


@dataclass(frozen=True)
class Settings:
    """Build settings that enter every engine's key."""

    trt_version: str  # "10.3"
    gpu: str  # "sm_87"
    precision: str
    strongly_typed: bool
    plugins: str  # "library" or "inline" (auto resolved)
    plugin_sha256: str | None
    workspace_mib: int
    limits: Limits


@dataclass(frozen=True)
class EnginePlan:
    """Every engine of an export for one target and TensorRT version."""

    target: Target
    settings: Settings
    folder: Path
    engines: tuple[EngineSpec, ...] = field(default_factory=tuple)
    plugin_library: str | None = None  # the library the engines load (its sha256 is in the settings)

    @property
    def timing_cache(self) -> Path:
        return self.folder / TIMING_CACHE

    def lines(self) -> list[str]:
        """The plan as text: folder, settings, then one line per engine and profile."""
        s = self.settings
        out = [f"engines: {self.folder}",
               f"TensorRT {s.trt_version} on {s.gpu} ({self.target.description}); precision {s.precision}"
               f"{' (strongly typed: from the ONNX)' if s.strongly_typed else ''}; plugins {s.plugins}"
               f"{f' (sha256 {s.plugin_sha256[:12]})' if s.plugin_sha256 else ''}; workspace {s.workspace_mib} MiB; "
               f"timing cache {self.timing_cache.name}"]
        for e in self.engines:
            out.append(f"  {e.graph:<14} {'reuse' if e.reuse else 'build'} {e.engine.name}  key {e.key[:12]}")
            for i, prof in enumerate(e.profiles):
                shapes = ", ".join(_grouped(prof)) or "static"
                out.append(f"      profile {i}: {shapes}")
        return out

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target.name, "settings": {**asdict(self.settings), "limits": asdict(self.settings.limits)},
                "folder": str(self.folder), "plugin_library": self.plugin_library,
                "engines": [e.to_json() for e in self.engines]}


def _grouped(prof: Mapping[str, ShapeRange]) -> list[str]:
    """``name range`` per input; the KV inputs, which share one range, on one entry."""
    out, kv = [], [n for n in prof if n.startswith("past_key_values.")]
    for name, r in prof.items():
        if name not in kv:
            out.append(f"{name} {_fmt(r)}")
    if kv:
        out.append(f"{len(kv)} x past_key_values {_fmt(prof[kv[0]])}")
    return out


def _fmt(r: ShapeRange) -> str:
    def one(s):
        return "x".join(map(str, s)) or "scalar"
    return one(r.min) if r.min == r.max else f"{one(r.min)}..{one(r.opt)}..{one(r.max)}"


def engine_key(graph_sha256: Mapping[str, str], settings: Settings, profiles) -> str:
    """sha256 of what decides an engine: the graph's files, TensorRT version, GPU, plugin library,
    settings and profiles."""
    body = {"graph": dict(sorted(graph_sha256.items())), "settings": asdict(settings),
            "profiles": [{n: asdict(r) for n, r in p.items()} for p in profiles]}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def engine_folder(export_dir: Path, trt_version: str, gpu: str) -> Path:
    return Path(export_dir) / ENGINE_DIR / f"trt{trt_version}-{gpu}"


def stored_key(engine: Path) -> str | None:
    """The key recorded beside an engine, if the engine and its record are there."""
    record = engine.with_name(engine.name + ".json")
    if not (engine.is_file() and record.is_file()):
        return None
    try:
        return json.loads(record.read_text()).get("key")
    except (OSError, ValueError):
        return None


def make_plan(export_dir: Path, manifest: Mapping[str, Any], target: Target, settings: Settings,
              onnx_for: Callable[[str, Path], Path] | None = None, plugin_library: str | None = None) -> EnginePlan:
    """The plan for every graph of ``manifest`` (in :data:`spec.GRAPH_ORDER`); ``onnx_for(graph, path)``
    may swap a graph file for the one TensorRT should parse (the plugin copy on TensorRT < 10.7)."""
    export_dir = Path(export_dir)
    geometry = manifest["geometry"]
    dims = manifest.get("dims")
    if not dims:
        raise ArtifactError(f"{export_dir}/{spec.MANIFEST} has no dims table; export again")
    ranges = dim_ranges(dims, settings.limits, geometry["tokens_per_frame"])
    folder = engine_folder(export_dir, settings.trt_version, settings.gpu)
    engines = []
    for name in spec.GRAPH_ORDER:
        entry = manifest["graphs"][name]
        profiles = tuple(graph_profiles(entry, ranges))
        key = engine_key(entry["sha256"], settings, profiles)
        engine = folder / f"{name}.engine"
        onnx_path = export_dir / entry["file"]
        engines.append(EngineSpec(name, onnx_for(name, onnx_path) if onnx_for else onnx_path, engine, profiles,
                                  key, stored_key(engine) == key))
    return EnginePlan(target, settings, folder, tuple(engines), plugin_library)


def resolve_precision(requested: str | None, export_dtype: str, target: Target, trt_major: int) -> str:
    """The engine precision: the export's by default; TensorRT 11 takes it from the ONNX only
    (strong typing), TensorRT 10 may lower an fp32 export to fp16 (weak typing). Raises
    :class:`ConfigError` for a precision the target has not, or one the export cannot give."""
    precision = requested or export_dtype
    if precision not in target.precisions:
        raise ConfigError(f"{target.name} has no {precision} (it has {', '.join(target.precisions)})")
    if precision == export_dtype:
        return precision
    if precision in ("int8", "fp8", "fp4"):
        raise ConfigError(f"--precision {precision} needs a quantized export (Q/DQ in the ONNX); this export is {export_dtype}")
    if trt_major >= 11:
        raise ConfigError(f"TensorRT 11 is strongly typed: the precision comes from the ONNX ({export_dtype}); "
                          f"export with --dtype {precision} instead")
    if (export_dtype, precision) != ("fp32", "fp16"):
        raise ConfigError(f"cannot build {precision} engines from an {export_dtype} export")
    return precision


def build_engines(plan: EnginePlan, plugin_libs: list[str], progress=None) -> list[Path]:
    """Build every engine of ``plan`` that is not reused, with Polygraphy's TensorRT loaders
    (needs TensorRT and a GPU). Each engine is written beside a ``.partial`` name and renamed, then its
    record (key and settings) is written; the timing cache is read and updated."""
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile

    from prunevid.trt.plugins import load_plugins

    s = plan.settings
    if plugin_libs:
        load_plugins(plugin_libs)
    plan.folder.mkdir(parents=True, exist_ok=True)
    built = []
    for e in plan.engines:
        if e.reuse:
            continue
        profiles = []
        for prof in e.profiles:
            p = Profile()
            for name, r in prof.items():
                p.add(name, r.min, r.opt, r.max)  # Polygraphy sets shape values for shape-tensor inputs
            profiles.append(p)
        network = NetworkFromOnnxPath(str(e.onnx), strongly_typed=s.strongly_typed or None)
        cache = plan.timing_cache
        config = CreateConfig(fp16=(s.precision == "fp16" and not s.strongly_typed) or None, profiles=profiles or None,
                              memory_pool_limits={trt.MemoryPoolType.WORKSPACE: s.workspace_mib << 20},
                              load_timing_cache=str(cache) if cache.is_file() else None)
        if progress:
            progress(f"building {e.graph} ({len(profiles)} profiles)")
        try:
            data = EngineBytesFromNetwork(network, config=config, save_timing_cache=str(cache))()
        except Exception as exc:  # the parser's or builder's failure, in one line naming the graph
            from prunevid.errors import ArtifactError

            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise ArtifactError(f"TensorRT could not build {e.graph} from {e.onnx.name}: {detail}") from None
        if data is None:
            from prunevid.errors import ArtifactError

            raise ArtifactError(f"TensorRT returned no engine for {e.graph} (see its log above)")
        tmp = e.engine.with_name(f".{e.engine.name}.partial")
        tmp.write_bytes(bytes(data))
        tmp.replace(e.engine)
        e.engine.with_name(e.engine.name + ".json").write_text(json.dumps({**e.to_json(), "reuse": False}, indent=1))
        built.append(e.engine)
    (plan.folder / "plan.json").write_text(json.dumps(plan.to_json(), indent=1, default=str))
    return built
