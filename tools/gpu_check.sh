#!/usr/bin/env bash
# GPU readiness check (issue 21): every experiment's paper preset, bit-exact resume, the lessons' `#| gpu` cells and
# the benchmarks on one GPU, as a markdown table (tools/gpu_check.py has the details; --help lists the options).
#   bash tools/gpu_check.sh --out gpu_check.md          # on a GPU machine (about 8 minutes); `make gpu-check`
#   bash tools/gpu_check.sh --dry-run --out /tmp/g.md   # the same code paths on the CPU, smoke sizes (< 2 minutes)
# Installs nothing: it uses the project's .venv when there is one, else $PYTHON, else python3.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"   # deterministic cuBLAS for the resume rows
export PYTHONUNBUFFERED=1
exec "$PY" "$ROOT/tools/gpu_check.py" "$@"
