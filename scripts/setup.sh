#!/usr/bin/env bash
# Create .venv (if missing) and install MrCoM into it. Safe to rerun: a finished setup is skipped until
# pyproject.toml changes.
# usage: setup.sh [dev]   (dev: also the test tools, Triton for the kernel tests on CPU and Ray, ~1.3 GB more)
# torch is pinned to 2.13.0 and installed first, so no dependency can pull a multi-GB CUDA build where a
# CPU wheel of 2.13.0 is available (set PIP_INDEX_URL / PIP_EXTRA_INDEX_URL to your CPU wheel index elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-base}"
case "$MODE" in base) EXTRAS="" ;; dev) EXTRAS="[dev,cluster]" ;; *) echo "setup: usage: setup.sh [dev]" >&2; exit 2 ;; esac
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PY="$candidate"; break; fi
  done
fi
[ -n "$PY" ] || { echo "setup: no python3.11 or python3 on PATH" >&2; exit 1; }
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "setup: MrCoM needs Python >= 3.11")'
# The stamp names what was installed from which pyproject.toml; a dev setup also covers a base one.
hash="$(sha256sum pyproject.toml | cut -c1-16)"
for done_mode in "$MODE" dev; do
  if [ -f ".venv/.mrcom-setup-$done_mode" ] && [ "$(cat ".venv/.mrcom-setup-$done_mode")" = "$hash" ] \
     && [ -x .venv/bin/mrcom ]; then
    echo "setup: .venv is ready (installed from this pyproject.toml; delete .venv/.mrcom-setup-* to reinstall)"
    exit 0
  fi
done
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv || { echo "setup: '$PY -m venv' failed (on Debian: apt-get install python3-venv)" >&2; exit 1; }
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
LOG=.venv/setup.log
: > "$LOG"
# pip's own lines, one per package it fetches (so a long download shows it is moving); all of it goes to $LOG
pip_install() {
  if ! .venv/bin/python -m pip install "$@" 2>&1 | tee -a "$LOG" |
       awk '/^(Collecting|Successfully installed)/ { print "  " substr($0, 1, 110); fflush() }'; then
    echo "setup: pip install $* failed; the last lines of $LOG:" >&2
    tail -n 25 "$LOG" >&2
    exit 1
  fi
}
echo "setup: [1/3] pip"
pip_install --upgrade pip
echo "setup: [2/3] torch 2.13.0 (the CPU wheel where the index has one; the largest download)"
pip_install "torch==2.13.0"
echo "setup: [3/3] MrCoM$EXTRAS and its dependencies (dm_control, mujoco, onnxruntime, ...$([ "$MODE" = dev ] &&
  echo "; pytest, ruff, Triton for the kernel tests and Ray"))"
pip_install -e ".$EXTRAS"
echo "$hash" > ".venv/.mrcom-setup-$MODE"
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch, mujoco, dm_control; print("torch", torch.__version__, "| mujoco", mujoco.__version__)'))"
