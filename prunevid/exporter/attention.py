"""The decoder's attention over the fixed KV cache, and its per-target ONNX forms.

The torch stages call :func:`cached_attention`; when exported it leaves one marker node per layer
(domain :data:`MARKER_DOMAIN`), which :func:`lower` replaces by the form of a target of
:data:`prunevid.spec.ATTENTION_FORMS`:

* ``standard`` (TensorRT 10.3 / 11, any ONNX consumer): default-domain ops only. Logits of the query
  rows against the cache and against the new rows, joined, one softmax, two products. The additive
  mask (cache length, then causal) is built once per graph call, outside.
* ``ort`` (the export's stored form, ONNX Runtime): ``If(cache_length == 0)``. Then (the prompt, no
  cache yet): ONNX Runtime's fused ``com.microsoft.GroupQueryAttention`` on the new rows, causal,
  ``H_kv`` key/value heads, no ``[H, S, S]`` logits tensor. Else (decode steps, or rows after a
  cache): the standard form, whose logits are ``[H, n, R + n]`` with ``n`` = 1.

:func:`to_standard` turns the stored ``ort`` form into the ``standard`` one (each marked ``If``
replaced by its else branch), so every weight is stored once and the TensorRT variant is derived.
Layer K's scoring map does not come from here (the ``score`` graph recomputes it exactly from the
pre-RoPE q/k).
"""

from __future__ import annotations

import functools
import math

from prunevid import spec

MARKER_DOMAIN = "prunevid.export"
MARKER = "CachedAttention"
MS_DOMAIN = "com.microsoft"


def attention_math(q, k, v, past_k, past_v, mask):
    """``q [H, n, d]``, new ``k, v [H_kv, n, d]``, cache ``[H_kv, R, d]``, additive ``mask [rep*n, R+n]``
    -> ``[n, H*d]``: the query heads of key head j are rows of one product (no repeated cache)."""
    import torch

    h, _, d = q.shape
    hk = k.shape[0]
    rows = q.reshape(hk, -1, d)  # [Hkv, rep*n, d]
    scale = 1.0 / math.sqrt(d)
    logits = torch.cat([rows @ past_k.transpose(1, 2), rows @ k.transpose(1, 2)], dim=-1) * scale + mask
    probs = torch.softmax(logits, dim=-1)  # [Hkv, rep*n, R+n]
    r = past_k.shape[1]
    out = probs[:, :, :r] @ past_v + probs[:, :, r:] @ v  # [Hkv, rep*n, d]
    return out.reshape(h, -1, d).transpose(0, 1).reshape(-1, h * d)  # [n, H*d]


@functools.cache
def _marker():
    """The autograd function whose export is the marker node (built on first use: torch stays out of
    the TensorRT paths, which only need :func:`to_standard`)."""
    import torch

    class CachedAttention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, past_k, past_v, mask, cache_length):  # noqa: ARG004
            return attention_math(q, k, v, past_k, past_v, mask)

        @staticmethod
        def symbolic(g, q, k, v, past_k, past_v, mask, cache_length):
            out = g.op(f"{MARKER_DOMAIN}::{MARKER}", q, k, v, past_k, past_v, mask, cache_length)
            out.setType(q.type().with_sizes([None, None]))
            return out

    return CachedAttention


def cached_attention(q, k, v, past_k, past_v, mask, cache_length):
    """Attention of the new rows over the cache's first ``cache_length`` rows and themselves; exported
    as a marker node that :func:`lower` replaces."""
    import torch

    if torch.onnx.is_in_onnx_export():
        return _marker().apply(q, k, v, past_k, past_v, mask, cache_length)
    return attention_math(q, k, v, past_k, past_v, mask)


# ---------------------------------------------------------------- ONNX forms


class _Nodes:
    """Nodes with unique names under ``prefix``."""

    def __init__(self, prefix: str):
        from onnx import helper

        self.helper, self.prefix, self.nodes, self.count = helper, prefix, [], 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{self.prefix}/{hint}_{self.count}"

    def op(self, op_type: str, *inputs: str, out: str | None = None, outputs: int = 1, domain: str = "", **attrs):
        names = [out or self.name(op_type)] + [self.name(op_type) for _ in range(outputs - 1)]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), names, name=self.name(op_type + "_node"),
                                                domain=domain, **attrs))
        return names[0] if outputs == 1 else names

    def ints(self, values: list[int]) -> str:
        from onnx import TensorProto

        t = self.helper.make_tensor(self.name("value"), TensorProto.INT64, [len(values)], values)
        return self.op("Constant", value=t)

    def scalar_like(self, value: float, like: str) -> str:
        from onnx import TensorProto

        t = self.helper.make_tensor(self.name("value"), TensorProto.FLOAT, [], [value])
        return self.op("CastLike", self.op("Constant", value=t), like)


