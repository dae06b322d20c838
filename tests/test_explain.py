"""``prunevid explain``: the facts, the picture read back pixel by pixel, both paths, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prunevid import explain as ex
from prunevid.explain import BACKGROUND, MARKERS, SCENE_COLOURS, Layout, TokenFacts
from test_cli import QUESTION, assert_one_line_error, invoke

# A hand-made run on a 4 x 4 grid: scene 0 = frames 0-1 with static cells {0, 1, 4, 5} passing
# through unmerged (4 tokens), the 12 dynamic cells of each frame unmerged (12 tokens each);
# scene 1 = frames 2-3, nothing static, each frame's 16 cells merged in horizontal pairs (8 tokens).
STATIC_CELLS = [0, 1, 4, 5]
GROUPS = (4, 12, 12, 0, 8, 8)  # token order: static 0..3, f0 4..15, f1 16..27, f2 28..35, f3 36..43
KEPT = [0, 2, 5, 16, 20, 29, 36, 43]


def hand_made_token_of_cell() -> np.ndarray:
    tok = np.zeros((4, 16), dtype=np.int64)
    dynamic = [c for c in range(16) if c not in STATIC_CELLS]
    for t, first in ((0, 4), (1, 16)):
        tok[t, STATIC_CELLS] = np.arange(4)
        tok[t, dynamic] = first + np.arange(12)
    for t, first in ((2, 28), (3, 36)):
        tok[t] = first + np.arange(16) // 2  # cells (0, 1) -> first, (2, 3) -> first + 1, ...
    return tok


def hand_made_frames(size: int = 112) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(4, size, size, 3), dtype=np.uint8)


@pytest.fixture()
def facts() -> TokenFacts:
    return TokenFacts(hand_made_frames(), (4, 4), (2, 2), GROUPS, hand_made_token_of_cell(), np.array(KEPT),
                      "prunevid", 10, "clip.mp4", QUESTION)


def test_facts_per_frame(facts: TokenFacts) -> None:
    data = facts.to_json()
    frames = data["frames"]
    assert [f["scene"] for f in frames] == [0, 0, 1, 1]
    assert frames[0]["static_cells"] == STATIC_CELLS and frames[1]["static_cells"] == STATIC_CELLS
    assert frames[2]["static_cells"] == [] and frames[3]["static_cells"] == []
    # static tokens 0 and 2 kept: cells 0 and 4 in both frames of scene 0; frame 0 keeps token 5
    # (its 2nd dynamic cell, cell 3); frame 1 keeps 16 and 20 (dynamic cells 2 and 8)
    assert [c for c, s in enumerate(frames[0]["survived"]) if s] == [0, 3, 4]
    assert [c for c, s in enumerate(frames[1]["survived"]) if s] == [0, 2, 4, 8]
    # frame 2 keeps token 29 = cells 2 and 3; frame 3 keeps 36 and 43 = cells 0, 1, 14, 15
    assert [c for c, s in enumerate(frames[2]["survived"]) if s] == [2, 3]
    assert [c for c, s in enumerate(frames[3]["survived"]) if s] == [0, 1, 14, 15]
    assert frames[3]["token_of_cell"][:4] == [36, 36, 37, 37]
    assert data["counts"] == {"encoder": 64, "merged": 44, "static_tokens": 4, "dynamic_tokens": 40, "kept": 8,
                              "static_cells": 8, "kept_cells": 13}
    assert data["scenes"] == [{"scene": 0, "frames": [0, 1], "static_tokens": 4},
                              {"scene": 1, "frames": [2, 3], "static_tokens": 0}]


def test_inconsistent_facts_are_refused() -> None:
    tok = hand_made_token_of_cell()
    tok[2, 5] = 4  # a frame-0 dynamic token in frame 2
    with pytest.raises(ValueError, match="cell 5 of frame 2"):
        TokenFacts(hand_made_frames(), (4, 4), (2, 2), GROUPS, tok, np.array(KEPT), "prunevid", 10)
    with pytest.raises(ValueError, match="window sizes"):
        TokenFacts(hand_made_frames(), (4, 4), (3, 2), GROUPS, hand_made_token_of_cell(), np.array(KEPT),
                   "prunevid", 10)
    with pytest.raises(ValueError, match="kept tokens"):
        TokenFacts(hand_made_frames(), (4, 4), (2, 2), GROUPS, hand_made_token_of_cell(), np.array([3, 44]),
                   "prunevid", 10)


def test_unmerged_layout_is_the_identity() -> None:
    windows, groups, tok = ex.unmerged_layout(3, 16)
    assert windows == (3,) and groups == (0, 16, 16, 16)
    assert tok[2, 5] == 2 * 16 + 5 and tok.shape == (3, 16)
    facts = TokenFacts(hand_made_frames()[:3], (4, 4), windows, groups, tok, np.arange(48), "none", 10)
    assert facts.counts()["kept_cells"] == 48 and not facts.static_cells.any()


def marker_class(rgb: tuple[int, int, int]) -> tuple[bool, bool]:
    """(static, kept) of a centre pixel; fails on any colour that is not a marker."""
    found = [key for key, colour in MARKERS.items() if colour == rgb]
    assert len(found) == 1, f"pixel {rgb} is not a marker colour"
    return found[0]


def read_picture(png: Path, num_frames: int, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(static, kept)`` ``[T, L]`` read back from the marker at every cell centre of ``png``."""
    pixels = np.asarray(Image.open(png).convert("RGB"))
    lay = Layout(num_frames, grid)
    cells = grid[0] * grid[1]
    static = np.zeros((num_frames, cells), dtype=bool)
    kept = np.zeros((num_frames, cells), dtype=bool)
    for t in range(num_frames):
        for cell in range(cells):
            x, y = lay.cell_centre(t, cell)
            static[t, cell], kept[t, cell] = marker_class(tuple(int(v) for v in pixels[y, x]))
    return static, kept


