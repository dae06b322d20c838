"""``prunevid profile``: one answer's real inputs to every graph, their per-stage times, and the
trtexec runs that repeat exactly those calls on TensorRT engines.

1. **Capture.** :class:`CaptureRunner` wraps the runtime's runner and keeps, for every graph and
   phase (``prompt``, ``decode``), the inputs of its first call in the last answer; they are written
   as ``--loadInputs`` files (raw binary, one per input) under ``OUT/inputs/<mode>/<graph>.<phase>/``.
2. **Times.** ``--backend ort``: every graph's session runs with ONNX Runtime's profiler; each
   ``model_run`` event is matched, in order, with the captured call it timed, so every stage gets one
   sample per answer (median and p90 over ``--runs`` answers after a warm-up). ``--backend trt``:
   trtexec runs each captured call on its engine (``--loadEngine``, ``--shapes`` and ``--loadInputs``
   of that call) and its ``--exportTimes`` give the stage's median and p90.
3. **Report.** A per-stage table (median, p90, share of TTFT) for PruneVid and, with
   ``--compare-baseline``, the plain baseline on the same export; ``report.json``; ``stages.png``.
   On a Jetson, ``nvpmodel -q`` and the GPU clock are recorded with it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prunevid import spec
from prunevid.errors import ArtifactError, ConfigError
from prunevid.runtime.backend import OrtBackend
from prunevid.trt import trtexec as tx

PROMPT_STAGES = ("encoder", "merger", "embed", "decoder_early", "score", "select", "decoder_late")
DECODE_STAGE = "decode step"  # embed + decoder_early + decoder_late on one token
DECODER_GRAPHS = ("embed", "decoder_early", "decoder_late")


class CaptureRunner:
    """Wraps a runner; records the (graph, phase) of every call and the first feeds of each in the
    current answer. An answer starts at the ``encoder`` call; the decode phase starts after the
    prompt's ``decoder_late``."""

    def __init__(self, inner):
        self.inner = inner
        self.device = getattr(inner, "device", "cpu")
        self.calls: list[tuple[int, str, str]] = []  # (answer, graph, phase)
        self.feeds: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        self.answer, self.decoding = -1, False

    def warm_up(self) -> None:
        getattr(self.inner, "warm_up", lambda: None)()

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if graph == "encoder":
            self.answer, self.decoding = self.answer + 1, False
            self.feeds = {}
        phase = "decode" if self.decoding and graph in DECODER_GRAPHS else "prompt"
        self.calls.append((self.answer, graph, phase))
        self.feeds.setdefault((graph, phase), {k: np.array(v) for k, v in feeds.items()})
        out = self.inner.run(graph, feeds)
        if graph == "decoder_late":
            self.decoding = True
        return out


