"""Compile the prunevid C++/CUDA sources (``prunevid/plugins/csrc``).

Three products:

* the **host core** (``pv_host.cpp``, g++ only): the ops on the CPU, called from Python through
  ctypes (:mod:`prunevid.plugins.host`);
* the **kernels object** (``pv_kernels.cu``, nvcc): one cubin per requested architecture;
* the **TensorRT plugin library** (``pv_plugin.cpp`` + kernels, ``IPluginV3`` for
  ``prunevid::PvDpcKnn`` and ``prunevid::PvGroupTopK``): exports only ``getCreators`` and
  ``setLoggerFinder`` (``exports.map``), links cudart statically and needs nothing from
  ``libnvinfer`` (``-z defs``). Beside ``LIB.so`` it writes ``LIB.json``: TensorRT and CUDA
  versions, architectures, sha256 (:func:`prunevid.trt.plugins.load_plugin_library` checks it).

Toolchain discovery: ``--cuda-home`` / ``$CUDA_HOME``, else the ``nvidia-cuda-nvcc`` pip package
(``site-packages/nvidia/cu13``), else ``/usr/local/cuda``; TensorRT headers from ``--trt-include`` /
``$TRT_INCLUDE``, else the system folders JetPack and the Debian packages use.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prunevid.errors import ArtifactError, ToolchainError
from prunevid.plugins.ops import OPS, PLUGIN_VERSION

CSRC = Path(__file__).resolve().parent / "csrc"
HOST_SOURCES = ("pv_host.cpp",)
KERNEL_SOURCES = ("pv_kernels.cu",)
PLUGIN_SOURCES = ("pv_plugin.cpp",)
EXPORTS_MAP = "exports.map"
EXPORTED_SYMBOLS = ("getCreators", "setLoggerFinder")
DEFAULT_ARCHS = ("sm_87", "sm_90")
# where JetPack (aarch64) and the x86 Debian/Ubuntu packages put NvInfer*.h
SYSTEM_TRT_INCLUDES = ("/usr/include/aarch64-linux-gnu", "/usr/include/x86_64-linux-gnu", "/usr/include")

# float arithmetic exactly as written (the core relies on it to equal the device bits)
_HOST_FLAGS = ("-std=c++17", "-O2", "-ffp-contract=off", "-fPIC")
_PLUGIN_FLAGS = ("-std=c++17", "-O2", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra", "-Werror",
                 "-Wno-deprecated-declarations")


def find_cxx() -> str | None:
    """The C++ compiler: ``$CXX`` or ``g++`` on the PATH."""
    cxx = os.environ.get("CXX") or "g++"
    return shutil.which(cxx)


def find_cuda_home(explicit: str | Path | None = None) -> Path | None:
    """A CUDA toolkit folder with ``bin/nvcc``: ``explicit``, ``$CUDA_HOME``, the folder above
    ``nvcc`` on the PATH, ``/usr/local/cuda``, or last the pip package ``nvidia-cuda-nvcc``
    (``nvidia/cu13``). ``explicit`` that has no nvcc raises :class:`ToolchainError`."""
    if explicit is not None:
        home = Path(explicit)
        if not (home / "bin" / "nvcc").is_file():
            raise ToolchainError(f"no bin/nvcc under --cuda-home {home}")
        return home
    # the machine's own toolkit first: its cudart matches its driver (a pip CUDA 13 toolchain builds
    # binaries that need a CUDA 13 driver, so it is the fallback of CPU-only machines)
    candidates: list[Path] = []
    if os.environ.get("CUDA_HOME"):
        candidates.append(Path(os.environ["CUDA_HOME"]))
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(nvcc).resolve().parent.parent)
    candidates.append(Path("/usr/local/cuda"))
    try:
        import nvidia  # the namespace package of NVIDIA's pip wheels

        candidates += [Path(p) / "cu13" for p in nvidia.__path__]
    except ImportError:
        pass
    for home in candidates:  # a toolkit: the compiler and the runtime headers (not a lone nvcc wrapper)
        if (home / "bin" / "nvcc").is_file() and (home / "include" / "cuda_runtime_api.h").is_file():
            return home
    return None


def find_trt_include(explicit: str | Path | None = None) -> Path | None:
    """A folder holding ``NvInferVersion.h`` and ``NvInferRuntime.h``: ``explicit``,
    ``$TRT_INCLUDE``, or a system folder. ``explicit`` without the headers raises."""
    if explicit is not None:
        inc = Path(explicit)
        if not (inc / "NvInferRuntime.h").is_file():
            raise ToolchainError(f"no NvInferRuntime.h in --trt-include {inc}")
        return inc
    for cand in ([os.environ["TRT_INCLUDE"]] if os.environ.get("TRT_INCLUDE") else []) + list(SYSTEM_TRT_INCLUDES):
        if (Path(cand) / "NvInferRuntime.h").is_file():
            return Path(cand)
    return None


def trt_header_version(include: str | Path) -> str:
    """``"10.3.0.26"`` from ``NvInferVersion.h`` (plain or ``TRT_*_ENTERPRISE`` macros)."""
    path = Path(include) / "NvInferVersion.h"
    try:
        text = path.read_text()
    except OSError as exc:
        raise ToolchainError(f"cannot read {path}: {exc.strerror or exc}") from None
    macros = dict(re.findall(r"#define\s+(\w+)\s+(\w+)", text))

    def value(name: str) -> str:
        v = macros.get(f"NV_TENSORRT_{name}")
        while v is not None and not v.isdigit():  # one level of indirection in 10.13+
            v = macros.get(v)
        if v is None:
            raise ToolchainError(f"{path} has no NV_TENSORRT_{name}")
        return v

    return ".".join(value(p) for p in ("MAJOR", "MINOR", "PATCH", "BUILD"))


def cuda_version(cuda_home: str | Path) -> str:
    """``"13.0"`` from ``CUDART_VERSION`` in ``include/cuda_runtime_api.h``."""
    path = Path(cuda_home) / "include" / "cuda_runtime_api.h"
    try:
        m = re.search(r"#define\s+CUDART_VERSION\s+(\d+)", path.read_text())
    except OSError as exc:
        raise ToolchainError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not m:
        raise ToolchainError(f"{path} has no CUDART_VERSION")
    v = int(m.group(1))
    return f"{v // 1000}.{(v % 1000) // 10}"


def parse_archs(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"sm_87,sm_90"`` (or a sequence) -> ``("sm_87", "sm_90")``; raises on anything else."""
    items = text.split(",") if isinstance(text, str) else list(text)
    archs = []
    for item in items:
        item = item.strip()
        if not re.fullmatch(r"sm_\d{2,3}[af]?", item):
            raise ToolchainError(f"unknown GPU architecture {item!r}: use sm_XY, e.g. sm_87 (Orin) or sm_90 (H100)")
        if item not in archs:
            archs.append(item)
    if not archs:
        raise ToolchainError("no GPU architecture given")
    return tuple(archs)


