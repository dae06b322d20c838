"""The prunevid custom ops: torch kernels vs the unbatched reference, one-node ONNX graphs (function
bodies run by ONNX Runtime with no custom-op library) vs the kernels, and the TorchScript export."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from prunevid.plugins.kernels import dpc_knn_batched, group_topk
from prunevid.plugins.onnx_functions import (
    MAX_OPSET,
    MIN_OPSET,
    attach_functions,
    function_proto,
)
from prunevid.plugins.ops import (
    DOMAIN,
    DOMAIN_VERSION,
    OPS,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
)
from prunevid.plugins.torch_ops import dpc_knn_op, group_topk_op
from prunevid.pruning import dpc_knn, group_layout, keep_count, select_visual_tokens

ALPHA = 0.4
MODEL_OPSET = 18
ONNX_TYPES = {"float32": TensorProto.FLOAT, "int32": TensorProto.INT32, "int64": TensorProto.INT64}
ATTRS = {"PvDpcKnn": {"k": 3}, "PvGroupTopK": {}}


# ---------------------------------------------------------------- inputs


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pad(x: torch.Tensor, ns: list[int], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefix-valid mask for the group sizes ``ns``; invalid rows replaced by large random garbage."""
    bsz, n_max, c = x.shape
    valid = torch.arange(n_max)[None, :] < torch.tensor(ns)[:, None]
    garbage = 50 * torch.randn(bsz, n_max, c, generator=gen)
    return torch.where(valid[..., None], x, garbage), valid


