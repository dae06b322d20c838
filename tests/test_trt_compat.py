"""The static TensorRT-compatibility check on small hand-built ONNX models (no TensorRT needed)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from prunevid.plugins.ops import OPS
from prunevid.trt.compat import (
    SOURCES,
    TARGETS,
    Finding,
    check_model,
    errors,
    format_findings,
)

BOTH = ("10.3", "11")


def make_model(nodes, inputs, outputs, inits=(), opset=17, functions=(), extra_opsets=()):
    graph = helper.make_graph(nodes, "main", inputs, outputs, list(inits))
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), *extra_opsets],
        functions=list(functions),
    )

    return model


def vi(name, elem=T.FLOAT, shape=None):
    return helper.make_tensor_value_info(name, elem, shape)


def whats(findings, severity=None):
    return {(f.what, f.op_type) for f in findings if severity is None or f.severity == severity}


def supported_model(opset=17):
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    k = numpy_helper.from_array(np.array([5], np.int64), "k")
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("ReduceMean", ["r"], ["m"], axes=[1], keepdims=0, name="mean"),
        helper.make_node("Reshape", ["m", "shape"], ["flat"], name="reshape"),
        helper.make_node("TopK", ["flat", "k"], ["vals", "idx"], name="topk"),
        helper.make_node("Softmax", ["vals"], ["probs"], axis=-1, name="softmax"),
    ]
    return make_model(
        nodes,
        [vi("x", T.FLOAT, [1, 3, 8, 8])],
        [vi("probs"), vi("idx", T.INT64)],
        [w, k, shape],
        opset=opset,
    )


def test_targets_record_their_sources():
    assert set(TARGETS) == {"10.3", "11"}
    assert TARGETS["10.3"].max_opset == 20 and TARGETS["11"].max_opset == 25
    for t in TARGETS.values():
        assert t.sources and all(s in SOURCES for s in t.sources)
        assert t.undetermined  # what could not be settled is written down
        assert t.ops["TopK"].rules["topk_k_max"] == 3840
    for src in SOURCES.values():
        assert {"repository", "file", "version"} <= set(src)


@pytest.mark.parametrize("target", BOTH)
def test_supported_graph_has_no_errors(target):
    found = check_model(supported_model(), target)
    assert errors(found) == [], format_findings(found)


def test_unknown_target():
    with pytest.raises(KeyError):
        check_model(supported_model(), "9.0")


@pytest.mark.parametrize("target", BOTH)
def test_double_tensor(target):
    model = make_model(
        [helper.make_node("Cast", ["x"], ["d"], to=T.DOUBLE), helper.make_node("Add", ["d", "d"], ["z"])],
        [vi("x", T.FLOAT, [2, 3])],
        [vi("z", T.DOUBLE)],
    )
    found = check_model(model, target)
    dtype_errors = [f for f in found if f.what == "dtype" and f.severity == "error"]
    assert {("d" in f.detail or "z" in f.detail) for f in dtype_errors} == {True}
    assert ("op-dtype", "Add") in whats(found, "error")


def test_double_weights_are_only_a_warning():
    w = numpy_helper.from_array(np.ones((2, 3), np.float64), "w")
    model = make_model(
        [helper.make_node("Add", ["x", "w"], ["z"])],
        [vi("x", T.DOUBLE, [2, 3])],
        [vi("z", T.DOUBLE)],
        [w],
    )
    found = check_model(model, "11")
    warned = [f for f in found if f.what == "dtype" and f.severity == "warning"]
    assert {f.detail.split("'")[1] for f in warned} == {"x", "w"}
    # the Add output is still a DOUBLE activation
    assert any(f.what == "dtype" and "'z'" in f.detail and f.severity == "error" for f in found)


@pytest.mark.parametrize("target", BOTH)
@pytest.mark.parametrize("how", ["initializer", "constant"])
def test_topk_k_above_3840(target, how):
    nodes = [helper.make_node("TopK", ["x", "k"], ["v", "i"], name="big_topk")]
    inits = []
    if how == "initializer":
        inits = [numpy_helper.from_array(np.array([4000], np.int64), "k")]
    else:
        k = numpy_helper.from_array(np.array([4000], np.int64))
        nodes.insert(0, helper.make_node("Constant", [], ["k"], value=k))
    model = make_model(nodes, [vi("x", T.FLOAT, [1, 9216])], [vi("v"), vi("i", T.INT64)], inits)
    found = check_model(model, target)
    topk = [f for f in found if f.what == "topk-k"]
    assert len(topk) == 1 and topk[0].severity == "error" and topk[0].node == "big_topk"
    assert "4000" in topk[0].detail and "3840" in topk[0].detail


def test_topk_small_or_bounded_k_is_fine_and_dynamic_k_warns():
    ok = make_model(
        [helper.make_node("TopK", ["x", "k"], ["v", "i"])],
        [vi("x", T.FLOAT, [1, 9216])],
        [vi("v"), vi("i", T.INT64)],
        [numpy_helper.from_array(np.array([3840], np.int64), "k")],
    )
    assert [f for f in check_model(ok, "11") if f.what == "topk-k"] == []
    dynamic = make_model(
        [helper.make_node("TopK", ["x", "k"], ["v", "i"])],
        [vi("x", T.FLOAT, [1, 9216]), vi("k", T.INT64, [1])],
        [vi("v"), vi("i", T.INT64)],
    )
    (warn,) = [f for f in check_model(dynamic, "11") if f.what == "topk-k"]
    assert warn.severity == "warning"
    bounded = make_model(
        [helper.make_node("TopK", ["x", "k"], ["v", "i"])],
        [vi("x", T.FLOAT, [1, 576]), vi("k", T.INT64, [1])],
        [vi("v"), vi("i", T.INT64)],
    )
    assert [f for f in check_model(bounded, "11") if f.what == "topk-k"] == []


def test_opset_above_10_3_maximum():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", T.FLOAT, [2])], [vi("y")], opset=21)
    on_10_3 = check_model(model, "10.3")
    assert [(f.what, f.severity) for f in on_10_3] == [("opset", "error")]
    assert "21" in on_10_3[0].detail and "20" in on_10_3[0].detail
    assert check_model(model, "11") == []


def test_op_added_after_10_3():
    # HannWindow: in the 10.15 operators.md, added in 10.4 per the parser changelog; opset 17.
    size = numpy_helper.from_array(np.array(16, np.int64), "size")
    model = make_model([helper.make_node("HannWindow", ["size"], ["w"], name="hann")], [], [vi("w")], [size])
    on_10_3 = check_model(model, "10.3")
    assert ("unsupported-op", "HannWindow") in whats(on_10_3, "error")
    assert "10.4" in [f for f in on_10_3 if f.what == "unsupported-op"][0].detail
    assert errors(check_model(model, "11")) == []


def test_rmsnormalization_only_on_11():
    scale = numpy_helper.from_array(np.ones(8, np.float32), "scale")
    model = make_model(
        [helper.make_node("RMSNormalization", ["x", "scale"], ["y"])],
        [vi("x", T.FLOAT, [1, 4, 8])],
        [vi("y")],
        [scale],
        opset=23,
    )
    on_10_3 = whats(check_model(model, "10.3"), "error")
    assert ("unsupported-op", "RMSNormalization") in on_10_3 and ("opset", "") in on_10_3
    assert errors(check_model(model, "11")) == []


def test_resize_cubic_and_unknown_op():
    roi = numpy_helper.from_array(np.array([], np.float32), "roi")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    model = make_model(
        [
            helper.make_node("Resize", ["x", "roi", "scales"], ["y"], mode="cubic"),
            helper.make_node("Unique", ["y"], ["u"]),
        ],
        [vi("x", T.FLOAT, [1, 3, 4, 4])],
        [vi("u")],
        [roi, scales],
    )
    for target in BOTH:
        found = check_model(model, target)
        assert ("attribute", "Resize") in whats(found, "error")
        assert ("unsupported-op", "Unique") in whats(found, "error")


def test_subgraph_nodes_are_checked():
    then_g = helper.make_graph([helper.make_node("HannWindow", ["n"], ["t"])], "then", [], [vi("t")])
    else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [], [vi("e")])
    model = make_model(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g, name="branch")],
        [vi("c", T.BOOL, []), vi("x", T.FLOAT, [16]), vi("n", T.INT64, [])],
        [vi("y")],
    )
    (f,) = [f for f in check_model(model, "10.3") if f.what == "unsupported-op"]
    assert f.scope == "main/branch.then_branch" and f.op_type == "HannWindow"


_ONNX = {"float32": T.FLOAT, "int32": T.INT32, "int64": T.INT64, "bool": T.BOOL}


def table_node(op: str, prefix: str = "", name: str = "", dims: dict | None = None, **attrs):
    """A prunevid node as the op table declares it: (node, input value infos, output value infos)."""
    spec = OPS[op]
    dims = dims or {"B": 2, "N": 16, "C": 8, "M": 12, "G": 3}
    ins = [vi(prefix + t.name, _ONNX[t.dtype], [dims.get(d, d) for d in t.shape]) for t in spec.inputs]
    outs = [vi(prefix + t.name, _ONNX[t.dtype]) for t in spec.outputs]
    node = helper.make_node(op, [v.name for v in ins], [v.name for v in outs], domain="prunevid", name=name,
                            **spec.node_attributes(**attrs))
    return node, ins, outs


def _require_plugin_ready_table():
    if any(t.dtype == "bool" for op in OPS.values() for t in op.inputs):
        pytest.skip("the op table still has a BOOL input (before contract v2): its nodes cannot be plugins")


def _custom_model(body_op: str):
    """A prunevid::PvGroupTopK node whose local function body uses ``body_op``."""
    spec = OPS["PvGroupTopK"]
    body = [helper.make_node(body_op, ["n"], ["window"])] if body_op == "HannWindow" else [
        helper.make_node(body_op, ["scores"], ["window"])
    ]
    body += [helper.make_node("Shape", ["scores"], ["m"])]
    body += [helper.make_node("Identity", ["m"], [t.name]) for t in spec.outputs]
    func = helper.make_function(
        "prunevid", "PvGroupTopK", [t.name for t in spec.inputs], [t.name for t in spec.outputs],
        [helper.make_node("Constant", [], ["n"], value=numpy_helper.from_array(np.array(8, np.int64)))] + body,
        [helper.make_opsetid("", 17)],
    )
    node, ins, outs = table_node("PvGroupTopK", prefix="g_", name="select")
    return make_model([node], ins, outs, functions=[func], extra_opsets=[helper.make_opsetid("prunevid", 1)])


def test_custom_node_with_function_body():
    model = _custom_model("HannWindow")
    on_10_3 = check_model(model, "10.3")
    (inlined,) = [f for f in on_10_3 if f.what == "inlined"]
    assert inlined.op_type == "prunevid::PvGroupTopK" and inlined.node == "select"
    assert "body will be inlined (plugin ignored before TensorRT 10.7)" in inlined.detail
    (body_error,) = errors(on_10_3)
    assert body_error.scope == "function prunevid::PvGroupTopK"
    assert body_error.op_type == "HannWindow" and "inside function prunevid::PvGroupTopK" in body_error.detail

    on_11 = check_model(model, "11")
    assert errors(on_11) == []
    (plugin,) = [f for f in on_11 if f.what == "plugin"]
    assert plugin.severity == "info" and "needs plugin prunevid::PvGroupTopK" in plugin.detail
    assert not [f for f in on_11 if f.what == "inlined"]


def test_function_body_error_weight_depends_on_plugins():
    model = _custom_model("Unique")  # unsupported everywhere
    assert [f.op_type for f in errors(check_model(model, "11"))] == ["Unique"]
    with_plugin = [f for f in check_model(model, "11", plugins=["PvGroupTopK"]) if f.op_type == "Unique"]
    assert [f.severity for f in with_plugin] == ["info"]
    stripped_later = [f for f in check_model(model, "10.3", plugins=["prunevid::PvGroupTopK"]) if f.op_type == "Unique"]
    assert [f.severity for f in stripped_later] == ["warning"]


def test_custom_node_without_function_or_namespace():
    _require_plugin_ready_table()
    node, ins, outs = table_node("PvDpcKnn", k=3)
    del node.attribute[1:]  # keep k, drop plugin_namespace / plugin_version
    model = make_model([node], ins, outs, extra_opsets=[helper.make_opsetid("prunevid", 1)])
    on_10_3 = check_model(model, "10.3")
    assert ("plugin", "prunevid::PvDpcKnn") in whats(on_10_3, "error")  # empty namespace before 10.10
    on_11 = check_model(model, "11")
    assert errors(on_11) == []
    assert any(f.what == "plugin" and f.severity == "warning" and "plugin_namespace" in f.detail for f in on_11)
    assert any(f.what == "plugin" and f.severity == "info" and "prunevid::PvDpcKnn" in f.detail for f in on_11)


def test_real_function_bodies_parse_on_both_targets():
    """The bodies prunevid attaches (onnx_functions) use only ops both targets import, and nodes
    built from the op table pass the plugin checks."""
    onnx_functions = pytest.importorskip("prunevid.plugins.onnx_functions")
    funcs = [onnx_functions.function_proto(name, 17) for name in ("PvDpcKnn", "PvGroupTopK")]
    dpc, dpc_in, dpc_out = table_node("PvDpcKnn", prefix="d_", k=3)
    topk, topk_in, topk_out = table_node("PvGroupTopK", prefix="t_")
    model = make_model([dpc, topk], dpc_in + topk_in, dpc_out + topk_out, functions=funcs,
                       extra_opsets=[helper.make_opsetid("prunevid", 1)])
    _require_plugin_ready_table()
    for target in BOTH:
        found = check_model(model, target)
        assert errors(found) == [], format_findings(found)


def test_plugin_boundary_and_op_table_errors():
    vis = [vi("x", T.FLOAT, [2, 16, 8]), vi("mask", T.BOOL, [2, 16]), vi("nc", T.UINT8, [2])]
    bad = helper.make_node("PvDpcKnn", ["x", "mask", "nc"], ["labels"], domain="prunevid", name="dpc",
                           k=2.5, extra=1, plugin_namespace="prunevid", plugin_version="1")
    other = helper.make_node("MyOp", ["mask"], ["y"], domain="acme", name="acme", plugin_namespace="acme")
    model = make_model([bad, other], vis, [vi("labels", T.INT64), vi("y", T.FLOAT)],
                       extra_opsets=[helper.make_opsetid("prunevid", 1), helper.make_opsetid("acme", 1)])
    for target in BOTH:
        found = errors(check_model(model, target))
        text = format_findings(found)
        dtype = [f for f in found if f.what == "plugin-dtype"]
        assert {(f.node, f.detail.split("'")[1]) for f in dtype} == {("dpc", "mask"), ("dpc", "nc"), ("acme", "mask")}
        (outputs,) = [f for f in found if f.what == "plugin-outputs"]
        assert f"gives {len(OPS['PvDpcKnn'].outputs)}" in outputs.detail and "1 outputs" in outputs.detail
        table = [f.detail for f in found if f.what == "op-table"]
        assert any("attribute k is FLOAT" in d for d in table), text
        assert any("attribute extra is not in the op table" in d for d in table), text
        assert any("input 'nc' (num_clusters) is UINT8" in d for d in table), text


def test_graph_inputs_that_become_shape_tensors():
    nodes = [
        helper.make_node("Cast", ["n"], ["n64"], to=T.INT64, name="cast"),
        helper.make_node("Add", ["n64", "one"], ["n1"], name="add"),
        helper.make_node("Range", ["zero", "n1", "one"], ["pos"], name="range"),
        helper.make_node("Shape", ["x"], ["xs"], name="shape"),  # shape-only: not a value dependency
        helper.make_node("Reshape", ["x", "xs"], ["x2"], name="reshape"),
        helper.make_node("Gather", ["x2", "pos"], ["g"], axis=0, name="gather"),  # indices, not a shape
    ]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array(1, np.int64), "one")]
    model = make_model(nodes, [vi("x", T.FLOAT, ["s", 4]), vi("n", T.INT32, [])], [vi("g")], inits)
    for target in BOTH:
        found = check_model(model, target)
        (shape,) = [f for f in found if f.what == "shape-tensor"]
        assert shape.severity == "error" and shape.node == "range" and "'n'" in shape.detail
        given = [f for f in check_model(model, target, shape_values=["n"]) if f.what == "shape-tensor"]
        assert [f.severity for f in given] == ["info"]


def test_format_findings_one_line_each():
    found = [
        Finding("main", "n1", "TopK", "topk-k", "K = 4000 exceeds", "error", "10.3"),
        Finding("main", "", "", "opset", "opset 21 above 20", "error", "10.3"),
    ]
    text = format_findings(found)
    assert text.splitlines() == [
        "ERROR   [10.3] main :: n1 (TopK) topk-k: K = 4000 exceeds",
        "ERROR   [10.3] main opset: opset 21 above 20",
    ]
    assert format_findings([]) == "no findings"


def test_quantized_and_integer_types():
    int8 = make_model([helper.make_node("Add", ["a", "a"], ["b"])], [vi("a", T.INT8, [4])], [vi("b", T.INT8)])
    for target in BOTH:  # INT8 exists only between Q/DQ pairs
        assert ("op-dtype", "Add") in whats(check_model(int8, target), "error")
    int64_add = make_model([helper.make_node("Add", ["a", "a"], ["b"])], [vi("a", T.INT64, [4])], [vi("b", T.INT64)])
    assert check_model(int64_add, "10.3") == []
    int64_matmul = make_model(
        [helper.make_node("MatMul", ["a", "a"], ["b"])], [vi("a", T.INT64, [4, 4])], [vi("b", T.INT64)]
    )
    (f,) = check_model(int64_matmul, "11")
    assert (f.what, f.severity) == ("op-dtype", "warning")  # outside the documented types: verify
    bool_nonzero = make_model([helper.make_node("NonZero", ["m"], ["i"])], [vi("m", T.BOOL, [8])], [vi("i", T.INT64)])
    assert check_model(bool_nonzero, "10.3") == []  # INonZeroLayer takes BOOL (layer docs)
    strings = make_model([helper.make_node("Identity", ["s"], ["t"])], [vi("s", T.STRING, [2])], [vi("t", T.STRING)])
    assert ("dtype", "") in whats(check_model(strings, "11"), "error")


@pytest.mark.parametrize(
    "node, inputs, expected",
    [
        (helper.make_node("Einsum", ["a", "b"], ["y"], equation="...ij,...jk->...ik"),
         [vi("a", T.FLOAT, [2, 3, 4]), vi("b", T.FLOAT, [2, 4, 5])],
         {"10.3": {("attribute", "error")}, "11": set()}),
        (helper.make_node("Squeeze", ["a"], ["y"]), [vi("a", T.FLOAT, [1, 3])],
         {"10.3": {("input", "warning")}, "11": set()}),
        (helper.make_node("Unsqueeze", ["a", "axes"], ["y"]), [vi("a", T.FLOAT, [3]), vi("axes", T.INT64, [1])],
         {"10.3": {("input", "error")}, "11": {("input", "warning")}}),
        (helper.make_node("GridSample", ["a", "grid"], ["y"]),
         [vi("a", T.FLOAT, [1, 1, 2, 4, 4]), vi("grid", T.FLOAT, [1, 2, 4, 4, 3])],
         {"10.3": {("rank", "error")}, "11": set()}),
    ],
)
def test_target_specific_restrictions(node, inputs, expected):
    model = make_model([node], inputs, [vi("y")])
    for target in BOTH:
        assert {(f.what, f.severity) for f in check_model(model, target)} == expected[target]
