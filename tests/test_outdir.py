"""Output folders of ``export`` and ``make-tiny``: what ``--force`` may replace, what it never
touches, concurrent writers, folders filled during a run, interrupts and stale staging folders."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prunevid.config import PruneConfig
from prunevid.errors import ArtifactError, ConfigError
from prunevid.exporter.export import ExportOptions, export
from test_cli import invoke  # tests/ is on sys.path (rootdir conftest)


ROOT = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def the_error(stderr: str) -> str:
    """The single ``Error:`` line, which must be the last line, with no traceback."""
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1, stderr
    assert lines[-1] == errors[0], stderr
    assert "Traceback" not in stderr, stderr
    return errors[0]


def cli_process(*args: object, cwd: Path | None = None) -> subprocess.Popen:
    """``prunevid ARGS`` in a subprocess running this checkout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    # SIGINT back to its default in the child: a shell without job control starts a background job
    # (`.ci/run > log &`) with SIGINT ignored, children inherit that, and Python then installs no
    # KeyboardInterrupt handler, so the interrupt tests' SIGINT would be dropped (seen in a CI run)
    return subprocess.Popen([sys.executable, "-m", "prunevid.cli", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_staging(parent: Path, name: str, proc: subprocess.Popen, timeout: float = 120.0,
                     ignore: tuple[Path, ...] = ()) -> Path:
    """The hidden staging folder of ``name`` once the process has created it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in sorted(parent.glob(f".{name}.partial-*")) if p.is_dir() and p not in ignore]
        if found:
            return found[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError(f"no staging folder for {name} after {timeout} s")


@pytest.fixture()
def own_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny checkpoint (a failing test must not destroy the shared one)."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "checkpoints" / "model"))


# ---- what --force never touches ---------------------------------------------------------------


def test_force_refuses_the_current_folder_and_its_parents(own_checkpoint, tmp_path, monkeypatch):
    work = tmp_path / "a" / "work"
    work.mkdir(parents=True)
    (work / "sentinel.txt").write_text("keep me")
    monkeypatch.chdir(work)
    for out in (".", "..", str(work), "../work", str(tmp_path)):
        before = snapshot(tmp_path / "a")
        result = invoke(["export", "--checkpoint", own_checkpoint, "--out", out, "--force"])
        assert result.exit_code == 1, (out, result.output)
        assert "current folder" in the_error(result.stderr), out
        assert snapshot(tmp_path / "a") == before
    result = invoke(["make-tiny", "--force", "."])
    assert result.exit_code == 1 and "current folder" in the_error(result.stderr)
    assert sorted(p.name for p in work.iterdir()) == ["sentinel.txt"]
    assert (work / "sentinel.txt").read_text() == "keep me"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["work"]


def test_force_refuses_the_checkpoint_and_folders_holding_it(own_checkpoint, tmp_path):
    before = snapshot(tmp_path / "checkpoints")
    (tmp_path / "link").symlink_to(tmp_path / "checkpoints")
    for out in (own_checkpoint, own_checkpoint.parent, tmp_path / "link" / "model", tmp_path / "link"):
        result = invoke(["export", "--checkpoint", own_checkpoint, "--out", out, "--force"])
        assert result.exit_code == 1, (out, result.output)
        assert "checkpoint" in the_error(result.stderr), out
        assert snapshot(tmp_path / "checkpoints") == before, out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "link"]


def test_force_replaces_only_a_prunevid_artifact_of_the_same_kind(tiny_model_dir, tiny_export, tmp_path):
    from prunevid.runtime.artifact import open_artifact

    # a folder that is not prunevid's, one that is a tiny model (not an export), and an export
    # holding a file it did not write: refused even with --force, nothing changed
    theirs = tmp_path / "theirs"
    (theirs / "sub").mkdir(parents=True)
    (theirs / "notes.txt").write_text("mine")
    (theirs / "sub" / "data.bin").write_bytes(b"\x00\x01")
    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    extra = Path(shutil.copytree(tiny_export, tmp_path / "extra"))
    (extra / "graphs" / "merger.engine").write_bytes(b"engine built by the user")
    for out, reason in ((theirs, "not a prunevid export"), (model, "not a prunevid export"),
                        (extra, "merger.engine")):
        before = snapshot(out)
        result = invoke(["export", "--checkpoint", tiny_model_dir, "--out", out, "--force"])
        assert result.exit_code == 1, (out, result.output)
        assert reason in the_error(result.stderr), out
        assert snapshot(out) == before

    # make-tiny --force does not replace an export either, but does replace its own kind
    previous = Path(shutil.copytree(tiny_export, tmp_path / "previous"))
    before = snapshot(previous)
    result = invoke(["make-tiny", "--force", previous])
    assert result.exit_code == 1 and "not a prunevid tiny model" in the_error(result.stderr)
    assert snapshot(previous) == before
    result = invoke(["make-tiny", "--force", "--seed", "3", model])
    assert result.exit_code == 0, result.output
    assert '"seed": 3' in (model / "prunevid_tiny.json").read_text()

    # --force over a previous export replaces it
    result = invoke(["export", "--checkpoint", tiny_model_dir, "--out", previous, "--force", "--alpha", "0.3"])
    assert result.exit_code == 0, result.output
    artifact = open_artifact(previous)
    assert artifact.manifest["prune"]["alpha"] == 0.3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extra", "model", "previous", "theirs"]


# ---- concurrent writers and folders filled during a run ---------------------------------------


def test_concurrent_exports_into_one_new_folder_one_wins(tiny_model_dir, tmp_path):
    from prunevid.runtime.artifact import open_artifact

    out = tmp_path / "out"
    procs = [cli_process("export", "--checkpoint", tiny_model_dir, "--out", out, "--alpha", alpha)
             for alpha in ("0.3", "0.5")]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    winner = next(i for i, (code, _, _) in enumerate(results) if code == 0)
    loser = results[1 - winner]
    assert loser[1] == ""  # nothing on stdout: the folder was not "written"
    message = the_error(loser[2])
    assert "another prunevid" in message or "not empty" in message, message
    artifact = open_artifact(out)  # complete: every graph present and hashed
    assert artifact.manifest["prune"]["alpha"] == (0.3, 0.5)[winner]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder, no lock file left


def test_a_locked_target_is_refused_at_once(tiny_model_dir, tmp_path):
    from prunevid.outdir import EXPORT, write_folder

    out = tmp_path / "out"
    with write_folder(out, EXPORT) as staging:
        started = time.monotonic()
        with pytest.raises(ArtifactError, match="another prunevid is writing"):
            export(tiny_model_dir, out, PruneConfig(), ExportOptions())
        assert time.monotonic() - started < 10  # refused before the export work
        with pytest.raises(ArtifactError, match="another prunevid is writing"):
            from prunevid.model.tiny import make_tiny

            make_tiny(out)
        assert staging.is_dir() and not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the lock and the staging marker are gone
    assert list(out.iterdir()) == []  # what the block wrote: nothing


def test_folder_filled_during_the_export_is_kept(tiny_model_dir, tmp_path):
    out = tmp_path / "out"

    def someone_else_writes(message: str) -> None:
        if message.startswith("[2/"):  # the second graph, whatever the graph count
            out.mkdir()
            (out / "theirs.txt").write_text("written while prunevid exported")

    with pytest.raises(ArtifactError, match="while prunevid was writing"):
        export(tiny_model_dir, out, PruneConfig(), ExportOptions(), progress=someone_else_writes)
    assert snapshot(out) == {"theirs.txt": b"written while prunevid exported"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# ---- interrupts -------------------------------------------------------------------------------


@pytest.mark.parametrize(("sig", "code", "line"), [(signal.SIGINT, 130, "Error: interrupted"),
                                                    (signal.SIGTERM, 143, "Error: terminated")])
def test_interrupted_export_leaves_no_folder(tiny_model_dir, tmp_path, sig, code, line):
    proc = cli_process("export", "--checkpoint", tiny_model_dir, "--out", tmp_path / "out")
    wait_for_staging(tmp_path, "out", proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert the_error(stderr) == line
    assert stdout == ""
    assert list(tmp_path.iterdir()) == []  # no output, no staging folder, no lock file


def test_killed_run_is_cleaned_up_by_the_next_one(tiny_model_dir, tmp_path):
    # a staging folder of another target and a folder that only looks like one are kept
    other = tmp_path / ".other.partial-x"
    other.mkdir()
    mine = tmp_path / ".out.partial-mine"
    mine.mkdir()
    (mine / "user.txt").write_text("not prunevid's")
    proc = cli_process("export", "--checkpoint", tiny_model_dir, "--out", tmp_path / "out")
    stale = wait_for_staging(tmp_path, "out", proc, ignore=(mine,))
    proc.kill()  # SIGKILL: no handler runs, the staging folder stays
    proc.communicate(timeout=60)
    assert stale.is_dir()

    result = invoke(["make-tiny", tmp_path / "out"])
    assert result.exit_code == 0, result.output
    assert not stale.exists()
    assert (mine / "user.txt").read_text() == "not prunevid's"
    assert other.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.partial-x", ".out.partial-mine", "out"]


@pytest.mark.parametrize(("command", "target"), [
    (["make-tiny", "{tmp}/m"], "prunevid.model.tiny.make_tiny"),
    (["check", "{tmp}/e", "--video", "{tmp}/v.mp4"], "prunevid.exporter.validate.check_export"),
])
def test_ctrl_c_in_any_command_is_one_line_and_status_130(command, target, tmp_path, monkeypatch):
    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, interrupted)
    result = invoke([part.format(tmp=tmp_path) for part in command])
    assert result.exit_code == 130, result.output
    assert the_error(result.stderr) == "Error: interrupted"
    assert list(tmp_path.iterdir()) == []


def test_failed_export_removes_the_parents_it_created(tiny_model_dir, tmp_path):
    (tmp_path / "kept").mkdir()
    with pytest.raises(ConfigError, match="--opset must be in"):
        export(tiny_model_dir, tmp_path / "kept" / "new" / "deeper" / "out", PruneConfig(), ExportOptions(opset=5))
    assert [p.name for p in tmp_path.iterdir()] == ["kept"]
    assert list((tmp_path / "kept").iterdir()) == []


def test_force_at_the_rename_replaces_only_an_artifact(tiny_export, tmp_path):
    from prunevid.outdir import EXPORT, write_folder

    out = tmp_path / "out"
    with write_folder(out, EXPORT, force=True) as staging:
        (staging / "new.txt").write_text("new")
        shutil.copytree(tiny_export, out)  # a previous export appears while this one is written
    assert snapshot(out) == {"new.txt": b"new"}

    theirs = tmp_path / "theirs"
    with pytest.raises(ArtifactError, match="not a prunevid export"):
        with write_folder(theirs, EXPORT, force=True) as staging:
            (staging / "new.txt").write_text("new")
            theirs.mkdir()
            (theirs / "theirs.txt").write_text("someone else's")
    assert snapshot(theirs) == {"theirs.txt": b"someone else's"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "theirs"]
