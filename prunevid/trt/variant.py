"""The TensorRT variant of an export's graphs, derived from the stored (ONNX Runtime) form.

An export stores each graph once, in the form ONNX Runtime runs fastest (``manifest["attention"]``):
the decoder graphs' prompt attention as ``com.microsoft.GroupQueryAttention`` under an ``If``.
TensorRT takes no contrib op, so the TensorRT paths (``check --trt-compat``, ``build``, ``trtexec``)
parse the variant :func:`to_tensorrt` derives: each attention ``If`` replaced by its standard-op
branch. The prunevid ops' function bodies are one form for both (no size computed from values).
Weights are untouched (stored once).
"""

from __future__ import annotations

from pathlib import Path

from prunevid.errors import ArtifactError


def to_tensorrt(model) -> bool:
    """Turn ``model`` into its TensorRT variant in place; returns whether anything changed.

    Exports made before the prunevid ops had one body stored PvDpcKnn's ONNX Runtime body, which
    slices to the longest real group (a ``Slice`` sized from values, then a ``Pad``); such a body is
    replaced by the current one. Any other body is left as it is.
    """
    from prunevid.exporter.attention import to_standard
    from prunevid.plugins.onnx_functions import MAX_OPSET, MIN_OPSET, function_proto
    from prunevid.plugins.ops import DOMAIN, DPC_KNN

    changed = to_standard(model) > 0
    for index, func in enumerate(model.functions):
        if func.domain != DOMAIN or func.name != DPC_KNN.name:
            continue
        opset = next((o.version for o in func.opset_import if o.domain in ("", "ai.onnx")), None)
        ops = {node.op_type for node in func.node}
        if opset is not None and MIN_OPSET <= opset <= MAX_OPSET and {"Slice", "Pad"} <= ops:
            model.functions[index].CopyFrom(function_proto(func.name, opset))
            changed = True
    return changed


def tensorrt_onnx(onnx_path: str | Path) -> Path:
    """The file TensorRT should parse for ``onnx_path``: a sibling ``<stem>.trt.onnx`` holding its
    TensorRT variant (beside the original, so relative external-data paths resolve; the weights
    are copied only when stored inside the graph file), or ``onnx_path`` itself when nothing changes."""
    import onnx

    onnx_path = Path(onnx_path)
    model = onnx.load(str(onnx_path), load_external_data=False)
    if not to_tensorrt(model):
        return onnx_path
    return save_sibling(model, onnx_path, "trt")


def save_sibling(model, onnx_path: Path, tag: str) -> Path:
    """Write ``model`` as ``<stem>.<tag>.onnx`` beside ``onnx_path`` (so relative external-data paths
    resolve), through a hidden ``.partial`` name and a rename: never a half-written sibling."""
    import onnx

    out = onnx_path.with_name(f"{onnx_path.stem}.{tag}{onnx_path.suffix}")
    tmp = out.with_name(f".{out.name}.partial")
    try:
        onnx.save(model, str(tmp))
        tmp.replace(out)
    except OSError as exc:
        raise ArtifactError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out
