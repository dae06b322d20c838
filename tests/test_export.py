"""The export folder: graphs, custom ops, manifest, atomicity, and the runtime against the eager
reference (token ids, token counts and, per graph, outputs within the stated tolerances)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

from prunevid import spec
from prunevid.config import Mode, PruneConfig
from prunevid.errors import ArtifactError
from prunevid.exporter.export import ExportOptions, export
from prunevid.plugins.ops import OPS, PLUGIN_NAMESPACE, PLUGIN_VERSION
from prunevid.reference import EagerPipeline
from prunevid.runtime.artifact import write_manifest
from prunevid.runtime.pipeline import RuntimePipeline
from prunevid.runtime.video import write_synthetic_clip

QUESTIONS = (
    "What are the people doing?",
    "Describe the scene in one short sentence.",
    "Which objects move from the left side of the frame to the right side, and how fast do they move?",
    "Is it day or night?",
    "What colour is the largest object, and what happens to it at the end of the clip?",
)


def load(export_dir, name):
    return onnx.load(str(export_dir / spec.GRAPH_DIR / f"{name}.onnx"))


@pytest.mark.parametrize("name", spec.GRAPH_ORDER)
def test_every_graph_passes_the_full_checker_with_strict_shape_inference(tiny_export, name):
    model = load(tiny_export, name)
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    graph = spec.graphs(spec.Geometry(**json.loads((tiny_export / spec.MANIFEST).read_text())["geometry"]))[name]
    assert [i.name for i in model.graph.input] == graph.input_names
    assert [o.name for o in model.graph.output] == graph.output_names


@pytest.mark.parametrize("name", ["merger", "select"])
def test_custom_ops_carry_plugin_attributes_and_function_bodies(tiny_export, name):
    model = load(tiny_export, name)
    graph = spec.graphs(spec.Geometry(**json.loads((tiny_export / spec.MANIFEST).read_text())["geometry"]))[name]
    nodes = [n for n in model.graph.node if n.domain == "prunevid"]
    assert {n.op_type for n in nodes} == set(graph.custom_ops)
    for node in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["plugin_namespace"] == PLUGIN_NAMESPACE.encode()
        assert attrs["plugin_version"] == PLUGIN_VERSION.encode()
        assert node.op_type in OPS
    assert {f.name for f in model.functions} == set(graph.custom_ops)
    assert all(f.domain == "prunevid" for f in model.functions)


def test_manifest_records_hashes_shapes_settings_and_versions(tiny_export, tiny_model_dir):
    from prunevid.exporter.export import checkpoint_hash, sha256

    manifest = json.loads((tiny_export / spec.MANIFEST).read_text())
    assert manifest["opset"] == 18 and manifest["dtype"] == "fp32"
    assert set(manifest["versions"]) == {"prunevid", "torch", "onnx"}
    assert manifest["prune"] == PruneConfig().to_json(exclude=("layer", "frames"))  # one stored value each
    assert manifest["geometry"]["layer"] == PruneConfig().layer and manifest["geometry"]["frames"] == 16
    assert manifest["source"]["sha256"] == checkpoint_hash(tiny_model_dir)
    for name in spec.GRAPH_ORDER:
        entry = manifest["graphs"][name]
        path = tiny_export / entry["file"]
        assert entry["sha256"] == {path.name: sha256(path)}
        for tensor in entry["inputs"] + entry["outputs"]:
            assert len(tensor["min"]) == len(tensor["opt"]) == len(tensor["max"]) == len(tensor["dims"])
            assert all(a <= b <= c for a, b, c in zip(tensor["min"], tensor["opt"], tensor["max"]))
    for name in ("tokenizer.json", "preprocessor_config.json"):
        assert manifest["files"][name] == sha256(tiny_export / name)


def clips(real_clips, scene_cut_clip):
    return [*real_clips.values(), scene_cut_clip]


@pytest.mark.parametrize("mode", ["prunevid", "merge", "none"])
def test_runtime_tokens_equal_eager_on_tiny(tiny_export, tiny_model_dir, real_clips, scene_cut_clip, mode):
    runtime = RuntimePipeline(tiny_export, mode=mode)
    eager = EagerPipeline(tiny_model_dir, PruneConfig(mode=Mode(mode)))
    merged_counts, text_lens = set(), set()
    for clip, question in zip(clips(real_clips, scene_cut_clip), QUESTIONS):
        a = runtime.run(clip, question, max_new_tokens=10)
        b = eager.run(clip, question, max_new_tokens=10)
        assert a.token_ids == b.token_ids, (clip.name, question)
        assert a.visual_tokens == b.visual_tokens and a.prompt_tokens == b.prompt_tokens
        assert a.segments == b.segments
        merged_counts.add(a.visual_tokens["merged"])
        text_lens.add(a.prompt_tokens["text"])
    # one export served different merged-token counts and question lengths
    assert len(text_lens) >= 4
    assert len(merged_counts) >= (2 if mode == "prunevid" else 1)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["prunevid", "merge", "none"])
def test_runtime_tokens_equal_eager_on_pllava_token_geometry(medium_export, medium_model_dir, real_clips,
                                                              scene_cut_clip, mode):
    runtime = RuntimePipeline(medium_export, mode=mode)
    eager = EagerPipeline(medium_model_dir, PruneConfig(mode=Mode(mode)))
    for clip, question in zip(clips(real_clips, scene_cut_clip), QUESTIONS):
        a = runtime.run(clip, question, max_new_tokens=6)
        b = eager.run(clip, question, max_new_tokens=6)
        assert a.visual_tokens["encoder"] == 2304
        assert a.token_ids == b.token_ids and a.visual_tokens == b.visual_tokens, (clip.name, question)


def test_check_passes_every_graph_and_end_to_end(tiny_export, scene_cut_clip):
    from prunevid.exporter.validate import check_export

    pytest.importorskip("polygraphy")
    report = check_export(tiny_export, clip=scene_cut_clip, use_polygraphy=True)
    assert report.ok, [o.line() for o in report.outputs if not o.ok]
    assert {o.graph for o in report.outputs} == set(spec.GRAPH_ORDER)
    assert len(report.end_to_end) == 4
    assert report.polygraphy == {name: True for name in spec.GRAPH_ORDER}


def test_check_detects_a_wrong_graph(tiny_export, tiny_model_dir, tmp_path, scene_cut_clip):
    """Swapping in a graph exported with another alpha must make ``check`` fail."""
    from prunevid.exporter.validate import check_export

    other = export(tiny_model_dir, tmp_path / "other", PruneConfig(alpha=0.8), ExportOptions())
    broken = tmp_path / "broken"
    shutil.copytree(tiny_export, broken)
    shutil.copy(other / spec.GRAPH_DIR / "select.onnx", broken / spec.GRAPH_DIR / "select.onnx")
    manifest = json.loads((broken / spec.MANIFEST).read_text())
    manifest["graphs"]["select"]["sha256"] = json.loads((other / spec.MANIFEST).read_text())["graphs"]["select"]["sha256"]
    write_manifest(broken, manifest)  # re-sealed: the folder is consistent, only the graph is wrong
    pytest.importorskip("polygraphy")
    report = check_export(broken, use_polygraphy=True)
    assert not report.ok
    assert any(o.graph == "select" and not o.ok for o in report.outputs)
    assert report.polygraphy["select"] is False and report.polygraphy["merger"] is True


def test_runtime_imports_no_torch(tiny_export, scene_cut_clip, tiny_model_dir):
    """The runtime answers in a process where importing torch fails."""
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from prunevid.cli import main\n"
        "sys.argv = ['prunevid', 'run', '--engine-dir', sys.argv[1], '--video', sys.argv[2],\n"
        "            '--question', 'What happens?', '--max-new-tokens', '5', '--json']\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tiny_export), str(scene_cut_clip)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    eager = EagerPipeline(tiny_model_dir, PruneConfig()).run(scene_cut_clip, "What happens?", max_new_tokens=5)
    assert result["token_ids"] == eager.token_ids
    assert result["settings"]["backend"] == "onnxruntime-cpu"


def test_short_clip_is_sampled_like_the_eager_path(tiny_export, tiny_model_dir, tmp_path):
    clip = write_synthetic_clip(tmp_path / "short.mp4", num_frames=5, scene_cut_at=3)
    a = RuntimePipeline(tiny_export).run(clip, QUESTIONS[0], max_new_tokens=6)
    b = EagerPipeline(tiny_model_dir, PruneConfig()).run(clip, QUESTIONS[0], max_new_tokens=6)
    assert a.token_ids == b.token_ids and a.visual_tokens == b.visual_tokens


def test_export_refuses_non_empty_folder_and_changes_nothing(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="--force"):
        export(tiny_model_dir, out, PruneConfig(), ExportOptions())
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_interrupted_export_leaves_no_complete_looking_folder(tiny_model_dir, tmp_path):
    out = tmp_path / "out"

    def interrupt(message):
        if "decoder_late" in message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export(tiny_model_dir, out, PruneConfig(), ExportOptions(), progress=interrupt)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # the partial folder was removed too


def test_missing_graph_or_changed_file_is_refused(tiny_export, tmp_path):
    broken = tmp_path / "missing"
    shutil.copytree(tiny_export, broken)
    (broken / spec.GRAPH_DIR / "decoder_late.onnx").unlink()
    with pytest.raises(ArtifactError, match="missing graph decoder_late"):
        RuntimePipeline(broken)
    changed = tmp_path / "changed"
    shutil.copytree(tiny_export, changed)
    with open(changed / spec.GRAPH_DIR / "merger.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        RuntimePipeline(changed)
    with pytest.raises(ArtifactError, match="no manifest.json"):
        RuntimePipeline(tmp_path)
    listed = tmp_path / "listed"
    shutil.copytree(tiny_export, listed)
    (listed / spec.MANIFEST).write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="is not a JSON object"):
        RuntimePipeline(listed)


def test_cli_export_run_and_errors(tiny_model_dir, tmp_path, scene_cut_clip):
    from click.testing import CliRunner

    from prunevid.cli import cli

    runner = CliRunner()
    out = tmp_path / "exp"
    result = runner.invoke(cli, ["export", "--model", "pllava", "--checkpoint", str(tiny_model_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / spec.MANIFEST).is_file()
    again = runner.invoke(cli, ["export", "--checkpoint", str(tiny_model_dir), "--out", str(out)])
    assert again.exit_code != 0 and "--force" in again.output and "Traceback" not in again.output
    run = runner.invoke(cli, ["run", "--engine-dir", str(out), "--video", str(scene_cut_clip), "--question", "Why?",
                              "--json", "--max-new-tokens", "4"])
    assert run.exit_code == 0, run.output
    payload = json.loads(run.stdout)
    assert {"answer", "token_ids", "visual_tokens", "timings_ms", "ttft_ms"} <= set(payload)
    fixed = runner.invoke(cli, ["run", "--engine-dir", str(out), "--video", str(scene_cut_clip), "--question", "Why?",
                                "--alpha", "0.2"])
    assert fixed.exit_code != 0 and "fixed at export" in fixed.output
    both = runner.invoke(cli, ["run", "--engine-dir", str(out), "--model-dir", str(tiny_model_dir),
                               "--video", str(scene_cut_clip), "--question", "Why?"])
    assert both.exit_code != 0 and "exactly one" in both.output
    assert np.array(payload["token_ids"]).size >= 1


def test_large_weights_go_to_one_external_data_file(tiny_model_dir, tmp_path, scene_cut_clip, monkeypatch):
    """Graphs whose weights pass the threshold (2 GB in real use) are saved with external data."""
    import prunevid.exporter.export as export_module

    monkeypatch.setattr(export_module, "EXTERNAL_DATA_BYTES", 100_000)
    out = export(tiny_model_dir, tmp_path / "ext", PruneConfig(), ExportOptions())
    manifest = json.loads((out / spec.MANIFEST).read_text())
    external = {n for n, g in manifest["graphs"].items() if g["external_data"]}
    assert {"decoder_early", "decoder_late"} <= external
    assert "select" not in external
    for name in external:
        assert set(manifest["graphs"][name]["sha256"]) == {f"{name}.onnx", f"{name}.onnx.data"}
        onnx.checker.check_model(str(out / spec.GRAPH_DIR / f"{name}.onnx"), full_check=True)
    files = sorted(p.name for p in (out / spec.GRAPH_DIR).iterdir())
    assert files == sorted([f"{n}.onnx" for n in spec.GRAPH_ORDER] + [f"{n}.onnx.data" for n in external])
    a = RuntimePipeline(out).run(scene_cut_clip, QUESTIONS[1], max_new_tokens=5)
    b = EagerPipeline(tiny_model_dir, PruneConfig()).run(scene_cut_clip, QUESTIONS[1], max_new_tokens=5)
    assert a.token_ids == b.token_ids


def test_cli_check_with_trt_compat_lists_parser_findings(tiny_export, scene_cut_clip):
    from click.testing import CliRunner

    from prunevid.cli import cli

    result = CliRunner().invoke(cli, ["check", str(tiny_export), "--video", str(scene_cut_clip), "--trt-compat"])
    out = result.stdout
    for name in spec.GRAPH_ORDER:
        assert f"[trt 10.3] {name}:" in out and f"[trt 11] {name}:" in out
    assert "needs plugin prunevid::PvDpcKnn" in out  # the custom op is reported for TensorRT 11
    assert "plugin ignored before TensorRT 10.7" in out
    error_lines = [line for line in out.splitlines() if line.startswith("ERROR")]
    assert result.exit_code == 0, result.output
    assert "all checks passed" in out
    assert not error_lines, "\n".join(error_lines)


def test_fp16_export_passes_the_checker_and_runs(tiny_model_dir, tmp_path, scene_cut_clip):
    out = export(tiny_model_dir, tmp_path / "fp16", PruneConfig(), ExportOptions(dtype="fp16"))
    manifest = json.loads((out / spec.MANIFEST).read_text())
    assert manifest["dtype"] == "fp16"
    pixel = manifest["graphs"]["encoder"]["inputs"][0]
    scores = manifest["graphs"]["score"]["outputs"][0]
    assert pixel["dtype"] == "float16" and scores["dtype"] == "float32"
    for name in spec.GRAPH_ORDER:
        onnx.checker.check_model(str(out / spec.GRAPH_DIR / f"{name}.onnx"), full_check=True)
    answer = RuntimePipeline(out).run(scene_cut_clip, QUESTIONS[0], max_new_tokens=4)
    assert 1 <= len(answer.token_ids) <= 4
    assert 0 < answer.visual_tokens["kept"] < answer.visual_tokens["merged"] < answer.visual_tokens["encoder"]


def test_cli_trtexec_commands_follow_the_manifest_profiles(tiny_export):
    from click.testing import CliRunner

    from prunevid.cli import cli

    runner = CliRunner()
    ten = runner.invoke(cli, ["trtexec", str(tiny_export), "--fp16"])
    assert ten.exit_code == 0, ten.output
    lines = ten.stdout.strip().splitlines()
    assert len(lines) == len(spec.GRAPH_ORDER)
    assert all(line.startswith("trtexec --onnx=") and "--fp16" in line for line in lines)
    assert "--minShapes=pixel_values:1x3x112x112" in lines[0] and "--maxShapes=pixel_values:16x3x112x112" in lines[0]
    eleven = runner.invoke(cli, ["trtexec", str(tiny_export), "--trt-major", "11"])
    assert eleven.exit_code == 0 and "--fp16" not in eleven.stdout and "--useCudaGraph" not in eleven.stdout
    refused = runner.invoke(cli, ["trtexec", str(tiny_export), "--trt-major", "11", "--fp16"])
    assert refused.exit_code != 0 and "TensorRT 11 has no --fp16" in refused.output


def test_cli_trtexec_with_plugin_library_strips_functions_before_10_7(tiny_export, tmp_path):
    from click.testing import CliRunner

    from prunevid.cli import cli
    from prunevid.plugins.ops import DOMAIN

    export_dir = tmp_path / "export"
    shutil.copytree(tiny_export, export_dir)
    lib = tmp_path / "libprunevid_plugins.so"
    lib.write_bytes(b"")
    record = lib.with_suffix(".json")
    record.write_text(json.dumps({"tensorrt": "10.3.0.26", "archs": ["sm_87"]}))
    res = CliRunner().invoke(cli, ["trtexec", str(export_dir), "--plugin-lib", str(lib)])
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert all(f"--dynamicPlugins={lib}" in line and "--staticPlugins" not in line for line in lines)
    stripped = sorted(export_dir.rglob("*.plugins.onnx"))
    assert [p.name for p in stripped] == ["merger.plugins.onnx", "select.plugins.onnx"]
    for path in stripped:
        assert f"--onnx={path}" in res.stdout
        model = onnx.load(str(path), load_external_data=False)
        assert not [f for f in model.functions if f.domain == DOMAIN]
        assert any(n.domain == DOMAIN for n in model.graph.node)
    # a library for TensorRT >= 10.7: the parser prefers the plugin, the graphs stay as exported
    record.write_text(json.dumps({"tensorrt": "10.13.3.9", "archs": ["sm_87"]}))
    res = CliRunner().invoke(cli, ["trtexec", str(export_dir), "--plugin-lib", str(lib)])
    assert res.exit_code == 0 and ".plugins.onnx" not in res.stdout
    missing = CliRunner().invoke(cli, ["trtexec", str(export_dir), "--plugin-lib", str(tmp_path / "none.so")])
    assert missing.exit_code != 0 and "Error: plugin library" in missing.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--frames", "0"], "--frames"),
        (["--frames", "5"], "temporal_k"),
        (["--opset", "30"], "--opset"),
        (["--alpha", "1.5"], "--alpha"),
        (["--layer", "11"], "leaves no layer"),
        (["--frames", "3", "--mode", "none"], "temporal_k"),  # the merger is exported whatever the mode
        (["--lora-alpha", "nan"], "finite"),
    ],
)
def test_cli_export_refuses_impossible_settings_without_writing(tiny_model_dir, tmp_path, args, message):
    from click.testing import CliRunner

    from prunevid.cli import cli

    out = tmp_path / "never"
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(tiny_model_dir), "--out", str(out), *args])
    assert result.exit_code != 0 and message in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert isinstance(result.exception, SystemExit)  # click's clean exit, not a traceback
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_export_refuses_a_folder_that_is_not_a_checkpoint(tmp_path):
    from click.testing import CliRunner

    from prunevid.cli import cli

    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "no config.json" in result.output


def test_runtime_defaults_to_the_exported_mode_and_refuses_export_settings(tiny_model_dir, tmp_path, scene_cut_clip):
    from click.testing import CliRunner

    from prunevid.cli import cli

    out = export(tiny_model_dir, tmp_path / "baseline", PruneConfig(mode=Mode.NONE), ExportOptions())
    assert RuntimePipeline(out).mode == "none"
    assert RuntimePipeline(out, mode="prunevid").mode == "prunevid"
    result = CliRunner().invoke(cli, ["run", "--engine-dir", str(out), "--video", str(scene_cut_clip),
                                      "--question", "q", "--preset", "pllava-vcg"])
    assert result.exit_code != 0 and "--preset is fixed at export" in result.output


def test_unwritable_output_is_a_one_line_error(tiny_model_dir):
    from click.testing import CliRunner

    from prunevid.cli import cli

    under_a_file = tiny_model_dir / "config.json" / "sub"
    for args in (["make-tiny", str(under_a_file)], ["export", "--checkpoint", str(tiny_model_dir), "--out", str(under_a_file)]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code != 0 and isinstance(result.exception, SystemExit)
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and f"cannot write {under_a_file}" in errors[0]


def test_merger_graph_token_of_cell_equals_eager(tiny_export, real_clips, scene_cut_clip):
    """C2 provenance: the exported merger's ``token_of_cell`` is the eager one, on encoded clips."""
    import torch

    from prunevid.reference import merge_visual
    from prunevid.runtime.backend import OrtBackend
    from prunevid.runtime.video import Preprocess, load_video

    runtime = RuntimePipeline(tiny_export)
    g = runtime.geometry
    backend = OrtBackend({n: tiny_export / spec.GRAPH_DIR / f"{n}.onnx" for n in ("encoder", "merger")})
    pp = Preprocess.from_json(tiny_export / spec.PREPROCESSOR_FILE)
    layouts = set()
    for clip in clips(real_clips, scene_cut_clip):
        feats = np.asarray(backend.run("encoder", {"pixel_values": load_video(clip, g.frames, pp)})["visual_features"])
        out = {k: np.asarray(v) for k, v in backend.run("merger", {"visual_features": feats}).items()}
        ref = merge_visual(torch.from_numpy(feats), PruneConfig.from_json(runtime.artifact.prune)).merged
        assert out["token_of_cell"].dtype == np.int64 and out["token_of_cell"].shape == (g.frames, g.tokens_per_frame)
        np.testing.assert_array_equal(out["token_of_cell"], ref.token_of_cell.numpy())
        assert int(out["token_of_cell"].max()) == int(out["num_merged"]) - 1
        layouts.add(tuple(ref.window_sizes))
    assert len(layouts) >= 2  # the clips segment differently


def test_run_builds_the_prompt_once_and_a_new_question_anew(tiny_export, scene_cut_clip, monkeypatch):
    import prunevid.runtime.text as text

    runtime = RuntimePipeline(tiny_export)
    built = []
    real = text.export_prompt
    monkeypatch.setattr(text, "export_prompt", lambda *a: built.append(a[2]) or real(*a))
    runtime.run(scene_cut_clip, QUESTIONS[0], max_new_tokens=3)
    assert built == [QUESTIONS[0]]  # the up-front check and generate share one tokenisation
    runtime.run(scene_cut_clip, QUESTIONS[1], max_new_tokens=3)
    assert built == [QUESTIONS[0], QUESTIONS[1]]
    assert runtime.prompt(QUESTIONS[0], None).ids != runtime.prompt(QUESTIONS[1], None).ids
