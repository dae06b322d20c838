"""Exported merger (ONNX Runtime) vs the eager reference on near-static features, with every
disagreement traced to the decision that differs and tested against float32 error bounds.

    python benchmarks/near_static.py [--hidden 768] [--clips 200] [--eps 1e-4 1e-3 1e-2 1e-1]

Features are ``base + eps * noise`` (one still scene ``[1, 144, C]``, per-frame noise
``[16, 144, C]``), as ``tests/test_near_static.py`` checks at a small width. Per eps it prints how
many clips have identical segments and token counts, and how many are identical in every token
(within 1e-5) and in ``token_of_cell``; then one line per disagreeing clip: the DPC-KNN call that
differs (temporal, or the static / dynamic group of a segment), the quantity whose comparison
flipped (score, density, nearest-centre distance, or the static test) and its gap against the bound.

The bound (see :func:`error_bounds`) is an a-priori bound of float32 rounding, evaluated with the
clip's norms: the distances of two implementations of the formula (``torch.cdist`` of the eager
reference, the centred expansion of the op) may differ by at most the sum of their worst-case
errors, ``gamma_m = m u / (1 - m u)`` (u = 2^-24) times the sum of the magnitudes each one adds
up, propagated through the density (exp of the mean of the k smallest squares), delta (a min) and
the score (a product). A *near-tie* is a pair of competing quantities closer than the sum of their
two bounds: rounding alone may order them either way, in any implementation.
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
                  call: str, input_err: np.ndarray | None = None) -> Verdict | None:
    """``None`` when the op's labels and centres equal eager :func:`prunevid.pruning.dpc_knn` on ``x``;
    else the first differing decision, the two quantities it compared and their bound (the op may
    have run on inputs within ``input_err`` of ``x``, see :func:`error_bounds`)."""
    import torch

    from prunevid.pruning.dpc_knn import dpc_knn, pairwise_distance

    xt = torch.from_numpy(x)
    ref = dpc_knn(xt, num_clusters, k)
    e_centers, e_labels = ref.centers.numpy(), ref.labels.numpy()
    if np.array_equal(e_centers, op_centers) and np.array_equal(e_labels, op_labels):
        return None
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


class OpSession:
    """The PvDpcKnn function body alone, run by ONNX Runtime (as inside the exported merger)."""

    def __init__(self, k: int):
        import onnxruntime as ort
        from onnx import TensorProto, helper

        from prunevid.plugins.onnx_functions import attach_functions
        from prunevid.plugins.ops import DOMAIN, DPC_KNN

        io = [helper.make_tensor_value_info(t.name, {"float32": TensorProto.FLOAT, "int32": TensorProto.INT32}[t.dtype],
                                            list(t.shape)) for t in (*DPC_KNN.inputs, *DPC_KNN.outputs)]
        node = helper.make_node(DPC_KNN.name, [t.name for t in DPC_KNN.inputs], [t.name for t in DPC_KNN.outputs],
                                domain=DOMAIN, **DPC_KNN.node_attributes(k=k))
        model = helper.make_model(helper.make_graph([node], "dpc", io[:3], io[3:]),
                                  opset_imports=[helper.make_opsetid("", 18)])
        attach_functions(model)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray, num_clusters: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Labels ``[n]`` and centres ``[num_clusters]`` of ``x [n, C]`` padded to ``rows`` rows."""
        n = x.shape[0]
        padded = np.zeros((1, max(rows, n), x.shape[1]), dtype=np.float32)
        padded[0, :n] = x
        labels, centers = self.session.run(None, {"x": padded, "num_valid": np.array([n], np.int32),
                                                  "num_clusters": np.array([num_clusters], np.int32)})
        return labels[0, :n].astype(np.int64), centers[0, :num_clusters].astype(np.int64)


class MergerMeans:
    """The merger's own means (ONNX Runtime, the same ops as :class:`MergerStage`): frame means
    ``[T, C]`` and the per-segment means ``[S, L, C]`` from the segment membership ``[S, T]``."""

    def __init__(self, frames: int, tokens: int, hidden: int):
        import io
        import warnings

        import onnxruntime as ort
        import torch

        class Means(torch.nn.Module):
            def forward(self, video, member):  # [T, L, C], [S, T] 0/1
                t, l, c = video.shape
                sums = (member @ video.reshape(t, l * c)).reshape(t, l, c)  # as MergerStage.static_split
                return video.mean(dim=1), sums / member.sum(1).clamp(min=1)[:, None, None]

        buf = io.BytesIO()
        example = (torch.zeros(frames, tokens, hidden), torch.eye(frames))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Means(), example, buf, dynamo=False, opset_version=18,
                              input_names=["video", "member"], output_names=["frames", "means"])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])

    def __call__(self, video: np.ndarray, windows: list[int]) -> tuple[np.ndarray, np.ndarray]:
        t = video.shape[0]
        member = np.zeros((t, t), dtype=np.float32)
        start = 0
        for s, w in enumerate(windows):
            member[s, start: start + w] = 1
            start += w
        return tuple(self.session.run(None, {"video": video, "member": member}))


