"""prunevid's custom ops: one table (:mod:`prunevid.plugins.ops`) read by the torch side, the ONNX
side (function bodies in standard ops) and the TensorRT plugins."""
