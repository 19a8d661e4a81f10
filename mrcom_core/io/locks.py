"""One process per output folder: an exclusive ``fcntl.flock`` on a lock file (stdlib only).

``mrcom train``, ``collect``, ``adapt``, ``reproduce`` and ``export`` take the lock of the folder they write
before they read or write anything in it; a second command on the same folder exits with status 2 and a
message naming the holder's PID. The kernel drops the lock when its holder exits, however it exits (a
SIGKILL included), so a stale lock file never blocks anyone: the file stays, only the lock goes.

Run folders keep their lock inside (``RUN/.mrcom.lock``); an export folder, which is swapped in whole by a
rename, is locked through a sibling (``.NAME.mrcom.lock`` beside it).
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserInputError
from .files import LOCK_NAME


class FolderLocked(UserInputError):
    """Another process holds the lock of the folder this command writes."""


def lock_file(folder: Path | str, beside: bool = False) -> Path:
    """Where ``folder``'s lock lives: inside it, or (``beside``) next to it."""
    folder = Path(folder)
    return folder.with_name(f".{folder.name}{LOCK_NAME}") if beside else folder / LOCK_NAME


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"`{info['command']}` (PID {int(info['pid'])})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextmanager
def folder_lock(folder: Path | str, command: str, beside: bool = False) -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` (created if needed) for the ``with`` block.

    ``command`` (e.g. ``mrcom train``) is recorded with this PID in the lock file, for the message a second
    process gets: :class:`FolderLocked` naming the holder. ``beside`` locks a sibling file instead, for
    folders that are replaced whole.
    """
    folder = Path(folder)
    (folder.parent if beside else folder).mkdir(parents=True, exist_ok=True)
    path = lock_file(folder, beside)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderLocked(f"{folder} is in use by {_holder(path)}; wait for it to finish or stop it "
                               f"first") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "command": command,
                                 "argv": sys.argv[1:]}).encode())
        yield path
    finally:
        os.close(fd)  # releases the lock