class ProfilingOrt(OrtBackend):
    """:class:`OrtBackend` with ONNX Runtime's profiler on in every session."""

    def __init__(self, paths: dict[str, Path], folder: Path, threads: int = 0,
                 disabled_optimizers: dict[str, tuple[str, ...]] | None = None):
        super().__init__(paths, ["CPUExecutionProvider"] if not _cuda_available() else None, threads,
                         disabled_optimizers=disabled_optimizers)
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def configure(self, opts, name: str) -> None:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(self.folder / name)

    def run_times(self) -> dict[str, list[float]]:
        """End profiling; ``model_run`` durations (ms) per graph, in call order (session creation excluded)."""
        out = {}
        for name, sess in self.sessions.items():
            events = json.loads(Path(sess.end_profiling()).read_text())
            out[name] = [e["dur"] / 1e3 for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
        return out


def _cuda_available() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@dataclass
class StageStats:
    """Samples of one stage (ms), one per answer (decode: mean per token of each answer)."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def p90(self) -> float:
        return tx.percentile(self.samples, 90) if self.samples else float("nan")


def stage_samples(calls: Sequence[tuple[int, str, str]], times: dict[str, list[float]],
                  skip_answers: int = 1) -> dict[str, StageStats]:
    """Per-stage samples from the captured calls and the per-graph run times in call order:
    prompt stages summed per answer, the decode stage as the mean per decode step of each answer."""
    if any(len([c for c in calls if c[1] == g]) != len(t) for g, t in times.items()):
        raise ArtifactError("the profiler's runs do not match the captured calls (a run outside the answers?)")
    nth = {g: 0 for g in times}
    per: dict[int, dict[str, float]] = {}
    steps: dict[int, int] = {}
    for answer, graph, phase in calls:
        ms = times[graph][nth[graph]]
        nth[graph] += 1
        key = graph if phase == "prompt" else DECODE_STAGE
        row = per.setdefault(answer, {})
        row[key] = row.get(key, 0.0) + ms
        if phase == "decode" and graph == "embed":
            steps[answer] = steps.get(answer, 0) + 1
    stats: dict[str, StageStats] = {}
    for answer, row in per.items():
        if answer < skip_answers:
            continue
        for key, ms in row.items():
            value = ms / steps[answer] if key == DECODE_STAGE else ms
            stats.setdefault(key, StageStats()).samples.append(value)
    return stats


@dataclass
class ModeReport:
    """One mode's profile."""

    mode: str
    stages: dict[str, StageStats]
    ttft_wall: StageStats
    tokens: dict[str, Any]

    def graphs_ttft(self) -> float:
        return sum(self.stages[s].median for s in PROMPT_STAGES if s in self.stages)

    @property
    def host(self) -> StageStats:
        """Wall-clock TTFT less the graphs' time, answer by answer (every prompt stage has one sample per
        answer, in the same order as the TTFT samples)."""
        prompt = [self.stages[s].samples for s in PROMPT_STAGES if s in self.stages]
        if any(len(p) != len(self.ttft_wall.samples) for p in prompt):
            return StageStats([self.ttft_wall.median - self.graphs_ttft()])
        return StageStats([t - sum(p[i] for p in prompt) for i, t in enumerate(self.ttft_wall.samples)])

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModeReport:
        """A mode of ``report.json`` back (to redraw or compare reports)."""
        return cls(data["mode"], {k: StageStats(list(v["samples_ms"])) for k, v in data["stages"].items()},
                   StageStats(list(data["ttft_wall"]["samples_ms"])), data["tokens"])

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "tokens": self.tokens,
                "stages": {k: {"median_ms": v.median, "p90_ms": v.p90, "samples_ms": v.samples} for k, v in self.stages.items()},
                "ttft_wall": {"median_ms": self.ttft_wall.median, "p90_ms": self.ttft_wall.p90,
                              "samples_ms": self.ttft_wall.samples}}


def table(reports: Sequence[ModeReport]) -> list[str]:
    """The per-stage table: median, p90 and share of TTFT per mode."""
    head = f"{'stage':<26}" + "".join(f" | {r.mode + ': median':>18} {'p90':>9} {'TTFT':>6}" for r in reports)
    lines = [head, "-" * len(head)]

    def row(name: str, cells: list[tuple[float, float, float | None]]) -> str:
        out = f"{name:<26}"
        for median, p90, share in cells:
            if np.isnan(median):
                out += f" | {'-':>18} {'-':>9} {'':>6}"
                continue
            p90_text = "-" if np.isnan(p90) else f"{p90:.3f}"
            out += f" | {median:>15.3f} ms {p90_text:>9} {'' if share is None else f'{100 * share:5.1f}%':>6}"
        return out

    for stage in PROMPT_STAGES:
        lines.append(row(stage, [(r.stages.get(stage, StageStats()).median, r.stages.get(stage, StageStats()).p90,
                                  r.stages[stage].median / r.ttft_wall.median if stage in r.stages else None)
                                 for r in reports]))
    lines.append(row("host (splice, gather, I/O)", [(r.host.median, r.host.p90, r.host.median / r.ttft_wall.median)
                                                   for r in reports]))
    lines.append(row("TTFT (wall)", [(r.ttft_wall.median, r.ttft_wall.p90, 1.0) for r in reports]))
    lines.append(row(f"{DECODE_STAGE} (per token)", [(r.stages.get(DECODE_STAGE, StageStats()).median,
                                                     r.stages.get(DECODE_STAGE, StageStats()).p90, None) for r in reports]))
    if len(reports) == 2:
        a, b = reports
        lines.append(f"TTFT {a.mode} / {b.mode} = {a.ttft_wall.median / b.ttft_wall.median:.3f} (medians)")
    return lines


