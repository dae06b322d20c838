"""prunevid.trt.plugins (build records, function stripping for TensorRT < 10.7) and the GPU
check's non-GPU parts (arguments, table), without TensorRT or a GPU."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper

from prunevid.errors import ArtifactError, ConfigError
from prunevid.trt import gpu_check
from prunevid.trt.plugins import check_record, needs_function_strip, plugin_onnx, read_library_record, version_tuple


def _model_with_function(path):
    func = helper.make_function("prunevid", "PvGroupTopK", ["s", "g", "c"], ["keep", "count"],
                                [helper.make_node("Identity", ["s"], ["keep"]),
                                 helper.make_node("Identity", ["g"], ["count"])],
                                [helper.make_opsetid("", 17)])
    other = helper.make_function("acme", "Helper", ["a"], ["b"], [helper.make_node("Identity", ["a"], ["b"])],
                                 [helper.make_opsetid("", 17)])
    node = helper.make_node("PvGroupTopK", ["s", "g", "c"], ["keep", "count"], domain="prunevid",
                            plugin_namespace="prunevid", plugin_version="1")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, T.FLOAT, [4]) for n in "sgc"],
                              [helper.make_tensor_value_info(n, T.FLOAT, [4]) for n in ("keep", "count")])
    model = helper.make_model(graph, functions=[func, other], opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("prunevid", 1), helper.make_opsetid("acme", 1)])
    onnx.save(model, str(path))
    return path


def test_versions_and_strip_decision():
    assert version_tuple("10.3.0.26") == (10, 3) and version_tuple((11, 1, 0)) == (11, 1)
    assert needs_function_strip("10.3.0.26") and needs_function_strip("10.6")
    assert not needs_function_strip("10.7.0") and not needs_function_strip("11.1")
    with pytest.raises(ConfigError):
        version_tuple("10")


def test_plugin_onnx_strips_prunevid_functions_only_before_10_7(tmp_path):
    src = _model_with_function(tmp_path / "select.onnx")
    assert plugin_onnx(src, "10.13.3") == src
    stripped = plugin_onnx(src, "10.3.0.26")
    assert stripped == tmp_path / "select.plugins.onnx"
    model = onnx.load(str(stripped))
    assert [(f.domain, f.name) for f in model.functions] == [("acme", "Helper")]
    assert [n.op_type for n in model.graph.node] == ["PvGroupTopK"]
    assert len(onnx.load(str(src)).functions) == 2  # the original is untouched


def test_library_record_and_compatibility(tmp_path):
    lib = tmp_path / "libpv.so"
    with pytest.raises(ArtifactError, match="not found"):
        read_library_record(lib)
    lib.write_bytes(b"\x7fELF")
    with pytest.raises(ArtifactError, match="build record"):
        read_library_record(lib)
    record = {"tensorrt": "10.3.0.26", "archs": ["sm_87"], "cuda": "12.6"}
    (tmp_path / "libpv.json").write_text(json.dumps(record))
    assert read_library_record(lib) == record
    check_record(record, "10.3.0.30", "sm_87")
    check_record(record, "10.3.0.30", None)  # architecture unknown: not checked
    with pytest.raises(ConfigError, match="built against TensorRT 10.3.0.26, running 10.13"):
        check_record(record, "10.13.3", "sm_87")
    with pytest.raises(ConfigError, match="--arch sm_90"):
        check_record(record, "10.3.0", "sm_90")


def test_gpu_check_arguments_and_table():
    args = gpu_check.parse_args(["--cases", "5", "--arch", "sm_90", "--export", "exp"])
    assert (args.cases, args.arch, args.export) == (5, "sm_90", "exp")
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--cases", "0"])
    rows = [gpu_check.Row("cuda device", "PASS", "sm_90"), gpu_check.Row("tensorrt", "SKIP", "not installed"),
            gpu_check.Row("x", "FAIL", "3 differ")]
    table = gpu_check.format_table(rows).splitlines()
    assert table[0].split() == ["check", "status", "detail"]
    assert table[2].split()[:3] == ["cuda", "device", "PASS"]
    assert table[-1] == "1 passed, 1 failed, 1 skipped"


def test_gpu_check_rows_from_the_device_report():
    kinds = {"random": {"cases": 10, "cases_differing": 0, "elements_differing": 0},
             "ties": {"cases": 10, "cases_differing": 2, "elements_differing": 5}}
    report = {"dpc_knn": kinds, "group_topk": {"random": kinds["random"]},
              "dpc_knn_16x144x4096": {"ms": 0.123, "elements_differing": 0},
              "group_topk_32x144": {"ms": 0.01, "elements_differing": 0}}
    rows = gpu_check.kernel_rows(report)
    status = {r.check: r.status for r in rows}
    assert status["dpc_knn kernel vs host [random]"] == "PASS"
    assert status["dpc_knn kernel vs host [ties]"] == "FAIL"
    assert [r.detail for r in rows if r.check == "dpc_knn 16x144x4096 time"] == [
        "0.123 ms per call, 0 elements differ from host"]
    assert gpu_check.kernel_rows({"error": "no device"}) == [gpu_check.Row("kernels", "FAIL", "no device")]


def test_gpu_check_without_a_device_exits_2(monkeypatch, capsys):
    monkeypatch.setattr("prunevid.trt.plugins.gpu_arch", lambda device=0: None)
    assert gpu_check.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().out


def test_gpu_check_one_node_models_follow_the_op_table():
    from prunevid.plugins.ops import OPS
    from prunevid.trt.compat import check_model, errors

    for name, spec in OPS.items():
        model = gpu_check._one_node_model(name, {"B": 2, "N": 8, "C": 4, "M": 10, "G": 3},
                                          {"k": 3} if spec.attributes else {})
        onnx.checker.check_model(model)
        assert [i.name for i in model.graph.input] == [t.name for t in spec.inputs]
        assert [o.name for o in model.graph.output] == [t.name for t in spec.outputs]
        (node,) = model.graph.node
        assert (node.domain, node.op_type) == ("prunevid", name) and not model.functions
        found = check_model(model, "11")
        assert errors(found) == [] and any(f.what == "plugin" and "needs plugin" in f.detail for f in found)
