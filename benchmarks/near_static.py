"""Exported merger (ONNX Runtime) vs the eager reference on near-static features, with every
disagreement traced to the decision that differs and tested against float32 error bounds.

    python benchmarks/near_static.py [--hidden 768] [--clips 200] [--eps 1e-4 1e-3 1e-2 1e-1] [--floor]

Features are ``base + eps * noise`` (one still scene ``[1, 144, C]``, per-frame noise
``[16, 144, C]``), as ``tests/test_near_static.py`` checks at a small width. Per eps it prints how
many clips have identical segments and token counts, and how many are identical in every token
(within 1e-5) and in ``token_of_cell``; then one line per disagreeing clip: the DPC-KNN call that
differs (temporal, or the static / dynamic group of a segment), the quantity whose comparison
flipped (score, density, nearest-centre distance, or the static test) and its gap against the bound.

``--floor`` measures instead how often the eager reference disagrees with itself when only its
distances are rounded differently: correctly rounded (float64, then float32) and ``torch.cdist``'s
direct-difference path at every size. No float32 implementation of the formula can be expected to
agree with the eager reference more often than that.

The bound (see :func:`error_bounds`) is an a-priori bound of float32 rounding, evaluated with the
clip's norms: the distances of two implementations of the formula (``torch.cdist`` of the eager
reference, the centred expansion of the op) may differ by at most the sum of their worst-case
errors, ``gamma_m = m u / (1 - m u)`` (u = 2^-24) times the sum of the magnitudes each one adds
up, propagated through the density (exp of the mean of the k smallest squares), delta (a min) and
the score (a product). Where each backend computes a DPC-KNN input itself (the frame means of the
temporal clustering, a segment's static means), the merger's own input is read from the graph
(:class:`TracedMerger`), checked to lie within the a-priori bound of a float32 mean
(:func:`mean_error`), and its actual distance from the eager input enters the distances' bound.
A *near-tie* is a pair of competing quantities closer than the sum of their two bounds: rounding
alone may order them either way, in any implementation.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

FRAMES, TOKENS = 16, 144  # PLLaVA's 16 frames of 12 x 12 tokens
EPSILONS = (1e-4, 1e-3, 1e-2, 1e-1)
U = 2.0**-24  # float32 unit roundoff
CDIST_DIRECT_ROWS = 25  # torch.cdist computes differences directly up to this many rows, else a GEMM
EXP_ULPS = 4  # exp of the two implementations: within 2 ulps each


def gamma(m: int) -> float:
    """Higham's ``gamma_m``: the relative error bound of ``m`` float32 roundings in a row."""
    return m * U / (1 - m * U)


