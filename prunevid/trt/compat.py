"""Static TensorRT-compatibility check of ONNX graphs, per TensorRT target, without TensorRT.

``check_model(model, target)`` walks the model the way the TensorRT ONNX parser will see it and
returns :class:`Finding`\\ s: an opset above the parser's maximum, operators the parser has no
importer for, documented per-op restrictions that can be decided statically (attribute values,
inputs that must be build-time constants, ranks, the TopK ``K <= 3840`` limit), element types
TensorRT does not have, how each custom-domain node will be routed (plugin or inlined local
function), and what a plugin cannot take: BOOL/UINT8 tensors at a custom node's boundary, a prunevid
node that disagrees with the op table (``prunevid/plugins/ops.py``: input and output counts -- the
plugin gives the table's outputs --, element types, attributes), and graph inputs whose values reach
a shape operand (``Range`` limits, ``Reshape``/``Expand``/``Tile`` shapes, ``Slice`` bounds...),
which TensorRT turns into shape tensors that need values in the optimization profile. Nodes inside local functions are checked as well and reported as *inside function X*:
TensorRT < 10.7 always inlines a local function's body, and any TensorRT without the plugin loaded
inlines it too (``docs/deployment.md`` section 1.5).

Two targets are known (:data:`TARGETS`):

* ``"10.3"`` -- TensorRT 10.3, as shipped with JetPack 6.x on Jetson Orin.
* ``"11"`` -- the TensorRT 11.x line, current release 11.5.

The operator tables are data (:data:`_OPERATORS_10_15` plus per-target deltas below), built from
the ONNX-TensorRT operator documentation; :data:`SOURCES` records exactly which documents and
versions each table reflects and :attr:`TargetInfo.undetermined` lists what could not be settled.
This is a pre-flight lint, not a replacement for parsing with the real TensorRT: the parser also
fails on things no table documents (shape-tensor limits, dynamic-shape corner cases).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from prunevid.plugins.ops import DOMAIN, OPS, PLUGIN_NAMESPACE, PLUGIN_VERSION

# --------------------------------------------------------------------------------------------
# Where the tables come from
# --------------------------------------------------------------------------------------------

SOURCES: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        "operators_md_10.15": MappingProxyType(
            {
                "repository": "onnx/onnx-tensorrt",
                "file": "docs/operators.md",
                "version": "TensorRT 10.15 revision (header: 'TensorRT 10.15 supports operators in the "
                "inclusive range of opset 9 to opset 24'); the newest revision of the file that could "
                "be read in full",
                "commit": "not determined (read from a stored copy that carries no commit id)",
                "used_for": "the complete operator table of both targets (status, supported types, "
                "restrictions), before the per-target deltas",
            }
        ),
        "operators_md_10.0": MappingProxyType(
            {
                "repository": "onnx/onnx-tensorrt",
                "file": "docs/operators.md",
                "version": "TensorRT 10.0 revision (header only: 'TensorRT 10.0 supports operators in "
                "the inclusive range of opset 9 to opset 20'; data types DOUBLE, FLOAT32, FLOAT16, "
                "BFLOAT16, INT32, INT64, FP8, INT8, INT4, UINT8, BOOL)",
                "commit": "not determined",
                "used_for": "10.3: maximum opset and the element-type list",
            }
        ),
        "parser_changelog": MappingProxyType(
            {
                "repository": "onnx/onnx-tensorrt",
                "file": "docs/Changelog.md",
                "version": "revision whose newest entry is 'TensorRT 10.15 GA Release - 2026-2-2'",
                "commit": "not determined",
                "used_for": "10.3: every operator/feature the changelog lists as added in 10.4..10.15 "
                "is removed from or restricted in the 10.15 table; the ONNX submodule moved to 1.17 only "
                "in 10.6, so 10.3 keeps the 10.0 opset ceiling",
            }
        ),
        "trt_release_notes_11": MappingProxyType(
            {
                "repository": "NVIDIA/TensorRT",
                "file": "GitHub release pages v11.0, v11.1, v11.2, v11.3, v11.4, v11.5 ('Parsers' sections)",
                "version": "11.0 (Swish; custom ops TRT_Attention/TRT_MoE/TRT_KVCacheUpdate), 11.1 (ragged "
                "TRT_Attention), 11.2 (DFT via FFTPlugin, 5D GridSample), 11.3/11.4 (refit only), 11.5 "
                "(ONNX opset 25, ONNX 1.22.0, Squeeze with omitted axes)",
                "commit": "11.5 tag commit 7fe18f0",
                "used_for": "11: deltas on top of the 10.15 table",
            }
        ),
        "opset_guide": MappingProxyType(
            {
                "repository": "docs.nvidia.com",
                "file": "deeplearning/tensorrt/latest/reference/onnx-opset-guide.html",
                "version": "TensorRT 11.x page: maximum opset 25, minimum (backward support) opset 9",
                "commit": "-",
                "used_for": "11: opset range",
            }
        ),
        "layer_api_docs": MappingProxyType(
            {
                "repository": "docs.nvidia.com",
                "file": "deeplearning/tensorrt/.../api/c_api/class_i_non_zero.html (INonZero)",
                "version": "TensorRT 10.2.0 and 10.4.0 C++ API reference",
                "commit": "-",
                "used_for": "NonZero input types (the operators.md types column omits INT32 and BOOL)",
            }
        ),
        "topk_limit": MappingProxyType(
            {
                "repository": "NVIDIA/TensorRT",
                "file": "include/NvInfer.h (ITopKLayer) and docs .../_static/operators/TopK.html",
                "version": "10.3 and 11.1 headers; 'k <= 3840' (operators.md 10.15 words it as "
                "'K input must be less than 3840')",
                "commit": "-",
                "used_for": "TopK K limit, both targets",
            }
        ),
    }
)

# --------------------------------------------------------------------------------------------
# The operator table: docs/operators.md (TensorRT 10.15 revision), one row per operator.
#   name | status (Y/N) | supported types | restrictions (documented text, shortened)
# --------------------------------------------------------------------------------------------

_F = "FP32 FP16 BF16"
_FI = "FP32 FP16 BF16 INT32 INT64"
_FIB = "FP32 FP16 BF16 INT32 INT64 BOOL"

_OPERATORS_10_15 = f"""
Abs|Y|{_FI}|
Acos|Y|{_F}|
Acosh|Y|{_F}|
Add|Y|{_FI}|
AffineGrid|N||
And|Y|BOOL|
ArgMax|Y|{_FI}|
ArgMin|Y|{_FI}|
Asin|Y|{_F}|
Asinh|Y|{_F}|
Atan|Y|{_F}|
Atanh|Y|{_F}|
Attention|Y|FP32 FP16 BF16 INT8 FP8|Q, K, V and attn_mask must be 4D; past_key, past_value, nonpad_kv_seqlen inputs and present_key, present_value, qk_matmul_output outputs unsupported; qk_matmul_output_mode and softcap unsupported
AveragePool|Y|{_F}|2D or 3D pooling only; dilations must be empty or all ones
BatchNormalization|Y|{_F}|
Bernoulli|N||
BitShift|N||
BitwiseAnd|N||
BitwiseNot|N||
BitwiseOr|N||
BitwiseXor|N||
BlackmanWindow|Y|FP32 FP16|
Cast|Y|FP32 FP16 BF16 INT32 INT64 UINT8 BOOL|
CastLike|Y|FP32 FP16 BF16 INT32 INT64 UINT8 BOOL|
Ceil|Y|{_F}|
Col2Im|N||
Celu|Y|{_F}|
CenterCropPad|N||
Clip|Y|{_F}|
Compress|N||
Concat|Y|{_FIB}|
ConcatFromSequence|N||
Constant|Y|FP32 FP16 BF16 FP8 FP4 INT4 INT32 INT64 BOOL|sparse_value, value_string and value_strings attributes unsupported
ConstantOfShape|Y|FP32 FP16 BF16 FP8 FP4 INT4 INT32 INT64 BOOL|
Conv|Y|{_F}|
ConvInteger|N||
ConvTranspose|Y|{_F}|
Cos|Y|{_F}|
Cosh|Y|{_F}|
CumSum|Y|{_F}|axis must be a build-time constant
DFT|N||
DeformConv|Y|FP32 FP16|input must have 1D or 2D spatial dimensions; begin and end pads equal per axis
DepthToSpace|Y|{_FI}|
DequantizeLinear|Y|INT8 FP8 FP4 INT4|x_zero_point must be zero
Det|N||
Div|Y|{_FI}|
Dropout|Y|{_F}|is_training must be an initializer and evaluate to False
DynamicQuantizeLinear|N||not supported (IDynamicQuantize can be composed as a local function)
Einsum|Y|{_F}|
Elu|Y|{_F}|
Equal|Y|{_FI}|
Erf|Y|{_F}|
Exp|Y|{_F}|
Expand|Y|{_FIB}|
EyeLike|Y|{_FIB}|input must have static dimensions
Flatten|Y|{_FIB}|
Floor|Y|{_F}|
Gather|Y|{_FIB}|
GatherElements|Y|{_FIB}|
GatherND|Y|{_FIB}|
Gelu|Y|FP32 FP16 BF16 INT8 INT32 INT64|
Gemm|Y|{_F}|
GlobalAveragePool|Y|{_F}|
GlobalLpPool|Y|{_F}|
GlobalMaxPool|Y|{_F}|
Greater|Y|{_FI}|
GreaterOrEqual|Y|{_FI}|
GridSample|Y|FP32 FP16|input must be 4D
GroupNormalization|Y|{_F}|
GRU|Y|{_F}|bidirectional GRUs need the same activations forward and reverse
HammingWindow|Y|FP32 FP16|
HannWindow|Y|FP32 FP16|
HardSigmoid|Y|{_F}|
HardSwish|Y|{_F}|
Hardmax|Y|{_F}|axis dimension of input must be a build-time constant
Identity|Y|{_FIB}|
If|Y|{_FIB}|branch outputs must have the same rank and different names
ImageScaler|Y|{_F}|
ImageDecoder|N||
InstanceNormalization|Y|{_F}|
IsInf|Y|{_F}|
IsNaN|Y|{_FI}|
LayerNormalization|Y|{_F}|only the first output Y is supported
LeakyRelu|Y|{_F}|
Less|Y|{_FI}|
LessOrEqual|Y|{_FI}|
Log|Y|{_F}|
LogSoftmax|Y|{_F}|
Loop|Y|{_FIB}|scan output length cannot be dynamic; loop-carried shapes must not change across iterations
LRN|Y|{_F}|
LSTM|Y|{_F}|bidirectional LSTMs need the same activations forward and reverse; input_forget must be 0; layout must be 0
LpNormalization|Y|{_F}|
LpPool|Y|{_F}|dilations must be empty or all ones
MatMul|Y|{_F}|
MatMulInteger|N||
Max|Y|{_FI}|
MaxPool|Y|{_F}|2D or 3D pooling only; Indices output unsupported; dilations must be empty or all ones
MaxRoiPool|N||
MaxUnpool|N||
Mean|Y|FP32 FP16 BF16 FP8 INT32 INT64|
MeanVarianceNormalization|Y|{_F}|
MelWeightMatrix|N||
Min|Y|{_FI}|
Mish|Y|FP32 FP16|
Mod|Y|{_FI}|
Mul|Y|{_FI}|
Multinomial|N||
Neg|Y|{_FI}|
NegativeLogLikelihoodLoss|N||
NonMaxSuppression|Y|FP32 FP16|
NonZero|Y|FP32 FP16|
Not|Y|BOOL|
OneHot|Y|{_FIB}|depth must be a build-time constant
Optional|N||
OptionalGetElement|N||
OptionalHasElement|N||
Or|Y|BOOL|
Pad|Y|{_FI}|
ParametricSoftplus|Y|{_F}|
Pow|Y|{_FI}|
PRelu|Y|{_F}|
QLinearConv|N||
QLinearMatMul|N||
QuantizeLinear|Y|{_F}|y_zero_point must be 0
RandomNormal|Y|{_F}|seed is ignored
RandomNormalLike|Y|{_F}|seed is ignored
RandomUniform|Y|{_F}|seed is ignored
RandomUniformLike|Y|{_F}|seed is ignored
Range|Y|{_FI}|
Reciprocal|Y|{_F}|
ReduceL1|Y|{_FI}|axes must be an initializer
ReduceL2|Y|{_FI}|axes must be an initializer
ReduceLogSum|Y|{_FI}|axes must be an initializer
ReduceLogSumExp|Y|{_FI}|axes must be an initializer
ReduceMax|Y|{_FI}|axes must be an initializer
ReduceMean|Y|{_FI}|axes must be an initializer
ReduceMin|Y|{_FI}|axes must be an initializer
ReduceProd|Y|{_FI}|axes must be an initializer
ReduceSum|Y|{_FI}|axes must be an initializer
ReduceSumSquare|Y|{_FI}|axes must be an initializer
RegexFullMatch|N||
Relu|Y|{_FI}|
Reshape|Y|{_FIB}|
Resize|Y|{_F}|coordinate modes half_pixel, pytorch_half_pixel, tf_half_pixel_for_nn, asymmetric, align_corners; modes nearest, linear; nearest modes floor, ceil, round_prefer_floor, round_prefer_ceil; aspect ratio policy stretch; tensor scales need iota axes; no antialiasing
ReverseSequence|Y|{_FIB}|
RMSNormalization|Y|{_F}|
RNN|Y|{_F}|bidirectional RNNs need the same activations forward and reverse
RoiAlign|Y|FP32 FP16|
RotaryEmbedding|Y|{_F}|position_ids must be INT64
Round|Y|{_F}|
STFT|Y|FP32|frame_step and window must be initializers; input must be real-valued
ScaledTanh|Y|{_F}|
Scan|Y|{_F}|
Scatter|Y|{_FI}|
ScatterElements|Y|{_FI}|
ScatterND|Y|{_FI}|reduction other than none is not supported
Selu|Y|{_F}|
SequenceAt|N||
SequenceConstruct|N||
SequenceEmpty|N||
SequenceErase|N||
SequenceInsert|N||
SequenceLength|N||
SequenceMap|N||
Shape|Y|{_FIB}|
Shrink|Y|{_FI}|
Sigmoid|Y|{_F}|
Sign|Y|{_FI}|
Sin|Y|{_F}|
Sinh|Y|{_F}|
Size|Y|{_FIB}|
Slice|Y|{_FIB}|
Softmax|Y|{_F}|
SoftmaxCrossEntropyLoss|N||
Softplus|Y|{_F}|
Softsign|Y|{_F}|
SpaceToDepth|Y|{_FI}|
Split|Y|{_FIB}|
SplitToSequence|N||
Sqrt|Y|{_F}|
Squeeze|Y|{_FIB}|axes must be resolvable to a constant
StringConcat|N||
StringNormalizer|N||
StringSplit|N||
Sub|Y|{_FI}|
Sum|Y|{_FI}|
Tan|Y|{_F}|
Tanh|Y|{_F}|
TensorScatter|Y|FP32 FP16 BF16 INT32|past_cache and update must be 4D; axis must be -2
TfIdfVectorizer|N||
ThresholdedRelu|Y|{_F}|
Tile|Y|{_FIB}|
TopK|Y|{_FI}|sorted must be 1; K must not exceed 3840
Transpose|Y|{_FIB}|
Trilu|Y|{_FIB}|
Unique|N||
Unsqueeze|Y|{_FIB}|axes must be resolvable to a constant
Upsample|Y|{_F}|
Where|Y|{_FIB}|
Xor|Y|BOOL|
"""

# Statically decidable restrictions of the 10.15 table, as rules :class:`_Checker` evaluates.
#   const_inputs:   [(input index, severity, why)]  the input must be an initializer / Constant
#   attrs:          {attribute: (allowed values, default)}
#   forbidden_attrs, ones_attrs (all ones when present), max_outputs, absent_inputs (indices)
#   ranks:          {input index: allowed ranks}
#   input_types:    {input index: allowed types}  (types are otherwise checked on the data input)
#   type_input:     index of the input whose type the "types" column describes (default 0)
#   zero_point:     index of a zero-point input that must be all zeros
#   topk_k_max, einsum_simple, squeeze_axes_required, nonconst_inputs
_REDUCE_AXES = {"const_inputs": [(1, "error", "axes must be an initializer")]}
_POOL = {"ranks": {0: (4, 5)}, "ones_attrs": ["dilations"]}
_RULES_10_15: dict[str, dict[str, Any]] = {
    "Attention": {
        "ranks": {0: (4,), 1: (4,), 2: (4,), 3: (4,)},
        "absent_inputs": [4, 5, 6],
        "max_outputs": 1,
        "attrs": {"qk_matmul_output_mode": ((0,), 0), "softcap": ((0.0,), 0.0)},
    },
    "AveragePool": _POOL,
    "MaxPool": {**_POOL, "max_outputs": 1},
    "LpPool": {"ones_attrs": ["dilations"]},
    "Constant": {"forbidden_attrs": ["sparse_value", "value_string", "value_strings"]},
    "CumSum": {"const_inputs": [(1, "warning", "axis must be a build-time constant")]},
    "DequantizeLinear": {"zero_point": 2},
    "QuantizeLinear": {"zero_point": 2},
    "Dropout": {"dropout_training": 2},
    "GridSample": {"ranks": {0: (4,)}},
    "LayerNormalization": {"max_outputs": 1},
    "LSTM": {"attrs": {"input_forget": ((0,), 0), "layout": ((0,), 0)}},
    "OneHot": {"const_inputs": [(1, "warning", "depth must be a build-time constant")]},
    **{op: _REDUCE_AXES for op in (
        "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
        "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare")},
    "Resize": {
        "attrs": {
            "mode": (("nearest", "linear"), "nearest"),
            "coordinate_transformation_mode": (
                ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"),
                "half_pixel",
            ),
            "nearest_mode": (("floor", "ceil", "round_prefer_floor", "round_prefer_ceil"), "round_prefer_floor"),
            "keep_aspect_ratio_policy": (("stretch",), "stretch"),
            "antialias": ((0,), 0),
        }
    },
    "RotaryEmbedding": {"input_types": {3: ("INT64",)}},
    "ScatterND": {"attrs": {"reduction": (("none",), "none")}},
    "STFT": {"const_inputs": [(1, "error", "frame_step must be an initializer"),
                              (2, "error", "window must be an initializer")]},
    "Squeeze": {"const_inputs": [(1, "warning", "axes must be resolvable to a constant")]},
    "Unsqueeze": {"const_inputs": [(1, "warning", "axes must be resolvable to a constant")]},
    "TensorScatter": {"ranks": {0: (4,), 1: (4,)}, "attrs": {"axis": ((-2,), -2)}},
    "TopK": {"topk_k_max": 3840, "attrs": {"sorted": ((1,), 1)}},
    "Where": {"type_input": 1},
    # The types column describes the output of these ops (their inputs are sizes or shapes).
    **{op: {"type_output": 0} for op in (
        "BlackmanWindow", "HammingWindow", "HannWindow", "ConstantOfShape", "EyeLike",
        "RandomNormalLike", "RandomUniformLike")},
}

# --------------------------------------------------------------------------------------------
# Per-target deltas
# --------------------------------------------------------------------------------------------

_TRT_DTYPES_10_0 = ("DOUBLE", "FP32", "FP16", "BF16", "INT32", "INT64", "FP8", "INT8", "INT4", "UINT8", "BOOL")

# Corrections of the table's types column from the TensorRT layer documentation (both targets):
# operators.md lists NonZero as FP32/FP16 only, while INonZeroLayer takes kFLOAT, kHALF, kINT32 and
# kBOOL (C++ API reference 10.2 and 10.4, "class INonZero").
_LAYER_TYPE_FIXES: dict[str, dict[str, Any]] = {
    "NonZero": {"types": "FP32 FP16 INT32 BOOL"},
}

_DELTAS_10_3: dict[str, dict[str, Any]] = {
    # Added after 10.3 according to docs/Changelog.md:
    "BlackmanWindow": {"status": "N", "note": "added in TensorRT 10.4"},
    "HammingWindow": {"status": "N", "note": "added in TensorRT 10.4"},
    "HannWindow": {"status": "N", "note": "added in TensorRT 10.4"},
    "STFT": {"status": "N", "note": "real-valued STFT added in TensorRT 10.5"},
    "Attention": {"status": "N", "note": "added in TensorRT 10.14"},
    "RotaryEmbedding": {"status": "N", "note": "added in TensorRT 10.15"},
    "RMSNormalization": {"status": "N", "note": "added in TensorRT 10.15"},
    "TensorScatter": {"status": "N", "note": "added in TensorRT 10.15"},
    "Pad": {"rules": {"const_inputs": [(3, "error", "tensor axes for Pad arrived in TensorRT 10.4")]}},
    "Squeeze": {
        "restrictions": "axes must be an initializer (dynamic axes arrived in TensorRT 10.7)",
        "rules": {"const_inputs": [(1, "error", "axes must be an initializer before TensorRT 10.7")],
                  "squeeze_axes_required": True},
    },
    "Unsqueeze": {
        "restrictions": "axes must be an initializer (dynamic axes arrived in TensorRT 10.7)",
        "rules": {"const_inputs": [(1, "error", "axes must be an initializer before TensorRT 10.7")]},
    },
    "CumSum": {
        "restrictions": "axis must be an initializer (dynamic axes arrived in TensorRT 10.8)",
        "rules": {"const_inputs": [(1, "error", "axis must be an initializer before TensorRT 10.8")]},
    },
    "Pow": {
        "types": "FP32 FP16 BF16",
        "restrictions": "integer exponents arrived in TensorRT 10.8, integer bases in 10.12",
        "rules": {"input_types": {1: ("FP32", "FP16", "BF16")}},
    },
    "Einsum": {
        "restrictions": "ellipsis, diagonal and broadcasting unsupported (added in TensorRT 10.12)",
        "rules": {"einsum_simple": True},
    },
    "RandomNormalLike": {"rules": {"nonconst_inputs": [(0, "warning", "the input must be a tensor, "
                                                        "not an initializer, before TensorRT 10.11")]}},
    "RandomUniformLike": {"rules": {"nonconst_inputs": [(0, "warning", "the input must be a tensor, "
                                                         "not an initializer, before TensorRT 10.11")]}},
    "Constant": {"types": "FP32 FP16 BF16 FP8 INT4 INT32 INT64 BOOL", "note": "FP4 arrived in TensorRT 10.8"},
    "ConstantOfShape": {"types": "FP32 FP16 BF16 FP8 INT4 INT32 INT64 BOOL", "note": "FP4 arrived in 10.8"},
    "DequantizeLinear": {"types": "INT8 FP8 INT4", "note": "FP4 arrived in TensorRT 10.8"},
    # In the 10.15 table but neither in the 10.0 header nor in any changelog entry: not confirmed.
    "Gelu": {"status": "?", "note": "listed in the 10.15 table; when its importer arrived is not documented"},
    "Mish": {"status": "?", "note": "listed in the 10.15 table; when its importer arrived is not documented"},
    "CastLike": {"status": "?", "note": "listed in the 10.15 table; when its importer arrived is not documented"},
}

_DELTAS_11: dict[str, dict[str, Any]] = {
    "Swish": {"status": "Y", "types": None, "note": "added in TensorRT 11.0 (release notes; types not documented)"},
    "DFT": {"status": "Y", "types": None, "note": "added in TensorRT 11.2 through the cuFFT FFTPlugin"},
    "GridSample": {"restrictions": "input must be 4D or 5D (5D arrived in TensorRT 11.2)",
                   "rules": {"ranks": {0: (4, 5)}}},
}


@dataclass(frozen=True)
class OpSupport:
    """One row of a target's operator table."""

    status: str  # "Y" supported, "N" not supported, "?" not confirmed for this target
    types: tuple[str, ...] | None  # documented types of the data input; None = not documented
    restrictions: str = ""
    rules: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class TargetInfo:
    """What one TensorRT target's ONNX parser accepts."""

    name: str
    trt_version: str
    description: str
    min_opset: int
    max_opset: int
    plugin_over_function: bool  # a loaded plugin beats a same-named local function (TensorRT >= 10.7)
    domain_is_plugin_namespace: bool  # the fallback importer reads the namespace from the domain (>= 10.10)
    dtypes: frozenset[str]
    ops: Mapping[str, OpSupport]
    sources: tuple[str, ...]
    undetermined: tuple[str, ...]


