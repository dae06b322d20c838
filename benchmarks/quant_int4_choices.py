"""The int4-awq choices measured on the tiny random PLLaVA: block size of MatMulNBits (32/64/128) and
whether the LM head stays float, each quantized with the command's defaults (8 calibration pairs,
4 held-out pairs, 8 teacher-forced tokens each) and gates off, so every choice is measured.

Prints per choice the accuracy report's end-to-end figures and the decoder graphs' bytes over the fp16
bytes of their float weights (the tiny model's ratio; the bench geometry's is in bench_quant.py's
table). Writes JSON.

Usage: python benchmarks/quant_int4_choices.py [--cache DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from bench_quant import decoder_bytes, decoder_fp16_bytes
from common import DEFAULT_CACHE
from measure import write_json

CHOICES = ((32, True), (64, True), (128, True), (32, False), (128, False))  # (block, lm_head float)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/quant-int4-choices.json"))
    args = parser.parse_args()

    from prunevid.calibration.formats import FORMATS
    from prunevid.calibration.quantize import QuantizeOptions, quantize_export
    from prunevid.config import PruneConfig
    from prunevid.exporter.export import ExportOptions, export
    from prunevid.model.tiny import make_tiny
    from prunevid.runtime.video import bundled_clips

    model = args.cache / "choices-tiny-model"
    if not (model / "config.json").is_file():
        make_tiny(model)
    float_export = args.cache / "choices-tiny-export"
    if not (float_export / "manifest.json").is_file():
        export(model, float_export, PruneConfig(), ExportOptions(), force=True)
    fp16 = decoder_fp16_bytes(float_export)
    rows = []
    for block, lm_head_float in CHOICES:
        roles = ("layer_k_scoring", "lm_head") if lm_head_float else ("layer_k_scoring",)
        fmt = dataclasses.replace(FORMATS["int4-awq"], block_size=block, float_roles=roles)
        out = args.cache / f"choices-int4-b{block}-{'lmfloat' if lm_head_float else 'lmint4'}"
        print(f"quantizing block {block}, lm_head {'float' if lm_head_float else 'int4'} ...", file=sys.stderr)
        _, rep = quantize_export(float_export, out, fmt, QuantizeOptions(min_iou=0.0, min_agreement=0.0, force=True))
        rows.append({"block": block, "lm_head": "float" if lm_head_float else "int4",
                     "decoder_over_fp16": decoder_bytes(out) / fp16,
                     "logits_cosine_min": rep["graphs"]["decoder_late"]["logits"]["cosine_min"],
                     "logits_rel_err_max": rep["graphs"]["decoder_late"]["logits"]["rel_err_max"],
                     **{k: rep[k] for k in ("kept_iou_mean", "next_token_agreement", "top5_overlap",
                                            "greedy_identical", "greedy_answers", "teacher_forced_tokens")}})
    write_json(args.out, {"benchmark": "quant_int4_choices", "model": "tiny pllava (random)", "rows": rows,
                          "clips": sorted(p.name for p in bundled_clips().values())})
    print(f"{'block':>5s} {'lm_head':>7s} {'dec/fp16':>8s} {'IoU':>6s} {'agree':>6s} {'top5':>6s} {'greedy':>6s} "
          f"{'logit cos':>9s} {'logit err':>9s}")
    for r in rows:
        print(f"{r['block']:5d} {r['lm_head']:>7s} {r['decoder_over_fp16']:8.3f} {r['kept_iou_mean']:6.3f} "
              f"{r['next_token_agreement']:6.3f} {r['top5_overlap']:6.3f} {r['greedy_identical']:>3d}/{r['greedy_answers']:<2d} "
              f"{r['logits_cosine_min']:9.5f} {r['logits_rel_err_max']:9.4f}")


if __name__ == "__main__":
    main()
