"""``prunevid quantize``: a float export folder in, a quantized export folder out.

    open the float export (verified) --> clips and questions --> float chain over ONNX Runtime with a
    recorder: the decoder graphs' feeds at PruneVid's token counts --> per quantized graph: the float
    MatMuls (declared roles) left alone, SmoothQuant / AWQ scales folded in, ONNX Runtime's
    quantize_static (Q/DQ) or MatMulNBitsQuantizer --> onnx.checker --> the other graphs and the
    support files copied --> accuracy report on held-out pairs --> gates --> manifest.json

The folder is built beside the target and renamed at the end (:mod:`prunevid.outdir`): a refused
or interrupted run leaves nothing.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunevid import spec
from prunevid.calibration import data
from prunevid.calibration.formats import (DEFAULT_MIN_AGREEMENT, DEFAULT_MIN_IOU, FLOAT_GRAPHS, FLOAT_ROLES,
                                          QUANTIZED_GRAPHS, Format, get_format)
from prunevid.errors import ArtifactError, ConfigError, QuantizationError

Progress = Callable[[str], None]


@dataclass(frozen=True)
class QuantizeOptions:
    """What ``prunevid quantize`` was asked for (``videos`` empty: the bundled and generated clips)."""

    videos: tuple[Path, ...] = ()
    questions: Path | None = None
    samples: int = 8
    eval_samples: int = 4
    new_tokens: int = 8
    min_iou: float = DEFAULT_MIN_IOU
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    keep_float: tuple[str, ...] = ()  # quantizable graphs kept float anyway (e.g. decoder_early: layers 0..K)
    force: bool = False


def _quantize_static(model, dst: Path, feeds: list[dict], fmt: Format, nodes: list[str], work: Path) -> None:
    """ONNX Runtime's ``quantize_static`` (Q/DQ) of ``nodes``, with the ranges computed here in one
    streamed pass and handed over as its calibration cache (its own calibrators keep every
    intermediate tensor of every feed in memory, and its histogram calibrator needed by float8 fails on
    feeds of different lengths)."""
    import numpy as np
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    from prunevid.calibration import scales

    wanted = {n.name for n in model.graph.node if n.name in nodes}
    inits = scales.initializers(model)
    # the MatMuls' activation inputs only: their outputs (q/k/v, hence the KV cache and the attention
    # products, and the o/down projections into the residual stream) stay float
    tensors = sorted({t for n in model.graph.node if n.name in wanted for t in n.input if t and t not in inits})
    ranges = scales.tensor_ranges(model, feeds, tensors)
    fp8 = fmt.element == "float8e4m3fn"
    method = CalibrationMethod.Distribution if fp8 else CalibrationMethod.MinMax
    data = TensorsData(method, {name: TensorData(**{k: np.float32(v) for k, v in r.items()}) for name, r in ranges.items()})
    cache = work / f"{dst.stem}.calibration.json"
    save_tensors_data(data, cache)
    qtype = QuantType.QFLOAT8E4M3FN if fp8 else QuantType.QInt8
    quantize_static(
        model, str(dst), None, quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
        per_channel=not fp8, activation_type=qtype, weight_type=qtype, nodes_to_quantize=nodes,
        calibrate_method=method, calibration_cache_path=str(cache),
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "MatMulConstBOnly": True,
                       "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
                       # ONNX Runtime's QDQ quantizer also quantizes a MatMul's output by default, and
                       # from there the Reshape/Transpose/Slice after it: Q/DQ would land on the KV
                       # cache, the attention products and the residual stream. Inputs only.
                       "OpTypesToExcludeOutputQuantization": ["MatMul"]},
    )


def _quantize_weights(model, dst: Path, fmt: Format, targets: list[str]) -> dict[str, int]:
    """ONNX Runtime's ``MatMulNBitsQuantizer`` on ``targets``, one pass per block size
    (:meth:`Format.block_for` of each weight's input rows); every other MatMul stays float. Returns
    the block of each quantized node."""
    import onnx
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    from prunevid.calibration import scales

    inits = scales.initializers(model)
    blocks = {n.name: fmt.block_for(int(inits[n.input[1]].dims[0]))
              for n in model.graph.node if n.name in set(targets)}
    form = QuantFormat.QDQ if fmt.weight_form == "qdq" else QuantFormat.QOperator
    for block in sorted(set(blocks.values()), reverse=True):
        # every MatMul not quantized in this pass is excluded: the declared float roles, the constants
        # that are not projection weights (the RoPE permutation several layers share), other blocks
        exclude = sorted(n.name for n in model.graph.node if n.op_type == "MatMul" and blocks.get(n.name) != block)
        config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, bits=fmt.bits,
                                              op_types_to_quantize=("MatMul",), quant_format=form)
        quantizer = MatMulNBitsQuantizer(model, bits=fmt.bits, block_size=block, is_symmetric=True,
                                         nodes_to_exclude=exclude, algo_config=config)
        quantizer.process()
        model = quantizer.model.model
    onnx.save_model(model, str(dst))
    return blocks


@contextlib.contextmanager
def _quiet_logging():
    """ONNX Runtime's quantizers log per node (INFO) and advise pre-processing (WARNING) through
    Python logging; the command shows its own progress instead."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def quantize_graph(name: str, src: Path, dst: Path, feeds: list[dict], fmt: Format, work: Path) -> dict[str, Any]:
    """Quantize graph ``name`` from ``src`` into ``dst``; returns what was done (JSON-ready)."""
    import onnx
    from onnx import numpy_helper

    from prunevid.calibration import scales
    from prunevid.exporter.attention import to_standard

    model = onnx.load(str(src))
    # quantized graphs keep the standard attention form: ONNX Runtime's quantizer does not handle the
    # stored form's If branches (prunevid.exporter.attention)
    to_standard(model)
    floats = scales.float_nodes(name, model, fmt.float_roles)
    weights = [n.name for n in scales.weight_matmuls(model)]
    targets = [n for n in weights if n not in floats]
    smoothed = {"folded": 0, "mul": 0}
    blocks: dict[str, int] = {}
    exponents = []
    if fmt.smooth != "none":
        grouped = scales.groups(model, set(targets))
        stats = scales.activation_stats(model, feeds, list(grouped))
        inits = scales.initializers(model)
        for tensor, members in grouped.items():
            ws = [numpy_helper.to_array(inits[m.input[1]]) for m in members]
            if fmt.smooth == "smoothquant":
                s = scales.smoothquant_scale(stats[tensor], ws, fmt.alpha)
            else:
                s, a = scales.awq_scale(stats[tensor], ws, fmt.bits, fmt.block_for(ws[0].shape[0]), fmt.grid)
                exponents.append(a)
            smoothed[scales.apply_scale(model, tensor, members, s)] += 1
    with _quiet_logging():
        if fmt.kind == "qdq":
            _quantize_static(model, dst, feeds, fmt, targets, work)
        else:
            blocks = _quantize_weights(model, dst, fmt, targets)
    onnx.checker.check_model(str(dst))
    entry: dict[str, Any] = {"weight_matmuls": len(weights), "quantized": len(targets),
                             "float": {n: floats[n] for n in sorted(floats)}, "smoothing": fmt.smooth,
                             "scales_folded": smoothed["folded"], "scales_as_mul": smoothed["mul"]}
    if blocks:
        entry["blocks"] = {str(b): sum(1 for v in blocks.values() if v == b) for b in sorted(set(blocks.values()))}
    if exponents:
        entry["awq_exponent_mean"] = float(sum(exponents) / len(exponents))
    return entry


def _copy_graph(artifact, name: str, dst_root: Path) -> None:
    src = artifact.graph_path(name)
    (dst_root / spec.GRAPH_DIR).mkdir(parents=True, exist_ok=True)
    for file in artifact.manifest["graphs"][name]["sha256"]:
        shutil.copy2(src.parent / file, dst_root / spec.GRAPH_DIR / file)


def _check_options(fmt: Format, options: QuantizeOptions) -> None:
    for label, value in (("--samples", options.samples), ("--eval-samples", options.eval_samples),
                         ("new_tokens", options.new_tokens)):
        if value < 1:
            raise ConfigError(f"{label} must be >= 1, got {value}")
    unknown = [g for g in options.keep_float if g not in QUANTIZED_GRAPHS]
    if unknown:
        raise ConfigError(f"--keep-float takes {' or '.join(QUANTIZED_GRAPHS)}, got {unknown[0]!r}")
    if set(QUANTIZED_GRAPHS) <= set(options.keep_float):
        raise ConfigError("--keep-float names every quantizable graph; nothing would be quantized")
    for label, value in (("--min-iou", options.min_iou), ("--min-agreement", options.min_agreement)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{label} must be in [0, 1], got {value}")


def quantize_export(export_dir: str | Path, out: str | Path, fmt: Format | str, options: QuantizeOptions,
                    progress: Progress = lambda _m: None) -> tuple[Path, dict]:
    """Write the quantized copy of the float export ``export_dir`` into ``out`` (atomically);
    returns ``out`` and the accuracy report. Refused (nothing written) when the gates fail."""
    import onnx
    import onnxruntime

    from prunevid import __version__
    from prunevid.calibration.report import Gates, evaluate, gate_failures
    from prunevid.outdir import EXPORT, check_target, write_folder
    from prunevid.runtime.artifact import open_artifact, sha256, write_manifest
    from prunevid.runtime.backend import OrtBackend
    from prunevid.runtime.text import TextTokenizer, export_prompt
    from prunevid.runtime.video import Preprocess

    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    _check_options(fmt, options)
    artifact = open_artifact(export_dir)
    if "quantization" in artifact.manifest:
        raise ArtifactError(f"{export_dir} is already quantized ({artifact.manifest['quantization']['format']}); "
                            "quantize its float export")
    if artifact.manifest["dtype"] != "fp32":
        raise ConfigError(f"{export_dir} is a {artifact.manifest['dtype']} export; quantize an fp32 export")
    large = [n for n in QUANTIZED_GRAPHS if artifact.manifest["graphs"][n].get("external_data")]
    if large:
        raise QuantizationError(f"graph {large[0]} of {export_dir} keeps its weights in an external data file "
                                "(over 1.8 GB); quantizing such graphs is not supported yet")
    check_target(out, EXPORT, options.force, source=export_dir)
    videos = data.expand_videos(list(options.videos)) if options.videos else None
    questions = data.read_questions(options.questions)
    g = artifact.geometry
    model = artifact.manifest["model"]
    tokenizer = TextTokenizer.from_dir(artifact.root)

    def prompt_of(question: str):
        return export_prompt(tokenizer, model, question)  # the runtime's prompt, OneVision's newline row included

    with tempfile.TemporaryDirectory(prefix="prunevid-calib-") as work, \
            write_folder(out, EXPORT, force=options.force, source=export_dir) as tmp:
        progress("reading the calibration clips")
        preprocess = Preprocess.from_json(artifact.root / spec.PREPROCESSOR_FILE, g.image_size)
        clips = data.read_clips(videos if videos is not None else data.default_videos(Path(work)), g.frames, preprocess)
        cal, held = data.split(clips, questions, options.samples, options.eval_samples)
        paths = {n: artifact.graph_path(n) for n in spec.GRAPH_ORDER}
        float_backend = OrtBackend(paths, ["CPUExecutionProvider"])
        quantized = tuple(n for n in QUANTIZED_GRAPHS if n not in options.keep_float)
        progress(f"recording decoder inputs on {len(cal)} calibration samples (float export, PruneVid on)")
        feeds = data.record_feeds(float_backend, g, cal, prompt_of, quantized)
        graphs = dict(artifact.manifest["graphs"])
        done = {}
        for name in spec.GRAPH_ORDER:
            if name not in quantized:
                _copy_graph(artifact, name, tmp)
                continue
            progress(f"quantizing {name} ({fmt.name})")
            dst = tmp / spec.GRAPH_DIR / f"{name}.onnx"
            dst.parent.mkdir(parents=True, exist_ok=True)
            done[name] = quantize_graph(name, paths[name], dst, feeds[name], fmt, Path(work))
            graphs[name] = {**graphs[name], "sha256": {dst.name: sha256(dst)}, "external_data": False}
            if fmt.ort_disabled_optimizers:
                graphs[name][spec.ORT_DISABLED_OPTIMIZERS] = list(fmt.ort_disabled_optimizers)
        del feeds
        progress(f"accuracy report on {len(held)} held-out samples")
        quant_backend = OrtBackend({n: tmp / spec.GRAPH_DIR / f"{n}.onnx" for n in spec.GRAPH_ORDER},
                                   ["CPUExecutionProvider"], disabled_optimizers=spec.disabled_optimizers(graphs))
        report = evaluate(float_backend, quant_backend, g, held, prompt_of, quantized, options.new_tokens)
        gates = Gates(options.min_iou, options.min_agreement)
        failed = gate_failures(report, gates)
        if failed:
            raise QuantizationError(f"{fmt.name} refused by the accuracy gates: {'; '.join(failed)} "
                                    "(lower them with --min-iou / --min-agreement)")
        for file in artifact.manifest["files"]:
            shutil.copy2(artifact.root / file, tmp / file)
        opsets = {o.domain or "ai.onnx": o.version
                  for o in onnx.load(str(tmp / spec.GRAPH_DIR / "decoder_late.onnx"), load_external_data=False).opset_import}
        manifest = {k: v for k, v in artifact.manifest.items() if k != "manifest_sha256"}
        # the quantized decoders are stored in the standard form (quantize_graph); a decoder kept float
        # keeps the source's stored form, so the block says which graph is in which
        stored = artifact.manifest.get("attention", {}).get("stored", spec.STORED_ATTENTION)
        forms = {n: ("standard" if n in done else stored) for n in QUANTIZED_GRAPHS}  # the decoders
        manifest.update({
            "graphs": graphs,
            # ONNX Runtime runs each decoder in its stored form; TensorRT the standard one (trt.variant)
            "attention": {"stored": forms, "targets": {"onnxruntime": forms, "tensorrt": "standard"},
                          "why": "quantized decoder graphs keep the standard form: ONNX Runtime's quantizer "
                                 "does not handle the fused form's If branches"},
            "opset": max(manifest["opset"], opsets.get("ai.onnx", 0)),
            "versions": {**manifest.get("versions", {}), "prunevid": __version__, "onnxruntime": onnxruntime.__version__},
            "quantization": {
                "format": fmt.name, "doc": fmt.doc, "targets": list(fmt.targets),
                "element": fmt.element, "bits": fmt.bits, "block_size": fmt.block_size if fmt.kind == "weight_only" else None,
                "library": {"name": "onnxruntime.quantization", "version": onnxruntime.__version__,
                            "tool": "quantize_static (QDQ)" if fmt.kind == "qdq" else "MatMulNBitsQuantizer"},
                "smoothing": {"method": fmt.smooth, "alpha": fmt.alpha if fmt.smooth == "smoothquant" else None,
                              "grid": fmt.grid if fmt.smooth == "awq" else None},
                "tolerance": {"atol": fmt.tolerance[0], "rtol": fmt.tolerance[1]},
                "opsets": opsets,
                "graphs": done,
                "float_graphs": {**FLOAT_GRAPHS, **{n: "kept float by --keep-float" for n in options.keep_float}},
                "float_roles": {role: {"graph": g_, "outputs": list(o), "why": why}
                                for role, (g_, o, why) in FLOAT_ROLES.items() if role in fmt.float_roles},
                "calibration": {
                    "clips": [{"file": c.path.name, "sha256": c.sha256} for c in clips],
                    "questions": questions,
                    "samples": [{"clip": c.path.name, "question": q} for c, q in cal],
                    "decode_steps": data.DECODE_STEPS,
                },
                "gates": {"min_iou": gates.min_iou, "min_agreement": gates.min_agreement},
                "report": report,
                "source_export": {"path": str(Path(export_dir).resolve()),
                                  "manifest_sha256": artifact.manifest["manifest_sha256"]},
            },
        })
        write_manifest(tmp, manifest)
    return Path(out), report