def _parse_table(text: str) -> dict[str, OpSupport]:
    ops = {}
    for line in text.strip().splitlines():
        name, status, types, restrictions = (part.strip() for part in line.split("|"))
        ops[name] = OpSupport(
            status=status,
            types=tuple(types.split()) if types else None,
            restrictions=restrictions,
            rules=MappingProxyType(dict(_RULES_10_15.get(name, {}))),
        )
    return ops


def _apply(ops: dict[str, OpSupport], deltas: Mapping[str, Mapping[str, Any]]) -> dict[str, OpSupport]:
    out = dict(ops)
    for name, delta in deltas.items():
        base = out.get(name, OpSupport(status="N", types=None))
        types = delta.get("types", base.types)
        if isinstance(types, str):
            types = tuple(types.split())
        rules = dict(base.rules)
        rules.update(delta.get("rules", {}))
        out[name] = OpSupport(
            status=delta.get("status", base.status),
            types=types,
            restrictions=delta.get("restrictions", base.restrictions),
            rules=MappingProxyType(rules),
            note=delta.get("note", base.note),
        )
    return out


_BASE_OPS = _parse_table(_OPERATORS_10_15)

TARGETS: Mapping[str, TargetInfo] = MappingProxyType(
    {
        "10.3": TargetInfo(
            name="10.3",
            trt_version="10.3",
            description="TensorRT 10.3 (JetPack 6.x, Jetson Orin)",
            min_opset=9,
            max_opset=20,
            plugin_over_function=False,
            domain_is_plugin_namespace=False,
            dtypes=frozenset(_TRT_DTYPES_10_0),
            ops=MappingProxyType(_apply(_apply(_BASE_OPS, _LAYER_TYPE_FIXES), _DELTAS_10_3)),
            sources=("operators_md_10.15", "operators_md_10.0", "parser_changelog", "layer_api_docs", "topk_limit"),
            undetermined=(
                "The release/10.3 revision of docs/operators.md could not be read; the table is the 10.15 "
                "table minus everything docs/Changelog.md lists as added in 10.4..10.15.",
                "Maximum opset 20 is the 10.0 header; no changelog entry moves the ONNX submodule between "
                "9.0 (1.14) and 10.6 (1.17), so 20 is inferred for 10.3, not read.",
                "Per-op supported-type lists are the 10.15 ones (less Pow integer types and FP4); type "
                "support that changed silently between 10.3 and 10.15 is not captured.",
                "Gelu, Mish and CastLike appear in the 10.15 table with no changelog entry: status '?'.",
                "Whether 'TopK sorted must be 1' (10.15 wording) already applied in 10.3 is assumed, not read.",
                "The types column of operators.md is incomplete (NonZero omits BOOL/INT32): a type outside it "
                "is a warning unless it is DOUBLE, a quantized type or not a TensorRT type.",
            ),
        ),
        "11": TargetInfo(
            name="11",
            trt_version="11.5",
            description="TensorRT 11.x (current release 11.5)",
            min_opset=9,
            max_opset=25,
            plugin_over_function=True,
            domain_is_plugin_namespace=True,
            dtypes=frozenset(_TRT_DTYPES_10_0 + ("FP4",)),
            ops=MappingProxyType(_apply(_apply(_BASE_OPS, _LAYER_TYPE_FIXES), _DELTAS_11)),
            sources=("operators_md_10.15", "trt_release_notes_11", "opset_guide", "layer_api_docs", "topk_limit"),
            undetermined=(
                "No 11.x revision of docs/operators.md could be read; the table is the 10.15 table plus the "
                "parser items of the 11.0..11.5 release notes (Swish, DFT, 5D GridSample, Squeeze without "
                "axes, opset 25).",
                "Opset 25 is the 11.5 ceiling (release notes, ONNX opset guide); 11.0..11.4 stop at 24.",
                "Supported types of Swish and DFT are not documented: their types are not checked.",
                "Operators new in ONNX opsets 25..27 are absent from every table read and are reported as "
                "unknown.",
                "The domain of the 11.0 custom ops TRT_Attention/TRT_MoE/TRT_KVCacheUpdate is not checked.",
                "The types column of operators.md is incomplete (NonZero omits BOOL/INT32): a type outside it "
                "is a warning unless it is DOUBLE, a quantized type or not a TensorRT type.",
            ),
        ),
    }
)

