"""What doing nothing scores: the zero-action and uniform-random floors of a split's evaluation ranges.

Run as ``python bench/floors.py [--split t1-a10b50] [--scenarios 8] [--episodes 2]``. For each domain and each
evaluation range (``in``, ``ood``) it draws ``--scenarios`` target scenarios (seed 0, as ``mrcom collect
--range in|ood`` would) and scores the two floor policies of :func:`mrcom_train.rl.scoring.floor_scores` on
each, over the same evaluation episodes every learner is scored on. It prints one table: mean (min–max) of
the normalized return per domain and range, and the target speeds drawn. A protocol that discriminates has
floors near 0 except for targets near 0 m/s (standing still is then the task).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
os.environ.setdefault("MUJOCO_GL", "disable")

from mrcom_train.rl.scoring import FLOOR_LABELS, FLOORS, floor_scores  # noqa: E402
from mrcom_train.scenarios import DOMAINS, get_split, sample_scenarios  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", default="t1-a10b50")
    p.add_argument("--scenarios", type=int, default=8, help="target scenarios per domain and range")
    p.add_argument("--episodes", type=int, default=2, help="evaluation episodes per scenario")
    p.add_argument("--domains", default=",".join(DOMAINS))
    args = p.parse_args()
    split = get_split(args.split)
    start = time.perf_counter()
    print(f"# Floors of {args.split}: {args.scenarios} scenarios per domain and range, {args.episodes} evaluation "
          f"episodes each ({platform.processor() or platform.machine()}, numpy {np.__version__})\n")
    print("| range | domain | targets (m/s) | " + " | ".join(FLOOR_LABELS[f] for f in FLOORS) + " |")
    print("|---|---|---|" + "---:|" * len(FLOORS))
    for rng_name in ("in", "ood"):
        for domain in args.domains.split(","):
            specs = sample_scenarios(split.range(rng_name), [domain], args.scenarios, 0)
            scores = [floor_scores(s, args.episodes, i) for i, s in enumerate(specs)]
            cells = []
            for f in FLOORS:
                v = np.array([s[f] for s in scores])
                cells.append(f"{v.mean():.1f} ({v.min():.1f}–{v.max():.1f})")
            speeds = ", ".join(f"{s.target_speed:.2f}" for s in specs)
            print(f"| {rng_name} | {domain} | {speeds} | " + " | ".join(cells) + " |", flush=True)
    print(f"\nwall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
