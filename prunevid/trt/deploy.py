"""``prunevid build``: from an export folder and a target to a checked memory budget and an engine
plan, then (with TensorRT) the engines. TensorRT is imported only to build or to read its version."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prunevid import spec
from prunevid.errors import ConfigError
from prunevid.trt.budget import Budget, Deployment, check_budget, export_graph_bytes
from prunevid.trt.engines import PLUGIN_MODES, EnginePlan, Limits, Settings, make_plan, resolve_precision
from prunevid.trt.targets import Target, get_target

DEFAULT_PROMPT_TOKENS = 256
DEFAULT_NEW_TOKENS = 64


@dataclass(frozen=True)
class BuildRequest:
    """The options of ``prunevid build``."""

    export_dir: Path
    target: str
    precision: str | None = None
    plugins: str = "auto"
    plugin_libs: tuple[str, ...] = ()
    max_frames: int | None = None
    max_prompt_tokens: int = DEFAULT_PROMPT_TOKENS
    max_new_tokens: int = DEFAULT_NEW_TOKENS
    workspace_mib: int | None = None
    trt_version: str | None = None  # None: the installed TensorRT's, else the target's newest


def installed_trt_version() -> str | None:
    """major.minor of the importable TensorRT, or None."""
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return ".".join(trt.__version__.split(".")[:2])


def pick_trt_version(requested: str | None, target: Target) -> str:
    """The TensorRT line to build for: asked, installed, or the target's newest; it must be one the target runs."""
    version = requested or installed_trt_version() or target.tensorrt[-1]
    short = ".".join(version.split(".")[:2])
    if short not in target.tensorrt:
        raise ConfigError(f"{target.name} runs TensorRT {', '.join(target.tensorrt)}, not {short}")
    return short


def graph_weight_bytes(artifact) -> dict[str, int]:
    """Bytes on disk of each graph (the ONNX and its external data): its weights, within a fraction of a percent."""
    out = {}
    for name in spec.GRAPH_ORDER:
        entry = artifact.manifest["graphs"][name]
        folder = artifact.graph_path(name).parent
        out[name] = sum((folder / f).stat().st_size for f in entry["sha256"])
    return out


def deployment_of(artifact, precision: str, limits: Limits) -> Deployment:
    """The budget's view of an export: its config, K, measured graph sizes at ``precision`` (quantized
    graphs at their real bytes)."""
    from prunevid.model.config import read_config

    cfg = read_config(artifact.root)
    quantized = tuple(artifact.manifest.get("quantization", {}).get("graphs", {}))
    sizes = export_graph_bytes(graph_weight_bytes(artifact), artifact.manifest["dtype"], precision, quantized)
    return Deployment(cfg, artifact.geometry.layer, precision, limits.frames, limits.max_prompt_tokens,
                      limits.max_new_tokens, sizes)


def resolve_plugins(mode: str, libs: tuple[str, ...], trt_version: str, gpu: str) -> tuple[str, str | None]:
    """``auto`` -> ``library`` when a library is given, else ``inline``; ``library`` needs one whose
    build record matches the TensorRT line and GPU. Returns (mode, library sha256)."""
    from prunevid.trt.plugins import check_record, read_library_record

    if mode not in PLUGIN_MODES:
        raise ConfigError(f"--plugins must be one of {', '.join(PLUGIN_MODES)}, got {mode}")
    if mode == "inline":
        if libs:
            raise ConfigError("--plugins inline takes no --plugin-lib (the function bodies are used)")
        return "inline", None
    if not libs:
        if mode == "library":
            raise ConfigError("--plugins library needs --plugin-lib LIB.so (prunevid build-plugins)")
        return "inline", None
    if len(libs) > 1:
        raise ConfigError("pass one --plugin-lib")
    record = read_library_record(libs[0])
    check_record(record, trt_version, gpu)
    return "library", record.get("sha256")


