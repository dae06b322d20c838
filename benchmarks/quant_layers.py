"""Where the quantization error enters: per decoder layer, the residual stream of the float and the
quantized decoder graphs on the same recorded feeds (the float chain's own, PruneVid on), compared.

The residual stream is read where every RMSNorm reads it (the input of its ``Pow``), so it is the same
tensor in both graphs whatever the scale migrations folded into the norms' weights. Per graph and
stream tensor: cosine similarity (over all rows) and relative error ``||q - f|| / ||f||``, and how
much of that error the graph adds locally (the stream's relative error minus the one before it).
Also, for ``decoder_late``'s logits, the float top-1 margin against the logit error.

Usage: python benchmarks/quant_layers.py FLOAT_EXPORT QUANT_EXPORT [QUANT_EXPORT ...] [--samples 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def stream_tensors(model) -> list[str]:
    """The residual-stream tensors in graph order: what each RMSNorm squares (``Pow`` input)."""
    return [n.input[0] for n in model.graph.node if n.op_type == "Pow"]


def session(path: Path, extra: list[str]):
    """A CPU session of the graph at ``path`` (``<export>/graphs/<name>.onnx``) with ``extra`` tensors
    exposed as outputs, with the ONNX Runtime optimizers its export's manifest turns off."""
    import onnx

    from prunevid.calibration.scales import probe_session
    from prunevid.runtime.artifact import open_artifact

    off = open_artifact(path.parent.parent, verify=False).disabled_optimizers.get(path.stem, ())
    return probe_session(onnx.load(str(path)), extra, off)


def compare(float_dir: Path, quant_dir: Path, feeds: dict[str, list]) -> dict:
    import onnx

    from prunevid.calibration.report import cosine, rel_err

    out = {}
    for graph, graph_feeds in feeds.items():
        fpath, qpath = float_dir / "graphs" / f"{graph}.onnx", quant_dir / "graphs" / f"{graph}.onnx"
        if fpath.read_bytes() == qpath.read_bytes():
            continue
        names = stream_tensors(onnx.load(str(fpath), load_external_data=False))
        outputs = [o.name for o in onnx.load(str(fpath), load_external_data=False).graph.output
                   if not o.name.startswith("present.")]
        fs, qs = session(fpath, names), session(qpath, names)
        wanted = names + [o for o in outputs if o not in names]
        rows: dict[str, list] = {n: [] for n in wanted}
        for feed in graph_feeds:
            fo = dict(zip(wanted, fs.run(wanted, feed)))
            qo = dict(zip(wanted, qs.run(wanted, feed)))
            for n in wanted:
                if np.issubdtype(fo[n].dtype, np.floating):
                    rows[n].append((cosine(qo[n], fo[n]), rel_err(qo[n], fo[n])))
        table, before = [], 0.0
        for i, n in enumerate(wanted):
            if not rows[n]:
                continue
            cos, err = min(r[0] for r in rows[n]), max(r[1] for r in rows[n])
            added = err - before if n in names else None  # graph outputs: no local share
            table.append({"tensor": n, "index": i, "cosine_min": cos, "rel_err_max": err, "added": added})
            before = err if n in names else before
        out[graph] = table
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("float_export", type=Path)
    parser.add_argument("quant_exports", type=Path, nargs="+")
    parser.add_argument("--samples", type=int, default=1, help="held-out (clip, question) pairs recorded")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import tempfile

    from prunevid import spec
    from prunevid.calibration import data
    from prunevid.runtime.artifact import open_artifact
    from prunevid.runtime.backend import OrtBackend
    from prunevid.runtime.text import TextTokenizer, export_prompt
    from prunevid.runtime.video import Preprocess

    artifact = open_artifact(args.float_export)
    g = artifact.geometry
    tokenizer = TextTokenizer.from_dir(artifact.root)
    with tempfile.TemporaryDirectory() as work:
        preprocess = Preprocess.from_json(artifact.root / spec.PREPROCESSOR_FILE, g.image_size)
        clips = data.read_clips(data.default_videos(Path(work)), g.frames, preprocess)
        _, held = data.split(clips, data.read_questions(None), 1, args.samples)
        backend = OrtBackend({n: artifact.graph_path(n) for n in spec.GRAPH_ORDER}, ["CPUExecutionProvider"],
                             disabled_optimizers=artifact.disabled_optimizers)
        print(f"recording decoder feeds on {len(held)} held-out pair(s) ...", file=sys.stderr)
        feeds = data.record_feeds(backend, g, held, lambda q: export_prompt(tokenizer, artifact.manifest["model"], q),
                                  ("decoder_early", "decoder_late"))
    result = {}
    for qdir in args.quant_exports:
        fmt = json.loads((qdir / "manifest.json").read_text())["quantization"]["format"]
        print(f"comparing {qdir.name} ({fmt}) ...", file=sys.stderr)
        result[qdir.name] = {"format": fmt, "graphs": compare(args.float_export, qdir, feeds)}
        for graph, table in result[qdir.name]["graphs"].items():
            print(f"== {qdir.name} {graph}: stream tensor, cosine min, rel err max, added here")
            for row in table:
                added = f"{row['added']:+.4f}" if row["added"] is not None else "(output)"
                print(f"  {row['index']:3d} {row['tensor'][:60]:60s} {row['cosine_min']:.5f} {row['rel_err_max']:.4f} {added}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
