"""The one table of prunevid custom ops.

Every op is a node ``domain="prunevid"``, ``op_type=<name>`` carrying the attributes
``plugin_namespace="prunevid"`` and ``plugin_version="1"``, plus a local ONNX function of the same
name whose body uses standard ops only. Contracts v2 (TensorRT-ready): no BOOL/UINT8 tensor at an
op boundary (integers are int32) and no output whose size depends on values (padded + count);
inside the exported graphs the int64 tensors around a node are Cast to and from int32.
ONNX Runtime (and TensorRT without our plugin, or TensorRT
< 10.7) runs the body; TensorRT >= 10.7 with the plugin loaded takes the plugin (the node has a
``plugin_namespace`` attribute and the plugin is in the registry). Names are not standard op names,
since the TensorRT parser matches builtins first, by name only.

The torch wrappers (:mod:`prunevid.plugins.torch_ops`), the function bodies
(:mod:`prunevid.plugins.onnx_functions`), the TensorRT plugins and the one-node tests all read this
table; no other file spells an op name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DOMAIN = "prunevid"
PLUGIN_NAMESPACE = "prunevid"
PLUGIN_VERSION = "1"
DOMAIN_VERSION = 1


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: name, element type (numpy name) and symbolic shape."""

    name: str
    dtype: str
    shape: tuple[str | int, ...]
    doc: str = ""


@dataclass(frozen=True)
class OpSpec:
    """One custom op.

    Attributes:
        name: ONNX op type, function name and TensorRT plugin name.
        attributes: node attributes besides the plugin ones, name -> python type.
        inputs / outputs: the tensors, in order.
        atol / rtol: tolerance of each float output against the torch reference (integer outputs
            must match exactly).
        doc: the semantics, precisely enough to write a kernel from.
    """

    name: str
    attributes: dict[str, type]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    doc: str
    atol: dict[str, float] = field(default_factory=dict)
    rtol: dict[str, float] = field(default_factory=dict)

    @property
    def plugin_id(self) -> str:
        """The TensorRT plugin id ``namespace::name``."""
        return f"{PLUGIN_NAMESPACE}::{self.name}"

    def node_attributes(self, **values) -> dict:
        """Attributes for a node of this op: the declared ones plus the plugin routing ones."""
        missing = set(self.attributes) - set(values)
        if missing:
            raise ValueError(f"{self.name} needs attributes {sorted(missing)}")
        return {**values, "plugin_namespace": PLUGIN_NAMESPACE, "plugin_version": PLUGIN_VERSION}


DPC_KNN = OpSpec(
    name="PvDpcKnn",
    attributes={"k": int},
    inputs=(
        TensorSpec("x", "float32", ("B", "N", "C"), "token features of B independent groups"),
        TensorSpec("num_valid", "int32", ("B",), "group b's tokens are rows 0 .. num_valid[b]-1 (a prefix)"),
        TensorSpec("num_clusters", "int32", ("B",), "clusters wanted per group"),
    ),
    outputs=(
        TensorSpec("labels", "int32", ("B", "N"), "cluster id of each valid row, -1 for rows >= num_valid[b]"),
        TensorSpec("centers", "int32", ("B", "N"), "row index of centre j in slot j (descending score), -1 in slots >= num_clusters[b]"),
    ),
    doc=(
        "Batched, masked DPC-KNN (PruneVid's cluster_dpc_knn). For group b with n valid tokens and "
        "1 <= num_clusters[b] <= n, k <= n, over valid rows only: mu = mean of the valid rows (float32), "
        "y_i = x_i - mu; d2_ij = |y_i|^2 + |y_j|^2 - 2 y_i.y_j with y_i.y_j computed once per pair i < j "
        "and |y_i|^2 = y_i.y_i computed by the same dot product (so duplicated rows are exactly 0 apart) "
        "and mirrored (d exactly symmetric), d_ii = 0, d_ij = sqrt(max(d2_ij, 0)) / sqrt(C) with sqrt(C) "
        "computed in float32. Centring is the hardening against catastrophic cancellation on "
        "near-identical tokens (a still scene): the expansion's rounding error then scales with the "
        "group's spread, not with |x|^2 (the official torch.cdist is exact for <= 25 rows only). "
        "rho_i = exp(-mean of the k smallest d_ij^2, i itself "
        "included); delta_i = min d_ij over valid j with rho_j > rho_i, or the group's maximum distance "
        "when there is none; score = delta * rho; the num_clusters best scores are the centres, in "
        "descending order, exact ties to the lower index; every valid token takes the nearest centre "
        "(first centre on ties) and each centre its own slot. Groups outside those bounds give "
        "unspecified labels and centres (but never crash)."
    ),
    # integer outputs: every backend must agree exactly (up to float near-ties in the distances)
    atol={"labels": 0.0, "centers": 0.0},
    rtol={"labels": 0.0, "centers": 0.0},
)

GROUP_TOPK = OpSpec(
    name="PvGroupTopK",
    attributes={},
    inputs=(
        TensorSpec("scores", "float32", ("M",), "importance of each visual token"),
        TensorSpec("group_sizes", "int32", ("G",), "consecutive groups covering a prefix of the M tokens (zeros allowed)"),
        TensorSpec("keep_counts", "int32", ("G",), "tokens to keep in each group (<= its size)"),
    ),
    outputs=(
        TensorSpec("keep", "int32", ("M",), "kept indices ascending, then padded with the value M"),
        TensorSpec("count", "int32", (1,), "number of kept indices (= sum(keep_counts))"),
    ),
    doc=(
        "Grouped top-k: in each group keep the keep_counts[g] highest scores (exact ties to the lower "
        "index); keep holds all kept indices sorted ascending, then the value M in the remaining "
        "slots, and count their number. Tokens past the last group are never kept. PruneVid's stage D "
        "calls it with keep_counts = floor(alpha * group_sizes), computed exactly outside the op."
    ),
    atol={"keep": 0.0, "count": 0.0},
    rtol={"keep": 0.0, "count": 0.0},
)

OPS: dict[str, OpSpec] = {op.name: op for op in (DPC_KNN, GROUP_TOPK)}
