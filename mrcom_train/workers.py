"""Worker processes for data collection and reproduction cells, in one place.

:class:`WorkerPool` runs a function over items in W spawned processes (``spawn``: no forked torch or
MuJoCo state). Each worker reports its PID when it starts and watches its parent: a killed driver never
leaves workers writing into its folders. When an item fails (or the driver is interrupted) the pool
terminates the running workers at once instead of waiting for them, and the error is raised in the driver.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_lib
import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait


def _orphan_watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(2)
    os._exit(1)


def _worker_start(pids, initializer: Callable | None, initargs: tuple) -> None:
    pids.put(os.getpid())
    threading.Thread(target=_orphan_watch, args=(os.getppid(),), daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


class WorkerPool:
    """``workers`` spawned processes; ``initializer(*initargs)`` runs once in each (e.g. to set threads).

    Use as a context manager; :meth:`run` maps a function over items.
    """

    def __init__(self, workers: int, initializer: Callable | None = None, initargs: tuple = ()):
        ctx = mp.get_context("spawn")
        self._pid_queue = ctx.Queue()
        self._pids: set[int] = set()
        self._executor = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_start,
                                             initargs=(self._pid_queue, initializer, initargs))

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def submit(self, fn: Callable, *args) -> Future:
        """Start ``fn(*args)`` in a worker; its future."""
        return self._executor.submit(fn, *args)

    def run(self, fn: Callable, items: Iterable, *, on_result: Callable | None = None,
            poll: Callable[[], None] | None = None) -> None:
        """Run ``fn(item)`` for every item; ``on_result(item, result)`` as each finishes (in the driver);
        ``poll()`` every 0.2 s while waiting (e.g. to drain a progress queue). The first failure cancels what
        has not started, terminates the running workers and is raised here."""
        futures = {self._executor.submit(fn, item): item for item in items}
        try:
            while futures:
                if poll is not None:
                    poll()
                done, _ = wait(futures, timeout=0.2 if poll is not None else None, return_when=FIRST_COMPLETED)
                for future in done:
                    item = futures.pop(future)
                    result = future.result()  # re-raises a worker's exception (or BrokenProcessPool) here
                    if on_result is not None:
                        on_result(item, result)
        except BaseException:
            for future in futures:
                future.cancel()
            self.terminate()
            raise

    def terminate(self) -> None:
        """Stop every worker now (SIGTERM), not after its current item."""
        while True:
            try:
                self._pids.add(self._pid_queue.get(timeout=0.1))
            except queue_lib.Empty:
                break
        for pid in self._pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
