#!/usr/bin/env bash
# Set up (if needed), lint, and run the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
.venv/bin/ruff check .
# One test worker per core (pytest-xdist; each worker runs torch single-threaded), a test file per worker.
MUJOCO_GL=disable .venv/bin/python -m pytest -q -n "${MRCOM_TEST_WORKERS:-auto}" --dist loadfile "$@"