# --------------------------------------------------------------------------------------------
# Findings
# --------------------------------------------------------------------------------------------

SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Finding:
    """One observation about a model for one target.

    Attributes:
        scope: ``"main"`` (or the graph's name), a subgraph path ``"main/<node>.<attr>"``, or
            ``"function <domain>::<name>"`` for a local-function body.
        node: node name (``<op_type>#<index>`` when unnamed); ``""`` for model-level findings.
        op_type: the node's op type, ``"<domain>::<op>"`` for custom domains; ``""`` if none.
        what: short category (``opset``, ``unsupported-op``, ``dtype``, ``topk-k``, ``plugin``, ...).
        detail: one sentence a user can act on.
        severity: ``"error"`` (the parser or builder will fail), ``"warning"`` (may fail, or a trap),
            ``"info"`` (what will happen).
        target: the target key (``"10.3"``, ``"11"``).
    """

    scope: str
    node: str
    op_type: str
    what: str
    detail: str
    severity: str = "error"
    target: str = ""


def format_findings(findings: Iterable[Finding]) -> str:
    """One line per finding: ``ERROR   [10.3] main :: TopK_0 (TopK) topk-k: ...``."""
    lines = []
    for f in findings:
        where = f.scope if not f.node else f"{f.scope} :: {f.node}"
        op = f" ({f.op_type})" if f.op_type else ""
        lines.append(f"{f.severity.upper():<7} [{f.target}] {where}{op} {f.what}: {f.detail}")
    return "\n".join(lines) if lines else "no findings"


