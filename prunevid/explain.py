"""What PruneVid kept of a clip: per-cell facts from an eager or a runtime run, drawn as one picture.

    one run (eager reference or runtime) --facts_from_*--> TokenFacts:
        the frames as the encoder saw them [T, S, S, 3], the token grid (h, w), the scene windows,
        the token-order group sizes, token_of_cell [T, L] (contract C2), the merged tokens kept
        after layer K (visual-relative)
    TokenFacts --render--> one panel per frame in a grid; each panel framed in its scene's colour;
        every cell carries a centre marker whose colour says static / dynamic and kept / dropped;
        dropped cells are dimmed; lines separate cells that went into different merged tokens;
        the counts of every stage in the title
    TokenFacts --to_json--> the same facts, frame by frame

Both paths give the same facts, so the same picture, on the same input. Torch-free except
:func:`facts_from_eager`'s caller (the eager pipeline).
"""

from __future__ import annotations

import json
import math
import os
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from prunevid.errors import ArtifactError, ModelDirError

# ---- colours: exact values, so a test (or a user) can read the picture back ---------------------
BACKGROUND = (250, 250, 247)
TEXT = (20, 20, 20)
BOUNDARY = (15, 15, 15)
MARKERS = {  # (static, kept) -> centre-marker colour
    (True, True): (0, 200, 255),
    (False, True): (255, 150, 0),
    (True, False): (0, 70, 140),
    (False, False): (140, 55, 0),
}
SCENE_COLOURS = ((214, 39, 40), (44, 160, 44), (148, 103, 189), (140, 86, 75), (227, 119, 194),
                 (23, 190, 207), (188, 189, 34), (127, 127, 127))
DIM = 0.3  # dropped cells keep this share of their brightness

# ---- geometry of the picture ----------------------------------------------------------------
PANEL_PX = 160  # target panel side; a cell is ceil(PANEL_PX / grid side) pixels
MAX_COLUMNS = 8
MARGIN, GAP, BORDER, LABEL_H, LINE_H, LEGEND_H, MIN_WIDTH = 12, 10, 3, 16, 17, 44, 760


