#!/usr/bin/env bash
# The main job on a small default: set up, then collect a multi-scenario dataset (hopper, walker, cheetah;
# Table 1 (a)'s training range) with per-scenario SAC behaviour policies. Rerunning resumes/finishes it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT="${MRCOM_DEMO_OUT:-runs/demo}"
.venv/bin/mrcom collect --split t1-a5b20 --scenarios-per-domain 2 --episodes-per-scenario 4 \
  --policy sac --sac-update-every 2 --workers 2 --out "$OUT/data" --resume
echo "demo: dataset in $OUT/data (inspect it with: .venv/bin/mrcom info $OUT/data)"
