"""Graph analysis, activation statistics and the scale migrations folded in before quantizing.

Both SmoothQuant (Xiao et al., 2023) and AWQ (Lin et al., 2024) rewrite ``x @ W`` as
``(x / s) @ (s[:, None] * W)`` with one scale per input channel, exact in float, so that the
quantized weights (and for SmoothQuant the activations) lose less. Every weight MatMul reading the
same activation shares one ``s``. ``x / s`` is folded into the producer when it is an RMSNorm's
weight multiplication read only by those MatMuls, else a ``Mul`` node is inserted.

* SmoothQuant: ``s_j = max|x_j|^alpha / max|W_j|^(1 - alpha)`` over the calibration rows and the
  group's weights.
* AWQ: ``s = mean|x|^a`` (normalised), ``a`` chosen on a grid in [0, 1] to minimise the squared
  output error of the block-quantized weights on sampled calibration rows (``a = 0`` is plain
  round-to-nearest, so the search never does worse than RTN on those rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from prunevid.calibration.formats import FLOAT_ROLES

STOP_OPS = frozenset({"Shape", "Size"})  # shape-only dependencies: no values flow through them


def initializers(model) -> dict:
    return {t.name: t for t in model.graph.initializer}


def signed_permutation(init) -> bool:
    """Whether the 2-D initializer ``init`` is a square matrix with one nonzero per row and column, each
    +1 or -1: RoPE's rotate-half as a MatMul, computation rather than a learned weight."""
    from onnx import numpy_helper

    if len(init.dims) != 2 or init.dims[0] != init.dims[1]:
        return False
    w = numpy_helper.to_array(init)
    nonzero = w != 0
    return bool((nonzero.sum(axis=0) == 1).all() and (nonzero.sum(axis=1) == 1).all()
                and np.isin(w[nonzero], (-1.0, 1.0)).all())


def weight_matmuls(model) -> list:
    """MatMul nodes whose second input is a 2-D float initializer (``x @ W``, ``W [in, out]``) read by
    that node alone and not a signed permutation. The rotate-half permutation that RoPE applies is part
    of the computation, not a projection weight, whether several layers share it or a graph of one
    layer holds it alone: it is never quantized, nor is its input."""
    from onnx import TensorProto

    inits = initializers(model)
    uses = _consumers(model)
    return [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits
            and len(inits[n.input[1]].dims) == 2 and inits[n.input[1]].data_type == TensorProto.FLOAT
            and len(uses[n.input[1]]) == 1 and not signed_permutation(inits[n.input[1]])]


def _producers(model) -> dict:
    return {out: node for node in model.graph.node for out in node.output}


def _consumers(model) -> dict[str, list]:
    found: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def matmuls_feeding(model, outputs: tuple[str, ...]) -> set[str]:
    """Names of the weight MatMuls on the value paths into ``outputs``: walk back from each output,
    stop at the first weight MatMul on a path and at shape-only ops."""
    weights = {n.name for n in weight_matmuls(model)}
    producers = _producers(model)
    found: set[str] = set()
    seen: set[str] = set()
    stack = list(outputs)
    while stack:
        tensor = stack.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        node = producers.get(tensor)
        if node is None or node.op_type in STOP_OPS:
            continue
        if node.name in weights:
            found.add(node.name)
            continue
        stack.extend(i for i in node.input if i)
    return found


def float_nodes(graph: str, model, roles: tuple[str, ...] = tuple(FLOAT_ROLES)) -> dict[str, str]:
    """The weight MatMuls of ``graph`` that stay float, by node name, with their role: the entries
    ``roles`` of :data:`prunevid.calibration.formats.FLOAT_ROLES` (a format's ``float_roles``)."""
    out: dict[str, str] = {}
    for role, (where, outputs, _why) in FLOAT_ROLES.items():
        if where == graph and role in roles:
            out.update({name: role for name in matmuls_feeding(model, outputs)})
    return out


@dataclass
class ChannelStats:
    """Per input channel over every calibration row: ``amax`` max |x|, ``mean`` mean |x|; ``rows`` a
    sample of whole rows ``[r, C]`` for the AWQ search."""

    amax: np.ndarray
    total: np.ndarray
    count: int = 0
    rows: list = field(default_factory=list)

    @property
    def mean(self) -> np.ndarray:
        return self.total / max(self.count, 1)

    def sample(self) -> np.ndarray:
        return np.concatenate(self.rows) if self.rows else np.zeros((0, self.amax.shape[0]), np.float32)


