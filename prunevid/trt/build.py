"""Thin TensorRT build path: trtexec command lines and engine builds with the Python API.

Everything except :func:`build_engine` works without TensorRT; ``tensorrt`` is imported only inside
the functions that need it. Two TensorRT lines are supported (``docs/deployment.md`` sections 1.5,
1.9 and 4.2):

* **10.x** (10.3 on JetPack 6): weak typing is available (``--fp16`` / ``BuilderFlag.FP16``);
  timing hygiene must be asked for (``--useCudaGraph --noDataTransfers --separateProfileRun``);
  before 10.7 a local function always beats a plugin of the same name, so the build strips the
  ``FunctionProto`` of every prunevid op whose plugin is loaded.
* **11.x**: strongly typed only. Precision flags are gone and precision must come from the ONNX
  (ModelOpt AutoCast for FP16/BF16, Q/DQ for INT8/FP8); CUDA graphs, no data transfers and a
  separate profile run are the defaults. The engine inspector reports ``I/O Tensors`` instead of
  ``Bindings``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunevid.errors import ArtifactError, ConfigError, PruneVidError
from prunevid.plugins.ops import DOMAIN
from prunevid.progress import Progress
from prunevid.trt.plugins import load_plugins, needs_function_strip, strip_functions_for_plugins
from prunevid.trt.variant import to_tensorrt

# trtexec flags that select a precision (weak typing); all removed in TensorRT 11.
PRECISION_FLAGS = ("--fp16", "--bf16", "--int8", "--fp8", "--int4", "--best", "--calib")


class TrtBuildError(PruneVidError):
    """TensorRT rejected the model (parse) or could not build an engine."""


# --------------------------------------------------------------------------------------------
# Optimization profiles
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeRange:
    """min/opt/max shape of one network input."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def profile_from_manifest(graph_spec: Mapping[str, Any]) -> dict[str, ShapeRange]:
    """Optimization-profile shapes from ``{input_name: {"min": [...], "opt": [...], "max": [...]}}``.

    A manifest entry ``{"inputs": {...}}`` is unwrapped; an input given as ``{"shape": [...]}``
    (or a plain list) is static (min = opt = max); an input with only some of min/opt/max takes the
    missing ones from ``opt`` (or ``max``). Raises :class:`ConfigError` on ranks that differ or on
    ``min <= opt <= max`` failing in some dimension.
    """
    spec = graph_spec
    if (
        "inputs" in spec
        and isinstance(spec["inputs"], Mapping)
        and all(isinstance(v, (Mapping, list, tuple)) for v in spec["inputs"].values())
        and not _is_range(spec["inputs"])
    ):
        spec = spec["inputs"]
    out: dict[str, ShapeRange] = {}
    for name, entry in spec.items():
        if isinstance(entry, ShapeRange):
            out[name] = entry
            continue
        if isinstance(entry, (list, tuple)):
            entry = {"shape": entry}
        if not isinstance(entry, Mapping):
            raise ConfigError(f"profile entry for {name!r} must be a mapping with min/opt/max, got {entry!r}")
        if "shape" in entry and not any(k in entry for k in ("min", "opt", "max")):
            mn = op = mx = entry["shape"]
        else:
            op = entry.get("opt", entry.get("max", entry.get("min")))
            mn = entry.get("min", op)
            mx = entry.get("max", op)
        if op is None:
            raise ConfigError(f"profile entry for {name!r} has none of min/opt/max")
        rng = ShapeRange(tuple(int(d) for d in mn), tuple(int(d) for d in op), tuple(int(d) for d in mx))
        if not len(rng.min) == len(rng.opt) == len(rng.max):
            raise ConfigError(f"profile for {name!r}: min/opt/max ranks differ: {rng}")
        for lo, mid, hi in zip(rng.min, rng.opt, rng.max):
            if not 0 <= lo <= mid <= hi:
                raise ConfigError(f"profile for {name!r}: need 0 <= min <= opt <= max per dimension, got {rng}")
        out[name] = rng
    return out


def _is_range(entry: Any) -> bool:
    return isinstance(entry, Mapping) and any(k in entry for k in ("min", "opt", "max", "shape"))


def _as_profile(profile: Mapping[str, Any] | None) -> dict[str, ShapeRange]:
    if not profile:
        return {}
    if all(isinstance(v, ShapeRange) for v in profile.values()):
        return dict(profile)
    return profile_from_manifest(profile)


