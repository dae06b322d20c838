#!/usr/bin/env bash
# GPU check of the prunevid TensorRT plugins (kernels vs host core on the device; with TensorRT,
# one-node engines per op and exported graphs parsed with the plugin). Prints one table.
# Usage: scripts/gpu_check.sh [--export EXPORT_DIR] [--trt-include DIR] [--arch sm_XY] [--cases N]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m prunevid.trt.gpu_check "$@"