def errors(findings: Iterable[Finding]) -> list[Finding]:
    """The error-level findings."""
    return [f for f in findings if f.severity == "error"]


# --------------------------------------------------------------------------------------------
# Checking
# --------------------------------------------------------------------------------------------

_DTYPE_NAMES = {
    TensorProto.FLOAT: "FP32",
    TensorProto.FLOAT16: "FP16",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.INT8: "INT8",
    TensorProto.UINT8: "UINT8",
    TensorProto.BOOL: "BOOL",
    TensorProto.DOUBLE: "DOUBLE",
    TensorProto.FLOAT8E4M3FN: "FP8",
    TensorProto.INT4: "INT4",
}
if hasattr(TensorProto, "FLOAT4E2M1"):
    _DTYPE_NAMES[TensorProto.FLOAT4E2M1] = "FP4"


def dtype_name(elem_type: int) -> str:
    """The operator documentation's name of an ONNX element type (``FP32``, ``INT64``, ...)."""
    if elem_type in _DTYPE_NAMES:
        return _DTYPE_NAMES[elem_type]
    try:
        return TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"type#{elem_type}"


_DEFAULT_DOMAINS = ("", "ai.onnx")
_NO_TYPE_CHECK = {"Shape", "Size", "If", "Loop", "Scan"}
_QUANTIZED = {"INT8", "INT4", "FP8", "FP4"}
_MAX_CONST_ELEMENTS = 1 << 16


def _default_opset(opset_imports) -> int | None:
    for imp in opset_imports:
        if imp.domain in _DEFAULT_DOMAINS:
            return imp.version
    return None


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _shape_of(type_proto: onnx.TypeProto) -> tuple | None:
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in type_proto.tensor_type.shape.dim)


