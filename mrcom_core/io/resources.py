"""Up-front checks that a requested size fits the machine (stdlib only).

A size typo (``--batch-size 1000000000``, ``model.hidden_dim=2e9``, ``--episode-length 1e12``) should be
one clear line before any work starts, not a ``MemoryError`` traceback, an OOM kill or a swap storm
minutes later. Callers estimate a lower bound of the bytes a request needs and call
:func:`require_memory`.
"""

from __future__ import annotations

import os

from ..errors import UserInputError


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``, capped by a cgroup limit), or
    None where it cannot be read."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit.isdigit() and available is not None:
            with open("/sys/fs/cgroup/memory.current") as f:
                available = min(available, int(limit) - int(f.read().strip()))
    except (OSError, ValueError):
        pass
    return available


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"


def require_memory(nbytes: float, what: str, fix: str, available: int | None = None,
                   error: type[UserInputError] = UserInputError) -> None:
    """Raise ``error`` when ``nbytes`` (a lower bound of what ``what`` needs) exceeds the available memory;
    ``fix`` names the field or flag to change."""
    available = available_memory() if available is None else available
    if available is not None and nbytes > available:
        raise error(f"{what} needs at least {format_bytes(nbytes)}, more than the "
                             f"{format_bytes(available)} of memory available; {fix}")