def count_panels(png: Path, num_frames: int, grid: tuple[int, int]) -> int:
    """Panels found by scanning each panel row's top border line for runs of scene colour."""
    pixels = np.asarray(Image.open(png).convert("RGB"))
    lay = Layout(num_frames, grid)
    panel_w = lay.panel[0] + 2 * ex.BORDER
    found = 0
    for row in range(lay.rows):
        y = lay.panel_origin(row * lay.columns)[1] - 1  # inside the top border
        line = [tuple(int(v) for v in p) for p in pixels[y]]
        runs, run = [], 0
        for rgb in line + [BACKGROUND]:
            if rgb in SCENE_COLOURS:
                run += 1
            elif run:
                runs.append(run)
                run = 0
        assert all(r == panel_w for r in runs), runs
        found += len(runs)
    return found


def test_picture_shows_exactly_the_facts(facts: TokenFacts, tmp_path: Path) -> None:
    png, data_path = ex.write(facts, tmp_path / "explain.png")
    assert data_path == tmp_path / "explain.json"
    image = Image.open(png)
    # 4 panels of 4 x 40 px cells (ceil(160 / 4)) in one row: 4 x (160 + 6) + 3 x 10 + 24 = 718 -> the
    # minimum width 760; height 24 margins + 42 title + 160 + 6 + 16 label + 44 legend = 292
    assert image.size == (760, 292)
    assert count_panels(png, 4, (4, 4)) == 4
    data = json.loads(data_path.read_text())
    static, kept = read_picture(png, 4, (4, 4))
    assert static.tolist() == [[c in f["static_cells"] for c in range(16)] for f in data["frames"]]
    assert kept.tolist() == [f["survived"] for f in data["frames"]]
    assert kept.sum() == 13 and static.sum() == 8