# --------------------------------------------------------------------------------------------
# trtexec
# --------------------------------------------------------------------------------------------


def _shape_name(name: str) -> str:
    # trtexec splits on ',' and ':'; names containing them are wrapped in single quotes.
    return f"'{name}'" if ("," in name or ":" in name) else name


def format_shapes(shapes: Mapping[str, Sequence[int]]) -> str:
    """``{"pixel_values": (1, 3, 336, 336), "ids": (1, 7)}`` -> ``pixel_values:1x3x336x336,ids:1x7``."""
    return ",".join(f"{_shape_name(n)}:{'x'.join(str(int(d)) for d in dims)}" for n, dims in shapes.items())


def trtexec_command(
    onnx_path: str | Path,
    engine_path: str | Path,
    shapes: Mapping[str, Any] | None,
    *,
    trt_major: int,
    fp16: bool = False,
    plugin_libs: Sequence[str] = (),
    timing_cache: str | Path | None = None,
    extra: Sequence[str] = (),
    profiling_verbosity: str | None = "detailed",
    export_times: str | Path | None = None,
    export_profile: str | Path | None = None,
    export_layer_info: str | Path | None = None,
    serialize_plugins: bool = False,
    trtexec: str = "trtexec",
) -> list[str]:
    """The trtexec argv that builds ``engine_path`` from ``onnx_path`` and profiles it.

    Args:
        shapes: optimization profile, a :func:`profile_from_manifest` result or its manifest form;
            emitted as ``--minShapes/--optShapes/--maxShapes`` (``name:1x3x336x336``, comma-joined).
        trt_major: 10 or 11; decides the flags.
        fp16: TensorRT 10 only (``--fp16``). On 11 this raises :class:`ConfigError`: precision
            must be in the ONNX (ModelOpt AutoCast or Q/DQ).
        plugin_libs: plugin shared libraries, each ``--dynamicPlugins=`` (``prunevid build-plugins``);
            with ``serialize_plugins`` also ``--setPluginsToSerialize=`` and ``--versionCompatible``
            (the engine carries the library). For TensorRT < 10.7 pass an ONNX whose prunevid
            functions are stripped (:func:`prunevid.trt.plugins.plugin_onnx`).
        timing_cache: ``--timingCacheFile=`` (read and updated).
        extra: further flags, appended last; on 11, precision flags in it raise :class:`ConfigError`.
        profiling_verbosity: ``--profilingVerbosity=`` (``detailed`` keeps layer metadata), or None.
        export_times / export_profile / export_layer_info: ``--exportTimes=`` / ``--exportProfile=`` /
            ``--exportLayerInfo=`` paths, when given.
    """
    if trt_major not in (10, 11):
        raise ConfigError(f"trtexec_command knows TensorRT 10 and 11, not {trt_major}")
    extra = list(extra)
    if trt_major >= 11:
        if fp16:
            raise ConfigError(
                "TensorRT 11 has no --fp16 (strong typing only): produce an FP16 ONNX instead "
                "(python -m modelopt.onnx.autocast) and build it without precision flags"
            )
        bad = [f for f in extra if f.split("=")[0] in PRECISION_FLAGS]
        if bad:
            raise ConfigError(f"TensorRT 11 removed the precision flags {bad}; precision must come from the ONNX")
    cmd = [trtexec, f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    profile = _as_profile(shapes)
    if profile:
        cmd.append("--minShapes=" + format_shapes({n: r.min for n, r in profile.items()}))
        cmd.append("--optShapes=" + format_shapes({n: r.opt for n, r in profile.items()}))
        cmd.append("--maxShapes=" + format_shapes({n: r.max for n, r in profile.items()}))
    if trt_major == 10:
        if fp16:
            cmd.append("--fp16")
        # Opt-in on 10.x, defaults (and no-ops) on 11.x.
        cmd += ["--useCudaGraph", "--noDataTransfers", "--separateProfileRun"]
    for lib in plugin_libs:
        # loadLibrary (getCreators/setLoggerFinder entry points), present from 10.3 to 11.x
        cmd.append(f"--dynamicPlugins={lib}")
        if serialize_plugins:
            cmd.append(f"--setPluginsToSerialize={lib}")
    if serialize_plugins and plugin_libs:
        cmd.append("--versionCompatible")  # plugin libraries are serialized only into such engines
    if timing_cache is not None:
        cmd.append(f"--timingCacheFile={timing_cache}")
    if profiling_verbosity:
        cmd.append(f"--profilingVerbosity={profiling_verbosity}")
    if export_times is not None:
        cmd.append(f"--exportTimes={export_times}")
    if export_profile is not None:
        cmd.append(f"--exportProfile={export_profile}")
    if export_layer_info is not None:
        cmd.append(f"--exportLayerInfo={export_layer_info}")
    cmd += extra
    return cmd


# --------------------------------------------------------------------------------------------
# Building with the TensorRT Python API
# --------------------------------------------------------------------------------------------


def _trt_version(trt) -> tuple[int, int]:
    parts = [int(p) for p in trt.__version__.split(".")[:2]]
    return parts[0], parts[1]


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    profile: Mapping[str, Any] | None,
    *,
    fp16: bool = False,
    plugins: Sequence[str] = (),
    workspace_mb: int | None = None,
    timing_cache: str | Path | None = None,
    verbose: bool = False,
    progress: bool = True,
) -> Path:
    """Build a serialized engine from an ONNX file with the TensorRT Python API.

    The ONNX is parsed from its path (``OnnxParser.parse_from_file``) so external data resolves.
    The stored graph is first turned into its TensorRT variant (:func:`prunevid.trt.variant.to_tensorrt`:
    standard attention); with plugins requested on TensorRT < 10.7, the
    local functions of the ops whose plugins are loaded are stripped too
    (:func:`strip_functions_for_plugins`). A changed copy is written beside the original, so its
    relative external-data paths still resolve, and removed after.

    Args:
        profile: one optimization profile (:func:`profile_from_manifest` form or its manifest);
            None for static models.
        fp16: TensorRT 10 only (``BuilderFlag.FP16``); on 11 it raises :class:`ConfigError`.
        plugins: plugin libraries, see :func:`prunevid.trt.plugins.load_plugins`.
        workspace_mb: workspace pool limit, MiB.
        timing_cache: a timing-cache file to read (if present) and update.
    """
    import onnx
    import tensorrt as trt

    onnx_path = Path(onnx_path)
    engine_path = Path(engine_path)
    if not onnx_path.is_file():
        raise ArtifactError(f"{onnx_path} not found")
    major, minor = _trt_version(trt)
    if fp16 and major >= 11:
        raise ConfigError("TensorRT 11 has no FP16 builder flag (strong typing only): give an FP16 ONNX instead")
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    steps = Progress(enabled=progress)
    loaded = load_plugins(plugins)

    parse_path = onnx_path
    stripped: Path | None = None
    model = onnx.load(str(onnx_path), load_external_data=False)
    changed = to_tensorrt(model)  # the TensorRT variant of the stored graph (prunevid.trt.variant)
    if loaded and needs_function_strip((major, minor)):
        if any(f.domain == DOMAIN and f.name in loaded for f in model.functions):
            model, changed = strip_functions_for_plugins(model, loaded), True
    if changed:
        stripped = onnx_path.with_name(f".{onnx_path.stem}.plugins{onnx_path.suffix}")
        onnx.save(model, str(stripped))
        parse_path = stripped
    del model
    try:
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        with steps.step(f"parse {onnx_path.name}"):
            ok = parser.parse_from_file(str(parse_path))
        if not ok:
            msgs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise TrtBuildError(f"TensorRT {trt.__version__} could not parse {onnx_path}:\n" + "\n".join(msgs))
    finally:
        if stripped is not None:
            stripped.unlink(missing_ok=True)

    config = builder.create_builder_config()
    if workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    shapes = _as_profile(profile)
    if shapes:
        opt_profile = builder.create_optimization_profile()
        for name, rng in shapes.items():
            opt_profile.set_shape(name, rng.min, rng.opt, rng.max)
        config.add_optimization_profile(opt_profile)
    cache = None
    if timing_cache is not None:
        data = Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, False)

    with steps.step(f"build {engine_path.name}"):
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TrtBuildError(f"TensorRT {trt.__version__} could not build an engine from {onnx_path} (see its log)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine_path.with_name(f".{engine_path.name}.partial")
    with steps.step(f"write {engine_path.name}"):
        tmp.write_bytes(bytes(serialized))
        tmp.replace(engine_path)
    if cache is not None:
        Path(timing_cache).write_bytes(bytes(config.get_timing_cache().serialize()))
    return engine_path