def near_static_clip(seed: int, eps: float, hidden: int):
    """``base + eps * noise``: one still scene ``[1, L, C]`` with per-frame noise ``[T, L, C]``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(1, TOKENS, hidden, generator=gen)
    return base + eps * torch.randn(FRAMES, TOKENS, hidden, generator=gen)


@dataclass(frozen=True)
class Bounds:
    """Per-token (or per-pair) bounds on |eager - op| for one group of ``n`` tokens (float64)."""

    dist: np.ndarray  # [n, n] distance d_ij
    density: np.ndarray  # [n]
    delta: np.ndarray  # [n]
    score: np.ndarray  # [n]


def error_bounds(x: np.ndarray, density: np.ndarray, delta: np.ndarray, k: int,
                 input_err: np.ndarray | None = None) -> Bounds:
    """Worst-case |eager - op| of each DPC-KNN quantity on the group ``x [n, C]``.

    ``input_err [n]`` bounds |x_i(eager) - x_i(op)| when the two computed their inputs themselves
    (a mean over tokens or frames, see :func:`mean_error`); it moves D_ij by at most
    2 sqrt(D_ij) (e_i + e_j) + (e_i + e_j)^2.

    Unscaled squared distance D_ij = |x_i - x_j|^2:
      * eager, ``torch.cdist``: direct differences for n <= 25 rows, error <= gamma_{C+3} D_ij; else
        the product [-2x_i, |x_i|^2, 1].[x_j, 1, |x_j|^2] of C+2 terms whose magnitudes add up to at
        most (|x_i| + |x_j|)^2: error <= gamma_{C+2} (|x_i| + |x_j|)^2;
      * op, centred expansion: y = fl(x - mu) moves D by <= 2 u sqrt(D) (|y_i| + |y_j|) (the error
        of mu itself cancels in differences), then |y_i|^2 + |y_j|^2 - 2 y_i.y_j:
        <= gamma_{C+2} (|y_i| + |y_j|)^2.
    d = sqrt(D / C) then takes the interval of D through the square root, plus 2 roundings per side;
    d^2 (the density squares d again) 1 more; the mean of the k smallest d^2 moves by at most the
    largest move of one d^2 plus gamma_k of its sum per side; rho = exp(-mean) by that times rho plus
    ``EXP_ULPS``; delta (a min of distances, same denser set) by the largest move of a distance in
    the row; score = delta * rho by the sum of both relative bounds plus one rounding per side.
    """
    n, c = x.shape
    x = x.astype(np.float64)
    norm = np.linalg.norm(x, axis=1)  # [n]
    y = x - x.mean(axis=0)
    ynorm = np.linalg.norm(y, axis=1)  # [n]
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)  # [n, n] exact enough in float64
    if n <= CDIST_DIRECT_ROWS:
        eager = gamma(c + 3) * d2
    else:
        eager = gamma(c + 2) * (norm[:, None] + norm[None, :]) ** 2
    ysum = ynorm[:, None] + ynorm[None, :]
    op = gamma(c + 2) * ysum**2 + 2 * U * np.sqrt(d2) * ysum
    if input_err is not None:
        esum = input_err[:, None] + input_err[None, :]
        op = op + 2 * np.sqrt(d2) * esum + esum**2
    err_d2 = (eager + op) / c  # on D / C
    d2c = d2 / c
    d = np.sqrt(d2c)
    err_d = np.maximum(np.sqrt(d2c + err_d2) - d, d - np.sqrt(np.maximum(d2c - err_d2, 0))) + 4 * U * d
    np.fill_diagonal(err_d, 0.0)  # d_ii: 0 in the op, sqrt of a rounding residue in cdist
    err_sq = 2 * d * err_d + err_d**2 + 2 * U * d2c  # d^2
    err_sq[np.diag_indices(n)] = np.diag(err_d2)  # the diagonal: cdist's d_ii^2 <= its D error
    kk = min(max(k, 1), n)
    mean_sq = -np.log(density.astype(np.float64))
    err_mean = err_sq.max(axis=1) + 2 * gamma(kk + 1) * mean_sq  # [n]
    err_rho = density * (np.expm1(err_mean) + EXP_ULPS * U)
    err_delta = err_d.max(axis=1) + 2 * U * delta  # [n]
    rel_delta = err_delta / np.maximum(delta, 1e-300)
    rel_rho = err_rho / np.maximum(density, 1e-300)
    score = delta * density
    err_score = score * (rel_delta + rel_rho + 2 * U)
    return Bounds(dist=err_d, density=err_rho, delta=err_delta, score=err_score)


def mean_error(parts: np.ndarray) -> np.ndarray:
    """``parts [m, n, C]`` averaged over axis 0 by two implementations (any summation order):
    ``[n]`` bounds on the norm of the difference of their results, 2 (gamma_{m-1} + u) |mean |parts||."""
    m = parts.shape[0]
    scale = np.abs(parts.astype(np.float64)).mean(axis=0)  # [n, C]
    return 2 * (gamma(max(m - 1, 0)) + U) * np.linalg.norm(scale, axis=1)


@dataclass(frozen=True)
class Verdict:
    """Why one DPC-KNN call of the op differs from the eager reference's."""

    call: str  # "temporal", "static s=<i>", "dynamic t=<i>", "static test", ...
    quantity: str  # "score", "density", "centre distance", "static test", "unexplained"
    gap: float  # |a - b| of the two competing quantities
    bound: float  # the sum of their error bounds
    detail: str

    @property
    def near_tie(self) -> bool:
        return self.gap <= self.bound


