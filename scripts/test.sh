#!/usr/bin/env bash
# Set up (if needed), lint, and run the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
MUJOCO_GL=disable .venv/bin/python -m pytest -q "$@"