def plot(reports: Sequence[ModeReport], path: Path, title: str) -> Path:
    """Left: stacked TTFT bars per mode (one colour per stage, host time last); right: decode ms/token."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 2.2 + 0.9 * len(reports)), gridspec_kw={"width_ratios": [3, 1]})
    names = [*PROMPT_STAGES, "host"]
    for i, r in enumerate(reports):
        start = 0.0
        for j, stage in enumerate(names):
            ms = max(r.host.median, 0.0) if stage == "host" else r.stages.get(stage, StageStats([0.0])).median
            left.barh(i, ms, left=start, color=f"C{j}", label=stage if i == 0 else None)
            start += ms
        left.errorbar(r.ttft_wall.median, i, xerr=[[0], [max(r.ttft_wall.p90 - r.ttft_wall.median, 0)]], fmt="none",
                      ecolor="black", capsize=4)
    labels = [f"{r.mode}\n{r.tokens.get('kept', '?')} kept of {r.tokens.get('prefill', '?')} rows" for r in reports]
    left.set_yticks(range(len(reports)), labels)
    left.set_xlabel("time to first token, median ms (bar: stages; whisker: p90)")
    left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), fontsize=7, ncol=len(names), frameon=False)
    left.invert_yaxis()
    decode = [r.stages.get(DECODE_STAGE, StageStats([0.0])) for r in reports]
    right.barh(range(len(reports)), [d.median for d in decode], color="C9")
    right.errorbar([d.median for d in decode], range(len(reports)),
                   xerr=[[0] * len(decode), [max(d.p90 - d.median, 0) for d in decode]], fmt="none", ecolor="black", capsize=4)
    right.set_yticks(range(len(reports)), [r.mode for r in reports])
    right.set_xlabel("decode ms / token\n(median, p90 whisker)")
    right.invert_yaxis()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def jetson_power(run: Callable[[list[str]], str] | None = None, root: Path = Path("/")) -> dict[str, Any] | None:
    """Power mode and GPU clock on a Jetson (``/etc/nv_tegra_release`` present), else None."""
    if not (root / "etc/nv_tegra_release").is_file():
        return None
    run = run or (lambda argv: subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout)
    info: dict[str, Any] = {"l4t": (root / "etc/nv_tegra_release").read_text().splitlines()[0].strip()}
    try:
        info["nvpmodel"] = run(["nvpmodel", "-q"]).strip()
    except (OSError, subprocess.SubprocessError) as exc:
        info["nvpmodel"] = f"unavailable: {exc}"
    clocks = {}
    for freq in sorted(root.glob("sys/devices/platform/*gpu*/devfreq/*/cur_freq")) + \
            sorted(root.glob("sys/class/devfreq/*gpu*/cur_freq")):
        try:
            clocks[str(freq.relative_to(root))] = int(freq.read_text().strip())
        except (OSError, ValueError):
            continue
    info["gpu_cur_freq_hz"] = clocks
    return info


@dataclass(frozen=True)
class ProfileRequest:
    export_dir: Path
    video: Path
    question: str
    backend: str = "ort"
    compare_baseline: bool = False
    out: Path = Path("profile")
    runs: int = 5
    max_new_tokens: int = 8
    threads: int = 0
    engines: Path | None = None
    trt_major: int | None = None
    plugin_libs: tuple[str, ...] = ()


def _modes(req: ProfileRequest) -> list[str]:
    return ["prunevid"] + (["none"] if req.compare_baseline else [])


def capture(req: ProfileRequest, mode: str, work: Path) -> tuple[CaptureRunner, ModeReport | None, list]:
    """Answer ``runs + 1`` times in ``mode`` (the first is the warm-up); with ``--backend ort`` also
    the per-stage times from ONNX Runtime's profiler."""
    from prunevid.runtime.artifact import open_artifact
    from prunevid.runtime.pipeline import RuntimePipeline

    artifact = open_artifact(req.export_dir)
    paths = {n: artifact.graph_path(n) for n in spec.GRAPH_ORDER}
    off = artifact.disabled_optimizers
    inner = (ProfilingOrt(paths, work / "ort" / mode, req.threads, disabled_optimizers=off) if req.backend == "ort"
             else OrtBackend(paths, None, req.threads, disabled_optimizers=off))
    rec = CaptureRunner(inner)
    pipeline = RuntimePipeline(req.export_dir, mode=mode, backend=rec)
    answers = [pipeline.run(req.video, req.question, max_new_tokens=req.max_new_tokens) for _ in range(req.runs + 1)]
    if req.backend != "ort":
        return rec, None, answers
    stats = stage_samples(rec.calls, inner.run_times(), skip_answers=1)
    last = answers[-1]
    tokens = {**last.prompt_tokens, **{f"visual_{k}": v for k, v in last.visual_tokens.items()},
              "new_tokens": len(last.token_ids)}
    return rec, ModeReport(mode, stats, StageStats([a.ttft_ms for a in answers[1:]]), tokens), answers