class _Values:
    """Element types, shapes and constant values visible in one scope."""

    def __init__(self, parent: _Values | None = None, base_dir: str | None = None):
        self.parent = parent
        self.base_dir = base_dir if base_dir is not None else (parent.base_dir if parent else None)
        self.types: dict[str, int] = {}
        self.shapes: dict[str, tuple] = {}
        self.initializers: dict[str, TensorProto] = {}
        self.constants: dict[str, np.ndarray | None] = {}
        self.origin: dict[str, str] = {}

    def add_value_info(self, vi: onnx.ValueInfoProto, origin: str | None = None) -> None:
        t = vi.type
        if t.HasField("tensor_type") and t.tensor_type.elem_type:
            self.types.setdefault(vi.name, t.tensor_type.elem_type)
        shape = _shape_of(t)
        if shape is not None:
            self.shapes.setdefault(vi.name, shape)
        if origin:
            self.origin.setdefault(vi.name, origin)

    def add_initializer(self, tensor: TensorProto) -> None:
        self.initializers[tensor.name] = tensor
        self.types.setdefault(tensor.name, tensor.data_type)
        self.shapes.setdefault(tensor.name, tuple(tensor.dims))
        self.origin.setdefault(tensor.name, "initializer")

    def add_constant_node(self, node: onnx.NodeProto) -> None:
        if not node.output:
            return
        name = node.output[0]
        value = None
        for a in node.attribute:
            if a.name == "value":
                tensor = a.t
                self.types.setdefault(name, tensor.data_type)
                self.shapes.setdefault(name, tuple(tensor.dims))
                value = self._to_array(tensor)
            elif a.name in ("value_float", "value_int"):
                value = np.asarray(helper.get_attribute_value(a))
            elif a.name in ("value_floats", "value_ints"):
                value = np.asarray(list(helper.get_attribute_value(a)))
        self.constants[name] = value
        self.origin.setdefault(name, "constant")

    def _to_array(self, tensor: TensorProto) -> np.ndarray | None:
        numel = int(np.prod(tensor.dims)) if tensor.dims else 1
        if numel > _MAX_CONST_ELEMENTS:
            return None
        try:
            return numpy_helper.to_array(tensor, base_dir=self.base_dir or "")
        except Exception:  # noqa: BLE001 - external data missing, exotic type: value unknown
            return None

    def lookup(self, attr: str, name: str):
        scope: _Values | None = self
        while scope is not None:
            table = getattr(scope, attr)
            if name in table:
                return table[name]
            scope = scope.parent
        return None

    def dtype(self, name: str) -> int | None:
        return self.lookup("types", name)

    def shape(self, name: str) -> tuple | None:
        return self.lookup("shapes", name)

    def origin_of(self, name: str) -> str | None:
        return self.lookup("origin", name)

    def is_const(self, name: str) -> bool:
        return self.lookup("initializers", name) is not None or self._has_constant(name)

    def _has_constant(self, name: str) -> bool:
        scope: _Values | None = self
        while scope is not None:
            if name in scope.constants:
                return True
            scope = scope.parent
        return False

    def value(self, name: str) -> np.ndarray | None:
        tensor = self.lookup("initializers", name)
        if tensor is not None:
            return self._to_array(tensor)
        scope: _Values | None = self
        while scope is not None:
            if name in scope.constants:
                return scope.constants[name]
            scope = scope.parent
        return None


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is a help, not a requirement
        return model


def _node_label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}#{index}"


def _op_label(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"


_DOWNGRADE = {"error": "warning", "warning": "info", "info": "info"}
_NO_PLUGIN_TYPES = ("BOOL", "UINT8")
_TABLE_DTYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "int32": TensorProto.INT32,
                 "int64": TensorProto.INT64, "bool": TensorProto.BOOL}
_ATTR_TYPES = {int: AttributeProto.INT, float: AttributeProto.FLOAT, str: AttributeProto.STRING}
# inputs whose values TensorRT needs while building shapes (the input becomes a shape tensor)
_SHAPE_OPERANDS: Mapping[str, tuple[int, ...]] = MappingProxyType({
    "Range": (0, 1, 2), "Reshape": (1,), "Expand": (1,), "Tile": (1,), "Slice": (1, 2, 3, 4),
    "ConstantOfShape": (0,), "TopK": (1,), "Resize": (3,), "Pad": (1,), "OneHot": (1,),
    "Upsample": (1,), "Split": (1,), "Trilu": (1,),
})


@dataclass
class _FunctionContext:
    """How findings inside a local-function body are worded and weighted for this target."""

    label: str
    prefix: str
    downgrade: int = 0  # 0: keep severity, 1: one step down, 2: two steps down


