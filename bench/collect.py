"""Benchmark: env stepping of the scenario wrapper against raw dm_control, and ``collect()`` throughput.

Run as ``python bench/collect.py [--steps N] [--workers W] [--repeats R]``; prints a Markdown table with,
per domain (hopper, walker, cheetah):

1. raw ``dm_control.suite.load(domain, task, task_kwargs={'random': 0})`` steps/s,
2. :class:`~mrcom_train.scenarios.ScenarioEnv` steps/s on a scaled-torso, target-speed scenario padded to
   ``UnifiedSpace(27, 6)``,
3. their ratio (goal >= 0.85),
4. end-to-end :func:`~mrcom_train.datasets.collect.collect` throughput (random policy) with 1 and W workers.

Raw and wrapped are timed interleaved (the order alternates every repeat), best of R, on the same
pre-generated uniform random actions; ``reset()`` is excluded from both.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "disable")  # before dm_control is imported (here and in spawned workers)
warnings.filterwarnings("ignore", module="glfw")
warnings.filterwarnings("ignore", message=".*glfw.*", category=UserWarning)

try:  # dm_control logs through absl (e.g. cheetah's deprecated 'settotalmass' attribute)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
except ImportError:  # pragma: no cover - absl comes with dm_control
    pass
logging.getLogger("absl").setLevel(logging.ERROR)

DOMAIN_ORDER = ("hopper", "walker", "cheetah")
UNIFIED = (27, 6)
GOAL = 0.85
LENGTH_SCALE, SIZE_SCALE, SPEED_FRAC = 1.05, 0.95, 0.5
COLLECT_SPLIT, COLLECT_RANGE = "t1-a5b20", "train"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_facts() -> list[str]:
    import mujoco
    import numpy as np

    cpus = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    return [
        f"- CPU: {_cpu_model()}; os.cpu_count() = {cpus}, usable by this process = {usable}",
        "- env stepping is single-threaded Python + MuJoCo (torch.get_num_threads() does not apply)",
        f"- python {platform.python_version()} ({platform.system()} {platform.machine()}), "
        f"mujoco {mujoco.__version__}, dm_control {_version('dm_control')}, numpy {np.__version__}",
    ]


# ------------------------------------------------------------------------------------- env stepping
def _time_raw(env, actions) -> float:
    """Seconds spent in ``env.step`` for every row of ``actions``; resets (at episode ends) untimed."""
    n, i, total = len(actions), 0, 0.0
    while i < n:
        env.reset()
        start = time.perf_counter()
        while i < n:
            time_step = env.step(actions[i])
            i += 1
            if time_step.last():
                break
        total += time.perf_counter() - start
    return total


def _time_wrapped(env, actions) -> float:
    """As :func:`_time_raw`, for a gymnasium env that ends episodes by truncation."""
    n, i, total = len(actions), 0, 0.0
    while i < n:
        env.reset()
        start = time.perf_counter()
        while i < n:
            _, _, terminated, truncated, _ = env.step(actions[i])
            i += 1
            if terminated or truncated:
                break
        total += time.perf_counter() - start
    return total


def bench_stepping(domain: str, steps: int, repeats: int, seed: int = 0) -> tuple[float, float]:
    """Best-of-``repeats`` steps/s of the raw suite env and of the wrapped scenario env."""
    import numpy as np
    from dm_control import suite

    from mrcom_train.scenarios import DOMAINS, ScenarioEnv, ScenarioSpec, UnifiedSpace

    info = DOMAINS[domain]
    raw = suite.load(domain, info.task, task_kwargs={"random": seed})
    spec = ScenarioSpec(domain, length_scale=LENGTH_SCALE, size_scale=SIZE_SCALE,
                        target_speed=SPEED_FRAC * info.v_max, seed=seed)
    wrapped = ScenarioEnv(spec, UnifiedSpace(*UNIFIED))

    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1.0, 1.0, size=(steps, info.act_dim))
    padded = np.zeros((steps, UNIFIED[1]), dtype=actions.dtype)
    padded[:, : info.act_dim] = actions

    warm = min(steps, 200)  # untimed warm-up of both (first-call costs, caches)
    _time_raw(raw, actions[:warm])
    _time_wrapped(wrapped, padded[:warm])

    raw_best = wrapped_best = float("inf")
    for r in range(repeats):  # interleaved, alternating which goes first
        order = ("raw", "wrapped") if r % 2 == 0 else ("wrapped", "raw")
        for which in order:
            if which == "raw":
                raw_best = min(raw_best, _time_raw(raw, actions))
            else:
                wrapped_best = min(wrapped_best, _time_wrapped(wrapped, padded))
    return steps / raw_best, steps / wrapped_best


# ------------------------------------------------------------------------------------------ collect
def collect_shape(steps: int, workers: int) -> tuple[int, int, int]:
    """(scenarios, episodes per scenario, episode length) of one collect measurement (about N steps)."""
    scenarios = 2 * max(1, workers)
    length = min(1000, max(1, steps // (2 * scenarios)))
    episodes = max(1, round(steps / (scenarios * length)))
    return scenarios, episodes, length


def bench_collect(domain: str, steps: int, worker_counts: tuple[int, ...], repeats: int,
                  max_workers: int) -> dict[int, tuple[float, float]]:
    """Best-of-``repeats`` end-to-end ``collect()`` wall time per worker count: {W: (steps/s, seconds)}."""
    from mrcom_train.datasets.collect import CollectConfig, collect

    scenarios, episodes, length = collect_shape(steps, max_workers)
    total = scenarios * episodes * length
    best = dict.fromkeys(worker_counts, float("inf"))
    for r in range(repeats):
        order = worker_counts if r % 2 == 0 else tuple(reversed(worker_counts))
        for w in order:
            config = CollectConfig(split=COLLECT_SPLIT, range=COLLECT_RANGE, domains=(domain,),
                                   scenarios_per_domain=scenarios, episodes_per_scenario=episodes,
                                   policy="random", episode_length=length, seed=0, workers=w)
            with tempfile.TemporaryDirectory(prefix="mrcom-bench-") as tmp:
                start = time.perf_counter()
                collect(config, Path(tmp) / "data", progress=False, log=lambda _msg: None)
                best[w] = min(best[w], time.perf_counter() - start)
    return {w: (total / s, s) for w, s in best.items()}


# --------------------------------------------------------------------------------------------- main
def _fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=_positive_int, default=5000,
                        help="env steps per timing of raw / wrapped stepping (default 5000); collect "
                             "measurements scale with it")
    parser.add_argument("--workers", type=_positive_int, default=2,
                        help="worker processes for the collect() measurement, besides W=1 (default 2)")
    parser.add_argument("--repeats", type=_positive_int, default=3, help="best of R repeats (default 3)")
    parser.add_argument("--collect-steps", type=_positive_int, default=24000,
                        help="env steps per collect() measurement (default 24000; one run each, W=1 and W)")
    args = parser.parse_args(argv)

    wall_start = time.perf_counter()
    # Import once up front so that module import time is not charged to the first measurement.
    import torch  # noqa: F401  (collect() imports it; W=1 runs in this process)

    import mrcom_train.datasets.collect  # noqa: F401
    from mrcom_train.scenarios import DOMAINS

    print("# MrCoM env-stepping and collect() benchmark\n")
    print("\n".join(machine_facts()))
    worker_counts = tuple(sorted({1, args.workers}))
    scenarios, episodes, length = collect_shape(args.collect_steps, args.workers)
    print(f"- N = {args.steps} steps per stepping timing, best of R = {args.repeats}; collect (one run): "
          f"{scenarios} scenarios × {episodes} episodes × {length} steps = {scenarios * episodes * length} "
          f"env steps per measurement\n")
    sys.stdout.flush()

    rows = []
    for domain in DOMAIN_ORDER:
        raw_sps, wrapped_sps = bench_stepping(domain, args.steps, args.repeats)
        coll = bench_collect(domain, args.collect_steps, worker_counts, 1, args.workers)
        rows.append((domain, raw_sps, wrapped_sps, coll))

    collect_headers = [f"collect W={w} steps/s (s)³" for w in worker_counts]
    headers = ["domain", "raw dm_control steps/s¹", "ScenarioEnv steps/s²", "wrapped/raw",
               f"goal ≥ {GOAL}", *collect_headers]
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join(["---"] + ["---:"] * 3 + [":---:"] + ["---:"] * len(collect_headers)) + "|")
    for domain, raw_sps, wrapped_sps, coll in rows:
        ratio = wrapped_sps / raw_sps
        marker = "PASS" if ratio >= GOAL else "below goal"
        cells = [domain, _fmt_rate(raw_sps), _fmt_rate(wrapped_sps), f"{ratio:.2f}", marker]
        cells += [f"{_fmt_rate(coll[w][0])} ({coll[w][1]:.2f} s)" for w in worker_counts]
        print("| " + " | ".join(cells) + " |")

    v_max = ", ".join(f"{d} {DOMAINS[d].v_max:g}" for d in DOMAIN_ORDER)
    print()
    print(f"¹ `suite.load(domain, task, task_kwargs={{'random': 0}})` (hopper-hop, walker-run, cheetah-run). "
          f"Steps/s = N / best-of-R time in `env.step` over N pre-generated uniform random actions "
          f"(the same array for raw and wrapped); episodes (1000 steps) are reset when they end and "
          f"`reset()` time is excluded from both. Raw and wrapped timings are interleaved, alternating "
          f"which runs first; both envs get {min(args.steps, 200)} untimed warm-up steps.")
    print(f"² `ScenarioEnv(ScenarioSpec(domain, length_scale={LENGTH_SCALE}, size_scale={SIZE_SCALE}, "
          f"target_speed={SPEED_FRAC}·v_max), UnifiedSpace{UNIFIED})` (v_max: {v_max} m/s): rebuilt "
          f"scaled-torso XML, target-speed reward, float32 observation padded to {UNIFIED[0]} dims; actions "
          f"zero-padded to {UNIFIED[1]} dims.")
    print(f"³ End-to-end wall time of `collect()` (random policy, split {COLLECT_SPLIT}/{COLLECT_RANGE}, "
          f"that domain only) into a fresh temp dir, one run: env steps / seconds, seconds in "
          f"parentheses. Includes building the envs, action sampling, writing episodes, the manifest and "
          f"observation stats. W > 1 includes process start-up: spawning W worker processes that each "
          f"import dm_control and mrcom_train (about a second) before stepping. W = 1 runs in this "
          f"process (no workers).")
    print(f"\nTotal wall time: {time.perf_counter() - wall_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