def classify_call(x: np.ndarray, k: int, num_clusters: int, op_labels: np.ndarray, op_centers: np.ndarray,
                  call: str, input_err: np.ndarray | None = None, x_op: np.ndarray | None = None) -> Verdict | None:
    """``None`` when the op's labels and centres equal eager :func:`prunevid.pruning.dpc_knn` on ``x``;
    else the first differing decision, the two quantities it compared and their bound. The op ran
    on ``x_op`` (default ``x``), which must lie within ``input_err`` of ``x`` row by row (else the
    verdict is "unexplained": the input bound itself failed)."""
    import torch

    from prunevid.pruning.dpc_knn import dpc_knn, pairwise_distance

    xt = torch.from_numpy(x)
    ref = dpc_knn(xt, num_clusters, k)
    e_centers, e_labels = ref.centers.numpy(), ref.labels.numpy()
    if np.array_equal(e_centers, op_centers) and np.array_equal(e_labels, op_labels):
        return None
    if x_op is not None:
        moved = np.linalg.norm(x_op.astype(np.float64) - x.astype(np.float64), axis=1)  # [n]
        limit = np.zeros(len(moved)) if input_err is None else input_err
        if (moved > limit).any():
            i = int(np.argmax(moved - limit))
            return Verdict(call, "unexplained", float(moved[i]), float(limit[i]), f"input row {i} moved past its bound")
        # the a-priori bound of a mean (gamma_{m-1}) is far above its typical rounding; what the op
        # was actually given is known here, so the distances' bound starts from that
        input_err = moved
    dist = pairwise_distance(xt).double().numpy()
    rho, delta, score = (t.double().numpy() for t in (ref.density, ref.delta, ref.score))
    bd = error_bounds(x, rho, delta, k, input_err)
    if not np.array_equal(e_centers, op_centers):
        r = int(np.flatnonzero(e_centers != op_centers)[0])
        a, b = int(e_centers[r]), int(op_centers[r])
        gap, bound = abs(score[a] - score[b]), bd.score[a] + bd.score[b]
        if gap <= bound:
            return Verdict(call, "score", gap / score[a], bound / score[a], f"slot {r}: token {a} vs {b}")
        # a score moved further than its rounding bound: its delta changed, i.e. a density order
        # flipped; the closest flip (against its bound) that moves delta of a or b
        best = None
        for t in (a, b):
            for j in range(x.shape[0]):
                if j == t:
                    continue
                denser = rho > rho[t]
                denser[j] = not denser[j]
                alt = dist[t][denser].min() if denser.any() else dist.max()
                if abs(alt - delta[t]) <= bd.delta[t]:
                    continue  # this flip does not move delta_t
                g, bnd = abs(rho[t] - rho[j]), bd.density[t] + bd.density[j]
                if best is None or g / bnd < best[0] / best[1]:
                    best = (g, bnd, t, j)
        if best is not None:
            g, bnd, t, j = best
            return Verdict(call, "density", g / rho[t], bnd / rho[t], f"slot {r}: token {a} vs {b}, rho {t} vs {j}")
        return Verdict(call, "unexplained", gap / score[a], bound / score[a], f"slot {r}: token {a} vs {b}")
    i = int(np.flatnonzero(e_labels != op_labels)[0])
    p, q = int(e_centers[e_labels[i]]), int(e_centers[op_labels[i]])
    gap, bound = abs(dist[p, i] - dist[q, i]), bd.dist[p, i] + bd.dist[q, i]
    return Verdict(call, "centre distance", gap / dist[p, i], bound / dist[p, i], f"token {i}: centre {p} vs {q}")


