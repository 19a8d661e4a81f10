#!/usr/bin/env bash
# One-command check of a CUDA machine (Triton kernels, bench/kernels.py --quick, bf16 training steps, ONNX Runtime,
# GPU rollouts): runs bench/gpu_check.py from this checkout without installing it. Each part is time-limited and
# isolated; the whole run is budgeted at 480 s (--budget SECONDS to change). With OUT set, also writes
# $OUT/gpu_check.log and $OUT/gpu_check.json. Exit status: 1 if a correctness row failed, else 0; without CUDA it
# prints one line and exits 0. Developer aid: `bash scripts/gpu_check.sh --cpu-dry-run` runs every part on CPU.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MUJOCO_GL=disable
unset TRITON_INTERPRET MRCOM_KERNELS
PY="${PYTHON:-python3}"
# python3 without torch (a dev box): fall back to the repo's virtual environment if there is one
if ! "$PY" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("torch") is None)' 2>/dev/null; then
    if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then
        PY=.venv/bin/python
    else
        echo "gpu_check: $PY cannot import torch; nothing checked"
        exit 1
    fi
fi
exec "$PY" bench/gpu_check.py "$@"
