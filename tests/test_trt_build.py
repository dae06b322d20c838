"""The TensorRT build path without TensorRT: trtexec command lines, plugin-aware ONNX preparation,
profiles, trtexec JSON parsing; plus one engine build that runs only where TensorRT is installed."""

from __future__ import annotations


import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper

from prunevid.errors import ConfigError
from prunevid.trt.build import (
    ShapeRange,
    format_shapes,
    profile_from_manifest,
    trtexec_command,
)
from prunevid.trt.plugins import needs_function_strip, strip_functions_for_plugins

MANIFEST = {
    "pixel_values": {"min": [1, 3, 336, 336], "opt": [8, 3, 336, 336], "max": [16, 3, 336, 336]},
    "input_ids": {"min": [1, 1], "opt": [1, 64], "max": [1, 256]},
}


# --------------------------------------------------------------------------------------------
# profiles and trtexec
# --------------------------------------------------------------------------------------------


def test_profile_from_manifest():
    prof = profile_from_manifest(MANIFEST)
    assert prof["pixel_values"] == ShapeRange((1, 3, 336, 336), (8, 3, 336, 336), (16, 3, 336, 336))
    assert profile_from_manifest({"inputs": MANIFEST}) == prof
    static = profile_from_manifest({"x": {"shape": [2, 4]}, "y": [3]})
    assert static["x"] == ShapeRange((2, 4), (2, 4), (2, 4)) and static["y"].max == (3,)
    assert profile_from_manifest({"x": {"opt": [2, 4], "max": [4, 4]}})["x"].min == (2, 4)
    with pytest.raises(ConfigError):
        profile_from_manifest({"x": {"min": [4], "opt": [2], "max": [8]}})
    with pytest.raises(ConfigError):
        profile_from_manifest({"x": {"min": [1, 2], "opt": [2], "max": [8]}})


def test_format_shapes_quotes_awkward_names():
    assert format_shapes({"pixel_values": (1, 3, 336, 336)}) == "pixel_values:1x3x336x336"
    assert format_shapes({"a": (1,), "past:0": (2, 3)}) == "a:1,'past:0':2x3"


def test_trtexec_command_10():
    cmd = trtexec_command(
        "m.onnx", "m.plan", MANIFEST, trt_major=10, fp16=True, plugin_libs=["libpv.so"],
        timing_cache="cache.bin", extra=["--memPoolSize=workspace:1024"],
        export_times="t.json", export_profile="p.json", export_layer_info="l.json",
    )
    assert cmd[:3] == ["trtexec", "--onnx=m.onnx", "--saveEngine=m.plan"]
    assert "--minShapes=pixel_values:1x3x336x336,input_ids:1x1" in cmd
    assert "--optShapes=pixel_values:8x3x336x336,input_ids:1x64" in cmd
    assert "--maxShapes=pixel_values:16x3x336x336,input_ids:1x256" in cmd
    for flag in ("--fp16", "--useCudaGraph", "--noDataTransfers", "--separateProfileRun",
                 "--dynamicPlugins=libpv.so", "--timingCacheFile=cache.bin", "--profilingVerbosity=detailed",
                 "--exportTimes=t.json", "--exportProfile=p.json", "--exportLayerInfo=l.json"):
        assert flag in cmd
    assert cmd[-1] == "--memPoolSize=workspace:1024"
    plain = trtexec_command("m.onnx", "m.plan", None, trt_major=10)
    assert "--fp16" not in plain and not any(a.startswith("--minShapes") for a in plain)
    assert not any(a.startswith("--export") for a in plain)
    serialized = trtexec_command("m.onnx", "m.plan", None, trt_major=10, plugin_libs=["a.so"], serialize_plugins=True)
    assert "--dynamicPlugins=a.so" in serialized and "--setPluginsToSerialize=a.so" in serialized
    assert "--versionCompatible" in serialized
    assert not any(a.startswith("--staticPlugins") for a in cmd + serialized)


def test_trtexec_command_11():
    prof = profile_from_manifest(MANIFEST)
    cmd = trtexec_command("m.onnx", "m.plan", prof, trt_major=11, export_times="t.json")
    for flag in ("--fp16", "--useCudaGraph", "--noDataTransfers", "--separateProfileRun", "--stronglyTyped"):
        assert flag not in cmd  # removed, or defaults (no-ops) in 11
    assert "--optShapes=pixel_values:8x3x336x336,input_ids:1x64" in cmd
    assert "--profilingVerbosity=detailed" in cmd and "--exportTimes=t.json" in cmd
    with pytest.raises(ConfigError, match="AutoCast|ONNX"):
        trtexec_command("m.onnx", "m.plan", prof, trt_major=11, fp16=True)
    with pytest.raises(ConfigError):
        trtexec_command("m.onnx", "m.plan", prof, trt_major=11, extra=["--int8"])
    with pytest.raises(ConfigError):
        trtexec_command("m.onnx", "m.plan", prof, trt_major=9)