@dataclass(frozen=True)
class TokenFacts:
    """What PruneVid did to each grid cell of each sampled frame.

    Attributes:
        frames: ``[T, S, S, 3]`` uint8, the frames as the encoder saw them (resized, cropped).
        grid: ``(h, w)`` tokens per frame side; ``L = h * w`` cells in row-major order.
        window_sizes: frames per scene segment, in order (they sum to ``T``).
        group_sizes: merged tokens per group in token order: per segment its static group, then
            each of its frames' dynamic group (``len == segments + T``).
        token_of_cell: ``[T, L]`` int64, the merged token each cell went into (contract C2).
        kept_tokens: merged tokens (visual-relative) kept after layer K, ascending.
        mode: ``prunevid``, ``merge`` or ``none``.
        layer: the selection layer K.
        video, question: what was asked (title and JSON only).
    """

    frames: np.ndarray
    grid: tuple[int, int]
    window_sizes: tuple[int, ...]
    group_sizes: tuple[int, ...]
    token_of_cell: np.ndarray
    kept_tokens: np.ndarray
    mode: str
    layer: int
    video: str = ""
    question: str = ""

    def __post_init__(self) -> None:
        t, cells = self.num_frames, self.grid[0] * self.grid[1]
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3 or self.frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 [T, H, W, 3], got {self.frames.dtype} {self.frames.shape}")
        if self.token_of_cell.shape != (t, cells):
            raise ValueError(f"token_of_cell must be [{t}, {cells}], got {list(self.token_of_cell.shape)}")
        if sum(self.window_sizes) != t or min(self.window_sizes, default=0) < 1:
            raise ValueError(f"window sizes {list(self.window_sizes)} do not split {t} frames")
        if len(self.group_sizes) != len(self.window_sizes) + t:
            raise ValueError(f"{len(self.group_sizes)} group sizes for {len(self.window_sizes)} scenes of {t} frames")
        kept = np.asarray(self.kept_tokens)
        if kept.size and (kept.min() < 0 or kept.max() >= self.num_merged or np.any(np.diff(kept) <= 0)):
            raise ValueError(f"kept tokens must be ascending in [0, {self.num_merged})")
        self.static_cells  # noqa: B018  (checks that every cell lies in one of its frame's groups)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def num_merged(self) -> int:
        return int(sum(self.group_sizes))

    @cached_property
    def scene_of_frame(self) -> np.ndarray:
        """``[T]`` scene index of each frame."""
        return np.repeat(np.arange(len(self.window_sizes)), self.window_sizes)

    @cached_property
    def spans(self) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """Per frame, the token spans ``[a, b)`` of its scene's static group and of its dynamic group."""
        out, offset, g = [], 0, iter(self.group_sizes)
        for w in self.window_sizes:
            n = next(g)
            static = (offset, offset + n)
            offset += n
            for _ in range(w):
                n = next(g)
                out.append((static, (offset, offset + n)))
                offset += n
        return out

    @cached_property
    def static_cells(self) -> np.ndarray:
        """``[T, L]`` bool: the cell went into its scene's static group (else its frame's dynamic one)."""
        tok = self.token_of_cell
        static = np.zeros(tok.shape, dtype=bool)
        for t, ((s0, s1), (d0, d1)) in enumerate(self.spans):
            static[t] = (tok[t] >= s0) & (tok[t] < s1)
            stray = ~static[t] & ~((tok[t] >= d0) & (tok[t] < d1))
            if stray.any():
                cell = int(np.argmax(stray))
                raise ValueError(f"cell {cell} of frame {t} went into token {int(tok[t, cell])}, "
                                 f"outside the groups of its frame")
        return static

    @cached_property
    def survived(self) -> np.ndarray:
        """``[T, L]`` bool: the token the cell went into was kept after layer K."""
        return np.isin(self.token_of_cell, np.asarray(self.kept_tokens))

    def counts(self) -> dict[str, int]:
        """Tokens at each stage (encoder, merged: static and dynamic, kept) and cells static / kept."""
        static_tokens = sum(self.static_sizes())
        return {
            "encoder": int(self.token_of_cell.size),
            "merged": self.num_merged,
            "static_tokens": static_tokens,
            "dynamic_tokens": self.num_merged - static_tokens,
            "kept": int(np.asarray(self.kept_tokens).size),
            "static_cells": int(self.static_cells.sum()),
            "kept_cells": int(self.survived.sum()),
        }

    def static_sizes(self) -> list[int]:
        """Static tokens of each scene."""
        sizes, i = [], 0
        for w in self.window_sizes:
            sizes.append(int(self.group_sizes[i]))
            i += 1 + w
        return sizes

    def decisions(self) -> dict[str, Any]:
        """Everything PruneVid decided (the JSON without the picture's inputs): equal between paths."""
        data = self.to_json()
        data.pop("video")
        data.pop("question")
        return data

    def to_json(self) -> dict[str, Any]:
        """The facts beside the picture: counts, scenes, and per frame its static cells, the token
        each cell went into and whether that token survived."""
        h, w = self.grid
        scenes, start = [], 0
        for s, (size, static) in enumerate(zip(self.window_sizes, self.static_sizes(), strict=True)):
            scenes.append({"scene": s, "frames": [start, start + size - 1], "static_tokens": static})
            start += size
        return {
            "video": self.video,
            "question": self.question,
            "mode": self.mode,
            "layer": self.layer,
            "grid": [h, w],
            "counts": self.counts(),
            "scenes": scenes,
            "group_sizes": [int(g) for g in self.group_sizes],
            "kept_tokens": [int(k) for k in np.asarray(self.kept_tokens)],
            "frames": [
                {
                    "frame": t,
                    "scene": int(self.scene_of_frame[t]),
                    "static_cells": [int(c) for c in np.flatnonzero(self.static_cells[t])],
                    "token_of_cell": [int(k) for k in self.token_of_cell[t]],
                    "survived": [bool(s) for s in self.survived[t]],
                }
                for t in range(self.num_frames)
            ],
        }


def unmerged_layout(num_frames: int, cells: int) -> tuple[tuple[int, ...], tuple[int, ...], np.ndarray]:
    """Windows, groups and token_of_cell of a run without merging (mode ``none``): one scene, no
    static group, every cell its own token ``t * L + l`` (contract C2)."""
    token_of_cell = np.arange(num_frames * cells, dtype=np.int64).reshape(num_frames, cells)  # [T, L]
    return (num_frames,), (0, *([cells] * num_frames)), token_of_cell


def square_grid(cells: int) -> tuple[int, int]:
    side = math.isqrt(cells)
    if side * side != cells:
        raise ValueError(f"{cells} tokens per frame is not a square grid")
    return side, side


# ---- collecting facts from a run ------------------------------------------------------------


def frames_for(video: str | Path, num_frames: int, preprocess) -> np.ndarray:
    """``[T, S, S, 3]`` uint8: the sampled frames cropped exactly as the encoder saw them."""
    from prunevid.runtime.video import encoder_view, read_frames

    return encoder_view(read_frames(video, num_frames), preprocess)