def probe_session(model, tensors: list[str], disabled_optimizers: tuple[str, ...] = ()):
    """An ONNX Runtime CPU session of ``model`` with ``tensors`` exposed as extra outputs
    (``disabled_optimizers``: as the runtime's session of that graph has them)."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    for name in tensors:
        if name not in outputs:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(disabled_optimizers))


def activation_stats(model, feeds: list[dict], tensors: list[str], rows_per_feed: int = 32,
                     seed: int = 0) -> dict[str, ChannelStats]:
    """Run ``model`` on every feed; per-channel statistics of each of ``tensors`` (flattened to
    ``[rows, C]``), streamed: nothing but the statistics and the row sample is kept."""
    session = probe_session(model, tensors)
    rng = np.random.default_rng(seed)
    stats: dict[str, ChannelStats] = {}
    for feed in feeds:
        for name, value in zip(tensors, session.run(tensors, feed)):
            x = value.reshape(-1, value.shape[-1]).astype(np.float32)  # [rows, C]
            a = np.abs(x)
            s = stats.setdefault(name, ChannelStats(np.zeros(x.shape[1], np.float32), np.zeros(x.shape[1], np.float64)))
            s.amax = np.maximum(s.amax, a.max(axis=0))
            s.total += a.sum(axis=0, dtype=np.float64)
            s.count += x.shape[0]
            pick = np.sort(rng.choice(x.shape[0], size=min(rows_per_feed, x.shape[0]), replace=False))
            s.rows.append(x[pick])  # [r, C]
    return stats


def tensor_ranges(model, feeds: list[dict], tensors: list[str]) -> dict[str, dict[str, float]]:
    """Per-tensor ``lowest``, ``highest``, ``avg`` and ``std`` over every feed (streamed), what ONNX
    Runtime's quantizer reads from a calibration (min/max for int8, avg/std for float8)."""
    session = probe_session(model, tensors)
    acc: dict[str, list[float]] = {}
    for feed in feeds:
        for name, value in zip(tensors, session.run(tensors, feed)):
            x = value.astype(np.float64)
            a = acc.setdefault(name, [np.inf, -np.inf, 0.0, 0.0, 0])
            a[0], a[1] = min(a[0], float(x.min(initial=np.inf))), max(a[1], float(x.max(initial=-np.inf)))
            a[2] += float(x.sum())
            a[3] += float(np.square(x).sum())
            a[4] += x.size
    out = {}
    for name, (lo, hi, total, squares, count) in acc.items():
        mean = total / max(count, 1)
        out[name] = {"lowest": lo, "highest": hi, "avg": mean, "std": float(np.sqrt(max(squares / max(count, 1) - mean**2, 0.0)))}
    return out


def fake_quant(w: np.ndarray, bits: int, block: int) -> np.ndarray:
    """Symmetric round-to-nearest of ``w [in, out]`` in blocks of ``block`` along ``in``, dequantized."""
    k, n = w.shape
    pad = (-k) % block
    wp = np.concatenate([w, np.zeros((pad, n), w.dtype)]) if pad else w
    blocks = wp.reshape(-1, block, n)  # [in/block, block, out]
    qmax = 2 ** (bits - 1) - 1
    scale = np.maximum(np.abs(blocks).max(axis=1, keepdims=True), 1e-12) / qmax  # [in/block, 1, out]
    q = np.clip(np.round(blocks / scale), -qmax - 1, qmax)
    return (q * scale).reshape(-1, n)[:k]


def smoothquant_scale(stats: ChannelStats, weights: list[np.ndarray], alpha: float) -> np.ndarray:
    """``s_j = max|x_j|^alpha / max|W_j|^(1 - alpha)`` (clipped away from 0 and inf)."""
    wmax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)  # [in]
    s = np.maximum(stats.amax, 1e-5) ** alpha / np.maximum(wmax, 1e-5) ** (1 - alpha)
    return np.clip(s, 1e-4, 1e4).astype(np.float32)


def awq_scale(stats: ChannelStats, weights: list[np.ndarray], bits: int, block: int, grid: int) -> tuple[np.ndarray, float]:
    """The AWQ scale of one group and its exponent: ``mean|x|^a`` on a grid of ``a``, minimising the
    squared output error of the quantized weights on the sampled rows."""
    x = stats.sample().astype(np.float32)  # [r, in]
    mean = np.maximum(stats.mean.astype(np.float32), 1e-6)
    refs = [x @ w for w in weights]  # [r, out] each
    best = (np.inf, np.ones_like(mean), 0.0)
    for a in np.linspace(0.0, 1.0, grid):
        s = mean ** a
        s = s / np.sqrt(s.max() * s.min())
        xs = x / s  # [r, in]
        err = sum(float(np.square(xs @ fake_quant(w * s[:, None], bits, block) - ref).sum())
                  for w, ref in zip(weights, refs))
        if err < best[0]:
            best = (err, s.astype(np.float32), float(a))
    return best[1], best[2]


def groups(model, quantized: set[str]) -> dict[str, list]:
    """The quantized weight MatMuls grouped by the activation they read."""
    out: dict[str, list] = {}
    for node in weight_matmuls(model):
        if node.name in quantized:
            out.setdefault(node.input[0], []).append(node)
    return out


def apply_scale(model, tensor: str, members: list, s: np.ndarray) -> str:
    """Rewrite ``tensor @ W_i`` of ``members`` as ``(tensor / s) @ (s W_i)`` in ``model`` (in place).
    Returns how: ``"folded"`` into the producer's weight, or ``"mul"`` (a node inserted)."""
    from onnx import helper, numpy_helper

    inits = initializers(model)
    uses = _consumers(model)
    for node in members:
        w = inits[node.input[1]]
        if len(uses.get(w.name, [])) != 1:
            raise ValueError(f"weight {w.name} is shared; cannot scale it for {node.name}")
        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * s[:, None], w.name))
    producer = _producers(model).get(tensor)
    member_names = {n.name for n in members}
    if producer is not None and producer.op_type == "Mul" and {n.name for n in uses.get(tensor, [])} == member_names:
        for name in producer.input:
            init = inits.get(name)
            if init is not None and list(init.dims) == [s.shape[0]] and len(uses.get(name, [])) == 1:
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) / s, name))
                return "folded"
    inv = numpy_helper.from_array((1.0 / s).astype(np.float32), f"{tensor}/smooth_inv")
    model.graph.initializer.append(inv)
    out = f"{tensor}/smoothed"
    first = min(i for i, n in enumerate(model.graph.node) if n.name in member_names)
    model.graph.node.insert(first, helper.make_node("Mul", [tensor, inv.name], [out], name=f"{tensor}/smooth"))
    for node in model.graph.node:
        if node.name in member_names:
            node.input[0] = out
    return "mul"
