"""``prunevid demo``: the deployment path on a random model of either family (PLLaVA or
LLaVA-OneVision), PruneVid against the plain baseline.

    make (or reuse) the random model in the cache
    -> export it (or reuse the cached export, keyed by the checkpoint's hash and the settings)
    -> the runtime answers with PruneVid, then with the baseline (``--mode none``) on the same export
    -> per-stage table (tokens in / out, time), TTFT, analytic prefill FLOPs, an explain picture

The weights are random, so the answers are noise: the demo shows cost and which tokens are kept,
not accuracy. On the tiny geometry fixed per-call costs dominate the times, so the FLOPs carry the
saving; the ``bench`` geometry (PLLaVA-7B's token layout, a 32-layer LLM) shows it in time too, and
``ov32`` runs OneVision-7B's token layout (32 frames of 14 x 14 tokens) with the tiny towers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prunevid.model.config import FAMILIES
from prunevid.progress import Progress

GEOMETRIES = ("tiny", "bench")
MAX_NEW_TOKENS = 8


def model_problem(model_dir: Path) -> str | None:
    """Why the cached random model in ``model_dir`` cannot be used (None: it can): a file its
    make-tiny marker lists is missing, or its config or a weight file's header does not read."""
    from prunevid.errors import PruneVidError
    from prunevid.model.checkpoint import weight_files
    from prunevid.model.config import read_config
    from prunevid.outdir import TINY_MARKER, tiny_files

    owned = tiny_files(model_dir)
    if owned is None:
        return f"{TINY_MARKER} is missing or unreadable"
    missing = sorted(f for f in owned if not (model_dir / f).is_file())
    if missing:
        return f"{missing[0]} is missing"
    try:
        read_config(model_dir)
        from safetensors import safe_open

        for path in weight_files(model_dir):
            with safe_open(str(path), framework="numpy") as handle:  # header and sizes only
                handle.keys()
    except PruneVidError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types on a damaged file
        return f"a weight file does not read: {exc}"
    return None


def _damaged(folder: Path, what: str, problem: str) -> str:
    return (f"the demo's cached {what} {folder} is damaged ({problem}) and holds files prunevid did not write, "
            "so the demo leaves it alone: move it away, or set PRUNEVID_CACHE to another folder")


def cached_model(cache: Path, geometry: str, progress: Progress, model: str = "pllava") -> Path:
    """The random ``geometry`` model of family ``model`` in ``cache``, built on first use and
    rebuilt when damaged.

    Only a folder that prunevid built (its make-tiny marker lists every file in it) is rebuilt;
    anything else is refused with one line (the demo never deletes what it did not write).
    """
    from prunevid.errors import ArtifactError
    from prunevid.model.tiny import make_tiny
    from prunevid.outdir import TINY, check_target

    model_dir = cache / f"{geometry}-{model}"
    exists = model_dir.exists()
    problem = model_problem(model_dir) if exists else "absent"
    if problem is None:
        return model_dir
    if exists and any(model_dir.iterdir()):
        try:
            check_target(model_dir, TINY, force=True)
        except ArtifactError:
            raise ArtifactError(_damaged(model_dir, "model", problem)) from None
    verb = "rebuilding the damaged" if exists else "building the"
    with progress.step(f"{verb} random {geometry} {model} in {model_dir} (once)"):
        make_tiny(model_dir, geometry=geometry, force=exists, model=model)
    return model_dir