def _standard(b: _Nodes, q, k, v, past_k, past_v, mask, out: str, heads: int, kv_heads: int, d: int) -> None:
    """The standard form into ``out`` ``[n, H*d]`` (see :func:`attention_math`)."""
    rows = b.op("Reshape", q, b.ints([kv_heads, -1, d]))  # [Hkv, rep*n, d]
    old = b.op("MatMul", rows, b.op("Transpose", past_k, perm=[0, 2, 1]))  # [Hkv, rep*n, R]
    new = b.op("MatMul", rows, b.op("Transpose", k, perm=[0, 2, 1]))  # [Hkv, rep*n, n]
    logits = b.op("Mul", b.op("Concat", old, new, axis=-1), b.scalar_like(1.0 / math.sqrt(d), q))
    probs = b.op("Softmax", b.op("Add", logits, mask), axis=-1)  # [Hkv, rep*n, R+n]
    r = b.op("Shape", past_k, start=1, end=2)  # [1]
    axis = b.ints([2])
    p_old = b.op("Slice", probs, b.ints([0]), r, axis)
    p_new = b.op("Slice", probs, r, b.ints([2**62]), axis)
    att = b.op("Add", b.op("MatMul", p_old, past_v), b.op("MatMul", p_new, v))  # [Hkv, rep*n, d]
    att = b.op("Transpose", b.op("Reshape", att, b.ints([heads, -1, d])), perm=[1, 0, 2])  # [n, H, d]
    b.op("Reshape", att, b.ints([-1, heads * d]), out=out)  # [n, H*d]


def _fused(b: _Nodes, q, k, v, out: str, heads: int, kv_heads: int, d: int) -> None:
    """GroupQueryAttention on the new rows alone (no cache), causal, into ``out`` ``[n, H*d]``."""
    from onnx import TensorProto

    def bsh(x, n_heads):  # [heads, n, d] -> [1, n, heads*d]
        return b.op("Reshape", b.op("Transpose", x, perm=[1, 0, 2]), b.ints([1, -1, n_heads * d]))

    n = b.op("Shape", q, start=1, end=2)  # [1]
    seqlens = b.op("Cast", b.op("Sub", n, b.ints([1])), to=TensorProto.INT32)  # [1] = total - 1
    total = b.op("Cast", b.op("Squeeze", n, b.ints([0])), to=TensorProto.INT32)  # scalar
    att = b.op("GroupQueryAttention", bsh(q, heads), bsh(k, kv_heads), bsh(v, kv_heads), "", "", seqlens, total,
               outputs=3, domain=MS_DOMAIN, num_heads=heads, kv_num_heads=kv_heads, scale=1.0 / math.sqrt(d))[0]
    b.op("Reshape", att, b.ints([-1, heads * d]), out=out)  # [n, H*d]


def lower(model, form: str, heads: int, kv_heads: int, head_dim: int, half: bool = False) -> int:
    """Replace every marker node of ``model`` (in place) by attention form ``form`` (``half``: the
    graph's float type is float16); returns how many."""
    from onnx import TensorProto, helper

    if form not in spec.ATTENTION_FORMS:
        raise ValueError(f"attention form must be one of {sorted(spec.ATTENTION_FORMS)}, got {form!r}")
    graph = model.graph
    nodes, count = [], 0
    for node in graph.node:
        if (node.domain, node.op_type) != (MARKER_DOMAIN, MARKER):
            nodes.append(node)
            continue
        count += 1
        q, k, v, past_k, past_v, mask, cache_length = node.input
        (out,) = node.output
        prefix = f"{spec.ATTENTION_NODE}{count - 1}"
        dims = (heads, kv_heads, head_dim)
        if form == "standard":
            b = _Nodes(prefix)
            _standard(b, q, k, v, past_k, past_v, mask, out, *dims)
            nodes += b.nodes
            continue
        then_b, else_b = _Nodes(prefix + "/prompt"), _Nodes(prefix + "/cached")
        _fused(then_b, q, k, v, prefix + "/prompt_out", *dims)
        _standard(else_b, q, k, v, past_k, past_v, mask, prefix + "/cached_out", *dims)
        elem = TensorProto.FLOAT16 if half else TensorProto.FLOAT

        def branch(b: _Nodes, result: str, name: str):
            return helper.make_graph(b.nodes, name, [], [helper.make_tensor_value_info(result, elem, None)])

        c = _Nodes(prefix)
        empty = c.op("Equal", cache_length, c.op("Constant", value=helper.make_tensor(c.name("zero"),
                                                                                          TensorProto.INT64, [], [0])))
        nodes += c.nodes
        nodes.append(helper.make_node("If", [empty], [out], name=prefix,
                                      then_branch=branch(then_b, prefix + "/prompt_out", "prompt"),
                                      else_branch=branch(else_b, prefix + "/cached_out", "cached")))
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_import(model, MARKER_DOMAIN)
    if form == "ort" and count and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return count


def _drop_import(model, domain: str) -> None:
    kept = [o for o in model.opset_import if o.domain != domain]
    del model.opset_import[:]
    model.opset_import.extend(kept)


def to_standard(model) -> int:
    """The ``ort`` form of a stored graph turned into the ``standard`` one in place: each attention
    ``If`` (named ``spec.ATTENTION_NODE<i>``) replaced by its else branch; returns how many."""
    from onnx import helper

    graph = model.graph
    nodes, count = [], 0
    for node in graph.node:
        if node.op_type != "If" or not node.name.startswith(spec.ATTENTION_NODE):
            nodes.append(node)
            continue
        count += 1
        branch = next(a.g for a in node.attribute if a.name == "else_branch")
        nodes += list(branch.node)
        nodes.append(helper.make_node("Identity", [branch.output[0].name], [node.output[0]], name=node.name + "/out"))
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(n.domain == MS_DOMAIN for n in graph.node):
        _drop_import(model, MS_DOMAIN)
    return count