def gencode_flags(archs: Sequence[str]) -> list[str]:
    """One cubin per architecture plus the PTX of the last one (JIT for newer GPUs)."""
    flags = []
    for arch in archs:
        num = arch[3:]
        flags += ["-gencode", f"arch=compute_{num},code=sm_{num}"]
    last = archs[-1][3:]
    flags += ["-gencode", f"arch=compute_{last},code=compute_{last}"]
    return flags


def _run(cmd: list[str], what: str) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise ToolchainError(f"{what}: cannot run {cmd[0]}: {exc.strerror or exc}") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-12:]
        raise ToolchainError(f"{what} failed ({' '.join(cmd[:2])} ...): " + " | ".join(tail))


def _need_cxx() -> str:
    cxx = find_cxx()
    if cxx is None:
        raise ToolchainError("no C++ compiler (g++) on the PATH")
    return cxx


def _need_cuda(cuda_home: str | Path | None) -> Path:
    home = find_cuda_home(cuda_home)
    if home is None:
        raise ToolchainError("no CUDA toolkit found: pass --cuda-home, set CUDA_HOME, or "
                             "pip install nvidia-cuda-nvcc nvidia-cuda-cccl")
    return home


def build_host_core(out: str | Path) -> Path:
    """Compile the host core into the shared library ``out`` (g++ only, no CUDA)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    cmd = [_need_cxx(), *_HOST_FLAGS, "-shared", "-I", str(CSRC), *(str(CSRC / s) for s in HOST_SOURCES),
           "-o", str(tmp)]
    try:
        _run(cmd, "compiling the host core")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def compile_kernels(out_obj: str | Path, archs: Sequence[str] = DEFAULT_ARCHS,
                    cuda_home: str | Path | None = None) -> Path:
    """Compile ``pv_kernels.cu`` into a relocatable object with cubins for ``archs``."""
    home = _need_cuda(cuda_home)
    cmd = [str(home / "bin" / "nvcc"), "-std=c++17", "-O3", "-Xcompiler", "-fPIC,-fvisibility=hidden",
           *gencode_flags(parse_archs(archs)), "-I", str(CSRC), "-c", str(CSRC / KERNEL_SOURCES[0]),
           "-o", str(out_obj)]
    _run(cmd, "compiling the CUDA kernels")
    return Path(out_obj)


def compile_plugin(out_obj: str | Path, trt_include: str | Path, cuda_home: str | Path | None = None) -> Path:
    """Compile the TensorRT glue ``pv_plugin.cpp`` against one TensorRT header set."""
    home = _need_cuda(cuda_home)
    cmd = [_need_cxx(), *_PLUGIN_FLAGS, "-isystem", str(trt_include), "-isystem", str(home / "include"),
           "-I", str(CSRC), "-c", str(CSRC / PLUGIN_SOURCES[0]), "-o", str(out_obj)]
    _run(cmd, "compiling the TensorRT plugin glue")
    return Path(out_obj)


def link_plugin(out_so: str | Path, objects: Sequence[str | Path], archs: Sequence[str] = DEFAULT_ARCHS,
                cuda_home: str | Path | None = None) -> Path:
    """Link the plugin library: static cudart, only the two entry points exported, ``-z defs``."""
    home = _need_cuda(cuda_home)
    cmd = [str(home / "bin" / "nvcc"), "-shared", *gencode_flags(parse_archs(archs)), "-o", str(out_so),
           *(str(o) for o in objects), "-Xlinker", f"--version-script={CSRC / EXPORTS_MAP}",
           "-Xlinker", "-z,defs"]
    _run(cmd, "linking the plugin library")
    return Path(out_so)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def metadata_path(library: str | Path) -> Path:
    """``LIB.so`` -> ``LIB.json``, the build record beside the library."""
    library = Path(library)
    return library.with_name(library.stem + ".json")


@dataclass(frozen=True)
class PluginBuild:
    """What :func:`build_plugin_library` produced."""

    library: Path
    metadata: dict


def build_plugin_library(out: str | Path, *, trt_include: str | Path | None = None,
                         cuda_home: str | Path | None = None,
                         archs: Sequence[str] = DEFAULT_ARCHS) -> PluginBuild:
    """Compile and link the TensorRT plugin library ``out`` and write ``out``'s JSON record.

    Nothing is left at ``out`` when a step fails (the library is linked under a temporary name).
    """
    out = Path(out)
    if out.suffix != ".so":
        raise ToolchainError(f"--out must name a .so file, got {out}")
    if out.is_dir():
        raise ArtifactError(f"{out} is a folder")
    archs = parse_archs(archs)
    inc = find_trt_include(trt_include)
    if inc is None:
        raise ToolchainError("no TensorRT headers found: pass --trt-include DIR (the folder with NvInferRuntime.h)")
    home = _need_cuda(cuda_home)
    trt_version = trt_header_version(inc)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(f"cannot write {out}: {exc.strerror or exc}") from None
    with tempfile.TemporaryDirectory(prefix=".pv-build-", dir=out.parent) as work:
        work = Path(work)
        kernels = compile_kernels(work / "pv_kernels.o", archs, home)
        glue = compile_plugin(work / "pv_plugin.o", inc, home)
        linked = link_plugin(work / out.name, [glue, kernels], archs, home)
        meta = {
            "library": out.name,
            "sha256": sha256_file(linked),
            "tensorrt": trt_version,
            "tensorrt_include": str(inc),
            "cuda": cuda_version(home),
            "archs": list(archs),
            "machine": platform.machine(),
            "plugins": [op.plugin_id for op in OPS.values()],
            "plugin_version": PLUGIN_VERSION,
        }
        tmp_meta = work / "meta.json"
        tmp_meta.write_text(json.dumps(meta, indent=2) + "\n")
        linked.replace(out)
        tmp_meta.replace(metadata_path(out))
    return PluginBuild(out, meta)
