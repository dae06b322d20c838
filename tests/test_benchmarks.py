"""The runtime benchmarks: the per-layer extrapolation by hand, and both scripts end to end (--quick)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prunevid import costs

from benchmark_scripts import benchmark_script

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def measure():
    with benchmark_script("measure") as module:
        yield module


def _summary(prefill: float, encoder: float, merge: float, kept: int, decode_ms: float) -> dict:
    return {"timings_ms": {"encoder": encoder, "merge": merge, "prefill": prefill}, "decode_steps": 4,
            "decode_ms_per_token": decode_ms, "prompt_tokens": {"prefill": 300, "kept": kept},
            "visual_tokens": {"encoder": 256, "merged": 200, "kept": 80}}


def test_extrapolate_by_hand(measure):
    from prunevid.model.tiny import GEOMETRIES, tiny_config

    cfg = tiny_config(GEOMETRIES["tiny"], {"vocab_size": 512, "image_token_id": 500, "pad_token_id": 0})  # 12 layers
    bw = 10.0
    results = {  # K = 10: layers 0..10 at S, one layer at the kept count
        "none": _summary(120.0, 7.0, 0.0, 342, 2 * costs.decode_bound_ms(cfg, 342 + 2, bw)),  # 10 ms per layer
        "merge": _summary(60.0, 9.0, 3.0, 300, 1.0),  # 5 ms per layer at PruneVid's S
        "prunevid": _summary(11 * 5.0 + 2.0, 8.0, 3.0, 150, 4 * costs.decode_bound_ms(cfg, 150 + 2, bw)),  # kept: 2 ms
    }
    target, per_layer = measure.extrapolate(results, cfg, 10, costs.PLLAVA_7B, 10, bw)
    assert per_layer["llm_layer_ms"] == {"baseline": 10.0, "prunevid_merged": 5.0, "prunevid_kept": 2.0}
    enc = 8.0 * costs.encoder_flops(costs.PLLAVA_7B, 16) / costs.encoder_flops(cfg, 16)  # median encoder, FLOPs-scaled
    assert target["prunevid"]["timings_ms"] == pytest.approx({"encoder": enc, "merge": 3.0, "prefill": 11 * 5.0 + 21 * 2.0})
    assert target["none"]["timings_ms"] == pytest.approx({"encoder": enc, "merge": 0.0, "prefill": 32 * 10.0})
    assert target["none"]["ttft_ms"] == pytest.approx(enc + 320.0)
    # decode keeps the efficiency measured on the slice: 1/2 of the bound (baseline), 1/4 (PruneVid)
    assert target["none"]["decode_ms_per_token"] == pytest.approx(2 * costs.decode_bound_ms(costs.PLLAVA_7B, 344, bw))
    assert target["prunevid"]["decode_ms_per_token"] == pytest.approx(4 * costs.decode_bound_ms(costs.PLLAVA_7B, 152, bw))


def test_figures_by_hand(measure):
    from prunevid.model.tiny import GEOMETRIES, tiny_config

    cfg = tiny_config(GEOMETRIES["tiny"], {"vocab_size": 512, "image_token_id": 500, "pad_token_id": 0})
    pv = {**_summary(40.0, 10.0, 5.0, 150, 3.0), "ttft_ms": 55.0}
    base = {**_summary(200.0, 10.0, 0.0, 342, 6.0), "ttft_ms": 210.0}
    base["prompt_tokens"] = {"prefill": 342, "kept": 342}
    memory = {"prunevid": {"rss_mb": 100.0}, "baseline": {"rss_mb": 120.0}}
    f = measure.figures(pv, base, cfg, 10, 10.0, memory)
    assert f["ttft_ratio"] == 55.0 / 210.0
    assert f["prefill_time_ratio"] == 0.2
    assert f["prefill_flops_ratio"] == costs.prefill_flops(cfg.text, 300, 150, 10) / costs.prefill_flops(cfg.text, 342)
    assert f["merger_share_of_ttft"] == 5.0 / 55.0
    assert f["decode"]["baseline"]["fraction_of_bound"] == costs.decode_bound_ms(cfg, 344, 10.0) / 6.0
    wb = costs.weight_bytes(cfg).total
    assert f["memory"]["prunevid"]["resident_over_weights"] == 100.0 * 2**20 / wb
    assert f["memory"]["baseline"]["resident_over_weights_plus_kv"] == 120.0 * 2**20 / (wb + costs.kv_bytes(cfg.text, 346))


def test_flatness_first_and_last_quarter_by_hand(measure):
    runs = [[10.0, 12.0, 11.0, 11.0, 13.0, 12.0, 14.0, 16.0], [12.0, 10.0, 11.0, 11.0, 13.0, 12.0, 16.0, 14.0]]
    f = measure.flatness(runs)  # per-step medians 11, 11, 11, 11, 13, 12, 15, 15; quarter = 2 steps
    assert f["per_step_ms"] == [11.0, 11.0, 11.0, 11.0, 13.0, 12.0, 15.0, 15.0]
    assert (f["first_ms"], f["last_ms"], f["quarter_steps"]) == (11.0, 15.0, 2)
    assert f["last_over_first"] == 15.0 / 11.0
    assert math.isnan(measure.flatness([])["last_over_first"])


def test_memory_at_decode_peak_against_weights_plus_the_answers_kv_block(measure):
    from prunevid.model.tiny import GEOMETRIES, tiny_config

    cfg = tiny_config(GEOMETRIES["tiny"], {"vocab_size": 512, "image_token_id": 500, "pad_token_id": 0})
    pv = {**_summary(40.0, 10.0, 5.0, 150, 3.0), "ttft_ms": 55.0}
    base = {**_summary(200.0, 10.0, 0.0, 342, 6.0), "ttft_ms": 210.0}
    kv = costs.kv_bytes(cfg.text, 150 + 4)
    memory = {"prunevid": {"rss_mb": 100.0, "decode_peak_mb": 130.0, "kv_alloc_bytes": kv, "base_mb": 50.0,
                           "loaded_mb": 90.0, "hwm_mb": 200.0}, "baseline": {"rss_mb": 120.0}}
    f = measure.figures(pv, base, cfg, 10, 10.0, memory)
    wb = costs.weight_bytes(cfg).total
    assert f["memory"]["prunevid"]["decode_peak_over_weights_plus_kv"] == 130.0 * 2**20 / (wb + kv)
    assert "decode_peak_over_weights_plus_kv" not in f["memory"]["baseline"]


def _finite_ratios(figures: dict, positive: bool = True) -> None:
    """Finite ratios; measured ones also positive (extrapolated ones are differences of noisy times)."""
    for key in ("ttft_ratio", "prefill_time_ratio", "prefill_flops_ratio", "merger_share_of_ttft", "bandwidth_gbs"):
        assert math.isfinite(figures[key]) and (figures[key] > 0 or not positive), key
    for mode in ("prunevid", "baseline"):
        d = figures["decode"][mode]
        assert math.isfinite(d["ms_per_token"]) and math.isfinite(d["fraction_of_bound"]) and d["steps"] == 3


@pytest.mark.parametrize("script", ["bench_runtime.py", "bench_7b_layers.py"])
def test_benchmark_script_quick_end_to_end(script, tiny_model_dir, tiny_export, tmp_path):
    out, plot = tmp_path / "b.json", tmp_path / "b.png"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(BENCH / script), "--quick", "--model-dir", str(tiny_model_dir), "--export",
           str(tiny_export), "--layer", "10", "--cache", str(tmp_path / "cache"), "--out", str(out), "--plot", str(plot)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(out.read_text())
    assert plot.stat().st_size > 10_000
    assert data["settings"]["repeats"] == 1 and data["settings"]["new_tokens"] == 4
    assert data["bandwidth"]["gbs"] > 0
    kernels = data["bandwidth"]["kernels"]  # the bound takes the fastest streaming read
    assert set(kernels) == {"np.max", "np.dot(a, a)", "x @ A"} and all(k["in_cache_gbs"] > 0 for k in kernels.values())
    assert data["bandwidth"]["gbs"] == max(k["gbs"] for k in kernels.values())
    assert kernels[data["bandwidth"]["kernel"]]["gbs"] == data["bandwidth"]["gbs"]
    _finite_ratios(data["figures"], positive=script == "bench_runtime.py")
    assert "TTFT PruneVid" in done.stdout and "bandwidth bound" in done.stdout
    if script == "bench_7b_layers.py":
        _finite_ratios(data["measured_slice_figures"])
        assert set(data["results"]) == {"prunevid", "merge", "none"}
        layers = data["per_layer"]["llm_layer_ms"]
        assert layers["baseline"] > 0 and layers["prunevid_merged"] > 0 and math.isfinite(layers["prunevid_kept"])
        assert data["figures"]["tokens"]["kept"] == data["results"]["prunevid"]["prompt_tokens"]["kept"]
    else:
        mem = data["figures"]["memory"]["prunevid"]
        assert mem["rss_mb"] > 0 and math.isfinite(mem["resident_over_weights"])
        # the defined point: the peak while the third answer decodes, its KV block allocated
        assert mem["decode_peak_mb"] >= mem["base_mb"] > 0 and mem["kv_rows"] == data["figures"]["tokens"]["kept"] + 3
        assert math.isfinite(mem["decode_peak_over_weights_plus_kv"])
        for mode in ("prunevid", "baseline"):  # per-token flatness: 3 steps, one per quarter
            flat = data["figures"]["decode"][mode]["flatness"]
            assert len(flat["per_step_ms"]) == 3 and flat["quarter_steps"] == 1
            assert flat["first_ms"] == flat["per_step_ms"][0] and flat["last_ms"] == flat["per_step_ms"][-1]
        assert "per-token time first / last" in done.stdout and "peak during decode" in done.stdout


def test_merger_speed_quick_end_to_end(tmp_path):
    """The merger benchmark at a small width: every clip kind measured, the exported merger giving
    the eager token counts and provenance on each, JSON and plot written."""
    out = tmp_path / "merger.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(BENCH / "merger_speed.py"), "--hidden", "48", "--repeats", "1", "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["results"]
    assert [r["clip"] for r in rows] == ["random", "two scenes", "four scenes", "still"]
    assert all(r["same_tokens_as_eager"] and r["onnxruntime_ms"] > 0 and r["eager_ms"] > 0 for r in rows)
    assert len({r["merged_tokens"] for r in rows}) > 1  # the kinds move the work around
    assert out.with_suffix(".png").stat().st_size > 10_000