class _Checker:
    def __init__(self, model: onnx.ModelProto, target: TargetInfo, plugins: Iterable[str], base_dir: str | None,
                 shape_values: Iterable[str] = ()):
        self.model = model
        self.target = target
        self.plugins = {p.split("::")[-1] for p in plugins}
        self.shape_values = set(shape_values)
        self.base_dir = base_dir
        self.findings: list[Finding] = []
        self.functions = {(f.domain, f.name): f for f in model.functions}
        self.call_sites: dict[tuple[str, str], tuple[onnx.NodeProto, _Values]] = {}

    # -- reporting -------------------------------------------------------------------------------

    def report(self, scope, node_label, op, what, detail, severity="error", ctx: _FunctionContext | None = None):
        if ctx is not None:
            for _ in range(ctx.downgrade):
                severity = _DOWNGRADE[severity]
            detail = f"{ctx.prefix}: {detail}"
        self.findings.append(Finding(scope, node_label, op, what, detail, severity, self.target.name))

    # -- model ---------------------------------------------------------------------------------

    def run(self) -> list[Finding]:
        t = self.target
        opset = _default_opset(self.model.opset_import)
        if opset is not None:
            self._check_opset(opset, "main", None)
        inferred = _infer(self.model)
        graph = inferred.graph
        values = _Values(base_dir=self.base_dir)
        self._collect_graph_values(graph, values, top=True)
        self._check_graph(graph, graph.name or "main", values, None, opset or t.max_opset)
        self._check_shape_tensor_inputs(graph, graph.name or "main", values)
        for func in self.model.functions:
            self._check_function(func)
        return self.findings

    def _check_opset(self, opset: int, scope: str, ctx: _FunctionContext | None) -> None:
        t = self.target
        if opset > t.max_opset:
            self.report(scope, "", "", "opset",
                        f"default-domain opset {opset} is above the maximum {t.max_opset} of the "
                        f"{t.description} ONNX parser; re-export at opset <= {t.max_opset}", "error", ctx)
        elif opset < t.min_opset:
            self.report(scope, "", "", "opset",
                        f"default-domain opset {opset} is below {t.min_opset}, the oldest opset the parser "
                        f"is backward compatible with", "warning", ctx)

    def _collect_graph_values(self, graph: onnx.GraphProto, values: _Values, top: bool) -> None:
        for vi in graph.input:
            values.add_value_info(vi, "input" if top else "subgraph-input")
        for init in graph.initializer:
            values.add_initializer(init)
        for vi in graph.output:
            values.add_value_info(vi, "output" if top else None)
        for vi in graph.value_info:
            values.add_value_info(vi)
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
                values.add_constant_node(node)

    # -- graphs --------------------------------------------------------------------------------

    def _check_graph(self, graph, scope: str, values: _Values, ctx: _FunctionContext | None, opset: int) -> None:
        self._check_value_types(graph, scope, values, ctx)
        for index, node in enumerate(graph.node):
            self._check_node(node, _node_label(node, index), scope, values, ctx, opset)

    def _check_value_types(self, graph, scope: str, values: _Values, ctx) -> None:
        names: list[str] = []
        seen = set()
        for seq in (graph.input, graph.output, graph.value_info):
            for vi in seq:
                if vi.name not in seen:
                    seen.add(vi.name)
                    names.append(vi.name)
        for init in graph.initializer:
            if init.name not in seen:
                seen.add(init.name)
                names.append(init.name)
        for node in graph.node:
            for out in node.output:
                if out and out not in seen:
                    seen.add(out)
                    names.append(out)
        for name in names:
            elem = values.types.get(name)
            if not elem:
                continue
            self._check_dtype(name, elem, values.origin.get(name, "intermediate"), scope, ctx)

    def _check_dtype(self, name: str, elem: int, origin: str, scope: str, ctx) -> None:
        t = self.target
        dname = dtype_name(elem)
        io_or_weight = origin in ("input", "initializer", "constant")
        if dname == "DOUBLE":
            if io_or_weight:
                self.report(scope, "", "", "dtype",
                            f"'{name}' ({origin}) is DOUBLE: the parser casts DOUBLE down to FLOAT, clamping "
                            f"to +-FLT_MAX; export it as float32", "warning", ctx)
            else:
                self.report(scope, "", "", "dtype",
                            f"'{name}' is a DOUBLE tensor computed in the graph; TensorRT layers have no "
                            f"DOUBLE type (no operator lists it): keep the computation in float32", "error", ctx)
        elif dname not in t.dtypes:
            self.report(scope, "", "", "dtype",
                        f"'{name}' has element type {dname}, which {t.description} does not support", "error", ctx)
        elif dname == "UINT8" and origin not in ("input", "output"):
            self.report(scope, "", "", "dtype",
                        f"'{name}' is UINT8 inside the network; TensorRT takes UINT8 only as network "
                        f"input or output", "warning", ctx)

    # -- nodes ---------------------------------------------------------------------------------

    def _check_node(self, node, label, scope, values: _Values, ctx, opset: int) -> None:
        if node.domain in _DEFAULT_DOMAINS:
            self._check_standard_node(node, label, scope, values, ctx, opset)
        else:
            self._check_custom_node(node, label, scope, values, ctx)
        for a in node.attribute:
            subgraphs = []
            if a.type == AttributeProto.GRAPH:
                subgraphs = [a.g]
            elif a.type == AttributeProto.GRAPHS:
                subgraphs = list(a.graphs)
            for i, sub in enumerate(subgraphs):
                sub_scope = f"{scope}/{label}.{a.name}" + (f"[{i}]" if len(subgraphs) > 1 else "")
                sub_values = _Values(parent=values)
                self._collect_graph_values(sub, sub_values, top=False)
                self._check_graph(sub, sub_scope, sub_values, ctx, opset)

    def _check_standard_node(self, node, label, scope, values: _Values, ctx, opset: int) -> None:
        t = self.target
        op = node.op_type
        support = t.ops.get(op)
        if support is None:
            self.report(scope, label, op, "unknown-op",
                        f"{op} is not in the {t.description} ONNX operator table: the parser has no "
                        f"importer for it", "error", ctx)
            return
        note = f" ({support.note})" if support.note else ""
        if support.status == "N":
            self.report(scope, label, op, "unsupported-op",
                        f"{op} is not supported by the {t.description} ONNX parser{note}", "error", ctx)
            return
        if support.status == "?":
            self.report(scope, label, op, "unconfirmed-op",
                        f"support for {op} in {t.description} is not confirmed by the documentation read{note}",
                        "warning", ctx)
        self._check_types(node, label, scope, values, ctx, support)
        self._check_rules(node, label, scope, values, ctx, support, opset)

    def _check_types(self, node, label, scope, values: _Values, ctx, support: OpSupport) -> None:
        if support.types is None or node.op_type in _NO_TYPE_CHECK:
            return
        allowed = set(support.types)
        if node.op_type in ("Cast", "CastLike"):
            names = [n for n in (node.input[:1] + node.output[:1]) if n]
        elif "type_output" in support.rules or not any(node.input):
            idx = support.rules.get("type_output", 0)
            names = [node.output[idx]] if len(node.output) > idx and node.output[idx] else []
        else:
            idx = support.rules.get("type_input", 0)
            names = [node.input[idx]] if len(node.input) > idx and node.input[idx] else []
        for name in names:
            elem = values.dtype(name)
            if not elem:
                continue
            dname = dtype_name(elem)
            if dname == "DOUBLE" and values.origin_of(name) in ("input", "initializer", "constant"):
                continue  # the parser casts DOUBLE inputs and weights down to FLOAT
            if dname in allowed:
                continue
            documented = ", ".join(support.types)
            if dname == "DOUBLE" or dname in _QUANTIZED or dname not in self.target.dtypes:
                # DOUBLE has no layer; quantized types exist only between Q/DQ pairs (operators.md note)
                self.report(scope, label, node.op_type, "op-dtype",
                            f"'{name}' is {dname}; {node.op_type} supports {documented}", "error", ctx)
            else:
                # The types column is known to be incomplete (NonZero on BOOL): a trap, not a verdict.
                self.report(scope, label, node.op_type, "op-dtype",
                            f"'{name}' is {dname}, not among the documented types of {node.op_type} "
                            f"({documented}); verify with the real parser", "warning", ctx)

    def _check_rules(self, node, label, scope, values: _Values, ctx, support: OpSupport, opset: int) -> None:
        rules = support.rules
        op = node.op_type
        inputs = list(node.input)

        def present(i: int) -> bool:
            return len(inputs) > i and bool(inputs[i])

        for i, severity, why in rules.get("const_inputs", ()):
            if present(i) and not values.is_const(inputs[i]):
                self.report(scope, label, op, "input", f"input {i} '{inputs[i]}' is computed at run time: {why}",
                            severity, ctx)
        for i, severity, why in rules.get("nonconst_inputs", ()):
            if present(i) and values.is_const(inputs[i]):
                self.report(scope, label, op, "input", f"input {i} '{inputs[i]}' is a constant: {why}", severity, ctx)
        for i in rules.get("absent_inputs", ()):
            if present(i):
                self.report(scope, label, op, "input", f"input {i} '{inputs[i]}' is not supported by TensorRT",
                            "error", ctx)
        max_outputs = rules.get("max_outputs")
        if max_outputs is not None:
            extra = [o for o in node.output[max_outputs:] if o]
            if extra:
                self.report(scope, label, op, "output",
                            f"only the first {max_outputs} output(s) are supported; drop {extra}", "error", ctx)
        for name, (allowed, default) in rules.get("attrs", {}).items():
            value = _attr(node, name, default)
            if isinstance(value, bytes):
                value = value.decode()
            if value not in allowed:
                self.report(scope, label, op, "attribute",
                            f"{name}={value!r} is not supported (supported: {', '.join(map(repr, allowed))})",
                            "error", ctx)
        for name in rules.get("forbidden_attrs", ()):
            if _attr(node, name) is not None:
                self.report(scope, label, op, "attribute", f"attribute {name} is not supported", "error", ctx)
        for name in rules.get("ones_attrs", ()):
            value = _attr(node, name)
            if value is not None and any(int(v) != 1 for v in value):
                self.report(scope, label, op, "attribute", f"{name}={list(value)} must be empty or all ones",
                            "error", ctx)
        for i, ranks in rules.get("ranks", {}).items():
            if present(i):
                shape = values.shape(inputs[i])
                if shape is not None and len(shape) not in ranks:
                    self.report(scope, label, op, "rank",
                                f"input {i} '{inputs[i]}' has rank {len(shape)}; supported ranks: "
                                f"{', '.join(map(str, ranks))}", "error", ctx)
        for i, types in rules.get("input_types", {}).items():
            if present(i):
                elem = values.dtype(inputs[i])
                if elem and dtype_name(elem) not in types:
                    self.report(scope, label, op, "op-dtype",
                                f"input {i} '{inputs[i]}' is {dtype_name(elem)}; supported: {', '.join(types)}",
                                "error", ctx)
        zp = rules.get("zero_point")
        if zp is not None and present(zp):
            value = values.value(inputs[zp])
            if value is not None and np.any(value.astype(np.float64) != 0):
                self.report(scope, label, op, "input", f"zero point '{inputs[zp]}' must be zero", "error", ctx)
            elif value is None and not values.is_const(inputs[zp]):
                self.report(scope, label, op, "input", f"zero point '{inputs[zp]}' must be a constant zero",
                            "warning", ctx)
        dt = rules.get("dropout_training")
        if dt is not None and present(dt):
            value = values.value(inputs[dt])
            if value is None:
                self.report(scope, label, op, "input",
                            "training_mode must be an initializer evaluating to False", "error", ctx)
            elif bool(np.any(value)):
                self.report(scope, label, op, "input", "training_mode=True is not supported", "error", ctx)
        if rules.get("einsum_simple"):
            self._check_einsum(node, label, scope, ctx)
        if rules.get("squeeze_axes_required"):
            has_axes = present(1) if opset >= 13 else _attr(node, "axes") is not None
            if not has_axes:
                self.report(scope, label, op, "input",
                            "Squeeze without axes is supported only from TensorRT 11.5 (release notes); "
                            "give the axes explicitly", "warning", ctx)
        k_max = rules.get("topk_k_max")
        if k_max is not None:
            self._check_topk(node, label, scope, values, ctx, k_max)

    def _check_topk(self, node, label, scope, values: _Values, ctx, k_max: int) -> None:
        op = node.op_type
        if len(node.input) > 1 and node.input[1]:
            k_name = node.input[1]
            k_value = values.value(k_name)
            known = values.is_const(k_name)
        else:  # opset < 10: K is an attribute
            k_name = "attribute k"
            k_attr = _attr(node, "k")
            k_value = None if k_attr is None else np.asarray(k_attr)
            known = k_attr is not None
        if k_value is not None:
            k = int(np.asarray(k_value).reshape(-1)[0])
            if k > k_max:
                self.report(scope, label, op, "topk-k",
                            f"K = {k} exceeds TensorRT's TopK limit of {k_max}: split the selection (per frame "
                            f"or per group), or use a plugin", "error", ctx)
            return
        # K computed at run time (or stored where it cannot be read): bounded by the axis length?
        axis_len = None
        shape = values.shape(node.input[0]) if node.input and node.input[0] else None
        if shape:
            axis = int(_attr(node, "axis", -1))
            if -len(shape) <= axis < len(shape):
                axis_len = shape[axis]
        if axis_len is not None and axis_len <= k_max:
            return
        origin = "computed at run time" if not known else "a constant that could not be read"
        extent = f"the axis has length {axis_len}" if axis_len else "the axis length is not static"
        self.report(scope, label, op, "topk-k",
                    f"K ({k_name}) is {origin} and {extent}: TensorRT fails when K exceeds {k_max}", "warning", ctx)

    def _check_einsum(self, node, label, scope, ctx) -> None:
        equation = _attr(node, "equation", b"")
        equation = equation.decode() if isinstance(equation, bytes) else str(equation)
        lhs = equation.replace(" ", "").split("->")[0]
        if "..." in equation:
            self.report(scope, label, node.op_type, "attribute",
                        f"equation '{equation}' uses an ellipsis, unsupported before TensorRT 10.12", "error", ctx)
        for term in lhs.split(","):
            if len(set(term)) != len(term.replace(".", "")) and "..." not in term:
                self.report(scope, label, node.op_type, "attribute",
                            f"equation '{equation}' takes a diagonal ('{term}'), unsupported before TensorRT 10.12",
                            "error", ctx)
                break

    # -- custom domains -------------------------------------------------------------------------

    def _check_custom_node(self, node, label, scope, values: _Values, ctx) -> None:
        t = self.target
        op = _op_label(node)
        key = (node.domain, node.op_type)
        has_function = key in self.functions
        if has_function and key not in self.call_sites:
            self.call_sites[key] = (node, values)
        ns = _attr(node, "plugin_namespace")
        ns = ns.decode() if isinstance(ns, bytes) else ns
        version = _attr(node, "plugin_version")
        version = version.decode() if isinstance(version, bytes) else version

        if node.domain == "ai.onnx.ml":
            self.report(scope, label, op, "unsupported-domain",
                        "ai.onnx.ml operators have no TensorRT importer", "error", ctx)
            return
        base = t.ops.get(node.op_type)
        if base is not None and base.status != "N":
            self.report(scope, label, op, "builtin-name",
                        f"'{node.op_type}' is also a standard ONNX op: the parser matches builtin importers "
                        f"first, by name only, so neither the function nor a plugin is used", "error", ctx)
        self._check_plugin_boundary(node, label, scope, values, ctx)
        if node.domain == DOMAIN and node.op_type in OPS:
            self._check_against_table(node, label, scope, values, ctx)
            if ns != PLUGIN_NAMESPACE or (version is not None and str(version) != PLUGIN_VERSION):
                self.report(scope, label, op, "plugin",
                            f"node carries plugin_namespace={ns!r}, plugin_version={version!r}; the plugin is "
                            f"registered as {PLUGIN_NAMESPACE}::{node.op_type} version {PLUGIN_VERSION}",
                            "warning", ctx)

        plugin_id = f"{ns if ns is not None else (node.domain if t.domain_is_plugin_namespace else '')}::{node.op_type}"
        if has_function:
            if t.plugin_over_function:
                if ns is None:
                    self.report(scope, label, op, "plugin",
                                f"no plugin_namespace attribute: the parser keeps the local function body "
                                f"even when plugin {node.domain}::{node.op_type} is loaded (unless "
                                f"kENABLE_PLUGIN_OVERRIDE is set)", "warning", ctx)
                else:
                    self.report(scope, label, op, "plugin",
                                f"needs plugin {plugin_id}; without it loaded the local function body is "
                                f"inlined", "info", ctx)
            else:
                hint = (" -- functions will be stripped, as the plugin is requested"
                        if node.op_type in self.plugins else
                        f"; to use plugin {plugin_id}, strip the function first "
                        f"(prunevid.trt.plugins.plugin_onnx)")
                self.report(scope, label, op, "inlined",
                            f"body will be inlined (plugin ignored before TensorRT 10.7){hint}", "warning", ctx)
        else:
            if ns is None and not t.domain_is_plugin_namespace:
                self.report(scope, label, op, "plugin",
                            f"no local function and no plugin_namespace attribute: {t.description} looks up "
                            f"plugin '::{node.op_type}' in the empty namespace (the domain is ignored before "
                            f"10.10)", "error", ctx)
            else:
                self.report(scope, label, op, "plugin",
                            f"needs plugin {plugin_id} (no local function: the build fails without it)", "info", ctx)

    def _check_plugin_boundary(self, node, label, scope, values: _Values, ctx) -> None:
        """BOOL/UINT8 at a custom node's inputs or outputs: no TensorRT plugin accepts them."""
        op = _op_label(node)
        for kind, names in (("input", node.input), ("output", node.output)):
            for name in names:
                elem = values.dtype(name) if name else None
                if elem and dtype_name(elem) in _NO_PLUGIN_TYPES:
                    self.report(scope, label, op, "plugin-dtype",
                                f"{kind} '{name}' is {dtype_name(elem)}: TensorRT plugins (10.3 to 11.x) take no "
                                f"BOOL or UINT8 tensors; pass int32 (e.g. a count instead of a mask)", "error", ctx)

    def _check_against_table(self, node, label, scope, values: _Values, ctx) -> None:
        """The node against its op in prunevid/plugins/ops.py: inputs, outputs (the plugin's output
        count is the table's), element types and attributes."""
        spec = OPS[node.op_type]
        op = _op_label(node)
        if len(node.input) != len(spec.inputs):
            self.report(scope, label, op, "op-table",
                        f"{len(node.input)} inputs, the op table has {len(spec.inputs)} "
                        f"({', '.join(t.name for t in spec.inputs)})", "error", ctx)
        if len(node.output) != len(spec.outputs):
            self.report(scope, label, op, "plugin-outputs",
                        f"{len(node.output)} outputs, but plugin {spec.plugin_id} gives {len(spec.outputs)} "
                        f"({', '.join(t.name for t in spec.outputs)}) as the op table says: parsers from 10.7 "
                        f"reject the mismatch", "error", ctx)
        for kind, names, tensors in (("input", node.input, spec.inputs), ("output", node.output, spec.outputs)):
            for name, t in zip(names, tensors):
                elem = values.dtype(name) if name else None
                want = _TABLE_DTYPES.get(t.dtype)
                if elem and want is not None and elem != want:
                    self.report(scope, label, op, "op-table",
                                f"{kind} '{name}' ({t.name}) is {dtype_name(elem)}, the op table says "
                                f"{dtype_name(want)}", "error", ctx)
        given = {a.name: a for a in node.attribute if a.name not in ("plugin_namespace", "plugin_version")}
        for name, typ in spec.attributes.items():
            a = given.get(name)
            if a is None:
                self.report(scope, label, op, "op-table", f"attribute {name} ({typ.__name__}) is missing",
                            "error", ctx)
            elif a.type != _ATTR_TYPES.get(typ, a.type):
                self.report(scope, label, op, "op-table",
                            f"attribute {name} is {AttributeProto.AttributeType.Name(a.type)}, the op table "
                            f"says {typ.__name__}", "error", ctx)
        for name in sorted(set(given) - set(spec.attributes)):
            self.report(scope, label, op, "op-table",
                        f"attribute {name} is not in the op table (the plugin has no such field)", "error", ctx)

    # -- shape tensors ------------------------------------------------------------------------------

    def _check_shape_tensor_inputs(self, graph, scope: str, values: _Values) -> None:
        """Graph inputs whose values reach a shape operand (Range limits, Reshape/Expand/Tile shapes,
        Slice bounds, ...) become shape tensors: an optimization profile must give their values."""
        inputs = [vi.name for vi in graph.input if vi.name not in {i.name for i in graph.initializer}]
        sources: dict[str, set[str]] = {name: {name} for name in inputs}
        reported: set[tuple[str, str]] = set()
        for index, node in enumerate(graph.node):
            if node.op_type in ("Shape", "Size") and node.domain in _DEFAULT_DOMAINS:
                continue  # shape-only: the values do not flow through
            deps: set[str] = set()
            for name in node.input:
                deps |= sources.get(name, set())
            if not deps:
                continue
            operands = _SHAPE_OPERANDS.get(node.op_type, ()) if node.domain in _DEFAULT_DOMAINS else ()
            for i in operands:
                if i < len(node.input) and node.input[i]:
                    for src in sorted(sources.get(node.input[i], set())):
                        if (src, node.name or str(index)) in reported:
                            continue
                        reported.add((src, node.name or str(index)))
                        if src in self.shape_values:
                            self.report(scope, _node_label(node, index), node.op_type, "shape-tensor",
                                        f"graph input '{src}' is a shape tensor (input {i} of {node.op_type}); "
                                        f"its profile values are given", "info")
                        else:
                            self.report(scope, _node_label(node, index), node.op_type, "shape-tensor",
                                        f"graph input '{src}' reaches input {i} of {node.op_type}, so TensorRT makes "
                                        f"it a shape tensor; with no values in the optimization profile trtexec "
                                        f"fixes it to 1: pass sizes as input shapes, or give its values", "error")
            for out in node.output:
                elem = values.dtype(out) if out else None
                if out and (elem is None or dtype_name(elem) in ("INT32", "INT64")):
                    sources[out] = sources.get(out, set()) | deps

    # -- local functions ----------------------------------------------------------------------------

    def _function_context(self, func: onnx.FunctionProto) -> _FunctionContext:
        t = self.target
        label = f"{func.domain}::{func.name}"
        requested = func.name in self.plugins
        if t.plugin_over_function:
            if requested:
                return _FunctionContext(label, f"inside function {label} (unused while plugin {label} is loaded)", 2)
            return _FunctionContext(label, f"inside function {label} (inlined when plugin {label} is not loaded)")
        if requested:
            return _FunctionContext(label, f"inside function {label} (inlined unless the function is stripped "
                                           f"for the plugin)", 1)
        return _FunctionContext(label, f"inside function {label} (always inlined before TensorRT 10.7)")

    def _check_function(self, func: onnx.FunctionProto) -> None:
        ctx = self._function_context(func)
        scope = f"function {ctx.label}"
        opset = _default_opset(func.opset_import)
        if opset is not None:
            self._check_opset(opset, scope, ctx)
        body_values = _Values(base_dir=self.base_dir)
        call = self.call_sites.get((func.domain, func.name))
        if call is not None:
            node, caller_values = call
            graph = _function_graph(self.model, func, node, caller_values)
        else:
            graph = _function_graph(self.model, func, None, None)
        for name in func.input:
            body_values.origin[name] = "function-input"
        self._collect_graph_values(graph, body_values, top=False)
        self._check_graph(graph, scope, body_values, ctx, opset or self.target.max_opset)