def prepare(req: BuildRequest) -> tuple[Budget, EnginePlan]:
    """Check the budget (refusing in one line) and plan the engines; writes nothing."""
    from prunevid.runtime.artifact import open_artifact
    from prunevid.trt.plugins import needs_function_strip, plugin_onnx

    target = get_target(req.target)
    artifact = open_artifact(req.export_dir, verify=True)
    g = artifact.geometry
    frames = req.max_frames if req.max_frames is not None else g.frames
    if frames < 1:
        raise ConfigError(f"--max-frames must be at least 1, got {frames}")
    if frames != g.frames:
        raise ConfigError(f"this export always samples {g.frames} frames (the merger's T is fixed): "
                          f"export again with --frames {frames} for {frames}-frame engines")
    for name, value in (("--max-prompt-tokens", req.max_prompt_tokens), ("--max-new-tokens", req.max_new_tokens)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    limits = Limits(frames, req.max_prompt_tokens, req.max_new_tokens)
    context = artifact.manifest["model"]["max_position_embeddings"]
    rows = limits.max_prompt_tokens + frames * g.tokens_per_frame + limits.max_new_tokens
    if rows > context:
        raise ConfigError(f"{limits.max_prompt_tokens} prompt tokens + {frames * g.tokens_per_frame} visual + "
                          f"{limits.max_new_tokens} new = {rows} positions exceed the model's context {context}")
    trt_version = pick_trt_version(req.trt_version, target)
    major = int(trt_version.split(".")[0])
    precision = resolve_precision(req.precision, artifact.manifest["dtype"], target, major)
    check_quantized_for(artifact.manifest, target, req.export_dir)
    d = deployment_of(artifact, precision, limits)
    budget = check_budget(d, target, req.workspace_mib, what=f"{req.export_dir} ({precision})")
    mode, plugin_sha = resolve_plugins(req.plugins, req.plugin_libs, trt_version, target.sm)
    settings = Settings(trt_version, target.sm, precision, major >= 11, mode, plugin_sha,
                        req.workspace_mib if req.workspace_mib is not None else target.workspace_mib, limits)

    def onnx_for(graph: str, path: Path) -> Path:
        # TensorRT < 10.7 prefers the function body over a loaded plugin: parse the stripped copy
        if mode == "library" and needs_function_strip(trt_version) and spec.graphs(g)[graph].custom_ops:
            return path.with_name(f"{path.stem}.plugins{path.suffix}")
        return path

    library = str(Path(req.plugin_libs[0]).resolve()) if mode == "library" else None
    return budget, make_plan(artifact.root, artifact.manifest, target, settings, onnx_for, library)


# the tensor-core precision that an explicitly quantized (Q/DQ) export's element type needs
QDQ_PRECISION = {"int8": "int8", "float8e4m3fn": "fp8"}


def check_quantized_for(manifest: dict, target: Target, where) -> None:
    """Refuse an export quantized by ``prunevid quantize`` into Q/DQ of a type ``target`` lacks (fp8 on Orin)."""
    quant = manifest.get("quantization")
    if not quant:
        return
    from prunevid.calibration.formats import get_format

    fmt = get_format(quant["format"])
    need = QDQ_PRECISION.get(fmt.element) if fmt.kind == "qdq" else None
    if need is not None and need not in target.precisions:
        raise ConfigError(f"{where} is quantized as {fmt.name} ({need} Q/DQ); {target.name} has no {need} "
                          f"(it takes {', '.join(target.precisions)}): quantize for it with another --format")


def build(req: BuildRequest, plan: EnginePlan, progress=None) -> list[Path]:
    """Build the planned engines (TensorRT and a GPU needed): the plugin copies of the graphs first
    where TensorRT < 10.7 needs them, then every engine whose key changed."""
    from prunevid.trt.engines import build_engines
    from prunevid.trt.plugins import plugin_onnx

    for e in plan.engines:
        if e.onnx.name.endswith(".plugins.onnx") and not e.reuse:
            plugin_onnx(e.onnx.with_name(e.onnx.name.replace(".plugins.onnx", ".onnx")), plan.settings.trt_version)
    return build_engines(plan, list(req.plugin_libs), progress)
