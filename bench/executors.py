"""Wall time of a ``smoke`` reproduction (one split, from scratch) through the local process pool and through a
local Ray instance with the same number of CPUs: Ray's overhead over the local pool.

    MUJOCO_GL=disable python bench/executors.py --workers 2 --repeats 1 --out runs/bench-executors

Each run starts from an empty folder (data, models, exports, cells); the two executors alternate so that other
load on the machine falls on both. Prints a markdown table (seconds, and Ray's overhead in % of the local run).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

from mrcom_train.experiments.reproduce import run_reproduction


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/bench-executors"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--split", default="t1-a5b20")
    args = p.parse_args()
    times: dict[str, list[float]] = {"local": [], "ray": []}
    for r in range(args.repeats):
        for executor in times:
            out = args.out / f"{executor}-{r}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            run_reproduction(1, "smoke", 1, out, splits=(args.split,), workers=args.workers, executor=executor,
                             log=lambda s: None)
            times[executor].append(time.perf_counter() - t0)
            print(f"{executor} run {r + 1}: {times[executor][-1]:.1f} s", flush=True)
    local, ray = statistics.median(times["local"]), statistics.median(times["ray"])
    print(f"\n`smoke` reproduction of {args.split}, {args.workers} workers / CPUs, median of {args.repeats}\n")
    print("| executor | wall (s) | overhead |\n|---|---:|---:|")
    print(f"| local pool | {local:.1f} | |\n| Ray (local instance) | {ray:.1f} | {100 * (ray - local) / local:+.1f}% |")


if __name__ == "__main__":
    main()
