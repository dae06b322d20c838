"""The decoder attention's ONNX forms (prunevid.exporter.attention): the stored ONNX Runtime form
(fused GroupQueryAttention for the prompt, standard ops once a cache exists) and the standard
(TensorRT) form derived from it compute the torch stage's values, with H_kv cache heads."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from prunevid import spec
from prunevid.exporter.attention import MARKER_DOMAIN, MS_DOMAIN, attention_math, cached_attention, lower, to_standard
from prunevid.trt.compat import TARGETS, check_model, errors
from prunevid.trt.variant import to_tensorrt

D = 16


class _Two(torch.nn.Module):
    """Two attention layers sharing one mask, as a decoder graph does."""

    def forward(self, q, k, v, past_k, past_v, mask, cache_length):
        a = cached_attention(q, k, v, past_k, past_v, mask, cache_length)
        b = cached_attention(q * 0.5, k, v, past_k, past_v, mask, cache_length)
        return a + b


def _mask(n: int, r: int, length: int, rep: int) -> torch.Tensor:
    old = torch.where(torch.arange(r) >= length, float("-inf"), 0.0)  # [R]
    i = torch.arange(n)
    new = torch.where(i[None, :] > i[:, None], float("-inf"), 0.0).repeat(rep, 1)  # [rep*n, n]
    return torch.cat([old[None, :].expand(rep * n, -1), new], dim=1)  # [rep*n, R+n]


def _inputs(heads: int, kv_heads: int, n: int, r: int, length: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(heads, n, D, generator=gen)
    k, v = (torch.randn(kv_heads, n, D, generator=gen) for _ in range(2))
    past_k, past_v = (torch.randn(kv_heads, r, D, generator=gen) for _ in range(2))
    return q, k, v, past_k, past_v, _mask(n, r, length, heads // kv_heads), torch.tensor(length)


NAMES = ["q", "k", "v", "past_k", "past_v", "mask", "cache_length"]


def _exported(heads: int, kv_heads: int, form: str) -> onnx.ModelProto:
    buf = io.BytesIO()
    axes = {"q": {1: "n"}, "k": {1: "n"}, "v": {1: "n"}, "past_k": {1: "r"}, "past_v": {1: "r"},
            "mask": {0: "rows", 1: "cols"}, "out": {0: "n"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Two(), _inputs(heads, kv_heads, 5, 3, 2), buf, dynamo=False, opset_version=18,
                          input_names=NAMES, output_names=["out"], dynamic_axes=axes,
                          custom_opsets={MARKER_DOMAIN: 1})
    model = onnx.load_from_string(buf.getvalue())
    assert sum(n.domain == MARKER_DOMAIN for n in model.graph.node) == 2
    assert lower(model, form, heads, kv_heads, D) == 2
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model: onnx.ModelProto, inputs) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {name: t.numpy() for name, t in zip(NAMES, inputs)})[0]


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
def test_ort_and_standard_forms_equal_the_torch_attention_for_prompt_and_decode(heads, kv_heads):
    ort_form = _exported(heads, kv_heads, "ort")
    standard = _exported(heads, kv_heads, "standard")
    ops = [(n.domain, n.op_type) for n in ort_form.graph.node]
    assert ops.count(("", "If")) == 2 and not any(d == MS_DOMAIN for d, _ in ops)
    branches = [a.g for n in ort_form.graph.node if n.op_type == "If" for a in n.attribute]
    assert sum((n.domain, n.op_type) == (MS_DOMAIN, "GroupQueryAttention") for g in branches for n in g.node) == 2
    assert all(n.domain in ("", "ai.onnx") for n in standard.graph.node)
    cases = {
        "prompt": _inputs(heads, kv_heads, n=37, r=1, length=0, seed=1),  # the runtime's one masked row
        "decode": _inputs(heads, kv_heads, n=1, r=50, length=41, seed=2),  # rows 41.. of the cache unused
        "rows after a cache": _inputs(heads, kv_heads, n=6, r=20, length=9, seed=3),
    }
    for label, inputs in cases.items():
        want = (attention_math(*inputs[:6]) + attention_math(inputs[0] * 0.5, *inputs[1:6])).numpy()
        for form, model in (("ort", ort_form), ("standard", standard)):
            np.testing.assert_allclose(_run(model, inputs), want, rtol=1e-4, atol=1e-5, err_msg=f"{form} {label}")
    # the fused prompt path ignores the cache buffers entirely (cache_length 0)
    q, k, v, past_k, past_v, mask, length = cases["prompt"]
    garbage = (q, k, v, past_k + 1e4, past_v - 1e4, mask, length)
    np.testing.assert_allclose(_run(ort_form, garbage), _run(ort_form, cases["prompt"]), rtol=1e-5, atol=1e-6)


def test_the_tensorrt_variant_is_the_standard_form_and_passes_the_parser_checks():
    ort_form = _exported(4, 2, "ort")
    derived = onnx.ModelProto()
    derived.CopyFrom(ort_form)
    assert to_tensorrt(derived)
    assert not any(n.op_type == "If" or n.domain == MS_DOMAIN for n in derived.graph.node)
    assert all(o.domain != MS_DOMAIN for o in derived.opset_import)
    onnx.checker.check_model(derived, full_check=True)
    inputs = _inputs(4, 2, n=1, r=30, length=12, seed=4)
    np.testing.assert_allclose(_run(derived, inputs), _run(_exported(4, 2, "standard"), inputs), rtol=1e-6, atol=1e-6)
    for target in TARGETS:
        assert not errors(check_model(derived, target)), target
        stored = check_model(ort_form, target)  # the stored form is not for TensorRT: the fused node is reported
        assert any("GroupQueryAttention" in f.node for f in stored), target
    again = onnx.ModelProto()
    again.CopyFrom(derived)
    assert to_standard(again) == 0  # nothing left to derive


def test_forms_are_data_in_spec():
    assert spec.STORED_ATTENTION in spec.ATTENTION_FORMS
    assert set(spec.TARGET_ATTENTION.values()) <= set(spec.ATTENTION_FORMS)
    with pytest.raises(ValueError, match="attention form"):
        lower(onnx.ModelProto(), "flash", 1, 1, D)


def test_the_tensorrt_variant_keeps_the_op_bodies():
    from onnx import TensorProto, helper

    from prunevid.plugins.onnx_functions import attach_functions, function_proto
    from prunevid.plugins.ops import DOMAIN, OPS

    def one_node(op):
        spec_ = OPS[op]
        node = helper.make_node(op, [t.name for t in spec_.inputs], [t.name for t in spec_.outputs], domain=DOMAIN,
                                **spec_.node_attributes(**({"k": 3} if op == "PvDpcKnn" else {})))
        types = {"float32": TensorProto.FLOAT, "int32": TensorProto.INT32}
        vi = [helper.make_tensor_value_info(t.name, types[t.dtype], list(t.shape)) for t in spec_.inputs]
        vo = [helper.make_tensor_value_info(t.name, types[t.dtype], list(t.shape)) for t in spec_.outputs]
        model = helper.make_model(helper.make_graph([node], "g", vi, vo), opset_imports=[helper.make_opsetid("", 18)])
        attach_functions(model)
        return model

    for op in ("PvDpcKnn", "PvGroupTopK"):  # one body serves both: no size computed from values
        model = one_node(op)
        assert not to_tensorrt(model)
        assert model.functions[0].SerializeToString() == function_proto(op, 18).SerializeToString()

    # an export from before the one body stored PvDpcKnn sliced to the longest group (Slice, Pad):
    # that body is replaced by the current one; a body of any other shape is left alone
    legacy = one_node("PvDpcKnn")
    func = legacy.functions[0]
    func.node.extend([helper.make_node("Slice", ["x", "a", "b"], ["s"]), helper.make_node("Pad", ["s", "p"], ["q"])])
    assert to_tensorrt(legacy)
    assert legacy.functions[0].SerializeToString() == function_proto("PvDpcKnn", 18).SerializeToString()
    other = one_node("PvDpcKnn")
    other.functions[0].node.append(helper.make_node("Identity", ["x"], ["y"]))
    before = other.functions[0].SerializeToString()
    assert not to_tensorrt(other) and other.functions[0].SerializeToString() == before


def test_the_tensorrt_variant_needs_no_torch():
    """A Jetson with TensorRT and no torch derives the variant (check --trt-compat, build, trtexec)."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, onnx; from prunevid.trt.variant import to_tensorrt; "
            "to_tensorrt(onnx.ModelProto()); print('torch' in sys.modules)")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root,
                         env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "False"
