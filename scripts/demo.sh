#!/usr/bin/env bash
# The main job on a small default: set up, collect a multi-scenario dataset (hopper, walker, cheetah;
# Table 1 (a)'s training range) with per-scenario SAC behaviour policies, then train the `small` world
# model on it for a few minutes on the CPU, export it to ONNX (with one scenario's SAC policy fused in) and
# imagine rollouts through the torch-free runtime. Rerunning resumes (or, when finished, only summarizes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT="${MRCOM_DEMO_OUT:-runs/demo}"
.venv/bin/mrcom collect --split t1-a5b20 --scenarios-per-domain 2 --episodes-per-scenario 5 \
  --policy sac --sac-update-every 2 --workers 2 --out "$OUT/data" --resume
.venv/bin/mrcom train --data "$OUT/data" --out "$OUT/run" --preset small --steps "${MRCOM_DEMO_STEPS:-1500}" \
  --resume
# A finished rerun is a summary: the export and the rollout benchmark only run again when training went on.
if [ ! -f "$OUT/export/manifest.json" ] || [ "$OUT/run/checkpoints/latest.json" -nt "$OUT/export/manifest.json" ]; then
  .venv/bin/mrcom export "$OUT/run" --out "$OUT/export" --format onnx --policy "$OUT/data/sac/s0000.pt" --force
  .venv/bin/mrcom rollout "$OUT/export" --batch 64 --horizon 15 --bench
else
  echo "demo: $OUT/export is up to date with $OUT/run (delete it to export again)"
  .venv/bin/mrcom rollout "$OUT/export" --batch 64 --horizon 15
fi
echo "demo: dataset in $OUT/data, world model run in $OUT/run (metrics.csv, checkpoints/, tb/), export in $OUT/export"