def test_picture_of_many_frames_wraps_rows(tmp_path: Path) -> None:
    t = 10
    windows, groups, tok = ex.unmerged_layout(t, 144)
    kept = np.arange(0, t * 144, 7)
    frames = np.full((t, 48, 48, 3), 200, dtype=np.uint8)
    facts = TokenFacts(frames, (12, 12), windows, groups, tok, kept, "none", 5)
    png, _ = ex.write(facts, tmp_path / "wide.png")
    lay = Layout(t, (12, 12))
    assert (lay.columns, lay.rows, lay.cell) == (8, 2, 14)
    assert Image.open(png).size == lay.size == (24 + 8 * (168 + 6) + 7 * 10, 24 + 42 + 2 * (168 + 6 + 16) + 10 + 44)
    assert count_panels(png, t, (12, 12)) == t
    _, read_kept = read_picture(png, t, (12, 12))
    assert np.flatnonzero(read_kept.reshape(-1)).tolist() == kept.tolist()


def test_write_refuses_bad_outputs(facts: TokenFacts, tmp_path: Path) -> None:
    from prunevid.errors import ArtifactError

    with pytest.raises(ArtifactError, match="not an existing folder"):
        ex.write(facts, tmp_path / "missing" / "x.png")
    with pytest.raises(ArtifactError, match=".png"):
        ex.write(facts, tmp_path / "x.jpg")
    (tmp_path / "taken.json").write_text("mine")
    with pytest.raises(ArtifactError, match="--force"):
        ex.write(facts, tmp_path / "taken.png")
    assert (tmp_path / "taken.json").read_text() == "mine" and not (tmp_path / "taken.png").exists()
    # --force replaces only what prunevid explain wrote: not a user's JSON, PNG or look-alike JSON
    with pytest.raises(ArtifactError, match="did not write it"):
        ex.write(facts, tmp_path / "taken.png", force=True)
    assert (tmp_path / "taken.json").read_text() == "mine" and not (tmp_path / "taken.png").exists()
    (tmp_path / "taken.json").unlink()
    Image.new("RGB", (4, 4)).save(tmp_path / "taken.png")  # a user's picture, a real PNG
    user_png = (tmp_path / "taken.png").read_bytes()
    with pytest.raises(ArtifactError, match="did not write it"):
        ex.write(facts, tmp_path / "taken.png", force=True)
    assert (tmp_path / "taken.png").read_bytes() == user_png and not (tmp_path / "taken.json").exists()
    (tmp_path / "taken.png").unlink()
    ex.write(facts, tmp_path / "taken.png")
    first = (tmp_path / "taken.png").read_bytes()
    (tmp_path / "taken.json").write_text(json.dumps({"counts": {"kept": 8}}))  # looks like facts, is not ours
    with pytest.raises(ArtifactError, match="did not write it"):
        ex.write(facts, tmp_path / "taken.png", force=True)
    assert (tmp_path / "taken.png").read_bytes() == first
    (tmp_path / "taken.json").unlink()
    (tmp_path / "taken.png").unlink()
    ex.write(facts, tmp_path / "taken.png")
    ex.write(facts, tmp_path / "taken.png", force=True)  # its own previous outputs: replaced
    assert json.loads((tmp_path / "taken.json").read_text())["counts"]["kept"] == 8
    assert ex.written_by_prunevid(tmp_path / "taken.png") and ex.written_by_prunevid(tmp_path / "taken.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.json", "taken.png"]
    umask = os.umask(0)
    os.umask(umask)
    assert {(tmp_path / name).stat().st_mode & 0o777 for name in ("taken.json", "taken.png")} == {0o666 & ~umask}


# ---- the command, on the tiny model --------------------------------------------------------------


def explain_args(folder_flag: str, folder: Path, video: Path, out: Path, *extra: str) -> list:
    return ["explain", folder_flag, folder, "--video", video, "--question", QUESTION, "--out", out, *extra]


