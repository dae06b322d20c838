"""Offline side: torch stages, ONNX export, TensorRT build."""
