#!/usr/bin/env bash
# Create .venv (if missing) and install MrCoM with its test tools. Safe to rerun.
# torch is pinned to 2.13.0 and installed first, so no dependency can pull a multi-GB CUDA build where a
# CPU wheel of 2.13.0 is available (set PIP_INDEX_URL / PIP_EXTRA_INDEX_URL to your CPU wheel index elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PY="$candidate"; break; fi
  done
fi
[ -n "$PY" ] || { echo "setup: no python3.11 or python3 on PATH" >&2; exit 1; }
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "setup: MrCoM needs Python >= 3.11")'
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv || { echo "setup: '$PY -m venv' failed (on Debian: apt-get install python3-venv)" >&2; exit 1; }
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev]"
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch, mujoco, dm_control; print("torch", torch.__version__, "| mujoco", mujoco.__version__)'))"