def _random_groups(seed: int, ns: list[int], c: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = _gen(seed)
    x = torch.randn(len(ns), max(ns), c, generator=gen)
    x = x + 3 * torch.randn(len(ns), max(ns), 1, generator=gen).round()  # some spread-out modes
    return _pad(x, ns, gen)


def _blob_groups(seed: int, ns: list[int], c: int, blobs: int = 4) -> tuple[torch.Tensor, ...]:
    """Well separated Gaussian blobs; also returns the blob of each token."""
    gen = _gen(seed)
    centres = 3 * torch.randn(blobs, c, generator=gen)
    member = torch.randint(0, blobs, (len(ns), max(ns)), generator=gen)
    x = centres[member] + 0.2 * torch.randn(len(ns), max(ns), c, generator=gen)
    return (*_pad(x, ns, gen), member)


def _counts(valid: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` prefix mask -> ``[B]`` int32 ``num_valid`` (the op's input)."""
    return valid.sum(dim=1).int()


def _dpc_inputs(seed: int, bsz: int, n_max: int, c: int) -> tuple[torch.Tensor, ...]:
    """Random groups with degenerate ones mixed in: empty, single token, zero or too many clusters."""
    gen = _gen(seed)
    ns = [n_max, 0, 1, *torch.randint(2, n_max + 1, (bsz - 3,), generator=gen).tolist()][:bsz]
    x, valid = _random_groups(seed, ns, c)
    ncl = torch.tensor([3, 2, 1, 0, n_max + 5, *[max(1, n // 3) for n in ns[5:]]][:bsz], dtype=torch.int32)
    return x, _counts(valid), ncl


def _check_against_reference(x, num_valid, ncl, k, labels, centers) -> int:
    """Compare every in-bounds group with :func:`dpc_knn`; returns how many were compared."""
    compared = 0
    for b in range(x.shape[0]):
        n, c = int(num_valid[b]), int(ncl[b])
        if not (1 <= c <= n and 1 <= k <= n):
            continue
        ref = dpc_knn(x[b, :n], c, k)
        assert labels[b, :n].tolist() == ref.labels.tolist(), f"group {b} labels"
        assert centers[b, :c].tolist() == ref.centers.tolist(), f"group {b} centres"
        assert (labels[b, n:] == -1).all() and (centers[b, c:] == -1).all(), f"group {b} padding"
        compared += 1
    return compared


# ---------------------------------------------------------------- kernels vs reference


@pytest.mark.parametrize("seed", range(6))
def test_dpc_knn_batched_matches_reference_on_random_groups(seed):
    ns = [40, 33, 26, 17, 9, 7]
    x, valid = _random_groups(seed, ns, c=12)
    ncl = torch.tensor([6, 1, 26, 5, 3, 7], dtype=torch.int32)
    labels, centers = dpc_knn_batched(x, _counts(valid), ncl, 5)
    assert labels.dtype == centers.dtype == torch.int32
    assert _check_against_reference(x, _counts(valid), ncl, 5, labels, centers) == len(ns)


@pytest.mark.parametrize("k", [1, 2, 3, 7])
def test_dpc_knn_batched_matches_reference_for_small_k(k):
    # groups of <= 25 tokens: there torch.cdist (the reference) computes d_ii = 0 exactly
    for seed in range(4):
        ns = [25, 18, 11, 7]
        x, valid = _random_groups(100 + seed, ns, c=8)
        ncl = torch.tensor([5, 18, 4, 7], dtype=torch.int32)
        labels, centers = dpc_knn_batched(x, _counts(valid), ncl, k)
        assert _check_against_reference(x, _counts(valid), ncl, k, labels, centers) == len(ns)


@pytest.mark.parametrize("seed", range(4))
def test_dpc_knn_batched_matches_reference_on_blobs(seed):
    ns = [48, 40, 20, 15]
    x, valid, member = _blob_groups(seed, ns, c=16)
    ncl = torch.tensor([8, 4, 5, 3], dtype=torch.int32)
    labels, centers = dpc_knn_batched(x, _counts(valid), ncl, 5)
    assert _check_against_reference(x, _counts(valid), ncl, 5, labels, centers) == len(ns)
    # group 1 holds all four blobs and asks for four clusters: each cluster is one whole blob
    assert len(set(member[1, :40].tolist())) == 4
    pairs = set(zip(labels[1, :40].tolist(), member[1, :40].tolist()))
    assert len(pairs) == 4 and len({lab for lab, _ in pairs}) == 4


def test_dpc_knn_batched_degenerate_groups_do_not_raise():
    x, num_valid, ncl = _dpc_inputs(7, bsz=6, n_max=20, c=4)  # n = 20, 0, 1, ...; ncl = 3, 2, 1, 0, 25
    valid = torch.arange(20)[None, :] < num_valid[:, None]
    for k in (0, 1, 5, 19, 20, 21, 100):
        labels, centers = dpc_knn_batched(x, num_valid, ncl, k)
        assert labels.shape == centers.shape == valid.shape
        assert (labels[~valid] == -1).all()
        assert (centers[1] == -1).all() and (labels[1] == -1).all()  # empty group
        assert (centers[3] == -1).all()  # no cluster wanted
        slots = torch.arange(valid.shape[1])[None, :]
        assert ((centers >= 0) == (slots < torch.minimum(num_valid, ncl)[:, None])).all()
        if 1 <= k <= 20:
            assert _check_against_reference(x, num_valid, ncl, k, labels, centers) >= 1
    for shape in [(0, 5, 3), (3, 0, 3), (2, 4, 0)]:
        x0 = torch.randn(shape)
        full = torch.full(shape[:1], shape[1], dtype=torch.int32)
        labels, centers = dpc_knn_batched(x0, full, torch.ones(shape[0], dtype=torch.int32), 3)
        assert labels.shape == centers.shape == shape[:2]


def _random_layout(gen: torch.Generator) -> tuple[list[int], list[int], list[int]]:
    segments = int(torch.randint(1, 4, (1,), generator=gen))
    static, dynamic, windows = [], [], []
    for _ in range(segments):
        w = int(torch.randint(1, 5, (1,), generator=gen))
        static.append(int(torch.randint(0, 13, (1,), generator=gen)))
        dynamic.append(w * int(torch.randint(0, 9, (1,), generator=gen)))
        windows.append(w)
    return static, dynamic, windows


@pytest.mark.parametrize("seed", range(20))
def test_group_topk_matches_select_visual_tokens(seed):
    gen = _gen(seed)
    static, dynamic, windows = _random_layout(gen)
    groups = group_layout(static, dynamic, windows)
    m = sum(groups)
    if seed % 2:  # exact ties
        scores = torch.randint(0, 3, (m,), generator=gen).float()
    else:
        scores = torch.rand(m, generator=gen)
    sizes = torch.tensor(groups, dtype=torch.int32)
    counts = torch.tensor([keep_count(ALPHA, n) for n in groups], dtype=torch.int32)
    keep, count = group_topk(scores, sizes, counts)
    expected = select_visual_tokens(scores, static, dynamic, windows, ALPHA)
    assert keep.dtype == count.dtype == torch.int32 and keep.shape == (m,) and count.shape == (1,)
    assert int(count) == len(expected) == sum(keep_count(ALPHA, n) for n in groups)
    assert keep[: int(count)].tolist() == expected.tolist()
    assert (keep[int(count) :] == m).all()  # padded with M


def test_group_topk_ties_go_to_the_lower_index_and_zero_groups_are_fine():
    scores = torch.tensor([1.0, 2.0, 2.0, 2.0, 0.0, 5.0, 5.0])
    keep, count = group_topk(scores, torch.tensor([0, 4, 0, 3]), torch.tensor([0, 2, 0, 1]))
    assert keep.tolist() == [1, 2, 5, 7, 7, 7, 7] and count.tolist() == [3]
    none = torch.zeros(0, dtype=torch.int32)
    keep, count = group_topk(torch.zeros(0), none, none)
    assert keep.shape == (0,) and count.tolist() == [0]
    # tokens past the groups are never kept; counts above the size keep the whole group
    keep, count = group_topk(scores, torch.tensor([3]), torch.tensor([9]))
    assert keep.tolist() == [0, 1, 2, 7, 7, 7, 7] and count.tolist() == [3]


# ---------------------------------------------------------------- one-node ONNX graphs


def _value_infos(specs):
    return [helper.make_tensor_value_info(t.name, ONNX_TYPES[t.dtype], list(t.shape)) for t in specs]


def _one_node_model(op_name: str, opset: int = MODEL_OPSET, attrs=None) -> onnx.ModelProto:
    spec = OPS[op_name]
    node = helper.make_node(
        spec.name,
        [t.name for t in spec.inputs],
        [t.name for t in spec.outputs],
        domain=DOMAIN,
        **spec.node_attributes(**(ATTRS[op_name] if attrs is None else attrs)),
    )
    graph = helper.make_graph(
        [node], f"one_{op_name}", _value_infos(spec.inputs), _value_infos(spec.outputs)
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    attach_functions(model)
    return model


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _group_topk_inputs(seed: int, groups: list[int], ties: bool):
    gen = _gen(seed)
    m = sum(groups)
    scores = torch.randint(0, 4, (m,), generator=gen).float() if ties else torch.randn(m, generator=gen)
    sizes = torch.tensor(groups, dtype=torch.int32)
    return scores, sizes, torch.tensor([keep_count(ALPHA, n) for n in groups], dtype=torch.int32)


ONE_NODE_CASES = {
    # two different shapes per op; degenerate groups included (same algorithm, so same output)
    "PvDpcKnn": [_dpc_inputs(1, bsz=6, n_max=30, c=16), _dpc_inputs(2, bsz=9, n_max=17, c=5)],
    "PvGroupTopK": [
        _group_topk_inputs(3, [10, 0, 25, 5, 5, 5], ties=True),
        _group_topk_inputs(4, [7, 40, 0, 3], ties=False),
    ],
}


def _kernel(op_name: str, inputs):
    if op_name == "PvDpcKnn":
        return dpc_knn_batched(*inputs, ATTRS[op_name]["k"])
    return group_topk(*inputs)


@pytest.mark.parametrize("opset", range(MIN_OPSET, MAX_OPSET + 1))
@pytest.mark.parametrize("op_name", sorted(OPS))
def test_one_node_model_checks_and_runs_in_onnxruntime(op_name, opset):
    model = _one_node_model(op_name, opset)
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    spec = OPS[op_name]
    for out, t in zip(inferred.graph.output, spec.outputs):
        assert out.type.tensor_type.elem_type == ONNX_TYPES[t.dtype]
    session = _session(model)
    cases = ONE_NODE_CASES[op_name]
    assert len({tuple(tuple(t.shape) for t in case) for case in cases}) == len(cases)
    for inputs in cases:
        feeds = {t.name: v.numpy() for t, v in zip(spec.inputs, inputs)}
        got = session.run(None, feeds)
        for t, g, want in zip(spec.outputs, got, _kernel(op_name, inputs)):
            assert g.dtype == np.dtype(t.dtype)
            np.testing.assert_array_equal(g, want.numpy(), err_msg=f"{op_name}.{t.name}")


@pytest.mark.parametrize("k", [1, 3, 12, 40])
def test_dpc_body_on_padded_groups_equals_the_kernel(k):
    """Every group far shorter than the padded N = 40 rows (garbage past each prefix), and k below,
    at and above the longest group's length: the body's outputs equal the kernel's, -1 padded, and
    the body computes no size from input values (no Slice or Pad: TensorRT takes the same body)."""
    gen = _gen(11)
    ns = [9, 0, 1, 12, 5, 12]  # longest 12 of N = 40 rows
    x, valid = _random_groups(11, ns, 6)
    x = torch.cat([x, 50 * torch.randn(len(ns), 40 - x.shape[1], 6, generator=gen)], dim=1)  # [B, 40, C] garbage
    ncl = torch.tensor([3, 2, 1, 4, 2, 12], dtype=torch.int32)
    inputs = (x, torch.tensor(ns, dtype=torch.int32), ncl)
    feeds = {t.name: v.numpy() for t, v in zip(OPS["PvDpcKnn"].inputs, inputs)}
    got = _session(_one_node_model("PvDpcKnn", attrs={"k": k})).run(None, feeds)
    labels, centers = dpc_knn_batched(*inputs, k)
    for out, want in zip(got, (labels, centers)):
        assert out.shape == (len(ns), 40)
        np.testing.assert_array_equal(out, want.numpy())
    assert (got[0][:, 12:] == -1).all() and (got[1][:, 12:] == -1).all()
    nodes = [n.op_type for f in _one_node_model("PvDpcKnn").functions for n in f.node]
    assert "Slice" not in nodes and "Pad" not in nodes


@pytest.mark.parametrize("op_name", sorted(OPS))
def test_node_carries_plugin_attributes_and_a_non_standard_name(op_name):
    model = _one_node_model(op_name)
    (node,) = model.graph.node
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["plugin_namespace"] == PLUGIN_NAMESPACE.encode() == b"prunevid"
    assert attrs["plugin_version"] == PLUGIN_VERSION.encode() == b"1"
    standard = {s.name for s in onnx.defs.get_all_schemas_with_history()}
    assert node.op_type not in standard
    assert {(f.domain, f.name) for f in model.functions} == {(DOMAIN, op_name)}
    assert any(i.domain == DOMAIN and i.version == DOMAIN_VERSION for i in model.opset_import)


@pytest.mark.parametrize("opset", range(MIN_OPSET, MAX_OPSET + 1))
@pytest.mark.parametrize("op_name", sorted(OPS))
def test_function_bodies_are_standard_ops_without_double(op_name, opset):
    fn = function_proto(op_name, opset)
    spec = OPS[op_name]
    assert (fn.domain, fn.name) == (DOMAIN, op_name)
    assert list(fn.input) == [t.name for t in spec.inputs]
    assert list(fn.output) == [t.name for t in spec.outputs]
    assert set(fn.attribute) == {*spec.attributes, "plugin_namespace", "plugin_version"}
    assert [(o.domain, o.version) for o in fn.opset_import] == [("", opset)]
    forbidden = {"Loop", "Scan", "If"}
    for node in fn.node:
        assert node.domain in ("", "ai.onnx"), node
        assert node.op_type not in forbidden and "Sequence" not in node.op_type
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                assert attr.t.data_type != TensorProto.DOUBLE
            if node.op_type == "Cast" and attr.name == "to":
                assert attr.i != TensorProto.DOUBLE
    # k is read from the calling node
    refs = [a.ref_attr_name for n in fn.node for a in n.attribute if a.ref_attr_name]
    assert sorted(refs) == sorted(spec.attributes)
    # every intermediate tensor, once inlined and inferred, is non-DOUBLE
    inlined = onnx.inliner.inline_local_functions(_one_node_model(op_name, opset))
    assert all(n.domain in ("", "ai.onnx") for n in inlined.graph.node)
    inferred = onnx.shape_inference.infer_shapes(inlined, check_type=True, strict_mode=True)
    types = [v.type.tensor_type.elem_type for v in inferred.graph.value_info]
    assert types and TensorProto.DOUBLE not in types


def test_attach_functions_is_idempotent_and_sees_nested_graphs():
    spec = OPS["PvGroupTopK"]
    inner = helper.make_node(
        spec.name, [t.name for t in spec.inputs], ["keep_then", "count_then"], domain=DOMAIN,
        **spec.node_attributes()
    )
    then_graph = helper.make_graph(
        [inner], "then", [], [helper.make_tensor_value_info("keep_then", TensorProto.INT32, ["K"])]
    )
    else_graph = helper.make_graph(
        [helper.make_node("Identity", ["group_sizes"], ["keep_else"])],
        "else", [], [helper.make_tensor_value_info("keep_else", TensorProto.INT32, ["G"])],
    )
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    node = helper.make_node("If", ["cond"], ["keep"], then_branch=then_graph, else_branch=else_graph)
    out = helper.make_tensor_value_info("keep", TensorProto.INT32, ["K"])
    graph = helper.make_graph([node], "nested", [cond, *_value_infos(spec.inputs)], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", MODEL_OPSET)], ir_version=10)
    attach_functions(model)
    attach_functions(model)
    assert [(f.domain, f.name) for f in model.functions] == [(DOMAIN, spec.name)]
    assert [i.domain for i in model.opset_import].count(DOMAIN) == 1
    onnx.checker.check_model(model, full_check=True)
    scores, sizes, counts = _group_topk_inputs(5, [6, 0, 9], ties=True)
    feeds = {"scores": scores.numpy(), "group_sizes": sizes.numpy(), "keep_counts": counts.numpy()}
    (keep,) = _session(model).run(None, {"cond": np.array(True), **feeds})
    np.testing.assert_array_equal(keep, group_topk(scores, sizes, counts)[0].numpy())


# ---------------------------------------------------------------- TorchScript export


class _BothOps(torch.nn.Module):
    def forward(self, x, num_valid, num_clusters, scores, group_sizes, keep_counts):
        labels, centers = dpc_knn_op(x, num_valid, num_clusters, 4)
        keep, count = group_topk_op(scores, group_sizes, keep_counts)
        return labels, centers, keep, count


def test_torch_ops_export_and_match_eager_in_onnxruntime():
    names = ["x", "num_valid", "num_clusters", "scores", "group_sizes", "keep_counts"]
    dims = {"x": {0: "B", 1: "N"}, "num_valid": {0: "B"}, "num_clusters": {0: "B"},
            "scores": {0: "M"}, "group_sizes": {0: "G"}, "keep_counts": {0: "G"}}
    cases = [
        (*_dpc_inputs(11, bsz=5, n_max=24, c=8), *_group_topk_inputs(12, [8, 0, 12, 4], ties=True)),
        (*_dpc_inputs(13, bsz=7, n_max=13, c=8), *_group_topk_inputs(14, [30, 5, 0], ties=False)),
    ]
    module = _BothOps()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            cases[0],
            buf,
            dynamo=False,
            opset_version=MODEL_OPSET,
            custom_opsets={DOMAIN: DOMAIN_VERSION},
            input_names=names,
            output_names=["labels", "centers", "keep", "count"],
            dynamic_axes=dims,
        )
    model = onnx.load_from_string(buf.getvalue())
    custom = [n for n in model.graph.node if n.domain == DOMAIN]
    assert sorted(n.op_type for n in custom) == sorted(OPS)
    dpc = next(n for n in custom if n.op_type == "PvDpcKnn")
    assert {a.name: helper.get_attribute_value(a) for a in dpc.attribute} == {
        "k": 4, "plugin_namespace": b"prunevid", "plugin_version": b"1"
    }
    # contracts v2: int32 at the node boundary, int64 in the graph around it (Casts)
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input]}
    for node in custom:
        for name in [*node.input[1:], *node.output]:
            assert types[name] == TensorProto.INT32, (node.op_type, name)
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.INT64] * 4
    attach_functions(model)
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    session = _session(model)
    for inputs in cases:
        got = session.run(None, {n: v.numpy() for n, v in zip(names, inputs)})
        for g, want in zip(got, module(*inputs)):
            np.testing.assert_array_equal(g, want.numpy())


class _HalfInputs(torch.nn.Module):
    """Feeds the ops float16 features/scores and int32 counts, as a float16 export would."""

    def forward(self, x, num_valid, num_clusters, scores, group_sizes, keep_counts):
        labels, centers = dpc_knn_op(x.half(), num_valid.long(), num_clusters.long(), 4)
        keep, count = group_topk_op(scores.half(), group_sizes.long(), keep_counts)
        return labels, centers, keep, count


def test_inputs_of_another_type_are_cast_to_the_table_types():
    names = ["x", "num_valid", "num_clusters", "scores", "group_sizes", "keep_counts"]
    inputs = (*_dpc_inputs(21, bsz=5, n_max=16, c=8), *_group_topk_inputs(22, [8, 0, 12, 4], ties=False))
    module = _HalfInputs()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            inputs,
            buf,
            dynamo=False,
            opset_version=MODEL_OPSET,
            custom_opsets={DOMAIN: DOMAIN_VERSION},
            input_names=names,
        )
    model = onnx.load_from_string(buf.getvalue())
    attach_functions(model)
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    got = _session(model).run(None, {n: v.numpy() for n, v in zip(names, inputs)})
    for g, want in zip(got, module(*inputs)):
        np.testing.assert_array_equal(g, want.numpy())


@pytest.mark.parametrize("name", sorted(OPS))
def test_table_declares_a_tolerance_for_every_output(name):
    spec = OPS[name]
    outputs = {t.name for t in spec.outputs}
    assert set(spec.atol) == set(spec.rtol) == outputs
    # integer outputs are compared exactly
    assert all(spec.atol[t.name] == spec.rtol[t.name] == 0.0 for t in spec.outputs if t.dtype == "int32")


@pytest.mark.parametrize("name", sorted(OPS))
def test_contracts_v2_no_bool_and_no_value_dependent_output_size(name):
    spec = OPS[name]
    assert all(t.dtype in ("float32", "int32") for t in (*spec.inputs, *spec.outputs))
    input_dims = {d for t in spec.inputs for d in t.shape}
    assert all(d in input_dims or isinstance(d, int) for t in spec.outputs for d in t.shape)