def _resolve_attribute_refs(node: onnx.NodeProto, call: onnx.NodeProto | None) -> onnx.NodeProto:
    if not any(a.ref_attr_name for a in node.attribute):
        return node
    out = onnx.NodeProto()
    out.CopyFrom(node)
    del out.attribute[:]
    caller = {a.name: a for a in call.attribute} if call is not None else {}
    for a in node.attribute:
        if a.ref_attr_name:
            if a.ref_attr_name in caller:
                resolved = AttributeProto()
                resolved.CopyFrom(caller[a.ref_attr_name])
                resolved.name = a.name
                out.attribute.append(resolved)
        else:
            out.attribute.append(a)
    return out


def _function_graph(model, func: onnx.FunctionProto, call, caller_values: _Values | None) -> onnx.GraphProto:
    """The function body as a graph, typed from one call site when there is one, shape-inferred."""
    inputs = []
    for i, formal in enumerate(func.input):
        actual = call.input[i] if call is not None and i < len(call.input) else ""
        elem = caller_values.dtype(actual) if caller_values is not None and actual else None
        if elem:
            shape = caller_values.shape(actual)
            dims = None if shape is None else [d if d is not None else None for d in shape]
            inputs.append(helper.make_tensor_value_info(formal, elem, dims))
        else:
            inputs.append(helper.make_empty_tensor_value_info(formal))
    nodes = [_resolve_attribute_refs(n, call) for n in func.node]
    outputs = [helper.make_empty_tensor_value_info(o) for o in func.output]
    graph = helper.make_graph(nodes, f"{func.domain}.{func.name}", inputs, outputs)
    imports = {imp.domain: imp.version for imp in func.opset_import}
    for imp in model.opset_import:
        imports.setdefault(imp.domain, imp.version)
    sub = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in imports.items()],
        functions=[f for f in model.functions if (f.domain, f.name) != (func.domain, func.name)],
    )
    sub.ir_version = model.ir_version or sub.ir_version
    return _infer(sub).graph


