"""The prunevid TensorRT plugin library at use time: its build record, loading it into TensorRT's
registry, and preparing ONNX files so that the parser picks the plugin.

``prunevid build-plugins`` writes ``LIB.so`` and ``LIB.json`` (TensorRT version of the headers,
CUDA version, GPU architectures, sha256). A library is loaded only when that record matches the
running TensorRT (major.minor) and, when it can be read, the GPU's architecture.

Parser routing (``docs/deployment.md`` section 1.5): from TensorRT 10.7 a node with a
``plugin_namespace`` attribute goes to a registered plugin before its local function; before 10.7
the function body always wins, so the functions of the plugin's ops are stripped first.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from prunevid.errors import ArtifactError, ConfigError, PruneVidError
from prunevid.plugins.ops import DOMAIN, OPS, PLUGIN_NAMESPACE, PLUGIN_VERSION, OpSpec

if TYPE_CHECKING:
    import onnx

# First TensorRT version whose ONNX parser prefers a registered plugin over a local function.
PLUGIN_OVER_FUNCTION = (10, 7)


def version_tuple(version: str | Sequence[int]) -> tuple[int, int]:
    """``"10.3.0.26"`` or ``(10, 3)`` -> ``(10, 3)``."""
    if isinstance(version, str):
        parts = [int(p) for p in version.split(".")[:2] if p.isdigit()]
    else:
        parts = [int(p) for p in version[:2]]
    if len(parts) < 2:
        raise ConfigError(f"a TensorRT version needs major.minor, got {version!r}")
    return parts[0], parts[1]


def needs_function_strip(trt_version: str | Sequence[int]) -> bool:
    """True for TensorRT versions whose parser inlines a local function even when a plugin of the
    same name is loaded (< 10.7)."""
    return version_tuple(trt_version) < PLUGIN_OVER_FUNCTION


def strip_functions_for_plugins(model: onnx.ModelProto, ops: Iterable[str | OpSpec]) -> onnx.ModelProto:
    """A copy of ``model`` without the local functions of the prunevid ops in ``ops`` (names such
    as ``"PvDpcKnn"`` / ``"prunevid::PvDpcKnn"`` or :class:`OpSpec`). Nodes and every other
    function are kept; ``model`` is not modified; external data may stay unloaded."""
    names = {op.name if isinstance(op, OpSpec) else str(op).split("::")[-1] for op in ops}
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = [f for f in out.functions if not (f.domain == DOMAIN and f.name in names)]
    del out.functions[:]
    out.functions.extend(keep)
    return out


def read_library_record(library: str | Path) -> dict:
    """The JSON record ``prunevid build-plugins`` wrote beside ``library``."""
    from prunevid.plugins.build import metadata_path

    library = Path(library)
    if not library.is_file():
        raise ArtifactError(f"plugin library {library} not found")
    path = metadata_path(library)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"no readable build record {path} beside {library} (build it with "
                            f"prunevid build-plugins): {exc}") from None
    if not isinstance(record, dict) or "tensorrt" not in record:
        raise ArtifactError(f"{path} is not a prunevid plugin build record")
    return record


def plugin_onnx(onnx_path: str | Path, trt_version: str | Sequence[int]) -> Path:
    """The ONNX file TensorRT ``trt_version`` should parse to use the prunevid plugins.

    From 10.7 that is the TensorRT variant of ``onnx_path`` (:func:`prunevid.trt.variant.tensorrt_onnx`:
    ``onnx_path`` itself when it has nothing to change). Before, a sibling ``<stem>.plugins.onnx`` without the
    prunevid functions is written (beside the original, so relative external-data paths still
    resolve) and returned; a model with no prunevid function is returned unchanged.
    """
    from prunevid.trt.variant import save_sibling, tensorrt_onnx, to_tensorrt

    onnx_path = Path(onnx_path)
    if not needs_function_strip(trt_version):
        return tensorrt_onnx(onnx_path)
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    to_tensorrt(model)  # the TensorRT variant of the stored graph
    if not any(f.domain == DOMAIN and f.name in OPS for f in model.functions):
        return tensorrt_onnx(onnx_path)
    return save_sibling(strip_functions_for_plugins(model, OPS), onnx_path, "plugins")


def check_record(record: dict, trt_version: str, gpu_arch: str | None) -> None:
    """Raise :class:`ConfigError` when a library built per ``record`` cannot serve TensorRT
    ``trt_version`` on a GPU of architecture ``gpu_arch`` (``"sm_87"``; None = unknown)."""
    if version_tuple(record["tensorrt"]) != version_tuple(trt_version):
        raise ConfigError(f"plugin library built against TensorRT {record['tensorrt']}, running {trt_version}: "
                          f"rebuild it with prunevid build-plugins --trt-include <this TensorRT's headers>")
    archs = record.get("archs") or []
    if gpu_arch is not None and archs and gpu_arch not in archs:
        raise ConfigError(f"plugin library has code for {','.join(archs)}, this GPU is {gpu_arch}: "
                          f"rebuild it with --arch {gpu_arch}")


def gpu_arch(device: int = 0) -> str | None:
    """``"sm_XY"`` of CUDA device ``device`` through the driver library, or None if unavailable."""
    import ctypes

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    major, minor = ctypes.c_int(), ctypes.c_int()
    if cuda.cuInit(0) != 0:
        return None
    # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76
    if cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, device) != 0:
        return None
    if cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, device) != 0:
        return None
    return f"sm_{major.value}{minor.value}"


def load_plugins(libraries: Sequence[str | Path]) -> list[str]:
    """Load plugin libraries into TensorRT's registry (``IPluginRegistry.load_library``) after
    checking their build records; return the prunevid ops whose plugins are now registered."""
    import tensorrt as trt

    registry = trt.get_plugin_registry()
    for lib in libraries:
        record = read_library_record(lib)
        check_record(record, trt.__version__, gpu_arch())
        if registry.load_library(str(lib)) is None:
            raise PruneVidError(f"TensorRT could not load plugin library {lib} (already loaded, or not a "
                                f"prunevid plugin library)")
    loaded = []
    for name in OPS:
        try:
            creator = registry.get_creator(name, PLUGIN_VERSION, PLUGIN_NAMESPACE)
        except Exception:  # noqa: BLE001 - older bindings raise instead of returning None
            creator = None
        if creator is not None:
            loaded.append(name)
    return loaded
