"""TensorRT plugins of the prunevid ops as quickly deployable Python plugins (``tensorrt.plugin``).

One plugin per op of :data:`prunevid.plugins.ops.OPS`, registered as ``prunevid::<op name>``,
version ``"1"`` (the QDP default), so the ONNX parser of TensorRT >= 10.7 routes a node
``domain="prunevid"``, ``op_type=<name>``, ``plugin_namespace="prunevid"`` to it instead of the
node's local function (``docs/deployment.md`` sections 1.2-1.5). On TensorRT < 10.7 the function
must be stripped first (``prunevid.exporter.trt_build.strip_functions_for_plugins``).

* ``@trtp.register`` descriptors are derived from the op table: every output dimension is the
  input dimension of the same symbolic name (``B``, ``N``, ``M``) or a constant, output dtypes
  are the table's (contracts v2: no data-dependent output size).
* ``@trtp.impl`` implementations run just in time on TensorRT's stream: they wrap the TensorRT
  tensors as torch CUDA tensors (``torch.as_tensor(t, device="cuda")``, zero copy through
  ``__cuda_array_interface__``) and call :func:`prunevid.plugins.kernels.dpc_knn_batched` /
  :func:`prunevid.plugins.kernels.group_topk`.

Limits, stated plainly: this module is written against the documented ``tensorrt.plugin`` API and
could not be run where it was written (no GPU, no TensorRT). JIT plugins need Python at run time,
so engines using them cannot be profiled with ``trtexec`` (that needs ``aot_impl``, not provided
here).

``tensorrt``, ``torch`` and the kernels are imported lazily: importing this module needs neither.
This module deliberately does not use ``from __future__ import annotations``: QDP reads the type
hints of the decorated functions, which must be real objects.
"""

from typing import Any, Dict, List, Optional, Tuple

from prunevid.plugins.ops import OPS, PLUGIN_NAMESPACE, OpSpec

PLUGIN_IDS: Tuple[str, ...] = tuple(op.plugin_id for op in OPS.values())

# Data-dependent output dimensions: their upper bound as (input name, dim index). Contracts v2
# have none (PvGroupTopK pads its output to M and returns the count).
UPPER_BOUNDS: Dict[Tuple[str, str], Tuple[str, int]] = {}
# Autotune value of a data-dependent dimension, as a fraction of its upper bound.
OPT_FRACTION = 2  # opt = upper_bound // 2

_registered = False


def output_dim_sources(spec: OpSpec) -> List[Tuple[Optional[Tuple[int, int]], ...]]:
    """For each output of ``spec``, for each dimension: ``(input index, dim index)`` of the first
    input with the same symbolic (or constant) dimension, or None when no input has it (the
    dimension is data-dependent)."""
    where: Dict[Any, Tuple[int, int]] = {}
    for i, t in enumerate(spec.inputs):
        for d, dim in enumerate(t.shape):
            where.setdefault(dim, (i, d))
    return [tuple(dim if isinstance(dim, int) else where.get(dim) for dim in out.shape) for out in spec.outputs]


def describe() -> Dict[str, Dict[str, Any]]:
    """What :func:`register_plugins` will register, without TensorRT: per op the plugin id, the
    descriptor's parameters (inputs then attributes), output dtypes, output dimension sources and
    the size tensors of data-dependent dimensions."""
    out = {}
    for name, spec in OPS.items():
        sources = output_dim_sources(spec)
        size_tensors = []
        for o, srcs in zip(spec.outputs, sources):
            for dim, src in zip(o.shape, srcs):
                if src is None:
                    bound = UPPER_BOUNDS.get((name, dim))
                    if bound is None:
                        raise ValueError(f"{name}: output dim {dim!r} is data-dependent but has no upper bound")
                    size_tensors.append({"dim": dim, "upper_bound": bound})
        out[name] = {
            "plugin_id": spec.plugin_id,
            "params": [t.name for t in spec.inputs] + list(spec.attributes),
            "output_dtypes": [o.dtype for o in spec.outputs],
            "output_dim_sources": sources,
            "size_tensors": size_tensors,
        }
    return out


def _check_params(spec: OpSpec, fn, trailing: Tuple[str, ...] = ()) -> None:
    import inspect

    expected = [t.name for t in spec.inputs] + list(spec.attributes) + list(trailing)
    got = list(inspect.signature(fn).parameters)
    if got != expected:
        raise RuntimeError(f"{spec.plugin_id}: plugin parameters {got} do not match the op table {expected}")


def _trt_dtype(trt, numpy_name: str):
    table = {"float32": trt.float32, "float16": trt.float16, "int32": trt.int32, "int64": trt.int64, "bool": trt.bool}
    return table[numpy_name]