class TracedMerger:
    """The exported merger with the inputs and outputs of its three PvDpcKnn nodes (the temporal one,
    then the batched spatial ones of the static groups and of the frames' dynamic groups) as extra
    graph outputs, run by ONNX Runtime: what the op itself received and decided inside the merger,
    with no re-computation."""

    def __init__(self, cfg, frames: int, tokens: int, hidden: int):
        import onnx
        import onnxruntime as ort

        from prunevid.exporter.merger import merger_onnx
        from prunevid.plugins.ops import DOMAIN, DPC_KNN

        model = onnx.load_from_string(merger_onnx(cfg, frames, tokens, hidden))
        self.outputs = [o.name for o in model.graph.output]
        nodes = [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == DPC_KNN.name]
        assert len(nodes) == 3, "expected the temporal, the static and the dynamic PvDpcKnn node"
        self.traced = [[*n.input, *n.output] for n in nodes]  # x, num_valid, num_clusters, labels, centers
        for names in self.traced:
            for name in names:
                model.graph.output.append(onnx.ValueInfoProto(name=name))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    def __call__(self, video: np.ndarray):
        """``(merger outputs, [temporal, static, dynamic])``, each call's ``(x, num_valid,
        num_clusters, labels, centers)``."""
        out = self.session.run(None, {"visual_features": video})
        n = len(self.outputs)
        return out[:n], [out[n + 5 * i:n + 5 * i + 5] for i in range(3)]


def classify_clip(video, cfg, merger: TracedMerger) -> Verdict:
    """Trace a clip on which the merger and the eager reference differ to the first DPC-KNN call
    whose result inside the merger differs from eager's on eager's input (inputs: frame means or
    static means, that each backend averages itself, within :func:`mean_error`); if every call
    agrees, the static test closest to tau (the groups themselves differ)."""
    import torch
    import torch.nn.functional as F

    from prunevid.pruning.merge import MERGE_MIN_GROUP, merge_video_tokens, static_mask

    t, l, c = video.shape
    v = video.numpy()
    _, (temporal, *spatial) = merger(v)
    frames = video.mean(dim=1).numpy()  # [T, C], as the eager reference
    nc = int(t * cfg.temporal_segment_ratio)
    verdict = classify_call(frames, cfg.temporal_k, nc, temporal[3][0], temporal[4][0, :nc], "temporal",
                            mean_error(v.transpose(1, 0, 2)), temporal[0][0])
    if verdict is not None:
        return verdict
    # the eager groups in the merger's batch order: static groups by segment, then frames in order
    statics, dynamics = [], []
    start = 0
    closest = (np.inf, 0.0)
    eager = merge_video_tokens(video, tau=cfg.tau, temporal_segment_ratio=cfg.temporal_segment_ratio,
                               cluster_ratio=cfg.cluster_ratio, temporal_k=cfg.temporal_k, spatial_k=cfg.spatial_k)
    for s, w in enumerate(eager.window_sizes):
        window = video[start: start + w]  # [w, L, C]
        static = static_mask(window, cfg.tau)  # [L]
        statics.append((f"static s={s}", window[:, static].mean(dim=0).numpy(), mean_error(window[:, static].numpy())))
        dynamics += [(f"dynamic t={start + i}", frame.numpy(), np.zeros(frame.shape[0]))
                     for i, frame in enumerate(window[:, ~static])]
        if w > 1:  # the static test sim_l > tau: how close any location came, against its bound
            normed = F.normalize(window, p=2, dim=-1)  # [w, L, C]
            sim = torch.einsum("wlc,tlc->wtl", normed, normed)  # [w, w, L]
            sim = ((sim.sum(dim=-2) - 1).sum(dim=-2) / (w * (w - 1))).clamp(max=1.0)  # [L]
            gap = float((sim.double() - cfg.tau).abs().min())
            # eager: each cosine from two normalisations and a C-term dot product, w*w of them summed;
            # the merger: each from a C-term dot product over two norms that are C-term sums themselves
            bound = (3 * gamma(c + 3) + 2 * gamma(w * w + 1)) * w / (w - 1)
            if gap / bound < closest[0] / max(closest[1], 1e-300):
                closest = (gap, bound)
        start += w
    same_groups = True
    for kind, call in zip((statics, dynamics), spatial, strict=True):  # one batched call per kind
        groups = [g for g in kind if g[1].shape[0] >= MERGE_MIN_GROUP]
        x_op, n_op, _, labels, centers = call
        # the call's batch is the clustered groups, or one dummy row (fewer than 15 members) when none
        sizes = [int(n) for n in n_op]
        if groups:
            same = sizes == [g[1].shape[0] for g in groups]
        else:
            same = len(sizes) == 1 and sizes[0] < MERGE_MIN_GROUP
        if not same:
            same_groups = False
            continue
        for (name, x, err), lab, cen, xo in zip(groups, labels, centers, x_op, strict=False):  # compare each clustering
            n = x.shape[0]
            nc = int(n * cfg.cluster_ratio)
            verdict = classify_call(x, cfg.spatial_k, nc, lab[:n], cen[:nc], name, err, xo[:n])
            if verdict is not None:
                return verdict
    return Verdict("static test", "static test" if closest[1] > 0 else "unexplained", closest[0], closest[1],
                   "no DPC-KNN call differs" if same_groups else "groups differ")


