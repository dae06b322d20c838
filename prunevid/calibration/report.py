"""The accuracy report of a quantized export against its float export, and the gates.

On held-out (clip, question) pairs, both exports answer with PruneVid on:

* per graph: every float output of each quantized graph is computed by both graphs on the float
  chain's own feeds; cosine similarity and relative error ``||q - f|| / ||f||`` (the ``present.*``
  caches folded into one row);
* end to end, teacher-forced on the float model's greedy tokens: next-token agreement (argmax
  equal), top-5 overlap (shared tokens / 5), the kept visual-token set after layer K against the
  float one (IoU; text rows are always kept and do not count), and whether the greedy answer is
  identical (every teacher-forced argmax agrees);
* why a next token flips: per teacher-forced position the float model's top-1 margin (top-1 minus
  top-2 logit) against the logit error ``max |q - f|`` there; a token can only flip where the error
  reaches half the margin, so near-flat logits (a random model's) flip under small errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prunevid import spec


@dataclass(frozen=True)
class Gates:
    """The export is refused when the mean kept-token IoU or the next-token agreement is below these."""

    min_iou: float
    min_agreement: float


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    want = want.astype(np.float64)
    diff = float(np.linalg.norm(got.astype(np.float64) - want))
    scale = float(np.linalg.norm(want))
    return diff / scale if scale > 0 else (0.0 if diff == 0 else 1.0)


def visual_kept(keep: np.ndarray, start: int, end: int) -> np.ndarray:
    """The kept prompt positions inside the visual block ``[start, end)``."""
    keep = np.asarray(keep)
    return keep[(keep >= start) & (keep < end)]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = set(np.asarray(a).tolist()), set(np.asarray(b).tolist())
    return 1.0 if not a and not b else len(a & b) / len(a | b)


class PairRunner:
    """Runs the float graph; for the quantized graphs also the quantized one on the same feeds, and
    records the comparison. Hands the float outputs on, so the chain stays the float one."""

    def __init__(self, float_backend, quant_backend, graphs: tuple[str, ...]):
        self.float, self.quant, self.graphs = float_backend, quant_backend, graphs
        self.rows: dict[tuple[str, str], list[tuple[float, float]]] = {}

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        want = self.float.run(graph, feeds)
        if graph in self.graphs:
            got = self.quant.run(graph, feeds)
            for name, value in want.items():
                if np.issubdtype(value.dtype, np.floating):
                    key = (graph, "present.*" if name.startswith("present.") else name)
                    self.rows.setdefault(key, []).append((cosine(got[name], value), rel_err(got[name], value)))
        return want


def margin_stats(flogits: list[np.ndarray], qlogits: list[np.ndarray]) -> dict:
    """Quantiles (0.1, 0.5, 0.9) of the float top-1 margin and of the logit error ``max |q - f|`` over
    the teacher-forced positions, their ratio's median, and the share of positions whose error
    reaches half the margin (flippable) and of flips among those."""
    margins, errors, flips = [], [], []
    for f, q in zip(flogits, qlogits):
        f, q = np.asarray(f, np.float64).ravel(), np.asarray(q, np.float64).ravel()
        top2 = np.sort(f)[-2:]  # [second, first]
        margins.append(float(top2[1] - top2[0]))
        errors.append(float(np.abs(q - f).max()))
        flips.append(int(np.argmax(q)) != int(np.argmax(f)))
    m, e, flipped = np.asarray(margins), np.asarray(errors), np.asarray(flips)
    flippable = e >= m / 2
    q3 = (0.1, 0.5, 0.9)
    return {"top1_margin_q10_q50_q90": [float(v) for v in np.quantile(m, q3)],
            "logit_error_q10_q50_q90": [float(v) for v in np.quantile(e, q3)],
            "error_over_margin_median": float(np.median(e / np.maximum(m, 1e-12))),
            "flippable_share": float(flippable.mean()),
            "flipped_share": float(flipped.mean()),
            "flips_where_flippable": int((flipped & flippable).sum()), "flips": int(flipped.sum())}


def _forced_logits(chain, state, tokens: list[int]) -> list[np.ndarray]:
    """Logits before each of ``tokens`` when ``tokens`` are fed one by one (teacher forcing)."""
    out = [state.logits]
    for j, token in enumerate(tokens[:-1]):
        out.append(chain.step(state, token, state.seq_len + j))
    return out


def evaluate(float_backend, quant_backend, geometry: spec.Geometry, pairs: list, prompt_of,
             quantized: tuple[str, ...], new_tokens: int = 8) -> dict:
    """The report (JSON-ready) of ``quant_backend`` against ``float_backend`` on ``pairs``."""
    from prunevid.runtime.chain import Chain

    pair = PairRunner(float_backend, quant_backend, quantized)
    fchain, qchain = Chain(pair, geometry), Chain(quant_backend, geometry)
    agree, top5, ious, identical = [], [], [], 0
    all_f, all_q = [], []
    for clip, question in pairs:
        prompt = prompt_of(question)
        ids = np.asarray(prompt.ids, dtype=np.int64)
        fvis = fchain.visual(fchain.encode(clip.pixels), merge=True)
        fstate = fchain.prefill(ids, prompt.image_pos, fvis, True, new_tokens)
        flogits, tokens = [fstate.logits], []
        for j in range(new_tokens):  # float greedy, keeping the logits before each token
            tokens.append(int(np.argmax(flogits[-1])))
            if j < new_tokens - 1:
                flogits.append(fchain.step(fstate, tokens[-1], fstate.seq_len + j))
        qvis = qchain.visual(qchain.encode(clip.pixels), merge=True)
        qstate = qchain.prefill(ids, prompt.image_pos, qvis, True, new_tokens)
        start, end = prompt.image_pos, prompt.image_pos + fvis.count  # the visual block (text is always kept)
        ious.append(iou(visual_kept(fstate.keep, start, end), visual_kept(qstate.keep, start, end)))
        qlogits = _forced_logits(qchain, qstate, tokens)
        same = [int(np.argmax(q)) == int(np.argmax(f)) for q, f in zip(qlogits, flogits)]
        agree.extend(same)
        top5.extend(len(set(np.argsort(-q)[:5].tolist()) & set(np.argsort(-f)[:5].tolist())) / 5
                    for q, f in zip(qlogits, flogits))
        identical += all(same)
        all_f.extend(flogits)
        all_q.extend(qlogits)
    graphs = {}
    for (graph, output), rows in sorted(pair.rows.items()):
        graphs.setdefault(graph, {})[output] = {"cosine_min": min(r[0] for r in rows),
                                                "rel_err_max": max(r[1] for r in rows), "calls": len(rows)}
    return {
        "samples": [{"clip": c.path.name, "question": q} for c, q in pairs],
        "graphs": graphs,
        "kept_iou_mean": float(np.mean(ious)),
        "kept_iou_min": float(np.min(ious)),
        "next_token_agreement": float(np.mean(agree)),
        "top5_overlap": float(np.mean(top5)),
        "greedy_identical": identical,
        "greedy_answers": len(pairs),
        "teacher_forced_tokens": len(agree),
        "margins": margin_stats(all_f, all_q),
    }


def gate_failures(report: dict, gates: Gates) -> list[str]:
    """The failing figures, each as ``name value < threshold``; empty when the gates pass."""
    failed = []
    if report["kept_iou_mean"] < gates.min_iou:
        failed.append(f"kept-token IoU {report['kept_iou_mean']:.3f} < {gates.min_iou:g}")
    if report["next_token_agreement"] < gates.min_agreement:
        failed.append(f"next-token agreement {report['next_token_agreement']:.3f} < {gates.min_agreement:g}")
    return failed


def format_report(report: dict) -> list[str]:
    """The report as printed lines."""
    lines = [f"{'graph':16s} {'output':22s} {'cosine min':>10s} {'rel err max':>11s}"]
    for graph, outputs in report["graphs"].items():
        for output, row in outputs.items():
            lines.append(f"{graph:16s} {output:22s} {row['cosine_min']:10.6f} {row['rel_err_max']:11.2e}")
    lines.append(f"held-out samples {len(report['samples'])}: kept-token IoU mean {report['kept_iou_mean']:.3f} "
                 f"(min {report['kept_iou_min']:.3f}), next-token agreement {report['next_token_agreement']:.3f} "
                 f"over {report['teacher_forced_tokens']} tokens, top-5 overlap {report['top5_overlap']:.3f}, "
                 f"greedy answers identical {report['greedy_identical']}/{report['greedy_answers']}")
    m = report.get("margins")
    if m:
        lines.append(f"float top-1 margin median {m['top1_margin_q10_q50_q90'][1]:.3g} vs logit error median "
                     f"{m['logit_error_q10_q50_q90'][1]:.3g}: {m['flippable_share']:.0%} of positions flippable "
                     f"(error >= margin/2), {m['flips']} flips, {m['flips_where_flippable']} of them there")
    return lines
