"""ONNX local functions of the prunevid custom ops: the standard-op twin of each plugin.

Every op of :data:`prunevid.plugins.ops.OPS` gets a ``FunctionProto`` (domain ``prunevid``, name =
op type) whose body uses default-domain ops only and follows :mod:`prunevid.plugins.kernels` step
by step (same formulas, same pairwise-rank tie rule), so ONNX Runtime, or TensorRT without the
plugin, computes what the torch kernels compute. The bodies avoid DOUBLE tensors, Sequence ops and
control flow (Loop/Scan/If).

:func:`attach_functions` adds the functions a model needs after export; see
``docs/deployment.md`` section 1.5 for why the node, its ``plugin_namespace`` attribute and the
function travel together.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import onnx
from onnx import (
    AttributeProto,
    FunctionProto,
    ModelProto,
    NodeProto,
    TensorProto,
    helper,
)

from prunevid.plugins.ops import DOMAIN, DOMAIN_VERSION, OPS, OpSpec

MIN_OPSET = 17
MAX_OPSET = 21

_PLUGIN_ATTRIBUTES = ("plugin_namespace", "plugin_version")


class _Body:
    """Accumulates the nodes of a function body with unique intermediate names."""

    def __init__(self, prefix: str, opset: int) -> None:
        self.prefix = prefix
        self.opset = opset
        self.nodes: list[NodeProto] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}_{hint}_{self._count}"

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        """Append one single-output node and return its output name."""
        output = out or self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], **attrs))
        return output

    def op_n(self, op_type: str, inputs: list[str], outputs: list[str], **attrs) -> list[str]:
        """Append one node with explicit output names."""
        self.nodes.append(helper.make_node(op_type, inputs, outputs, **attrs))
        return outputs

    def const(self, value, dtype: int, hint: str = "c", shape: tuple[int, ...] | None = None) -> str:
        """A Constant node holding ``value`` (a scalar when ``shape`` is None, else 1-D)."""
        vals = list(value) if isinstance(value, (list, tuple)) else [value]
        dims = [] if shape is None else list(shape)
        tensor = helper.make_tensor(self._name(hint) + "_value", dtype, dims, vals)
        return self.op("Constant", out=self._name(hint), value=tensor)

    def reduce(self, op_type: str, data: str, axes: list[int], keepdims: int) -> str:
        """ReduceX over ``axes``: an input from opset 18 (13 for ReduceSum) on, else an attribute."""
        axes_as_input = self.opset >= (13 if op_type == "ReduceSum" else 18)
        if axes_as_input:
            axes_t = self.const(axes, TensorProto.INT64, "axes", shape=(len(axes),))
            return self.op(op_type, data, axes_t, keepdims=keepdims)
        return self.op(op_type, data, axes=axes, keepdims=keepdims)

    def unsqueeze(self, data: str, axes: list[int]) -> str:
        axes_t = self.const(axes, TensorProto.INT64, "axes", shape=(len(axes),))
        return self.op("Unsqueeze", data, axes_t)

    def squeeze(self, data: str, axes: list[int]) -> str:
        """Squeeze with explicit axes (TensorRT before 11.5 rejects Squeeze without them)."""
        axes_t = self.const(axes, TensorProto.INT64, "axes", shape=(len(axes),))
        return self.op("Squeeze", data, axes_t)


def _dpc_knn_body(b: _Body, spec: OpSpec) -> None:
    """Body of PvDpcKnn, step for step as :func:`prunevid.plugins.kernels.dpc_knn_batched`, on the
    full padded shapes: no size is computed from input values, so ONNX Runtime and the TensorRT
    variant take the same body. Callers cut the padding themselves (the merger passes each batch at
    its longest real group, the shape a padded call would waste work on).
    """
    x, num_valid, num_clusters_i32 = (t.name for t in spec.inputs)
    labels_out, centers_out = (t.name for t in spec.outputs)
    i64, i32, f32 = TensorProto.INT64, TensorProto.INT32, TensorProto.FLOAT

    zero_f = b.const(0.0, f32, "zero_f")
    two_f = b.const(2.0, f32, "two_f")
    inf_f = b.const(math.inf, f32, "inf_f")
    zero_i = b.const(0, i64, "zero_i")
    one_i = b.const(1, i64, "one_i")
    minus_one_i = b.const(-1, i64, "minus_one_i")
    one_1d = b.const([1], i64, "one_1d", shape=(1,))

    # sizes and index vectors
    n_1d = b.op("Shape", x, start=1, end=2)  # [1] = N
    c_1d = b.op("Shape", x, start=2, end=3)  # [1] = C
    n_scalar = b.squeeze(n_1d, [0])  # scalar N
    idx = b.op("Range", zero_i, n_scalar, one_i)  # [N]
    idx_row = b.unsqueeze(idx, [0])  # [1, N]  (j along the last axis)
    idx_col = b.unsqueeze(idx, [1])  # [N, 1]  (i along the rows)
    upper = b.op("GreaterOrEqual", idx_row, idx_col)  # [N, N]: j >= i
    eye = b.op("Equal", idx_row, idx_col)  # [N, N]
    lower = b.op("Less", idx_row, idx_col)  # [N, N]: j < i
    num_clusters = b.op("Cast", num_clusters_i32, to=i64)  # [B]
    valid = b.op("Less", idx_row, b.unsqueeze(b.op("Cast", num_valid, to=i64), [1]))  # [B, N], a prefix

    # distances of the centred rows y = x - mean(valid x):
    # sqrt(max(|y_i|^2 + |y_j|^2 - 2 y_i.y_j, 0)) / sqrt(C), symmetric, zero diagonal
    weight = b.unsqueeze(b.op("Cast", valid, to=f32), [2])  # [B, N, 1]
    count = b.op("Max", b.reduce("ReduceSum", weight, [1], keepdims=1), b.const(1.0, f32, "one_f"))  # [B, 1, 1]
    mu = b.op("Div", b.reduce("ReduceSum", b.op("Mul", x, weight), [1], keepdims=1), count)  # [B, 1, C]
    y = b.op("Sub", x, mu)  # [B, N, C]
    yt = b.op("Transpose", y, perm=[0, 2, 1])  # [B, C, N]
    gram = b.op("MatMul", y, yt)  # [B, N, N]
    # |y_i|^2 is the GEMM's own diagonal (exact zeros elsewhere), so duplicated rows are at distance 0
    sq = b.reduce("ReduceSum", b.op("Where", eye, gram, zero_f), [-1], keepdims=0)  # [B, N]
    gram = b.op("Where", upper, gram, b.op("Transpose", gram, perm=[0, 2, 1]))
    sq_sum = b.op("Add", b.unsqueeze(sq, [2]), b.unsqueeze(sq, [1]))  # [B, N, N]
    d2 = b.op("Sub", sq_sum, b.op("Mul", two_f, gram))
    scale = b.op("Sqrt", b.op("Cast", c_1d, to=f32))  # [1]
    dist = b.op("Div", b.op("Sqrt", b.op("Max", d2, zero_f)), scale)
    dist = b.op("Where", eye, zero_f, dist)  # [B, N, N]

    valid_i = b.unsqueeze(valid, [2])  # [B, N, 1]
    valid_j = b.unsqueeze(valid, [1])  # [B, 1, N]
    pair_valid = b.op("And", valid_i, valid_j)  # [B, N, N]

    # density: exp(-(sum of the k smallest squared distances) / k), k clamped to 1 then to N
    k_scalar = b.op("Constant", out=b._name("k"))
    b.nodes[-1].attribute.append(
        AttributeProto(name="value_int", ref_attr_name="k", type=AttributeProto.INT)
    )
    k_1d = b.op("Reshape", k_scalar, b.const([1], i64, "shape1", shape=(1,)))  # [1]
    k_1d = b.op("Min", b.op("Max", k_1d, one_1d), n_1d)  # [1]: k clamped to 1..N
    knn_dist = b.op("Where", pair_valid, dist, inf_f)
    nearest = b.op_n(
        "TopK", [knn_dist, k_1d],
        [b._name("nearest"), b._name("nearest_idx")], axis=-1, largest=0, sorted=1,
    )[0]  # [B, N, k]
    # the squares summed in ascending order, one after the other, as the C++ core does: a CumSum,
    # whose last column is its maximum (the squares are >= 0). ONNX Runtime's ReduceSum over a short
    # last axis rounds by each row's memory alignment: duplicated tokens got densities an ulp apart
    # and lost their tie.
    running = b.op("CumSum", b.op("Mul", nearest, nearest), b.const(-1, i64, "k_axis"))  # [B, N, k]
    nearest_sum = b.reduce("ReduceMax", running, [-1], keepdims=0)  # [B, N]
    mean_sq = b.op("Div", nearest_sum, b.op("Cast", k_1d, to=f32))  # [B, N]
    density = b.op("Exp", b.op("Neg", mean_sq))  # [B, N]

    # delta: min distance to a denser valid token, else the group's maximum distance
    dist0 = b.op("Where", pair_valid, dist, zero_f)
    dist_max = b.reduce("ReduceMax", dist0, [1, 2], keepdims=1)  # [B, 1, 1]
    denser = b.op("Greater", b.unsqueeze(density, [1]), b.unsqueeze(density, [2]))  # rho_j > rho_i
    denser = b.op("And", denser, pair_valid)
    delta = b.reduce("ReduceMin", b.op("Where", denser, dist, dist_max), [-1], keepdims=0)
    score = b.op("Mul", delta, density)  # [B, N]

    # rank_i = #valid j with s_j > s_i or (s_j == s_i and j < i)
    s_j = b.unsqueeze(score, [1])  # [B, 1, N]
    s_i = b.unsqueeze(score, [2])  # [B, N, 1]
    ahead = b.op("Or", b.op("Greater", s_j, s_i), b.op("And", b.op("Equal", s_j, s_i), lower))
    ahead = b.op("And", ahead, valid_j)
    rank = b.reduce("ReduceSum", b.op("Cast", ahead, to=i64), [-1], keepdims=0)  # [B, N]

    # centres: slot r holds the valid token of rank r, for r < num_clusters
    match = b.op("And", b.op("Equal", b.unsqueeze(rank, [1]), idx_col), valid_j)  # [B, r, i]
    center_raw = b.reduce("ReduceMax", b.op("Where", match, idx_row, minus_one_i), [-1], keepdims=0)
    ncl_col = b.unsqueeze(num_clusters, [1])  # [B, 1]
    slot_ok = b.op("Less", idx_row, ncl_col)  # [B, N]
    centers = b.op("Where", slot_ok, center_raw, minus_one_i)
    b.op("Cast", centers, to=i32, out=centers_out)

    # labels: nearest valid centre (first slot on ties); centres take their own slot
    center_idx = b.op("Max", centers, zero_i)  # [B, N]
    gather_idx = b.op("Expand", b.unsqueeze(center_idx, [2]), b.op("Shape", dist))  # [B, r, i]
    center_dist = b.op("GatherElements", dist, gather_idx, axis=1)  # d[b, centre_r, i]
    has_center = b.unsqueeze(b.op("GreaterOrEqual", centers, zero_i), [2])  # [B, N, 1]
    center_dist = b.op("Where", has_center, center_dist, inf_f)
    nearest_center = b.op("ArgMin", center_dist, axis=1, keepdims=0, select_last_index=0)
    is_center = b.op("And", valid, b.op("Less", rank, ncl_col))
    labels = b.op("Where", is_center, rank, nearest_center)
    labels = b.op("Where", valid, labels, minus_one_i)  # [B, N]
    b.op("Cast", labels, to=i32, out=labels_out)


def _group_topk_body(b: _Body, spec: OpSpec) -> None:
    """Body of PvGroupTopK, step for step as :func:`prunevid.plugins.kernels.group_topk`."""
    scores, group_sizes_i32, keep_counts_i32 = (t.name for t in spec.inputs)
    keep_out, count_out = (t.name for t in spec.outputs)
    i64, i32 = TensorProto.INT64, TensorProto.INT32
    group_sizes = b.op("Cast", group_sizes_i32, to=i64)  # [G]
    keep_counts = b.op("Cast", keep_counts_i32, to=i64)  # [G]

    zero_i = b.const(0, i64, "zero_i")
    one_i = b.const(1, i64, "one_i")

    m_scalar = b.squeeze(b.op("Shape", scores), [0])  # scalar M
    idx = b.op("Range", zero_i, m_scalar, one_i)  # [M]
    idx_row = b.unsqueeze(idx, [0])  # [1, M]  (j)
    idx_col = b.unsqueeze(idx, [1])  # [M, 1]  (i)

    # group of each token: number of group ends at or before it (G past the last group)
    ends = b.op("CumSum", group_sizes, zero_i)  # [G]
    past = b.op("LessOrEqual", b.unsqueeze(ends, [0]), idx_col)  # [M, G]
    group_id = b.reduce("ReduceSum", b.op("Cast", past, to=i64), [-1], keepdims=0)  # [M]
    counts = b.op("Concat", keep_counts, b.const([0], i64, "zero_1d", shape=(1,)), axis=0)
    quota = b.op("Gather", counts, group_id, axis=0)  # [M]

    # rank within the group: same pairwise rule as PvDpcKnn
    same_group = b.op("Equal", b.unsqueeze(group_id, [0]), b.unsqueeze(group_id, [1]))  # [i, j]
    s_j = b.unsqueeze(scores, [0])
    s_i = b.unsqueeze(scores, [1])
    lower = b.op("Less", idx_row, idx_col)
    ahead = b.op("Or", b.op("Greater", s_j, s_i), b.op("And", b.op("Equal", s_j, s_i), lower))
    ahead = b.op("And", ahead, same_group)
    rank = b.reduce("ReduceSum", b.op("Cast", ahead, to=i64), [-1], keepdims=0)  # [M]

    kept = b.op("Less", rank, quota)  # [M]
    # slot r holds the kept token with r kept tokens before it (no sort: TensorRT caps TopK's K)
    kept_i64 = b.op("Cast", kept, to=i64)
    slot = b.op("Sub", b.op("CumSum", kept_i64, zero_i), kept_i64)  # [M]: kept tokens before i
    match = b.op("And", b.op("Equal", b.unsqueeze(slot, [0]), idx_col), b.unsqueeze(kept, [0]))  # [r, i]
    minus_one_i = b.const(-1, i64, "minus_one_i")
    found = b.reduce("ReduceMax", b.op("Where", match, idx_row, minus_one_i), [-1], keepdims=0)  # [M]
    keep = b.op("Where", b.op("Less", found, zero_i), m_scalar, found)  # pad value M
    b.op("Cast", keep, to=i32, out=keep_out)
    count = b.reduce("ReduceSum", b.op("Cast", kept, to=i32), [0], keepdims=1)  # [1]
    b.op("Identity", count, out=count_out)


_BODIES: dict[str, Callable[[_Body, OpSpec], None]] = {
    "PvDpcKnn": _dpc_knn_body,
    "PvGroupTopK": _group_topk_body,
}


def function_proto(op_name: str, opset: int) -> FunctionProto:
    """The local function of op ``op_name`` with a body in default-domain opset ``opset`` (17..21).

    Its inputs, outputs and attributes are those of :data:`~prunevid.plugins.ops.OPS`, plus the
    ``plugin_namespace`` / ``plugin_version`` attributes the calling node carries.
    """
    if op_name not in OPS:
        raise KeyError(f"no prunevid op named {op_name!r}; known: {sorted(OPS)}")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"function bodies support opsets {MIN_OPSET}..{MAX_OPSET}, got {opset}")
    spec = OPS[op_name]
    if set(spec.attributes) - {"k"} or op_name not in _BODIES:
        raise NotImplementedError(f"no function body written for {op_name}")
    body = _Body(f"_{op_name}", opset)
    _BODIES[op_name](body, spec)
    return helper.make_function(
        DOMAIN,
        op_name,
        [t.name for t in spec.inputs],
        [t.name for t in spec.outputs],
        body.nodes,
        [helper.make_opsetid("", opset)],
        attributes=[*spec.attributes, *_PLUGIN_ATTRIBUTES],
        doc_string=spec.doc,
    )


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph nested in its nodes' attributes."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graphs(sub)


def _default_opset(model: ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise ValueError("the model imports no default-domain opset")


def attach_functions(model: ModelProto) -> None:
    """Add the local function of every prunevid op the model uses (once) and import the domain.

    Functions are built for the model's default-domain opset. A function already present under the
    same (domain, name) is kept. The model's ``prunevid`` opset import is set to
    :data:`~prunevid.plugins.ops.DOMAIN_VERSION`.
    """
    used: list[str] = []
    nodes = [n for g in _graphs(model.graph) for n in g.node]
    nodes += [n for f in model.functions for n in f.node]
    for node in nodes:
        if node.domain == DOMAIN and node.op_type not in used:
            if node.op_type not in OPS:
                raise ValueError(f"node {node.name!r} uses unknown prunevid op {node.op_type!r}")
            used.append(node.op_type)
    present = {(f.domain, f.name) for f in model.functions}
    if used:
        opset = _default_opset(model)
        for name in used:
            if (DOMAIN, name) not in present:
                model.functions.append(function_proto(name, opset))
    for imp in model.opset_import:
        if imp.domain == DOMAIN:
            imp.version = DOMAIN_VERSION
            break
    else:
        model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