def test_needs_function_strip():
    assert needs_function_strip("10.3.0.30") and needs_function_strip((10, 6))
    assert not needs_function_strip("10.7.0") and not needs_function_strip((11, 5))


# --------------------------------------------------------------------------------------------
# stripping local functions for plugins
# --------------------------------------------------------------------------------------------


def _function(domain, name, inputs, outputs):
    body = [helper.make_node("Identity", [inputs[0]], [outputs[0]])]
    body += [helper.make_node("Identity", [inputs[0]], [o]) for o in outputs[1:]]
    return helper.make_function(domain, name, inputs, outputs, body, [helper.make_opsetid("", 17)])


def _plugin_model():
    """Both prunevid ops as the op table declares them, each with a local function."""
    from prunevid.plugins.ops import OPS

    onnx_types = {"float32": T.FLOAT, "int32": T.INT32, "int64": T.INT64, "bool": T.BOOL}
    dims = {"B": 2, "N": 4, "C": 8, "M": 8, "G": 2}
    vi = helper.make_tensor_value_info
    funcs, nodes, inputs, outputs = [], [], [], []
    for (name, spec), prefix, label in zip(OPS.items(), ("d_", "t_"), ("dpc", "topk")):
        ins = [prefix + t.name for t in spec.inputs]
        outs = [prefix + t.name for t in spec.outputs]
        funcs.append(_function("prunevid", name, [t.name for t in spec.inputs], [t.name for t in spec.outputs]))
        nodes.append(helper.make_node(name, ins, outs, domain="prunevid", name=label,
                                      **spec.node_attributes(**({"k": 3} if spec.attributes else {}))))
        inputs += [vi(n, onnx_types[t.dtype], [dims.get(d, d) for d in t.shape]) for n, t in zip(ins, spec.inputs)]
        outputs += [vi(n, onnx_types[t.dtype], None) for n, t in zip(outs, spec.outputs)]
    funcs.append(_function("other", "PvDpcKnn", ["x"], ["y"]))  # same name, another domain: never stripped
    graph = helper.make_graph(nodes, "main", inputs, outputs)
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in (("", 17), ("prunevid", 1), ("other", 1))],
        functions=funcs,
    )


def test_strip_functions_for_plugins():
    from prunevid.plugins.ops import DPC_KNN

    model = _plugin_model()
    before = model.SerializeToString()
    stripped = strip_functions_for_plugins(model, ["PvDpcKnn"])
    assert [(f.domain, f.name) for f in stripped.functions] == [("prunevid", "PvGroupTopK"), ("other", "PvDpcKnn")]
    assert stripped.graph == model.graph  # the nodes, with their plugin attributes, stay
    assert [n.op_type for n in stripped.graph.node] == ["PvDpcKnn", "PvGroupTopK"]
    assert model.SerializeToString() == before  # the input is not modified
    both = strip_functions_for_plugins(model, [DPC_KNN, "prunevid::PvGroupTopK"])
    assert [(f.domain, f.name) for f in both.functions] == [("other", "PvDpcKnn")]
    assert len(strip_functions_for_plugins(model, []).functions) == 3


def test_stripped_model_still_checks_on_10_3():
    from prunevid.plugins.ops import OPS
    from prunevid.trt.compat import check_model, errors

    if any(t.dtype == "bool" for op in OPS.values() for t in op.inputs):
        pytest.skip("the op table still has a BOOL input (before contract v2): its nodes cannot be plugins")

    stripped = strip_functions_for_plugins(_plugin_model(), ["PvDpcKnn", "PvGroupTopK"])
    found = check_model(stripped, "10.3")
    assert errors(found) == []
    assert {f.what for f in found if f.op_type.startswith("prunevid::")} == {"plugin"}  # no "inlined"


# --------------------------------------------------------------------------------------------
# a real engine build (TensorRT only)
# --------------------------------------------------------------------------------------------


@pytest.mark.trt
def test_build_engine_one_node(tmp_path):
    trt = pytest.importorskip("tensorrt")
    from prunevid.trt.build import build_engine

    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "relu", [vi("x", T.FLOAT, ["n", 8])], [vi("y", T.FLOAT, ["n", 8])]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx_path = tmp_path / "relu.onnx"
    onnx.save(model, str(onnx_path))
    engine = build_engine(
        onnx_path, tmp_path / "relu.plan", {"x": {"min": [1, 8], "opt": [4, 8], "max": [16, 8]}},
        fp16=False, plugins=[], timing_cache=tmp_path / "cache.bin", progress=False,
    )
    data = engine.read_bytes()
    assert len(data) > 0
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    loaded = runtime.deserialize_cuda_engine(data)
    assert loaded is not None and loaded.num_io_tensors == 2
    assert (tmp_path / "cache.bin").stat().st_size > 0
    assert np.array(loaded.get_tensor_shape("x")).tolist() == [-1, 8]