def floor(hidden: int, clips: int, epsilons) -> None:
    """Print per eps how many clips the eager reference merges identically when its distances are
    correctly rounded, or taken from cdist's direct path, instead of cdist's default."""
    import importlib

    import torch

    from prunevid.pruning import merge_video_tokens

    dpc = importlib.import_module("prunevid.pruning.dpc_knn")  # the module, not the function
    official = dpc.pairwise_distance

    def rounded(x):  # exact enough in float64, then rounded once to float32
        xd = x.double()
        return (torch.cdist(xd, xd) / (x.shape[-1] ** 0.5)).float()

    def direct(x):
        xf = x.float()
        return torch.cdist(xf, xf, compute_mode="donot_use_mm_for_euclid_dist") / (x.shape[-1] ** 0.5)

    def same(a, b) -> bool:
        return (a.window_sizes == b.window_sizes and a.num_tokens == b.num_tokens
                and torch.equal(a.token_of_cell, b.token_of_cell) and torch.allclose(a.tokens, b.tokens, atol=1e-5, rtol=0))

    try:
        for eps in epsilons:
            counts = {"correctly rounded": 0, "cdist direct path": 0}
            for seed in range(clips):
                video = near_static_clip(seed, eps, hidden)
                dpc.pairwise_distance = official
                ref = merge_video_tokens(video)
                for name, fn in zip(counts, (rounded, direct), strict=True):
                    dpc.pairwise_distance = fn
                    counts[name] += same(ref, merge_video_tokens(video))
            print(f"C={hidden} eps={eps:g}: eager vs eager with distances " + ", ".join(
                f"{name}: identical {n}/{clips}" for name, n in counts.items()), flush=True)
    finally:
        dpc.pairwise_distance = official


def main() -> None:
    import torch

    from prunevid.config import PruneConfig
    from prunevid.pruning import merge_video_tokens

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--eps", type=float, nargs="+", default=list(EPSILONS))
    parser.add_argument("--floor", action="store_true", help="eager reference against itself, distances rounded otherwise")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.floor:
        floor(args.hidden, args.clips, args.eps)
        return
    cfg = PruneConfig()
    merger = TracedMerger(cfg, FRAMES, TOKENS, args.hidden)
    for eps in args.eps:
        layout = same = 0
        verdicts = []
        for seed in range(args.clips):
            video = near_static_clip(seed, eps, args.hidden)
            ref = merge_video_tokens(video)
            (merged, num, _, windows, cells), _ = merger(video.numpy())
            ok = int(num) == ref.num_tokens and [int(w) for w in windows if w > 0] == ref.window_sizes
            layout += ok
            agree = ok and np.array_equal(cells, ref.token_of_cell.numpy()) and np.allclose(
                merged[: ref.num_tokens], ref.tokens.numpy(), atol=1e-5, rtol=0)
            same += agree
            if not agree:
                verdicts.append((seed, classify_clip(video, cfg, merger)))
        print(f"C={args.hidden} eps={eps:g}: segments+counts identical {layout}/{args.clips}, "
              f"all tokens identical {same}/{args.clips}", flush=True)
        for seed, v in verdicts:
            print(f"  seed {seed}: {v.call}: {v.quantity} gap {v.gap:.2e} bound {v.bound:.2e} "
                  f"{'near-tie' if v.near_tie else 'NOT A NEAR-TIE'} ({v.detail})", flush=True)


if __name__ == "__main__":
    main()
