"""The TensorRT plugin library, compiled and probed without a GPU: the CUDA kernels compile for
sm_87 and sm_90 (pip CUDA 13 toolchain), the TensorRT glue compiles and links with ``-z defs``
against each header set of ``../shared/third_party/tensorrt``, the library exports only its two
entry points, and a dlopen probe (C++, CPU only) drives the creators and plugins."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from prunevid.plugins import build
from prunevid.plugins.ops import OPS, PLUGIN_NAMESPACE, PLUGIN_VERSION

HEADER_SETS = ("10.3", "10.13.3", "11.1")


def trt_headers_root() -> Path:
    """``../shared/third_party/tensorrt`` beside the checkout (``$PRUNEVID_SHARED`` overrides)."""
    shared = Path(os.environ.get("PRUNEVID_SHARED") or Path(__file__).resolve().parents[2] / "shared")
    return shared / "third_party" / "tensorrt"


@pytest.fixture(scope="session")
def toolchain():
    cuda = build.find_cuda_home()
    if build.find_cxx() is None or cuda is None:
        pytest.skip("no g++ or no CUDA toolkit (pip install nvidia-cuda-nvcc nvidia-cuda-cccl): plugin build not checked")
    return cuda


@pytest.fixture(scope="session")
def kernels_obj(toolchain, tmp_path_factory):
    return build.compile_kernels(tmp_path_factory.mktemp("kernels") / "pv_kernels.o", ("sm_87", "sm_90"), toolchain)


@pytest.fixture(scope="session")
def libraries(toolchain, kernels_obj, tmp_path_factory):
    """Per header set: (library path, probe JSON); compiled once per session."""
    root = trt_headers_root()
    if not root.is_dir():
        pytest.skip(f"no TensorRT header sets at {root}")
    out = {}
    for version in HEADER_SETS:
        inc = root / version / "include"
        work = tmp_path_factory.mktemp(f"trt{version}")
        glue = build.compile_plugin(work / "pv_plugin.o", inc, toolchain)
        lib = build.link_plugin(work / "libprunevid_plugins.so", [glue, kernels_obj], ("sm_87", "sm_90"), toolchain)
        probe = work / "pv_probe"
        subprocess.run([build.find_cxx(), "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror",
                        "-Wno-deprecated-declarations", "-isystem", str(inc), "-isystem", str(toolchain / "include"),
                        str(build.CSRC / "pv_probe.cpp"), "-o", str(probe), "-ldl"], check=True)
        proc = subprocess.run([str(probe), str(lib)], capture_output=True, text=True, check=True)
        out[version] = (lib, json.loads(proc.stdout), build.trt_header_version(inc))
    return out


def test_kernels_compile_for_orin_and_hopper(kernels_obj):
    sections = subprocess.run(["readelf", "-S", str(kernels_obj)], capture_output=True, text=True, check=True).stdout
    assert ".nv_fatbin" in sections
    data = kernels_obj.read_bytes()
    for arch in (b"sm_87", b"sm_90"):
        assert arch in data, f"no {arch.decode()} code in the kernels object"


def test_gencode_and_arch_parsing():
    assert build.parse_archs("sm_87, sm_90,sm_87") == ("sm_87", "sm_90")
    assert build.gencode_flags(("sm_87", "sm_90")) == [
        "-gencode", "arch=compute_87,code=sm_87", "-gencode", "arch=compute_90,code=sm_90",
        "-gencode", "arch=compute_90,code=compute_90"]
    from prunevid.errors import ToolchainError

    with pytest.raises(ToolchainError, match="sm_XY"):
        build.parse_archs("ampere")


@pytest.mark.parametrize("version", HEADER_SETS)
def test_library_exports_only_entry_points(libraries, version):
    lib, _, header_version = libraries[version]
    assert header_version.startswith(version if version != "10.13.3" else "10.13.3")
    out = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True, check=True).stdout
    names = sorted(line.split()[-1] for line in out.splitlines() if line.strip())
    assert names == ["getCreators", "setLoggerFinder"]
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(lib)], capture_output=True, text=True,
                               check=True).stdout
    assert "nvinfer" not in undefined.lower() and "getPluginRegistry" not in undefined


def _expected(spec):
    """What the probe must report for one op of the table (contract v2)."""
    where = {}
    for i, t in enumerate(spec.inputs):
        for d, dim in enumerate(t.shape):
            where.setdefault(dim, f"in{i}.{d}")
    shapes = [[where.get(dim, str(dim)) for dim in o.shape] for o in spec.outputs]
    return {
        "fields": sorted(spec.attributes),
        "nb_outputs": len(spec.outputs),
        "output_types": [o.dtype for o in spec.outputs],
        "output_shapes": shapes,
        "supported": [[t.dtype] for t in (*spec.inputs, *spec.outputs)],
    }


def _table_is_v2() -> bool:
    return all(t.dtype in ("float32", "int32") for op in OPS.values() for t in (*op.inputs, *op.outputs))


@pytest.mark.parametrize("version", HEADER_SETS)
def test_probe_creators_and_plugins(libraries, version):
    _, probe, _ = libraries[version]
    creators = {c["name"]: c for c in probe["creators"]}
    assert sorted(creators) == sorted(OPS)
    for name, c in creators.items():
        assert c["kind"] == "PLUGIN CREATOR_V3ONE" and c["version"] == PLUGIN_VERSION
        assert c["namespace"] == PLUGIN_NAMESPACE
        assert [f["name"] for f in c["fields"]] == sorted(OPS[name].attributes)
        assert all(f["type"] == "int32" for f in c["fields"])
        assert c["created"] is True
        p = c["plugin"]
        assert (p["name"], p["version"], p["namespace"]) == (name, PLUGIN_VERSION, PLUGIN_NAMESPACE)
        assert (p["core_kind"], p["build_kind"], p["runtime_kind"]) == (
            "PLUGIN_V3ONE_CORE", "PLUGIN_V3ONE_BUILD", "PLUGIN_V3ONE_RUNTIME")
        assert p["output_types_rc"] == 0 and p["output_shapes_rc"] == 0
        assert p["size_tensors"] == 0  # no data-dependent output size
        assert p["accepts_chw32"] is False
        assert p["workspace"] > 0
        # bool / uint8 / int64 / half are refused everywhere
        for allowed in p["supported"]:
            assert len(allowed) == 1 and allowed[0] in ("float32", "int32")
        assert c["clone"] == p
        assert c["round_trip"] == p
    dpc, topk = creators["PvDpcKnn"], creators["PvGroupTopK"]
    assert dpc["created_without_fields"] is False  # k is required
    assert topk["created_without_fields"] is True
    assert dpc["plugin"]["serialized_fields"] == [{"name": "k", "type": "int32", "length": 1, "value": 7}]
    assert dpc["plugin"]["output_shapes"] == [["in0.0", "in0.1"], ["in0.0", "in0.1"]]
    assert topk["plugin"]["output_shapes"] == [["in0.0"], ["1"]]
    assert dpc["plugin"]["supported"] == [["float32"], ["int32"], ["int32"], ["int32"], ["int32"]]
    assert any("k >= 1" in m for m in probe["log"])  # the refused creation was logged through the finder


@pytest.mark.parametrize("version", HEADER_SETS)
def test_plugins_agree_with_op_table(libraries, version):
    if not _table_is_v2():
        pytest.skip("the op table in prunevid/plugins/ops.py is not yet at contract v2 (int32 counts)")
    _, probe, _ = libraries[version]
    for c in probe["creators"]:
        want = _expected(OPS[c["name"]])
        p = c["plugin"]
        got = {"fields": [f["name"] for f in c["fields"]], "nb_outputs": p["nb_outputs"],
               "output_types": p["output_types"], "output_shapes": p["output_shapes"], "supported": p["supported"]}
        assert got == want, c["name"]


def test_build_plugins_command_writes_library_and_record(toolchain, tmp_path):
    root = trt_headers_root()
    if not root.is_dir():
        pytest.skip(f"no TensorRT header sets at {root}")
    from click.testing import CliRunner

    from prunevid.cli import cli

    out = tmp_path / "lib" / "libprunevid_plugins.so"
    res = CliRunner().invoke(cli, ["build-plugins", "--out", str(out), "--trt-include", str(root / "10.3" / "include"),
                                   "--arch", "sm_87"])
    assert res.exit_code == 0, res.output
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["tensorrt"] == "10.3.0.26" and meta["archs"] == ["sm_87"]
    assert meta["sha256"] == build.sha256_file(out)
    assert meta["cuda"].startswith("13.")
    # a bad setting: one line, no library
    bad = tmp_path / "bad" / "lib.so"
    res = CliRunner().invoke(cli, ["build-plugins", "--out", str(bad), "--trt-include", str(tmp_path)])
    assert res.exit_code != 0 and "Error: no NvInferRuntime.h" in res.output
    assert not bad.exists()