def _shape_exprs(inputs, sources):
    return tuple(src if isinstance(src, int) else inputs[src[0]].shape_expr[src[1]] for src in sources)


def register_plugins() -> Tuple[str, ...]:
    """Register the QDP plugins of every prunevid op in TensorRT's plugin registry (idempotent).

    Call before parsing an ONNX model that uses them (and before deserializing an engine built
    with them). Needs TensorRT >= 10.6 with ``tensorrt.plugin`` (stable from 10.9), and torch with
    CUDA at run time. Returns the plugin ids.
    """
    global _registered
    if _registered:
        return PLUGIN_IDS
    import tensorrt as trt

    major, minor = (int(p) for p in trt.__version__.split(".")[:2])
    if (major, minor) < (10, 6):
        raise RuntimeError(f"quickly deployable plugins need TensorRT >= 10.6, found {trt.__version__}")
    import tensorrt.plugin as trtp

    _register_dpc_knn(trt, trtp)
    _register_group_topk(trt, trtp)
    missing = set(OPS) - {"PvDpcKnn", "PvGroupTopK"}
    if missing:
        raise RuntimeError(f"no TensorRT plugin written for ops {sorted(missing)}")
    _registered = True
    return PLUGIN_IDS


def _register_dpc_knn(trt, trtp) -> None:
    spec = OPS["PvDpcKnn"]
    pid = spec.plugin_id
    sources = output_dim_sources(spec)
    dtypes = [_trt_dtype(trt, o.dtype) for o in spec.outputs]

    def desc(
        x: trtp.TensorDesc, num_valid: trtp.TensorDesc, num_clusters: trtp.TensorDesc, k: int
    ) -> Tuple[trtp.TensorDesc, trtp.TensorDesc]:
        inputs = (x, num_valid, num_clusters)
        return tuple(trtp.from_shape_expr(_shape_exprs(inputs, src), dtype=dt) for src, dt in zip(sources, dtypes))

    def impl(
        x: trtp.Tensor,
        num_valid: trtp.Tensor,
        num_clusters: trtp.Tensor,
        k: int,
        outputs: Tuple[trtp.Tensor, trtp.Tensor],
        stream: int,
    ) -> None:
        import torch

        from prunevid.plugins.kernels import dpc_knn_batched

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            labels, centers = dpc_knn_batched(
                torch.as_tensor(x, device="cuda"),
                torch.as_tensor(num_valid, device="cuda"),
                torch.as_tensor(num_clusters, device="cuda"),
                int(k),
            )
            torch.as_tensor(outputs[0], device="cuda").copy_(labels)
            torch.as_tensor(outputs[1], device="cuda").copy_(centers)

    _check_params(spec, desc)
    _check_params(spec, impl, ("outputs", "stream"))
    trtp.register(pid)(desc)
    trtp.impl(pid)(impl)


def _register_group_topk(trt, trtp) -> None:
    spec = OPS["PvGroupTopK"]
    pid = spec.plugin_id
    sources = output_dim_sources(spec)
    dtypes = [_trt_dtype(trt, o.dtype) for o in spec.outputs]

    def desc(
        scores: trtp.TensorDesc, group_sizes: trtp.TensorDesc, keep_counts: trtp.TensorDesc
    ) -> Tuple[trtp.TensorDesc, trtp.TensorDesc]:
        inputs = (scores, group_sizes, keep_counts)
        return tuple(trtp.from_shape_expr(_shape_exprs(inputs, src), dtype=dt) for src, dt in zip(sources, dtypes))

    def impl(
        scores: trtp.Tensor,
        group_sizes: trtp.Tensor,
        keep_counts: trtp.Tensor,
        outputs: Tuple[trtp.Tensor, trtp.Tensor],
        stream: int,
    ) -> None:
        import torch

        from prunevid.plugins.kernels import group_topk

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            keep, count = group_topk(
                torch.as_tensor(scores, device="cuda"),
                torch.as_tensor(group_sizes, device="cuda"),
                torch.as_tensor(keep_counts, device="cuda"),
            )
            torch.as_tensor(outputs[0], device="cuda").copy_(keep)
            torch.as_tensor(outputs[1], device="cuda").copy_(count)

    _check_params(spec, desc)
    _check_params(spec, impl, ("outputs", "stream"))
    trtp.register(pid)(desc)
    trtp.impl(pid)(impl)


__all__ = ["PLUGIN_IDS", "PLUGIN_NAMESPACE", "describe", "output_dim_sources", "register_plugins"]