def facts_from_eager(pipeline, video: str | Path, question: str) -> TokenFacts:
    """Facts of the last :meth:`EagerPipeline.run` (read from its ``last_trace``)."""
    from prunevid.pruning import group_layout

    trace = pipeline.last_trace
    mc = pipeline.model_cfg
    cells = mc.tokens_per_frame
    frames = frames_for(video, trace["frames"], pipeline.preprocess)
    merged = trace["merged"]
    if merged is None:
        windows, groups, token_of_cell = unmerged_layout(trace["frames"], cells)
    else:
        windows = tuple(merged.window_sizes)
        groups = tuple(group_layout(merged.static_sizes, merged.dynamic_sizes, merged.window_sizes))
        token_of_cell = merged.token_of_cell.cpu().numpy().astype(np.int64)
    return TokenFacts(frames, tuple(mc.pooling_shape[1:]), windows, groups, token_of_cell,
                      trace["visual_keep"].cpu().numpy().astype(np.int64), pipeline.cfg.mode.value,
                      pipeline.cfg.layer, str(video), question)


def facts_from_runtime(pipeline, video: str | Path, question: str) -> TokenFacts:
    """Facts of the last :meth:`RuntimePipeline.run` (read from its ``last_trace``). No torch."""
    from prunevid.model.config import read_config

    trace, host, g = pipeline.last_trace, np.asarray, pipeline.geometry
    frames = frames_for(video, g.frames, pipeline.preprocess)
    num = int(trace["num_merged"])
    merger = trace.get("merger")
    if merger is None:
        windows, groups, token_of_cell = unmerged_layout(g.frames, g.tokens_per_frame)
    else:
        windows = tuple(int(w) for w in host(merger["window_sizes"]) if w > 0)  # padded with zeros
        groups = tuple(int(n) for n in host(merger["group_sizes"])[: len(windows) + g.frames])
        token_of_cell = np.asarray(host(merger["token_of_cell"]), dtype=np.int64)  # [T, L]
    keep = np.asarray(host(trace["keep_index"]), dtype=np.int64)  # prompt positions, ascending
    start = int(trace["image_pos"])
    kept = keep[(keep >= start) & (keep < start + num)] - start  # visual-relative
    try:
        grid = tuple(read_config(pipeline.artifact.root).pooling_shape[1:])
    except ModelDirError:  # an export without config.json: PLLaVA pools to a square
        grid = square_grid(g.tokens_per_frame)
    return TokenFacts(frames, grid, windows, groups, token_of_cell, kept, pipeline.mode,
                      g.layer, str(video), question)


# ---- the picture ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where everything goes: panels of ``cell``-pixel cells in ``columns`` columns."""

    num_frames: int
    grid: tuple[int, int]

    @property
    def cell(self) -> int:
        return max(8, math.ceil(PANEL_PX / max(self.grid)))

    @property
    def panel(self) -> tuple[int, int]:
        """``(width, height)`` of one frame's image."""
        return self.cell * self.grid[1], self.cell * self.grid[0]

    @property
    def columns(self) -> int:
        return min(self.num_frames, MAX_COLUMNS)

    @property
    def rows(self) -> int:
        return math.ceil(self.num_frames / self.columns)

    @property
    def title_h(self) -> int:
        return 2 * LINE_H + 8

    @property
    def pitch(self) -> tuple[int, int]:
        """Distance between neighbouring panels, across and down."""
        w, h = self.panel
        return w + 2 * BORDER + GAP, h + 2 * BORDER + LABEL_H + GAP

    @property
    def size(self) -> tuple[int, int]:
        px, py = self.pitch
        width = max(MIN_WIDTH, 2 * MARGIN + self.columns * px - GAP)
        return width, 2 * MARGIN + self.title_h + self.rows * py - GAP + LEGEND_H

    def panel_origin(self, t: int) -> tuple[int, int]:
        """Top-left pixel of frame ``t``'s image."""
        px, py = self.pitch
        row, col = divmod(t, self.columns)
        return MARGIN + col * px + BORDER, MARGIN + self.title_h + row * py + LABEL_H + BORDER

    def cell_centre(self, t: int, cell: int) -> tuple[int, int]:
        """``(x, y)`` of the centre pixel of grid cell ``cell`` (row-major) of frame ``t``."""
        x0, y0 = self.panel_origin(t)
        r, c = divmod(cell, self.grid[1])
        return x0 + c * self.cell + self.cell // 2, y0 + r * self.cell + self.cell // 2


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def title_lines(facts: TokenFacts) -> list[str]:
    c = facts.counts()
    share = 100.0 * c["kept"] / c["encoder"]
    h, w = facts.grid
    stages = (f"{c['encoder']} visual tokens ({facts.num_frames} frames x {h}x{w}) -> {c['merged']} merged "
              f"({c['static_tokens']} static, {c['dynamic_tokens']} dynamic; {len(facts.window_sizes)} scenes) "
              f"-> {c['kept']} kept after layer {facts.layer} ({share:.1f}%)")
    name = Path(facts.video).name if facts.video else "clip"
    return [stages, f"mode {facts.mode}, {name}: {facts.question}"]


