"""Torch entry points of the prunevid custom ops.

Eagerly each op runs its kernel (:mod:`prunevid.plugins.kernels`); under the TorchScript ONNX
exporter (``torch.onnx.export(..., dynamo=False, custom_opsets={"prunevid": 1})``) it becomes one
``prunevid::<name>`` node carrying the op's attributes and the plugin routing attributes of
:mod:`prunevid.plugins.ops`. Inputs of another element type than the table's (a float16 export)
are cast to it in front of the node, as the kernels cast them eagerly; the wrappers return the
integer outputs as int64 (a Cast behind the node), so graph code stays in int64 around the op's
int32 boundary (contracts v2). Call
:func:`prunevid.plugins.onnx_functions.attach_functions` on the exported model to add the
standard-op function bodies.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

from prunevid.plugins import kernels
from prunevid.plugins.ops import DOMAIN, OPS

_DPC_KNN = OPS["PvDpcKnn"]
_GROUP_TOPK = OPS["PvGroupTopK"]


@contextlib.contextmanager
def _quiet_trace():
    """While the exporter traces ``forward`` (its trace is replaced by ``symbolic``), silence the
    tracer's warnings about the kernels' Python-level shape checks."""
    with warnings.catch_warnings():
        if torch.jit.is_tracing():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def _symbolic_attrs(spec, **values) -> dict:
    """``g.op`` keyword attributes (``name_i`` / ``name_s`` / ``name_f``) from the table."""
    suffix = {int: "i", str: "s", float: "f"}
    out = {}
    for name, value in spec.node_attributes(**values).items():
        out[f"{name}_{suffix[type(value)]}"] = value
    return out


# table dtype -> (TorchScript scalar type, ONNX TensorProto element type)
_SCALAR_TYPES = {"float32": ("Float", 1), "int32": ("Int", 6), "int64": ("Long", 7), "bool": ("Bool", 9)}


def _inputs_as_table_types(g, spec, values) -> list:
    """Cast each input to the element type of the table (e.g. a float16 export feeds ``x``)."""
    out = []
    for t, value in zip(spec.inputs, values):
        want, onnx_type = _SCALAR_TYPES[t.dtype]
        try:
            have = value.type().scalarType()
        except (AttributeError, RuntimeError):
            have = None
        out.append(value if have == want else g.op("Cast", value, to_i=onnx_type))
    return out


def _typed(value, like, dtype: torch.dtype, sizes):
    """Give a symbolic output a tensor type (``sizes`` may hold None for unknown dims)."""
    try:
        value.setType(like.type().with_dtype(dtype).with_sizes(sizes))
    except (AttributeError, RuntimeError):  # no tensor type on the input: leave it untyped
        pass
    return value


def _sizes(value, rank: int) -> list:
    try:
        sizes = value.type().varyingSizes()
    except (AttributeError, RuntimeError):
        sizes = None
    return list(sizes) if sizes is not None else [None] * rank


class _DpcKnn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, num_valid, num_clusters, k):  # noqa: D102
        with _quiet_trace():
            return kernels.dpc_knn_batched(x, num_valid, num_clusters, int(k))

    @staticmethod
    def symbolic(g, x, num_valid, num_clusters, k):  # noqa: D102
        labels, centers = g.op(
            f"{DOMAIN}::{_DPC_KNN.name}",
            *_inputs_as_table_types(g, _DPC_KNN, (x, num_valid, num_clusters)),
            outputs=len(_DPC_KNN.outputs),
            **_symbolic_attrs(_DPC_KNN, k=int(k)),
        )
        sizes = _sizes(x, 3)[:2]
        return _typed(labels, x, torch.int32, sizes), _typed(centers, x, torch.int32, sizes)


class _GroupTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, group_sizes, keep_counts):  # noqa: D102
        with _quiet_trace():
            return kernels.group_topk(scores, group_sizes, keep_counts)

    @staticmethod
    def symbolic(g, scores, group_sizes, keep_counts):  # noqa: D102
        keep, count = g.op(
            f"{DOMAIN}::{_GROUP_TOPK.name}",
            *_inputs_as_table_types(g, _GROUP_TOPK, (scores, group_sizes, keep_counts)),
            outputs=len(_GROUP_TOPK.outputs),
            **_symbolic_attrs(_GROUP_TOPK),
        )
        return _typed(keep, scores, torch.int32, _sizes(scores, 1)), _typed(count, scores, torch.int32, [1])


def dpc_knn_op(
    x: torch.Tensor, num_valid: torch.Tensor, num_clusters: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Op ``PvDpcKnn``: ``x [B,N,C] f32, num_valid [B], num_clusters [B] -> (labels, centers)``, both
    ``[B,N]`` returned as int64 (the node's int32 outputs, Cast).

    See :func:`prunevid.plugins.kernels.dpc_knn_batched`; ``k`` becomes the node attribute ``k``.
    """
    labels, centers = _DpcKnn.apply(x, num_valid, num_clusters, int(k))
    return labels.long(), centers.long()


def group_topk_op(
    scores: torch.Tensor, group_sizes: torch.Tensor, keep_counts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Op ``PvGroupTopK``: ``scores [M] f32, group_sizes [G], keep_counts [G] -> (keep [M], count [1])``,
    returned as int64 (the node's int32 outputs, Cast); ``keep`` is padded with ``M``.

    See :func:`prunevid.plugins.kernels.group_topk`.
    """
    keep, count = _GroupTopK.apply(scores, group_sizes, keep_counts)
    return keep.long(), count.long()
