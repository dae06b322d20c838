"""Runtime token ids against the eager reference on five video/question pairs, in the three modes,
at any family's geometry: the check of `tests/test_onevision.py` at sizes too slow for CI
(LLaVA-OneVision's 32 x 14 x 14 = 6272 visual tokens by default).

Usage: python benchmarks/check_runtime_equals_eager.py [--model llava-onevision] [--geometry ov32]
           [--model-dir DIR --export DIR] [--out FILE]
Builds (once, in --cache) the random model and its export unless both folders are given. Prints one
line per pair and mode, writes JSON, and exits 1 if any token ids differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench_families import model_and_export
from common import DEFAULT_CACHE
from measure import ROOT, write_json

PAIRS = (
    ("bikes", "What are the people in the video riding?"),
    ("bikes", "Describe the video in detail."),
    ("carphone_pristine", "Which animal appears in the video?\nA. A cat.\nB. A dog.\nC. A horse.\nD. A bird."),
    ("carphone_distorted", "How many people are in the room?"),
    ("scene_cut", "What changes in the middle of the clip?"),
)


def main() -> None:
    from prunevid.config import Mode, PruneConfig
    from prunevid.reference import EagerPipeline
    from prunevid.runtime.pipeline import RuntimePipeline
    from prunevid.runtime.video import bundled_clips, write_synthetic_clip

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llava-onevision")
    parser.add_argument("--geometry", default="ov32")
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--export", type=Path, default=None)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if (args.model_dir is None) != (args.export is None):
        raise SystemExit("Error: --model-dir and --export go together")
    model_dir, export_dir = (args.model_dir, args.export) if args.export else \
        model_and_export(args.cache, args.model, args.geometry)
    clips = bundled_clips()
    args.cache.mkdir(parents=True, exist_ok=True)
    synthetic = args.cache / "synthetic_scene_cut.mp4"
    clips["scene_cut"] = synthetic if synthetic.is_file() else write_synthetic_clip(synthetic)
    rows = []
    for mode in (Mode.PRUNEVID, Mode.MERGE, Mode.NONE):
        runtime, eager = RuntimePipeline(export_dir, mode=mode.value), EagerPipeline(model_dir, PruneConfig(mode=mode))
        for name, question in PAIRS:
            clip = clips.get(name, clips["scene_cut"])
            ours = runtime.run(clip, question, max_new_tokens=args.new_tokens)
            ref = eager.run(clip, question, max_new_tokens=args.new_tokens)
            same = ours.token_ids == ref.token_ids and ours.visual_tokens == ref.visual_tokens
            rows.append({"mode": mode.value, "clip": clip.name, "question": question, "equal": same,
                         "token_ids": ours.token_ids, "eager_token_ids": ref.token_ids,
                         "visual_tokens": ours.visual_tokens, "prompt_tokens": ours.prompt_tokens})
            print(f"{mode.value:9s} {clip.name:24s} {'equal' if same else 'DIFFER'} visual {ours.visual_tokens} "
                  f"prompt {ours.prompt_tokens}: {question.splitlines()[0]}", flush=True)
    out = args.out or ROOT / f"benchmarks/runtime-equals-eager-{args.model}-{args.geometry}.json"
    write_json(out, {"model": args.model, "geometry": args.geometry, "export": str(export_dir), "rows": rows})
    print(f"wrote {out}")
    sys.exit(0 if all(r["equal"] for r in rows) else 1)


if __name__ == "__main__":
    main()