def check_model(
    model: onnx.ModelProto,
    target: str,
    *,
    plugins: Iterable[str] = (),
    base_dir: str | Path | None = None,
    shape_values: Iterable[str] = (),
) -> list[Finding]:
    """Check ``model`` against one TensorRT target.

    Args:
        model: the model; external data need not be loaded (constants are read from
            ``base_dir`` when a check needs them).
        target: a key of :data:`TARGETS` (``"10.3"`` or ``"11"``).
        plugins: names (``"PvDpcKnn"`` or ``"prunevid::PvDpcKnn"``) of custom ops whose plugins
            will be loaded: their function bodies then matter less (TensorRT >= 10.7 takes the
            plugin; on 10.3 the build strips the function, see ``prunevid.trt.plugins``).
        base_dir: folder of the model file, to read externally stored constants.
        shape_values: graph inputs whose values the optimization profile gives (a shape-tensor
            input listed here is reported as info, not as an error).

    Returns:
        Findings in graph order: model-level, then main graph (with subgraphs), then functions.
    """
    if target not in TARGETS:
        raise KeyError(f"unknown TensorRT target {target!r}; known: {', '.join(TARGETS)}")
    checker = _Checker(model, TARGETS[target], plugins, None if base_dir is None else str(base_dir), shape_values)
    return checker.run()


def shape_value_inputs(graph_entry: Mapping[str, Any]) -> list[str]:
    """Inputs of a manifest graph entry whose profile gives values (``"values": {"min", "opt",
    "max"}``), i.e. shape-tensor inputs TensorRT can build for."""
    return [t["name"] for t in graph_entry.get("inputs", []) if isinstance(t, Mapping) and "values" in t]

