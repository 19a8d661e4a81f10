"""``mrcom train --preset tiny`` on an idle machine and beside a process that holds one core, with the command's
default thread choice and with torch's own default (a thread per core), in one run.

Run as ``python bench/threads.py [--steps 300] [--rounds 2] [--max-seconds 90]``. It collects a small random
dataset into a temp folder, then runs ``mrcom train`` as a subprocess (``OMP_NUM_THREADS`` unset, as a user's
shell has it) in interleaved rounds of four settings:

* **idle / default** and **idle / --threads N** (N = this process's cores: torch's default);
* **busy / default** and **busy / --threads N**, while a second process spins on one core (a pure-Python loop
  pinned to one of this process's cores where the OS allows it).

Each setting's speed is the median over rounds of the median ``updates_per_s`` in the run's ``metrics.csv``
(logged every 10 updates; the first 20, a warm-up, left out). A run still going after ``--max-seconds`` is
stopped and measured on the rows it logged (a collapsed setting would otherwise take many minutes). The table
also prints the share of idle speed each keeps and the thread count the default chose (the command's header
line).
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | {"MUJOCO_GL": "disable",
                                                                          "PYTHONWARNINGS": "ignore"}


def spin(core: int | None) -> None:
    if core is not None:
        os.sched_setaffinity(0, {core})
    while True:
        pass


def mrcom(*args: str, timeout: float | None = None) -> str:
    """The command's stdout; a run past ``timeout`` seconds is stopped, and what it printed returned."""
    try:
        out = subprocess.run([sys.executable, "-m", "mrcom_train.cli", *args], env=ENV, capture_output=True,
                             text=True, timeout=timeout)
    except subprocess.TimeoutExpired as stopped:
        return stopped.stdout.decode() if isinstance(stopped.stdout, bytes) else stopped.stdout or ""
    if out.returncode:
        raise SystemExit(f"mrcom {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return out.stdout


def train(data: Path, run: Path, steps: int, threads: int | None, max_seconds: float) -> tuple[float, str]:
    """(median updates/s after the first 20 updates, the command's threads header line)."""
    extra = ("--threads", str(threads)) if threads else ()
    stdout = mrcom("train", "--data", str(data), "--out", str(run), "--preset", "tiny", "--steps", str(steps),
                   "--set", "train.log_every=10", "--set", f"train.eval_every={steps}", "--no-progress", *extra,
                   timeout=max_seconds)
    with open(run / "metrics.csv") as f:
        speeds = [float(r["updates_per_s"]) for r in csv.DictReader(f) if r["updates_per_s"] and int(r["step"]) > 20]
    if not speeds:
        raise SystemExit(f"{run}: no update past the warm-up within {max_seconds} s; raise --max-seconds")
    return statistics.median(speeds), (stdout.splitlines() or ["?"])[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-seconds", type=float, default=90.0)
    args = p.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        mrcom("collect", "-n", "1", "-k", "4", "--episode-length", "200", "--no-progress", "--threads", "1",
              "--out", str(data))
        speeds: dict[tuple[str, str], list[float]] = {}
        headers: dict[str, str] = {}
        for r in range(args.rounds):
            for load in ("idle", "busy"):
                spinner = None
                if load == "busy":
                    spinner = mp.get_context("spawn").Process(target=spin, args=(cores[-1],), daemon=True)
                    spinner.start()
                    time.sleep(1.0)  # let the load show in /proc/stat
                try:
                    for name, threads in (("default", None), (f"--threads {len(cores)}", len(cores))):
                        speed, header = train(data, Path(tmp) / f"run-{r}-{load}-{threads}", args.steps, threads,
                                              args.max_seconds)
                        speeds.setdefault((load, name), []).append(speed)
                        if threads is None:
                            headers[load] = header
                finally:
                    if spinner is not None:
                        spinner.terminate()
                        spinner.join()
    print(f"# mrcom train --preset tiny, {args.steps} updates x {args.rounds} rounds; {len(cores)} cores "
          f"({platform.processor() or platform.machine()}), torch threads as each setting says")
    print(f"{'machine':<8} {'threads':<14} {'updates/s':>10} {'of idle':>8}  chosen")
    for load in ("idle", "busy"):
        for name in ("default", f"--threads {len(cores)}"):
            speed = statistics.median(speeds[(load, name)])
            idle = statistics.median(speeds[("idle", name)])
            chosen = headers[load] if name == "default" else ""
            print(f"{load:<8} {name:<14} {speed:>10.2f} {speed / idle:>7.0%}  {chosen}")


if __name__ == "__main__":
    main()
