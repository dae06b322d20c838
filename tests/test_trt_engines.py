"""The engine plan of an export without TensorRT: profiles from the manifest and the limits,
reuse keys, precision and plugin rules, and ``prunevid build --dry-run``."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from click.testing import CliRunner

from prunevid.cli import cli
from prunevid.errors import ConfigError
from prunevid.trt.build import ShapeRange
from prunevid.trt.deploy import BuildRequest, prepare
from prunevid.trt.engines import Limits, dim_ranges, graph_profiles, resolve_precision
from prunevid.trt.targets import get_target


def test_dim_ranges_clip_to_limits():
    dims = {"frames": {"min": 1, "opt": 16, "max": 16}, "new": {"min": 1, "opt": 128, "max": 4096},
            "cache": {"min": 1, "opt": 192, "max": 4096}, "question": {"min": 1, "opt": 48, "max": 4096},
            "merged": {"min": 1, "opt": 128, "max": 256}}
    r = dim_ranges(dims, Limits(frames=16, max_prompt_tokens=100, max_new_tokens=10), tokens_per_frame=16)
    assert r["new"] == ShapeRange((1,), (128,), (356,))  # 100 text + 256 visual
    assert r["cache"] == ShapeRange((1,), (192,), (365,))  # + 10 new - 1
    assert r["question"] == ShapeRange((1,), (48,), (100,))
    assert r["merged"] == ShapeRange((1,), (128,), (256,))
    small = dim_ranges(dims, Limits(16, 20, 1), 16)
    assert small["question"] == ShapeRange((1,), (20,), (20,))  # opt clipped to max


def test_decoder_gets_a_decode_profile():
    entry = {"inputs": [
        {"name": "hidden", "dims": ["new", 8]}, {"name": "cache_length", "dims": []},
        {"name": "past_key_values.0.key", "dims": [2, "cache", 4]}]}
    ranges = {"new": ShapeRange((1,), (64,), (300,)), "cache": ShapeRange((1,), (96,), (309,))}
    prompt, decode = graph_profiles(entry, ranges)
    assert prompt == {"hidden": ShapeRange((1, 8), (64, 8), (300, 8)),
                      "past_key_values.0.key": ShapeRange((2, 1, 4), (2, 96, 4), (2, 309, 4))}
    assert decode == {"hidden": ShapeRange((1, 8), (1, 8), (1, 8)),
                      "past_key_values.0.key": ShapeRange((2, 1, 4), (2, 309, 4), (2, 309, 4))}
    static = graph_profiles({"inputs": [{"name": "x", "dims": [16, 16, 64]}]}, ranges)
    assert static == [{}]
    values = graph_profiles({"inputs": [{"name": "n", "dims": [], "values": {"min": 1, "opt": 5, "max": 9}}]}, ranges)
    assert values == [{"n": ShapeRange((1,), (5,), (9,))}]


def test_precision_rules():
    orin, h100 = get_target("agx-orin-64"), get_target("h100")
    assert resolve_precision(None, "fp16", orin, 10) == "fp16"
    assert resolve_precision("fp16", "fp32", orin, 10) == "fp16"  # weak typing on 10.x
    with pytest.raises(ConfigError, match="strongly typed"):
        resolve_precision("fp16", "fp32", h100, 11)
    with pytest.raises(ConfigError, match="has no fp8"):
        resolve_precision("fp8", "fp16", orin, 10)
    with pytest.raises(ConfigError, match="quantized export"):
        resolve_precision("fp8", "fp16", h100, 11)


def test_plan_of_the_tiny_export(tiny_export):
    budget, plan = prepare(BuildRequest(tiny_export, "orin-nano-8", max_prompt_tokens=100, max_new_tokens=10,
                                        trt_version="10.3"))
    assert budget.fits and budget.cache_rows == 100 + 256 + 9
    assert plan.folder == tiny_export / "engines" / "trt10.3-sm_87"
    by = {e.graph: e for e in plan.engines}
    assert list(by) == ["encoder", "merger", "embed", "decoder_early", "score", "select", "decoder_late"]
    assert by["encoder"].profiles[0]["pixel_values"] == ShapeRange((1, 3, 112, 112), (16, 3, 112, 112), (16, 3, 112, 112))
    assert by["merger"].profiles == ({},)
    early = by["decoder_early"].profiles
    assert len(early) == 2 and early[0]["hidden"].max == (356, 64) and early[1]["hidden"].max == (1, 64)
    assert early[1]["past_key_values.10.value"] == ShapeRange((4, 1, 16), (4, 365, 16), (4, 365, 16))
    assert by["select"].profiles[0]["input_ids"].max == (100,)
    assert plan.settings.plugins == "inline" and not plan.settings.strongly_typed
    assert not any(e.reuse for e in plan.engines)
    assert not (tiny_export / "engines").exists()  # planning writes nothing
    # keys: stable, and changed by any setting
    _, again = prepare(BuildRequest(tiny_export, "orin-nano-8", max_prompt_tokens=100, max_new_tokens=10,
                                    trt_version="10.3"))
    assert [e.key for e in again.engines] == [e.key for e in plan.engines]
    _, other = prepare(BuildRequest(tiny_export, "orin-nano-8", max_prompt_tokens=100, max_new_tokens=11,
                                    trt_version="10.3"))
    assert all(a.key != b.key for a, b in zip(plan.engines, other.engines))
    # same GPU, TensorRT and settings on another Orin board: the same engines (the key has no board name)
    _, agx = prepare(BuildRequest(tiny_export, "agx-orin-64", max_prompt_tokens=100, max_new_tokens=10,
                                  trt_version="10.3", workspace_mib=512))
    assert agx.folder == plan.folder and [e.key for e in agx.engines] == [e.key for e in plan.engines]
    _, ws = prepare(BuildRequest(tiny_export, "agx-orin-64", max_prompt_tokens=100, max_new_tokens=10,
                                 trt_version="10.3"))
    assert all(a.key != b.key for a, b in zip(plan.engines, ws.engines))


def test_reuse_when_the_key_is_recorded(tiny_export, tmp_path):
    import shutil

    export = tmp_path / "export"
    shutil.copytree(tiny_export, export)
    req = BuildRequest(export, "h100", trt_version="10.16")
    _, plan = prepare(req)
    enc = plan.engines[0]
    enc.engine.parent.mkdir(parents=True)
    enc.engine.write_bytes(b"plan")
    enc.engine.with_name(enc.engine.name + ".json").write_text(json.dumps({"key": enc.key}))
    _, again = prepare(req)
    assert again.engines[0].reuse and not any(e.reuse for e in again.engines[1:])
    _, changed = prepare(replace(req, max_new_tokens=65))
    assert not changed.engines[0].reuse


def test_build_dry_run_cli(tiny_export):
    runner = CliRunner()
    res = runner.invoke(cli, ["build", str(tiny_export), "--target", "agx-orin-64", "--dry-run",
                              "--max-prompt-tokens", "100", "--max-new-tokens", "10"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith("weights") and "365 rows" in lines[1]
    assert any(line.startswith("total") and line.endswith("fits") for line in lines)
    assert "TensorRT 11.4 on sm_87 (Jetson AGX Orin 64GB); precision fp32 (strongly typed: from the ONNX)" in res.output
    assert "profile 1: hidden 1x64, positions 1, 22 x past_key_values 4x1x16..4x365x16..4x365x16" in res.output
    for args, msg in (
        (["--target", "orin-nano"], "unknown target 'orin-nano'; known targets: orin-nano-8,"),
        (["--target", "orin-nano-8", "--max-frames", "8"], "always samples 16 frames"),
        (["--target", "orin-nano-8", "--max-frames", "0"], "--max-frames must be at least 1, got 0"),
        (["--target", "orin-nano-8", "--precision", "fp8"], "orin-nano-8 has no fp8"),
        (["--target", "orin-nano-8", "--plugins", "library"], "--plugins library needs --plugin-lib"),
        (["--target", "orin-nano-8", "--trt-version", "11.4"], "runs TensorRT 10.3, 10.16, not 11.4"),
        (["--target", "h100", "--max-prompt-tokens", "4000"], "exceed the model's context 4096"),
    ):
        res = runner.invoke(cli, ["build", str(tiny_export), "--dry-run", *args])
        assert res.exit_code == 1 and res.output.count("\n") == 1 and msg in res.output, res.output


def test_plugin_library_mode_checks_the_record_and_strips_for_10_3(tiny_export, tmp_path):
    import hashlib

    lib = tmp_path / "libpv.so"
    lib.write_bytes(b"not really a library")
    sha = hashlib.sha256(lib.read_bytes()).hexdigest()
    (tmp_path / "libpv.json").write_text(json.dumps({"tensorrt": "10.3.0", "archs": ["sm_87"], "sha256": sha}))
    req = BuildRequest(tiny_export, "agx-orin-64", plugins="library", plugin_libs=(str(lib),), trt_version="10.3")
    _, plan = prepare(req)
    assert plan.settings.plugins == "library" and plan.settings.plugin_sha256 == sha
    assert plan.plugin_library == str(lib.resolve())
    parsed = {e.graph: e.onnx.name for e in plan.engines}
    # TensorRT 10.3 prefers a function body over a loaded plugin: the graphs with prunevid ops parse a copy
    assert parsed["merger"] == "merger.plugins.onnx" and parsed["select"] == "select.plugins.onnx"
    assert parsed["encoder"] == "encoder.onnx" and parsed["decoder_late"] == "decoder_late.onnx"
    assert not (tiny_export / "graphs" / "merger.plugins.onnx").exists()  # a plan writes nothing
    _, inline = prepare(replace(req, plugins="inline", plugin_libs=()))
    assert all(a.key != b.key for a, b in zip(plan.engines, inline.engines))
    _, auto = prepare(replace(req, plugins="auto"))
    assert auto.settings.plugins == "library"
    with pytest.raises(ConfigError, match="built against TensorRT 10.3.0, running 10.16"):
        prepare(replace(req, trt_version="10.16"))
    (tmp_path / "libpv.json").write_text(json.dumps({"tensorrt": "10.16.1", "archs": ["sm_87"], "sha256": sha}))
    with pytest.raises(ConfigError, match="has code for sm_87, this GPU is sm_90: rebuild it with --arch sm_90"):
        prepare(replace(req, target="h100", trt_version="10.16"))


def test_build_dry_run_needs_no_heavy_package(tiny_export):
    """The base install (no torch, onnx, onnxruntime, TensorRT, matplotlib) plans and budgets."""
    import subprocess
    import sys

    code = ("import sys\n"
            "for m in ('torch', 'onnx', 'onnxruntime', 'tensorrt', 'matplotlib', 'polygraphy'):\n"
            "    sys.modules[m] = None  # any import of it raises ImportError\n"
            "from prunevid.cli import main\n"
            f"sys.argv = ['prunevid', 'build', {str(tiny_export)!r}, '--target', 'orin-nano-8', '--dry-run']\n"
            "main()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "TensorRT 10.16 on sm_87" in done.stdout and "fits" in done.stdout


def test_build_without_tensorrt_is_one_line(tiny_export):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed: the build would run")
    res = CliRunner().invoke(cli, ["build", str(tiny_export), "--target", "h100"])
    assert res.exit_code == 1 and res.output.startswith("Error: TensorRT is not installed here")
    assert res.output.count("\n") == 1 and not (tiny_export / "engines").exists()