def _fit(text: str, font, width: int) -> str:
    """``text`` cut with an ellipsis to fit ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def render(facts: TokenFacts):
    """The picture as a PIL image (see the module docstring for what it shows)."""
    from PIL import Image, ImageDraw

    lay = Layout(facts.num_frames, facts.grid)
    image = Image.new("RGB", lay.size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    font, small = _font(13), _font(11)
    for i, line in enumerate(title_lines(facts)):
        draw.text((MARGIN, MARGIN + i * LINE_H), _fit(line, font, lay.size[0] - 2 * MARGIN), fill=TEXT, font=font)
    for t in range(facts.num_frames):
        _draw_panel(image, draw, lay, facts, t, small)
    _draw_legend(draw, lay, small)
    return image


def _draw_panel(image, draw, lay: Layout, facts: TokenFacts, t: int, font) -> None:
    from PIL import Image

    (pw, ph), cell, (gh, gw) = lay.panel, lay.cell, facts.grid
    x0, y0 = lay.panel_origin(t)
    scene = int(facts.scene_of_frame[t])
    colour = SCENE_COLOURS[scene % len(SCENE_COLOURS)]
    draw.rectangle((x0 - BORDER, y0 - BORDER - LABEL_H, x0 + pw + BORDER - 1, y0 + ph + BORDER - 1), fill=colour)
    first = t == 0 or facts.scene_of_frame[t - 1] != scene
    draw.text((x0, y0 - BORDER - LABEL_H + 2), f"frame {t}  scene {scene}" + ("  (starts)" if first else ""),
              fill=(255, 255, 255), font=font)
    pixels = np.asarray(Image.fromarray(facts.frames[t]).resize((pw, ph), Image.BILINEAR), dtype=np.float32)
    dropped = np.repeat(np.repeat(~facts.survived[t].reshape(gh, gw), cell, axis=0), cell, axis=1)  # [ph, pw]
    pixels[dropped] *= DIM
    image.paste(Image.fromarray(pixels.round().astype(np.uint8)), (x0, y0))
    tokens = facts.token_of_cell[t].reshape(gh, gw)  # [h, w]
    for r in range(gh):
        for c in range(gw):
            if c + 1 < gw and tokens[r, c] != tokens[r, c + 1]:
                x = x0 + (c + 1) * cell
                draw.rectangle((x - 1, y0 + r * cell, x, y0 + (r + 1) * cell - 1), fill=BOUNDARY)
            if r + 1 < gh and tokens[r, c] != tokens[r + 1, c]:
                y = y0 + (r + 1) * cell
                draw.rectangle((x0 + c * cell, y - 1, x0 + (c + 1) * cell - 1, y), fill=BOUNDARY)
    for index in range(gh * gw):
        kept = bool(facts.survived[t, index])
        cx, cy = lay.cell_centre(t, index)
        half = max(2, cell // 6) if kept else max(1, cell // 12)
        draw.rectangle((cx - half, cy - half, cx + half, cy + half),
                       fill=MARKERS[(bool(facts.static_cells[t, index]), kept)], outline=TEXT if kept else None)


def _draw_legend(draw, lay: Layout, font) -> None:
    x, y = MARGIN, lay.size[1] - MARGIN - LEGEND_H + 8
    entries = [(MARKERS[(True, True)], "static, kept"), (MARKERS[(False, True)], "dynamic, kept"),
               (MARKERS[(True, False)], "static, dropped"), (MARKERS[(False, False)], "dynamic, dropped")]
    for colour, label in entries:
        draw.rectangle((x, y, x + 11, y + 11), fill=colour, outline=TEXT)
        draw.text((x + 16, y), label, fill=TEXT, font=font)
        x += 130
    note = "cell centres: static/dynamic, kept/dropped; dimmed: dropped after layer K; " \
           "dark lines: borders of merged tokens; frame colour: scene"
    draw.text((MARGIN, y + LINE_H), _fit(note, font, lay.size[0] - 2 * MARGIN), fill=TEXT, font=font)


# ---- writing --------------------------------------------------------------------------------


def json_path(png: Path) -> Path:
    return Path(png).with_suffix(".json")


# What marks a picture and a JSON as prunevid's own: a PNG text chunk and a JSON key, both this value.
# ``--force`` replaces only files that carry it (outdir.py's rule: only what prunevid wrote).
WRITTEN_BY_KEY = "written_by"
WRITTEN_BY = "prunevid explain"


def written_by_prunevid(path: Path) -> bool:
    """Whether ``path`` is a picture or facts file that :func:`write` wrote (its mark is there)."""
    try:
        if path.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(path) as image:
                return image.format == "PNG" and image.info.get(WRITTEN_BY_KEY) == WRITTEN_BY
        data = json.loads(path.read_text(encoding="utf-8"))
        return isinstance(data, dict) and data.get(WRITTEN_BY_KEY) == WRITTEN_BY
    except (OSError, ValueError, UnicodeDecodeError, SyntaxError):  # PIL: OSError/SyntaxError on a bad file
        return False


def check_output(png: str | Path, force: bool = False) -> Path:
    """Refuse, before any work, an output that cannot be written or would replace a file; with
    ``force`` an existing picture or JSON is replaced only if prunevid explain wrote it."""
    png = Path(png)
    if png.suffix.lower() != ".png":
        raise ArtifactError(f"--out must name a .png file, got {png}")
    if not png.parent.is_dir():
        raise ArtifactError(f"cannot write {png}: {png.parent} is not an existing folder")
    for path in (png, json_path(png)):
        if path.is_dir():
            raise ArtifactError(f"{path} is a folder")
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise ArtifactError(f"{path} exists and is not a plain file; prunevid never replaces it")
        if path.exists() and not force:
            raise ArtifactError(f"{path} exists; pass --force to replace it")
        if path.exists() and not written_by_prunevid(path):
            raise ArtifactError(f"{path} exists and prunevid explain did not write it; --force replaces only "
                                "a previous explain picture and its JSON, so move it away or choose another --out")
    if not os.access(png.parent, os.W_OK):
        raise ArtifactError(f"cannot write {png}: folder {png.parent} is not writable")
    return png


def write(facts: TokenFacts, png: str | Path, force: bool = False) -> tuple[Path, Path]:
    """Write the picture and its JSON; both appear together or not at all."""
    png = check_output(png, force)
    target_json = json_path(png)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp_png, tmp_json = (path.with_name(f".{path.name}.{tag}.partial") for path in (png, target_json))
    try:
        from PIL.PngImagePlugin import PngInfo

        mark = PngInfo()
        mark.add_text(WRITTEN_BY_KEY, WRITTEN_BY)  # what --force checks before replacing it
        with open(tmp_png, "xb") as f:  # "x": never an existing file; mode from the umask
            render(facts).save(f, format="PNG", optimize=True, pnginfo=mark)
        with open(tmp_json, "x", encoding="utf-8") as f:
            f.write(json.dumps({**facts.to_json(), WRITTEN_BY_KEY: WRITTEN_BY}) + "\n")
        os.replace(tmp_png, png)
        os.replace(tmp_json, target_json)
    except OSError as exc:
        raise ArtifactError(f"cannot write {png}: {exc.strerror or exc}") from None
    finally:
        for tmp in (tmp_png, tmp_json):
            tmp.unlink(missing_ok=True)  # only our own temporary files (already renamed on success)
    return png, target_json


def explain_run(folder: str | Path, video: str | Path, question: str, *, eager: bool,
                frames: int | None = None, mode: str | None = None) -> TokenFacts:
    """Run the eager reference on a checkpoint (``eager``) or the runtime on an export up to the
    first answer token, and return what PruneVid decided. An export's frame count is fixed."""
    from prunevid.errors import ConfigError

    if eager:
        from prunevid.config import DEFAULT_PRESET, preset
        from prunevid.reference import EagerPipeline

        pipeline = EagerPipeline(folder, preset(DEFAULT_PRESET).with_overrides(mode=mode, frames=frames))
        pipeline.run(video, question, max_new_tokens=1)
        return facts_from_eager(pipeline, video, question)
    from prunevid.runtime.pipeline import RuntimePipeline

    pipeline = RuntimePipeline(folder, mode=mode)
    if frames is not None and frames != pipeline.geometry.frames:
        raise ConfigError(f"--frames {frames}: the export at {folder} samples {pipeline.geometry.frames} frames")
    pipeline.run(video, question, max_new_tokens=1)
    return facts_from_runtime(pipeline, video, question)