def classify_clip(video, cfg, op: OpSession, means: MergerMeans) -> Verdict:
    """Trace a clip on which the merger and the eager reference differ to its first DPC-KNN call
    (in the eager reference's order and groups) whose op result differs from eager: first with
    the eager inputs, then with the merger's own means as inputs (their rounding bounded by
    :func:`mean_error`); if none differs, the static test closest to tau."""
    import torch
    import torch.nn.functional as F

    from prunevid.pruning.merge import MERGE_MIN_GROUP, merge_video_tokens, static_mask

    t, l, c = video.shape
    v = video.numpy()
    windows = merge_video_tokens(video).window_sizes
    m_frames, m_means = means(v, windows)
    frames = video.mean(dim=1).numpy()  # [T, C]
    nc = int(t * cfg.temporal_segment_ratio)
    verdict = (classify_call(frames, cfg.temporal_k, nc, *op(frames, nc, t), "temporal")
               or classify_call(frames, cfg.temporal_k, nc, *op(m_frames, nc, t), "temporal (merger's frame means)",
                                mean_error(v.transpose(1, 0, 2))))
    if verdict is not None:
        return verdict
    start = 0
    closest = (np.inf, 0.0)
    for s, w in enumerate(windows):
        window = video[start: start + w]  # [w, L, C]
        static = static_mask(window, cfg.tau)  # [L]
        group = window[:, static].mean(dim=0).numpy()  # [n_s, C]
        if group.shape[0] >= MERGE_MIN_GROUP:
            nc = int(group.shape[0] * cfg.cluster_ratio)
            own = m_means[s][static.numpy()]  # the merger's static means [n_s, C]
            verdict = (classify_call(group, cfg.spatial_k, nc, *op(group, nc, l), f"static s={s}")
                       or classify_call(group, cfg.spatial_k, nc, *op(own, nc, l), f"static s={s} (merger's means)",
                                        mean_error(window[:, static].numpy())))
            if verdict is not None:
                return verdict
        for i, frame in enumerate(window[:, ~static]):  # [n_d, C] each, the raw tokens
            if frame.shape[0] >= MERGE_MIN_GROUP:
                g = frame.numpy()
                nc = int(g.shape[0] * cfg.cluster_ratio)
                verdict = classify_call(g, cfg.spatial_k, nc, *op(g, nc, l), f"dynamic t={start + i}")
                if verdict is not None:
                    return verdict
        if w > 1:  # the static test sim_l > tau: how close any location came, against its bound
            normed = F.normalize(window, p=2, dim=-1)  # [w, L, C]
            sim = torch.einsum("wlc,tlc->wtl", normed, normed)  # [w, w, L]
            sim = ((sim.sum(dim=-2) - 1).sum(dim=-2) / (w * (w - 1))).clamp(max=1.0)  # [L]
            gap = float((sim.double() - cfg.tau).abs().min())
            # each cosine: two normalisations and a C-term dot product; then w*w of them summed
            bound = 2 * (gamma(c + 3) + gamma(w * w + 1)) * w / (w - 1)
            if gap / bound < closest[0] / max(closest[1], 1e-300):
                closest = (gap, bound)
        start += w
    return Verdict("static test", "static test" if closest[1] > 0 else "unexplained", closest[0], closest[1],
                   "no DPC-KNN call differs")


def main() -> None:
    import onnxruntime as ort
    import torch

    from prunevid.config import PruneConfig
    from prunevid.exporter.merger import merger_onnx
    from prunevid.pruning import merge_video_tokens

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--eps", type=float, nargs="+", default=list(EPSILONS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = PruneConfig()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(merger_onnx(cfg, FRAMES, TOKENS, args.hidden), opts,
                                   providers=["CPUExecutionProvider"])
    op = OpSession(cfg.spatial_k)
    means = MergerMeans(FRAMES, TOKENS, args.hidden)
    assert cfg.spatial_k == cfg.temporal_k
    for eps in args.eps:
        layout = same = 0
        verdicts = []
        for seed in range(args.clips):
            video = near_static_clip(seed, eps, args.hidden)
            ref = merge_video_tokens(video)
            merged, num, _, windows, cells = session.run(None, {"visual_features": video.numpy()})
            ok = int(num) == ref.num_tokens and [int(w) for w in windows if w > 0] == ref.window_sizes
            layout += ok
            agree = ok and np.array_equal(cells, ref.token_of_cell.numpy()) and np.allclose(
                merged[: ref.num_tokens], ref.tokens.numpy(), atol=1e-5, rtol=0)
            same += agree
            if not agree:
                verdicts.append((seed, classify_clip(video, cfg, op, means)))
        print(f"C={args.hidden} eps={eps:g}: segments+counts identical {layout}/{args.clips}, "
              f"all tokens identical {same}/{args.clips}", flush=True)
        for seed, v in verdicts:
            print(f"  seed {seed}: {v.call}: {v.quantity} gap {v.gap:.2e} bound {v.bound:.2e} "
                  f"{'near-tie' if v.near_tie else 'NOT A NEAR-TIE'} ({v.detail})", flush=True)


if __name__ == "__main__":
    main()
