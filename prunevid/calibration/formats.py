"""The quantization formats and the one declared list of what stays in high precision.

Variation between formats is data (:data:`FORMATS`); the graph passes read it. Nothing here imports
anything heavy.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunevid.errors import ConfigError


@dataclass(frozen=True)
class Format:
    """One quantization format.

    ``kind``: ``qdq`` (activations and weights through QuantizeLinear/DequantizeLinear, ONNX Runtime's
    ``quantize_static``) or ``weight_only`` (block-wise integer weights, ONNX Runtime's
    ``MatMulNBitsQuantizer``). ``element``: the ONNX element type of the quantized values.
    ``smooth``: the scale search folded into the graph before quantizing (``smoothquant`` with
    migration strength ``alpha``, ``awq`` with a grid of ``grid`` exponents, or ``none``).
    ``tolerance``: ``(atol, rtol)`` of ``prunevid check`` for the quantized graphs' float outputs.
    ``weight_form`` (weight-only formats): ``nbits`` (ONNX Runtime's ``MatMulNBits`` contrib op) or
    ``qdq`` (standard ``DequantizeLinear`` of blocked INT4 weights before ``MatMul``, opset 21, the
    form TensorRT parses). ``float_roles``: which entries of :data:`FLOAT_ROLES` stay float in this
    format (the others are quantized like any projection); chosen per format by measurement
    (README, "Quantization"). ``ort_disabled_optimizers``: ONNX Runtime graph optimizers the runtime
    turns off for this format's quantized graphs (written into the manifest per graph): its
    ``MatMulAddFusion`` turns a projection and the residual add after it into a ``Gemm`` before the
    Q/DQ fusions run, which leaves that projection dequantizing its whole weight on every call (in
    the decoder's MLP down projection: one MatMul in four of ``int8-sq``).
    """

    name: str
    kind: str
    element: str
    bits: int
    smooth: str
    alpha: float = 0.5
    grid: int = 11
    block_size: int = 32
    weight_form: str = "nbits"
    targets: tuple[str, ...] = ()
    float_roles: tuple[str, ...] = ("layer_k_scoring", "lm_head")
    tolerance: tuple[float, float] = (0.0, 0.0)
    ort_disabled_optimizers: tuple[str, ...] = ()
    doc: str = ""

    def block_for(self, rows: int) -> int:
        """The block of a weight with ``rows`` input rows: ``block_size``, halved (down to 16, the
        smallest ``MatMulNBits`` takes) while it exceeds ``rows``, so that a narrow weight is not
        padded to a block mostly of zeros."""
        block = self.block_size
        while block > 16 and block > rows:
            block //= 2
        return block


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("int8-sq", "qdq", "int8", 8, "smoothquant", alpha=0.5, targets=("orin", "thor", "hopper", "cpu"),
               tolerance=(0.5, 0.5), ort_disabled_optimizers=("MatMulAddFusion",),
               doc="W8A8 int8, SmoothQuant (alpha 0.5), symmetric per-channel weights, symmetric per-tensor activations"),
        Format("fp8", "qdq", "float8e4m3fn", 8, "smoothquant", alpha=0.5, targets=("thor", "hopper"),
               tolerance=(0.5, 0.5), ort_disabled_optimizers=("MatMulAddFusion",),
               doc="W8A8 FP8 E4M3, SmoothQuant (alpha 0.5), per-tensor scales (TensorRT explicit quantization)"),
        Format("int4-awq", "weight_only", "int4", 4, "awq", block_size=128, targets=("orin", "thor", "hopper", "cpu"),
               tolerance=(0.5, 0.5),
               doc="W4A16: int4 weights in blocks of 128 along the input dimension, AWQ scales, float activations"),
        Format("int4-awq-qdq", "weight_only", "int4", 4, "awq", block_size=128, weight_form="qdq",
               targets=("orin", "thor", "hopper"), tolerance=(0.5, 0.5),
               doc="int4-awq with standard DequantizeLinear(INT4, blocked) before MatMul (opset 21), for TensorRT"),
    )
}

# Negative control of the tests and the benchmark: the int4 path made deliberately bad (2-bit weights,
# no scale search, one block per 256 inputs). Never offered on the command line.
NEGATIVE_CONTROL = Format("int2-rtn", "weight_only", "int2", 2, "none", block_size=256, targets=(),
                          tolerance=(0.5, 0.5), doc="negative control: 2-bit round-to-nearest weights")

# What is quantized at all: the two decoder graphs' MatMuls whose second input is a weight.
QUANTIZED_GRAPHS = ("decoder_early", "decoder_late")

# The declared list of what stays in high precision, with why. Graph entries: the whole graph is
# copied unchanged. Role entries: inside a quantized graph, the weight MatMuls that feed the named
# graph outputs (found by walking back from the output to the first weight MatMul on each path).
FLOAT_GRAPHS: dict[str, str] = {
    "encoder": "its output decides the merger's static test and DPC-KNN clusters; not measured harmless",
    "merger": "PruneVid's decisions (static test, DPC-KNN) stay float32",
    "embed": "a table lookup: quantizing it saves memory but no time; kept exact",
    "score": "layer K's scoring map chooses the tokens that live; float32",
    "select": "integer selection; nothing to quantize",
}
FLOAT_ROLES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "layer_k_scoring": ("decoder_early", ("score_query", "score_key"),
                        "layer K's q/k projections feed the scoring map (kept-token set)"),
    "lm_head": ("decoder_late", ("logits",), "the LM head decides every token; float unless measured harmless"),
}

# Default gates (see the README's "Quantization"): the kept-token set at layer K must stay the float
# model's (IoU), and teacher-forced next tokens must agree with the float model's.
DEFAULT_MIN_IOU = 0.95
DEFAULT_MIN_AGREEMENT = 0.9


def get_format(name: str) -> Format:
    """The format called ``name``; an unknown one is a one-line :class:`ConfigError`."""
    if name not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {name!r}")
    return FORMATS[name]