def engines_folder(req: ProfileRequest, trt_major: int) -> Path:
    """``--engines``, else the only folder under ``EXPORT/engines``, else where ``prunevid build`` would write."""
    if req.engines is not None:
        return req.engines
    root = req.export_dir / "engines"
    found = sorted(p for p in root.glob(f"trt{trt_major}.*") if p.is_dir()) if root.is_dir() else []
    if len(found) == 1:
        return found[0]
    return root / f"trt{trt_major}.x-<gpu>"


def trtexec_commands(req: ProfileRequest, rec: CaptureRunner, mode: str, out: Path,
                     trt_major: int) -> list[tuple[str, list[str], Path]]:
    """Write the captured inputs of ``mode`` and return ``(graph.phase, argv, output prefix)`` per graph call."""
    from prunevid.runtime.artifact import open_artifact

    artifact = open_artifact(req.export_dir, verify=False)
    graphs = spec.graphs(artifact.geometry)
    folder = engines_folder(req, trt_major)
    cmds = []
    for (graph, phase), feeds in rec.feeds.items():
        files = tx.write_inputs(feeds, out / "inputs" / mode / f"{graph}.{phase}")
        dynamic = [t.name for t in graphs[graph].inputs if any(isinstance(d, str) for d in t.dims)]
        prefix = out / "trtexec" / mode / f"{graph}.{phase}"
        prefix.parent.mkdir(parents=True, exist_ok=True)
        cmd = tx.run_command(folder / f"{graph}.engine", {n: feeds[n] for n in dynamic}, files, prefix,
                             trt_major=trt_major, profile_index=1 if phase == "decode" else 0,
                             plugin_libs=req.plugin_libs)
        cmds.append((f"{graph}.{phase}", cmd, prefix))
    return cmds


