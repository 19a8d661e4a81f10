"""How many threads one ``mrcom`` process computes with.

Torch's default intra-op pool has a thread per core, and its threads wait for each other at every kernel: when
another process holds one of two cores, training on two threads collapses (``bench/threads.py``, 2-core AMD EPYC,
``train --preset tiny`` beside a spinning core: 5.2 updates/s on two threads, 21.8 on one). So every command
chooses its thread count before it starts work (:func:`choose_threads`):

* ``--threads N`` (or ``OMP_NUM_THREADS``, the usual variable for it) is taken as given;
* otherwise the cores this process may run on (its CPU affinity, capped by a cgroup CPU quota) less the cores
  other processes keep busy right now (:func:`busy_cores`: the non-idle share of those cores over 0.2 s of
  ``/proc/stat``), rounded, at least 1.

Worker processes (``--workers``) use one thread each whatever the choice. The choice is printed in each
command's header (:func:`describe`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from mrcom_core.errors import UserInputError, check_int

SAMPLE_SECONDS = 0.2  # how long busy_cores watches /proc/stat


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str  # why: "--threads", "OMP_NUM_THREADS", or the cores and their load


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota (``cpu.max``)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _cpu_times() -> dict[int, tuple[int, int]]:
    """``{cpu: (busy, total)}`` jiffies from ``/proc/stat`` (idle and iowait count as not busy)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                values = [int(v) for v in fields[:8]]
                total = sum(values)
                out[int(name[3:])] = (total - values[3] - values[4], total)
    return out


def busy_cores(seconds: float = SAMPLE_SECONDS) -> float | None:
    """How many of this process's cores other processes keep busy: the non-idle share of their time over
    ``seconds``, summed over the cores in its affinity; None where ``/proc/stat`` cannot be read."""
    try:
        mine = os.sched_getaffinity(0)
        before = _cpu_times()
        time.sleep(seconds)
        after = _cpu_times()
    except (OSError, AttributeError, ValueError, IndexError):
        return None
    busy = 0.0
    for cpu in mine:
        if cpu in before and cpu in after:
            total = after[cpu][1] - before[cpu][1]
            if total > 0:
                busy += (after[cpu][0] - before[cpu][0]) / total
    return busy


def choose_threads(requested: int | None, environ, cores: int, busy: Callable[[], float | None]) -> ThreadChoice:
    """The thread count for this process (see the module docstring) from ``requested`` (``--threads``; None:
    choose), the environment ``environ``, the ``cores`` it may use, and ``busy()`` (the cores other processes
    keep busy, or None when unknown; called only when needed)."""
    if requested is not None:
        return ThreadChoice(check_int("--threads", requested), "--threads")
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    if omp:
        if not omp.isdigit() or int(omp) < 1:
            raise UserInputError(f"OMP_NUM_THREADS must be a whole number of threads, at least 1, got {omp!r}")
        return ThreadChoice(int(omp), "OMP_NUM_THREADS")
    load = busy()
    if load is None:
        return ThreadChoice(cores, f"{cores} cores")
    threads = min(cores, max(1, int(cores - load + 0.5)))
    return ThreadChoice(threads, f"{cores} cores, {load:.1f} busy with other work")


def apply_threads(requested: int | None) -> ThreadChoice:
    """Choose this process's threads (:func:`choose_threads`, from its machine and environment) and set torch's
    intra-op pool to them; returns the choice."""
    import torch

    choice = choose_threads(requested, os.environ, usable_cores(), busy_cores)
    torch.set_num_threads(choice.threads)
    return choice


def describe(choice: ThreadChoice) -> str:
    """The header line: ``threads: 1 (2 cores, 1.0 busy with other work; --threads N to choose)``."""
    hint = "" if choice.reason == "--threads" else "; --threads N to choose"
    return f"threads: {choice.threads} ({choice.reason}{hint})"
