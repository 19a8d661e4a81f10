"""Where the tasks of ``mrcom reproduce`` run: a local process pool (the default) or a Ray cluster.

A :class:`Task` is a module-level function of its arguments that writes its result into the output folder and
skips its work when that result is already there, so any task may run twice (a retry, a rerun) with the same
outcome. The executors see only the graph: a task starts once every task it depends on has finished, a failed
task's dependents are skipped, and the others go on; :meth:`run` returns every result and every failure (one
error line each) and the caller decides what a failure means.

* :class:`LocalExecutor`: ``workers`` spawned one-thread processes (:class:`~mrcom_train.workers.WorkerPool`),
  or this process when ``workers`` is 1. A failure is not retried (a local error repeats).
* :class:`RayExecutor`: each task a Ray task asking for one CPU (and a GPU for training where the cluster has
  GPUs), placed by Ray, retried once (a worker process
  or node that dies, or an exception); results are small values, the tasks' files go to the output folder, so
  every node must see that folder at the same path (one shared filesystem). ``address=None`` starts a local Ray
  instance for this run; ``"auto"`` (or ``ray://…``, ``HOST:PORT``) joins a running cluster.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from mrcom_core.errors import UserInputError, check_int

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Task:
    """One unit of work: ``fn(*args)`` after the tasks named in ``deps``; ``key`` names it (unique in a graph).
    ``gpu``: the task uses a CUDA GPU when its node has one (world-model training), so on a cluster with GPUs
    it asks Ray for one."""

    key: str
    fn: Callable
    args: tuple = ()
    deps: tuple[str, ...] = ()
    label: str = field(default="", compare=False)
    gpu: bool = False


def ray_resources(task: Task, cluster_gpus: float) -> dict:
    """What a task asks Ray for: one CPU, and one GPU for a ``gpu`` task on a cluster that has GPUs."""
    return {"num_cpus": 1, "num_gpus": 1 if task.gpu and cluster_gpus > 0 else 0}


class Outcome(NamedTuple):
    """What a graph run gave: ``results`` (key → the task's return value) and ``failures`` (key → error line;
    a task skipped because a dependency failed says so)."""

    results: dict[str, Any]
    failures: dict[str, str]


def error_line(error: BaseException) -> str:
    """One line for ``error``: its type and the last non-empty line of its message (Ray wraps a task's
    exception in a traceback; its last line is the original ``Type: message``)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return last if ":" in last.split(" ")[0] else f"{type(error).__name__}: {last}" if last else type(error).__name__


def run_task(fn: Callable, args: tuple) -> Any:
    """``fn(*args)`` with one torch thread (tasks share the machine's cores with each other)."""
    import torch

    torch.set_num_threads(1)
    return fn(*args)


def _check_graph(tasks: list[Task]) -> None:
    keys = [t.key for t in tasks]
    if len(set(keys)) != len(keys):
        raise ValueError(f"task keys repeat: {sorted(k for k in set(keys) if keys.count(k) > 1)}")
    unknown = [(t.key, d) for t in tasks for d in t.deps if d not in keys]
    if unknown:
        raise ValueError(f"task {unknown[0][0]!r} depends on an unknown task {unknown[0][1]!r}")


def run_graph(tasks: list[Task], submit: Callable[[Task], Any], wait_any: Callable[[list], tuple[Any, Any, str | None]],
              on_done: Callable[[Task, Any, str | None], None] | None = None) -> Outcome:
    """The scheduling both executors share: ``submit(task)`` starts a task and returns a handle;
    ``wait_any(handles)`` blocks until one finishes and returns ``(handle, result, error line or None)``.
    ``on_done(task, result, error)`` runs in the caller as each task ends (and for each skipped one)."""
    _check_graph(tasks)
    pending = {t.key: t for t in tasks}
    running: dict = {}
    results: dict[str, Any] = {}
    failures: dict[str, str] = {}
    while pending or running:
        moved = False
        for key, task in list(pending.items()):
            failed = next((d for d in task.deps if d in failures), None)
            if failed is not None:
                failures[key] = f"skipped: {failed} failed"
                del pending[key]
                moved = True
                if on_done is not None:
                    on_done(task, None, failures[key])
            elif all(d in results for d in task.deps):
                running[submit(task)] = task
                del pending[key]
                moved = True
        if not running:
            if not moved:
                raise ValueError(f"the tasks {sorted(pending)} depend on each other in a cycle")
            continue  # every pending task was just skipped
        handle, result, error = wait_any(list(running))
        task = running.pop(handle)
        if error is None:
            results[task.key] = result
        else:
            failures[task.key] = error
        if on_done is not None:
            on_done(task, result, error)
    return Outcome(results, failures)