def trt_report(mode: str, results: dict[str, tx.Times], answers) -> ModeReport:
    """The per-stage table from trtexec's times: each stage's iterations are its samples; TTFT is the
    sum of the prompt stages' medians (no host time: trtexec times the engines alone)."""
    stages = {}
    for key, times in results.items():
        graph, phase = key.split(".")
        name = graph if phase == "prompt" else None
        if name:
            stages[name] = StageStats(list(times.compute_ms))
    decode = [results[f"{g}.decode"] for g in DECODER_GRAPHS if f"{g}.decode" in results]
    if decode:
        stages[DECODE_STAGE] = StageStats([sum(t.median_ms for t in decode)])
    total = sum(s.median for k, s in stages.items() if k in PROMPT_STAGES)
    last = answers[-1]
    return ModeReport(mode, stages, StageStats([total]), {**last.prompt_tokens, "new_tokens": len(last.token_ids)})


def profile(req: ProfileRequest, dry_run: bool = False, progress=None) -> dict[str, Any]:
    """Run the whole profile; writes ``req.out`` (refused if it exists and is not empty)."""
    say = progress or (lambda msg: None)
    if req.backend not in ("ort", "trt"):
        raise ConfigError(f"--backend must be ort or trt, got {req.backend}")
    if req.runs < 1:
        raise ConfigError(f"--runs must be at least 1, got {req.runs}")
    out = Path(req.out).resolve()  # "." has no name to stage beside
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ArtifactError(f"{req.out} exists and is not empty; pass another --out")
    trt_major = req.trt_major or _installed_trt_major() or 10
    trtexec = shutil.which("trtexec")
    if req.backend == "trt" and not dry_run and trtexec is None:
        raise ConfigError("trtexec is not on PATH (JetPack: /usr/src/tensorrt/bin); --dry-run prints the commands")
    stage = out.with_name(f".{out.name}.partial-{os.getpid()}")
    if stage.exists():
        raise ArtifactError(f"{stage} exists (another profile running?)")
    try:
        report = _profile_into(req, stage, dry_run, trt_major, say)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():  # the user's empty folder (checked above) stays; our files move into it
            for item in stage.iterdir():
                item.rename(out / item.name)
            stage.rmdir()
        else:
            stage.rename(out)
    finally:
        if stage.exists():
            shutil.rmtree(stage)
    return report


def _installed_trt_major() -> int | None:
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return int(trt.__version__.split(".")[0])


def _profile_into(req: ProfileRequest, out: Path, dry_run: bool, trt_major: int, say) -> dict[str, Any]:
    out.mkdir(parents=True)
    reports, commands = [], {}
    for mode in _modes(req):
        say(f"answering {req.runs + 1} times in mode {mode} ({req.backend} timing)")
        rec, report, answers = capture(req, mode, out)
        cmds = trtexec_commands(req, rec, mode, out, trt_major)
        # the commands name the files where they will be once the staging folder is renamed to --out
        commands[mode] = [shlex.join(str(a).replace(str(out), str(req.out)) for a in cmd) for _, cmd, _ in cmds]
        if req.backend == "trt" and not dry_run:
            results = {}
            for key, cmd, prefix in cmds:
                say(f"trtexec {mode} {key}")
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    raise ConfigError(f"trtexec failed on {key} ({mode}): {' '.join(done.stderr.split()[-30:])}")
                results[key] = tx.parse_times(Path(f"{prefix}.times.json"))
            report = trt_report(mode, results, answers)
        if report is not None:
            reports.append(report)
        del rec, answers  # one mode's sessions and captured inputs in memory at a time
    power = jetson_power()
    data = {"export": str(req.export_dir), "video": str(req.video), "question": req.question, "backend": req.backend,
            "runs": req.runs, "trt_major": trt_major, "trtexec_commands": commands, "jetson": power,
            "modes": [r.to_json() for r in reports]}
    if reports:
        data["table"] = table(reports)
        title = (f"{req.export_dir.name}: per-stage time ({'ONNX Runtime profiler' if req.backend == 'ort' else 'trtexec'}, "
                 f"median of {req.runs})")
        plot(reports, out / "stages.png", title)
    (out / "report.json").write_text(json.dumps(data, indent=1, default=str))
    return data