def export_key(model_dir: Path, cfg, options) -> str:
    """What an export depends on: the checkpoint's content, the settings and the format."""
    from prunevid import __version__, spec
    from prunevid.exporter.export import checkpoint_hash

    payload = {"checkpoint": checkpoint_hash(model_dir), "prune": cfg.to_json(), "options": asdict(options),
               "prunevid": __version__, "format": spec.FORMAT_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def matches_spec(export_dir: Path) -> bool:
    """Whether a cached export has exactly the graphs and outputs this version's spec declares."""
    from prunevid import spec
    from prunevid.errors import PruneVidError
    from prunevid.runtime.artifact import open_artifact

    try:
        artifact = open_artifact(export_dir)  # a changed file: export again
        declared = spec.graphs(artifact.geometry)
        graphs = artifact.manifest["graphs"]
        return set(graphs) == set(spec.GRAPH_ORDER) and all(
            [t["name"] for t in graphs[name]["outputs"]] == declared[name].output_names for name in spec.GRAPH_ORDER)
    except (PruneVidError, KeyError, TypeError, ValueError):
        return False


def cached_export(model_dir: Path, cache: Path, progress: Progress) -> tuple[Path, bool]:
    """The export of ``model_dir`` with the default settings; ``(folder, reused)``.

    Exported once into ``cache/exports/<model>-<key>``; a cached folder that no longer matches the
    spec (an older prunevid) is exported again in place (it is prunevid's own cache)."""
    from prunevid.config import PruneConfig
    from prunevid.exporter.export import ExportOptions, export

    from prunevid.errors import ArtifactError
    from prunevid.outdir import EXPORT, check_target

    cfg, options = PruneConfig(), ExportOptions()
    out = cache / "exports" / f"{model_dir.name}-{export_key(model_dir, cfg, options)}"
    if matches_spec(out):
        return out, True
    try:
        check_target(out, EXPORT, force=True)  # only prunevid's own export is exported again in place
    except ArtifactError:
        raise ArtifactError(_damaged(out, "export", "it does not verify")) from None
    export(model_dir, out, cfg, options, force=out.exists(), progress=progress)
    progress.finish()
    return out, False


@dataclass(frozen=True)
class Stage:
    """One row of the table: a stage's tokens in and out and its time, for one mode."""

    name: str
    tokens_in: str
    tokens_out: str
    ms: float | None


def stages(answer, frames: int) -> list[Stage]:
    """The per-stage rows of one runtime answer (``None`` ms: the stage did not run)."""
    vt, pt, ms = answer.visual_tokens, answer.prompt_tokens, answer.timings_ms
    merged = answer.settings["mode"] != "none"
    return [
        Stage("video decode + preprocessing", "file", f"{frames} frames", ms["video"]),
        Stage("encoder", f"{frames} frames", f"{vt['encoder']} tokens", ms["encoder"]),
        Stage("merger", f"{vt['encoder']}", f"{vt['merged']}" if merged else "skipped", ms["merge"] if merged else None),
        Stage("prefill (0..K, select, K+1..)", f"{pt['prefill']} ({vt['merged']} vis)",
              f"{pt['kept']} ({vt['kept']} vis)", ms["prefill"]),
        Stage("decode", f"{pt['kept']} cached", f"{len(answer.token_ids)} tokens", ms["decode"]),
    ]


def run_demo(geometry: str, clip: Path, question: str, cache: Path, progress: Progress,
             model: str = "pllava") -> dict[str, Any]:
    """Everything the demo shows, as one JSON-ready object (``model``: the family)."""
    from prunevid import costs, explain
    from prunevid.model.config import read_config
    from prunevid.runtime.pipeline import RuntimePipeline

    model_dir = cached_model(cache, geometry, progress, model)
    export_dir, reused = cached_export(model_dir, cache, progress)
    answers, picture = {}, None
    for mode in ("prunevid", "none"):
        with progress.step(f"loading the runtime ({mode})"):
            pipeline = RuntimePipeline(export_dir, mode=mode)
        with progress.step(f"answering with mode {mode} (a warm-up answer, then the measured one)"):
            pipeline.run(clip, question, max_new_tokens=MAX_NEW_TOKENS)
            answers[mode] = pipeline.run(clip, question, max_new_tokens=MAX_NEW_TOKENS)
        if mode == "prunevid":
            with progress.step("drawing the explain picture"):
                facts = explain.facts_from_runtime(pipeline, clip, question)
                (cache / "demo").mkdir(parents=True, exist_ok=True)
                picture, _ = explain.write(facts, cache / "demo" / f"explain-{geometry}{_suffix(model)}.png",
                                           force=True)
        prompt = pipeline.prompt(question, None)
        frames = pipeline.geometry.frames
        del pipeline  # one set of sessions in memory at a time
    question_rows = len(prompt.ids) - 1 - prompt.image_pos  # prompt rows after the visual block
    text = read_config(model_dir).text
    layer = answers["prunevid"].settings["layer"]
    flops = {mode: costs.prefill_flops(text, a.prompt_tokens["prefill"], a.prompt_tokens["kept"], layer, question_rows)
             if mode == "prunevid" else costs.prefill_flops(text, a.prompt_tokens["prefill"])
             for mode, a in answers.items()}
    return {
        "weights": "random: the answers are noise; the demo shows cost and kept tokens, not accuracy",
        "geometry": geometry,
        "family": model,
        "model": str(model_dir),
        "export": {"path": str(export_dir), "reused": reused},
        "clip": str(clip),
        "question": question,
        "modes": {mode: {**a.to_json(), "stages": [asdict(s) for s in stages(a, frames)]} for mode, a in answers.items()},
        "prefill_gflops": {mode: f / 1e9 for mode, f in flops.items()},
        "prefill_flops_saved": 1 - flops["prunevid"] / flops["none"],
        "ttft_ratio": answers["prunevid"].ttft_ms / answers["none"].ttft_ms,
        "explain": str(picture),
    }


def _suffix(model: str) -> str:
    """File-name suffix of a family's demo outputs (none for PLLaVA, whose names predate families)."""
    return "" if model == "pllava" else f"-{model}"


def report_lines(report: dict[str, Any]) -> list[str]:
    """The report as the lines the demo prints."""
    geometry = report["geometry"]
    family = FAMILIES[report.get("family", "pllava")].title
    lines = [f"prunevid demo ({geometry} {family}, RANDOM weights: the answers are noise; this shows cost "
             f"and which tokens are kept, not accuracy)",
             f"model    {report['model']}",
             f"export   {report['export']['path']} ({'cached' if report['export']['reused'] else 'exported now'})",
             f"clip     {report['clip']}",
             f"question {report['question']}",
             "", *table(report), ""]
    for mode, data in report["modes"].items():
        lines.append(f"answer token ids ({mode}): {data['token_ids']} (not decoded: random weights give noise)")
    if geometry == "tiny":
        lines.append("On this tiny model the times are small and noisy (fixed per-call costs); the FLOPs show "
                     "the saving. `prunevid demo --geometry bench` (PLLaVA) shows it in time.")
    lines.append(f"explain picture: {report['explain']} (facts beside it as .json)")
    return lines


def table(report: dict[str, Any]) -> list[str]:
    """The per-stage table of both modes, TTFT and prefill FLOPs."""
    modes = report["modes"]
    p, b = modes["prunevid"], modes["none"]

    def ms(value: float | None) -> str:
        return f"{value:9.1f}" if value is not None else f"{'-':>9s}"

    lines = [f"{'stage':30s} | {'PruneVid: tokens in -> out':36s} {'ms':>9s} | {'baseline: tokens in -> out':36s} {'ms':>9s}"]
    lines.append("-" * len(lines[0]))
    for sp, sb in zip(p["stages"], b["stages"], strict=True):
        lines.append(f"{sp['name']:30s} | {sp['tokens_in'] + ' -> ' + sp['tokens_out']:36s} {ms(sp['ms'])} | "
                     f"{sb['tokens_in'] + ' -> ' + sb['tokens_out']:36s} {ms(sb['ms'])}")
    lines.append(f"{'TTFT (encoder+merger+prefill)':30s} | {'':36s} {ms(p['ttft_ms'])} | {'':36s} {ms(b['ttft_ms'])}")
    g = report["prefill_gflops"]
    flops = [f"{g[mode]:.4g} GFLOP" for mode in ("prunevid", "none")]
    lines.append(f"{'prefill FLOPs (analytic)':30s} | {flops[0]:>46s} | {flops[1]:>46s}")
    lines.append("")
    lines.append(f"PruneVid saves {100 * report['prefill_flops_saved']:.1f}% of the prefill FLOPs; "
                 f"TTFT PruneVid / baseline = {report['ttft_ratio']:.2f}")
    return lines