class LocalExecutor:
    """Tasks in ``workers`` spawned one-thread processes, or in this process when ``workers`` is 1."""

    name = "local"

    def __init__(self, workers: int = 1):
        self.workers = check_int("--workers", workers)
        self.in_process = self.workers == 1

    def describe(self) -> str:
        return f"{self.workers} local worker processes"

    def run(self, tasks: list[Task], on_done: Callable | None = None) -> Outcome:
        if self.workers == 1:
            return run_graph(tasks, _InProcess, _InProcess.wait_any, on_done)
        from concurrent.futures import FIRST_COMPLETED, wait

        from .workers import WorkerPool

        def wait_any(futures: list) -> tuple:
            done, _ = wait(futures, return_when=FIRST_COMPLETED)
            future = next(iter(done))
            try:
                return future, future.result(), None
            except Exception as e:  # noqa: BLE001 - a task's failure is reported, the others go on
                return future, None, error_line(e)

        with WorkerPool(self.workers, _one_thread) as pool:
            try:
                return run_graph(tasks, lambda t: pool.submit(t.fn, *t.args), wait_any, on_done)
            except BaseException:
                pool.terminate()
                raise


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # W tasks on W cores must not fight over intra-op threads


class _InProcess:
    """A task run at once in this process; its handle is itself (for :func:`run_graph`)."""

    def __init__(self, task: Task):
        try:
            self.result, self.error = task.fn(*task.args), None
        except Exception as e:  # noqa: BLE001 - a task's failure is reported, the others go on
            self.result, self.error = None, error_line(e)

    @staticmethod
    def wait_any(handles: list) -> tuple:
        handle = handles[0]
        return handle, handle.result, handle.error


class RayExecutor:
    """Tasks as Ray tasks of one CPU each, retried once, on a local Ray instance (``address=None``: started
    here with ``num_cpus`` CPUs, stopped at the end) or on the cluster at ``address`` (``"auto"``: the one this
    machine belongs to)."""

    name = "ray"

    in_process = False
    workers = 1  # processes a task may start itself (collection): none, Ray places every CPU

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        self.address, self.num_cpus = address, num_cpus

    def describe(self) -> str:
        return (f"a local Ray instance of {self.num_cpus} CPUs" if self.address is None else
                f"the Ray cluster at {self.address}")

    def run(self, tasks: list[Task], on_done: Callable | None = None) -> Outcome:
        try:
            import ray
        except ImportError:
            raise UserInputError("--executor ray needs Ray: pip install '.[cluster]' (or pip install ray)") from None
        started = not ray.is_initialized()
        if started:
            # the workers inherit this environment (MUJOCO_GL, thread settings), not only the driver's
            env = {k: v for k, v in os.environ.items() if k.startswith(("MUJOCO_", "MRCOM_", "OMP_", "PYTHONPATH"))}
            try:
                ray.init(address=self.address, num_cpus=self.num_cpus if self.address is None else None,
                         include_dashboard=False, log_to_driver=False, configure_logging=False,
                         runtime_env={"env_vars": env} if env else None)
            except ConnectionError as e:
                raise UserInputError(f"--ray-address {self.address}: no Ray cluster there ({e})") from None
        remote = ray.remote(max_retries=1, retry_exceptions=True)(run_task)
        gpus = ray.cluster_resources().get("GPU", 0)

        def wait_any(refs: list) -> tuple:
            (ref,), _ = ray.wait(refs, num_returns=1)
            try:
                return ref, ray.get(ref), None
            except Exception as e:  # noqa: BLE001 - ray.exceptions.RayTaskError, WorkerCrashedError, …
                return ref, None, error_line(e.cause if getattr(e, "cause", None) is not None else e)

        try:
            return run_graph(tasks, lambda t: remote.options(**ray_resources(t, gpus)).remote(t.fn, t.args),
                             wait_any, on_done)
        finally:
            if started:
                ray.shutdown()


def make_executor(name: str, workers: int = 1, address: str | None = None):
    """The executor ``--executor NAME`` asks for (``workers``: local processes, or a local Ray instance's CPUs)."""
    if name not in EXECUTORS:
        raise UserInputError(f"--executor must be one of {', '.join(EXECUTORS)}, got {name!r}")
    if name == "local":
        if address is not None:
            raise UserInputError("--ray-address needs --executor ray")
        return LocalExecutor(workers)
    return RayExecutor(address, num_cpus=check_int("--workers", workers) if address is None else None)
