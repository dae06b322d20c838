"""Calibration and quantization of an export folder (``prunevid quantize``).

    float export --(real clips and questions through the float chain: recorded decoder feeds)-->
    per-channel activation statistics --> SmoothQuant / AWQ scales folded into the graphs -->
    ONNX Runtime's quantizers (Q/DQ for int8-sq and fp8, MatMulNBits for int4-awq) -->
    accuracy report against the float export on held-out clips and questions --> gates -->
    a new export folder whose manifest records the format, the calibration set and the report.

Modules: :mod:`formats` (the format table and the declared list of what stays float),
:mod:`data` (calibration and held-out samples), :mod:`scales` (statistics, SmoothQuant and AWQ
scales), :mod:`quantize` (the graphs and the folder), :mod:`report` (accuracy report and gates).
"""
