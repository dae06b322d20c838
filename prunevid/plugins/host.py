"""The C++ core of the prunevid ops on the CPU, called through ctypes (numpy in, numpy out).

The same functions of ``csrc/pv_core.h`` run inside the CUDA kernels of the TensorRT plugin, so
testing this host build against the torch kernels and the unbatched reference tests the plugin's
arithmetic without a GPU. Arguments and results follow the op table (contract v2): int32 counts,
int32 outputs, ``PvGroupTopK`` padded with ``M`` plus a count.

The library is compiled with g++ on first use into ``$PRUNEVID_CACHE/host-core/<source hash>/``
(or taken from ``$PRUNEVID_HOST_LIB``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from pathlib import Path

import numpy as np

from prunevid.plugins.build import CSRC, HOST_SOURCES, build_host_core

_LIB: ctypes.CDLL | None = None
_F32P = np.ctypeslib.ndpointer(dtype=np.float32, flags="C_CONTIGUOUS")
_I32P = np.ctypeslib.ndpointer(dtype=np.int32, flags="C_CONTIGUOUS")
_I32 = ctypes.c_int32


def source_hash() -> str:
    """Short hash of the host core's sources (the cache key)."""
    h = hashlib.sha256()
    for name in (*HOST_SOURCES, "pv_core.h"):
        h.update((CSRC / name).read_bytes())
    return h.hexdigest()[:16]


def library_path() -> Path:
    """Where the host core library is (or will be) built."""
    if os.environ.get("PRUNEVID_HOST_LIB"):
        return Path(os.environ["PRUNEVID_HOST_LIB"])
    from prunevid.cli import cache_dir

    return cache_dir() / "host-core" / source_hash() / "libpv_host.so"


def load() -> ctypes.CDLL:
    """The host core, compiled first if needed (:class:`prunevid.errors.ToolchainError` when no
    g++ is available)."""
    global _LIB
    if _LIB is None:
        path = library_path()
        if not path.is_file():
            build_host_core(path)
        lib = ctypes.CDLL(str(path))
        lib.pv_host_dpc_knn.argtypes = [_F32P, _I32P, _I32P, _I32, _I32, _I32, _I32, _I32P, _I32P]
        lib.pv_host_dpc_knn.restype = ctypes.c_int
        lib.pv_host_group_topk.argtypes = [_F32P, _I32, _I32P, _I32P, _I32, _I32P, _I32P]
        lib.pv_host_group_topk.restype = ctypes.c_int
        _LIB = lib
    return _LIB


def _i32(a, shape: tuple[int, ...], name: str) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(a), dtype=np.int32)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(arr.shape)}")
    return arr


def dpc_knn(x, num_valid, num_clusters, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Op ``PvDpcKnn`` on the CPU.

    Args:
        x: ``[B, N, C]`` float32 features of ``B`` groups.
        num_valid: ``[B]`` rows ``0 .. num_valid[b]-1`` of group ``b`` exist.
        num_clusters: ``[B]`` clusters wanted per group.
        k: density neighbours, the row itself included.

    Returns:
        ``(labels, centers)``, both ``[B, N]`` int32 (see the op table).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"x must be [B, N, C], got shape {list(x.shape)}")
    b, n, c = x.shape
    nv = _i32(num_valid, (b,), "num_valid")
    nc = _i32(num_clusters, (b,), "num_clusters")
    labels = np.empty((b, n), dtype=np.int32)
    centers = np.empty((b, n), dtype=np.int32)
    if load().pv_host_dpc_knn(x, nv, nc, b, n, c, int(k), labels, centers) != 0:
        raise ValueError("pv_host_dpc_knn rejected its arguments")
    return labels, centers


def group_topk(scores, group_sizes, keep_counts) -> tuple[np.ndarray, np.ndarray]:
    """Op ``PvGroupTopK`` on the CPU.

    Args:
        scores: ``[M]`` float32.
        group_sizes: ``[G]`` consecutive groups covering a prefix of the tokens.
        keep_counts: ``[G]`` tokens kept per group.

    Returns:
        ``(keep [M], count [1])`` int32: kept indices ascending then ``M``; how many were kept.
    """
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    if scores.ndim != 1:
        raise ValueError(f"scores must be [M], got shape {list(scores.shape)}")
    sizes = np.ascontiguousarray(np.asarray(group_sizes), dtype=np.int32)
    if sizes.ndim != 1:
        raise ValueError(f"group_sizes must be [G], got shape {list(sizes.shape)}")
    counts = _i32(keep_counts, sizes.shape, "keep_counts")
    m = scores.shape[0]
    keep = np.empty(m, dtype=np.int32)
    count = np.empty(1, dtype=np.int32)
    if load().pv_host_group_topk(scores, m, sizes, counts, sizes.shape[0], keep, count) != 0:
        raise ValueError("pv_host_group_topk rejected its arguments")
    return keep, count