def test_bad_input_gives_one_line(tiny_model_dir: Path, scene_cut_clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    assert_one_line_error(invoke(explain_args("--model-dir", tiny_model_dir, tmp_path / "none.mp4", out)),
                          "not found", "no such", "does not exist")
    neither = tmp_path / "neither"
    neither.mkdir()
    assert_one_line_error(invoke(explain_args("--model-dir", neither, scene_cut_clip, out)), "config.json")
    assert_one_line_error(invoke(explain_args("--engine-dir", neither, scene_cut_clip, out)), "manifest")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert_one_line_error(invoke(explain_args("--model-dir", tiny_model_dir, scene_cut_clip, a_file / "x.png")),
                          "cannot write")
    assert_one_line_error(invoke(explain_args("--model-dir", tiny_model_dir, scene_cut_clip, neither)), ".png")
    assert_one_line_error(invoke(["explain", "--video", scene_cut_clip, "--question", QUESTION, "--out", out]),
                          "exactly one")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "neither"] and not list(neither.iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_read_only_folder_gives_one_line(tiny_model_dir: Path, scene_cut_clip: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert_one_line_error(invoke(explain_args("--model-dir", tiny_model_dir, scene_cut_clip, locked / "x.png")),
                              "not writable")
    finally:
        locked.chmod(0o700)
    assert not list(locked.iterdir())


def clip_cases(real_clips: dict[str, Path], scene_cut_clip: Path) -> list[Path]:
    return [scene_cut_clip, *([real_clips["bikes"]] if "bikes" in real_clips else [])]


def test_eager_and_runtime_give_the_same_picture(tiny_model_dir: Path, tiny_export: Path, real_clips,
                                                 scene_cut_clip: Path, tmp_path: Path) -> None:
    for i, clip in enumerate(clip_cases(real_clips, scene_cut_clip)):
        pictures = {}
        for flag, folder in (("--model-dir", tiny_model_dir), ("--engine-dir", tiny_export)):
            out = tmp_path / f"{i}{flag.strip('-')}.png"
            result = invoke(explain_args(flag, folder, clip, out))
            assert result.exit_code == 0, (result.output, result.exception)
            assert result.stdout.strip() == str(out)
            pictures[flag] = (np.asarray(Image.open(out).convert("RGB")), json.loads(ex.json_path(out).read_text()))
        (eager_px, eager), (runtime_px, runtime) = pictures["--model-dir"], pictures["--engine-dir"]
        assert eager == runtime
        assert np.array_equal(eager_px, runtime_px)
        # the facts are the run's: the same counts as `prunevid run --json`, every cell read back
        counts = eager["counts"]
        answer = json.loads(invoke(["run", "--engine-dir", tiny_export, "--video", clip, "--question", QUESTION,
                                    "--json", "--max-new-tokens", "1"]).stdout)
        assert (counts["encoder"], counts["merged"], counts["kept"]) == tuple(
            answer["visual_tokens"][k] for k in ("encoder", "merged", "kept"))
        assert [s["static_tokens"] for s in eager["scenes"]] == answer["segments"]["static_sizes"]
        assert 0 < counts["kept"] < counts["merged"] < counts["encoder"] == 256
        static, kept = read_picture(tmp_path / f"{i}model-dir.png", 16, (4, 4))
        assert kept.tolist() == [f["survived"] for f in eager["frames"]]
        assert static.tolist() == [[c in f["static_cells"] for c in range(16)] for f in eager["frames"]]
        assert count_panels(tmp_path / f"{i}model-dir.png", 16, (4, 4)) == 16


def test_baseline_keeps_every_cell(tiny_export: Path, scene_cut_clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "none.png"
    result = invoke(explain_args("--engine-dir", tiny_export, scene_cut_clip, out, "--mode", "none"))
    assert result.exit_code == 0, (result.output, result.exception)
    data = json.loads(ex.json_path(out).read_text())
    assert data["counts"]["kept"] == data["counts"]["merged"] == 256 and data["counts"]["static_cells"] == 0
    assert data["frames"][3]["token_of_cell"] == list(range(48, 64))
    _, kept = read_picture(out, 16, (4, 4))
    assert kept.all()
    assert_one_line_error(invoke(explain_args("--engine-dir", tiny_export, scene_cut_clip, tmp_path / "f.png",
                                              "--frames", "8")), "frames")
