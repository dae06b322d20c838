"""The TensorRT build path without TensorRT: trtexec command lines, plugin-aware ONNX preparation,
profiles, trtexec JSON parsing; plus one engine build that runs only where TensorRT is installed."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper

from prunevid.errors import ConfigError
from prunevid.exporter.trt_build import (
    ShapeRange,
    format_shapes,
    needs_function_strip,
    parse_layer_info,
    parse_trtexec_profile,
    parse_trtexec_times,
    profile_from_manifest,
    strip_functions_for_plugins,
    trtexec_command,
)

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
                 "--staticPlugins=libpv.so", "--timingCacheFile=cache.bin", "--profilingVerbosity=detailed",
                 "--exportTimes=t.json", "--exportProfile=p.json", "--exportLayerInfo=l.json"):
        assert flag in cmd
    assert cmd[-1] == "--memPoolSize=workspace:1024"
    plain = trtexec_command("m.onnx", "m.plan", None, trt_major=10)
    assert "--fp16" not in plain and not any(a.startswith("--minShapes") for a in plain)
    assert not any(a.startswith("--export") for a in plain)
    serialized = trtexec_command("m.onnx", "m.plan", None, trt_major=10, plugin_libs=["a.so"], serialize_plugins=True)
    assert "--dynamicPlugins=a.so" in serialized and "--setPluginsToSerialize=a.so" in serialized


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
    funcs = [
        _function("prunevid", "PvDpcKnn", ["x", "valid", "nc"], ["labels", "centers"]),
        _function("prunevid", "PvGroupTopK", ["s", "g", "c"], ["keep"]),
        _function("other", "PvDpcKnn", ["x"], ["y"]),  # same name, another domain: never stripped
    ]
    nodes = [
        helper.make_node("PvDpcKnn", ["x", "valid", "nc"], ["labels", "centers"], domain="prunevid", name="dpc",
                         k=3, plugin_namespace="prunevid", plugin_version="1"),
        helper.make_node("PvGroupTopK", ["s", "g", "c"], ["keep"], domain="prunevid", name="topk",
                         plugin_namespace="prunevid", plugin_version="1"),
    ]
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes, "main",
        [vi("x", T.FLOAT, [2, 4, 8]), vi("valid", T.BOOL, [2, 4]), vi("nc", T.INT64, [2]),
         vi("s", T.FLOAT, [8]), vi("g", T.INT64, [2]), vi("c", T.INT64, [2])],
        [vi("labels", T.FLOAT, None), vi("centers", T.FLOAT, None), vi("keep", T.FLOAT, None)],
    )
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
    from prunevid.exporter.trt_compat import check_model, errors

    stripped = strip_functions_for_plugins(_plugin_model(), ["PvDpcKnn", "PvGroupTopK"])
    found = check_model(stripped, "10.3")
    assert errors(found) == []
    assert {f.what for f in found if f.op_type.startswith("prunevid::")} == {"plugin"}  # no "inlined"


# --------------------------------------------------------------------------------------------
# trtexec JSON exports
# --------------------------------------------------------------------------------------------

LAYER_INFO_10 = {
    "Layers": [
        {
            "Name": "/conv/Conv + /relu/Relu",
            "LayerType": "CaskConvolution",
            "Inputs": [{"Name": "x", "Location": "Device", "Dimensions": [1, 3, 8, 8], "Format/Datatype": "Row major linear FP32"}],
            "Outputs": [{"Name": "y", "Location": "Device", "Dimensions": [1, 4, 8, 8], "Format/Datatype": "Row major linear FP32"}],
            "TacticName": "sm80_xmma_fprop_implicit_gemm",
            "Metadata": "[ONNX Layer: /conv/Conv]",
        }
    ],
    "Bindings": ["x", "y"],
}

LAYER_INFO_11 = {
    "Layers": [
        {
            "Name": "/conv/Conv + /relu/Relu",
            "LayerType": "CaskConvolution",
            "Inputs": [{"Name": "x"}],
            "Outputs": [{"Name": "y"}],
            "TacticName": "sm90_xmma_fprop",
        }
    ],
    "I/O Tensors": [
        {
            "Name": "x", "IOMode": "Input", "DataType": "Float", "Dimensions": [-1, 3, 8, 8],
            "Location": "Device", "IsShapeInferenceIO": False,
            "ProfileInfo": [{"MinShape": [1, 3, 8, 8], "OptShape": [4, 3, 8, 8], "MaxShape": [8, 3, 8, 8],
                             "Format": "Row major linear FP32 format (kLINEAR)"}],
        },
        {
            "Name": "y", "IOMode": "Output", "DataType": "Float", "Dimensions": [-1, 4, 8, 8],
            "Location": "Device", "IsShapeInferenceIO": False, "ProfileInfo": [],
        },
    ],
}


def test_parse_layer_info_10_and_11(tmp_path):
    path = tmp_path / "layers10.json"
    path.write_text(json.dumps(LAYER_INFO_10))
    for source in (path, str(path), json.dumps(LAYER_INFO_10), LAYER_INFO_10):
        info10 = parse_layer_info(source)
        assert info10["format"] == "10.x"
        assert info10["inputs"] == ["x"] and info10["outputs"] == ["y"]
        (layer,) = info10["layers"]
        assert layer["name"] == "/conv/Conv + /relu/Relu" and layer["type"] == "CaskConvolution"
        assert layer["inputs"] == ["x"] and layer["outputs"] == ["y"]
        assert layer["tactic"] == "sm80_xmma_fprop_implicit_gemm" and "ONNX Layer" in layer["metadata"]
        assert info10["io_tensors"][0]["dtype"] is None

    info11 = parse_layer_info(LAYER_INFO_11)
    assert info11["format"] == "11.x"
    assert info11["inputs"] == ["x"] and info11["outputs"] == ["y"]
    x = info11["io_tensors"][0]
    assert x["dtype"] == "Float" and x["dims"] == [-1, 3, 8, 8] and x["location"] == "Device"
    assert x["profiles"] == [{"min": [1, 3, 8, 8], "opt": [4, 3, 8, 8], "max": [8, 3, 8, 8],
                              "format": "Row major linear FP32 format (kLINEAR)"}]
    assert info11["layers"][0]["tactic"] == "sm90_xmma_fprop"

    names_only = parse_layer_info({"Layers": ["a", "b"], "Bindings": ["x", "y"]})
    assert [l["name"] for l in names_only["layers"]] == ["a", "b"]
    assert [t["mode"] for t in names_only["io_tensors"]] == [None, None]
    from prunevid.errors import ArtifactError

    with pytest.raises(ArtifactError):
        parse_layer_info({"Layers": []})


TIMES = [
    {"startEnqMs": 0.0, "endEnqMs": 0.1, "startH2dMs": 0.0, "endH2dMs": 0.0, "startComputeMs": 0.1,
     "endComputeMs": 2.1, "startD2hMs": 2.1, "endD2hMs": 2.1, "h2dMs": 0.0, "computeMs": 2.0, "d2hMs": 0.0,
     "latencyMs": 2.0},
    {"startEnqMs": 2.1, "endEnqMs": 2.3, "startH2dMs": 2.1, "endH2dMs": 2.1, "startComputeMs": 2.1,
     "endComputeMs": 5.1, "startD2hMs": 5.1, "endD2hMs": 5.1, "h2dMs": 0.0, "computeMs": 3.0, "d2hMs": 0.0,
     "latencyMs": 3.0},
    {"startEnqMs": 5.1, "endEnqMs": 5.2, "startH2dMs": 5.1, "endH2dMs": 5.1, "startComputeMs": 5.1,
     "endComputeMs": 9.1, "startD2hMs": 9.1, "endD2hMs": 9.1, "h2dMs": 0.0, "computeMs": 4.0, "d2hMs": 0.0,
     "latencyMs": 4.0},
]


def test_parse_trtexec_times(tmp_path):
    path = tmp_path / "times.json"
    path.write_text(json.dumps(TIMES))
    summary = parse_trtexec_times(path)
    assert summary["iterations"] == 3
    lat = summary["latencyMs"]
    assert lat["mean"] == pytest.approx(3.0) and lat["median"] == 3.0
    assert lat["min"] == 2.0 and lat["max"] == 4.0 and lat["p99"] == 4.0
    assert summary["computeMs"]["mean"] == pytest.approx(3.0)
    assert summary["enqueueMs"]["max"] == pytest.approx(0.2)
    assert summary["throughput_qps"] == pytest.approx(3 / 0.009)
    assert parse_trtexec_times(TIMES) == summary
    from prunevid.errors import ArtifactError

    with pytest.raises(ArtifactError):
        parse_trtexec_times([])


def test_parse_trtexec_profile():
    data = [{"count": 10}, {"name": "conv", "timeMs": 5.0, "averageMs": 0.5, "medianMs": 0.5, "percentage": 62.5},
            {"name": "relu", "timeMs": 3.0, "averageMs": 0.3, "medianMs": 0.3, "percentage": 37.5}]
    prof = parse_trtexec_profile(data)
    assert prof["count"] == 10 and [l["name"] for l in prof["layers"]] == ["conv", "relu"]
    assert prof["total_average_ms"] == pytest.approx(0.8)


# --------------------------------------------------------------------------------------------
# the QDP plugin module, without TensorRT
# --------------------------------------------------------------------------------------------


def test_trt_plugins_describe_without_tensorrt():
    already = "tensorrt" in sys.modules
    from prunevid.plugins import trt_plugins
    from prunevid.plugins.ops import OPS

    if not already:
        assert "tensorrt" not in sys.modules  # imported lazily, inside register_plugins()
    assert trt_plugins.PLUGIN_IDS == ("prunevid::PvDpcKnn", "prunevid::PvGroupTopK")
    desc = trt_plugins.describe()
    assert set(desc) == set(OPS)
    dpc = desc["PvDpcKnn"]
    assert dpc["params"] == ["x", "num_valid", "num_clusters", "k"]
    assert dpc["output_dtypes"] == ["int32", "int32"]
    assert dpc["output_dim_sources"] == [((0, 0), (0, 1)), ((0, 0), (0, 1))]  # [B, N] from x
    assert dpc["size_tensors"] == []
    topk = desc["PvGroupTopK"]
    assert topk["output_dtypes"] == ["int32", "int32"]
    assert topk["output_dim_sources"] == [((0, 0),), (1,)]  # keep [M] from scores, count [1]
    assert topk["size_tensors"] == []  # contracts v2: no data-dependent output size


# --------------------------------------------------------------------------------------------
# a real engine build (TensorRT only)
# --------------------------------------------------------------------------------------------


@pytest.mark.trt
def test_build_engine_one_node(tmp_path):
    trt = pytest.importorskip("tensorrt")
    from prunevid.exporter.trt_build import build_engine

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
