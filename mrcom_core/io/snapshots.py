"""Checkpoint folders published by an atomic pointer and covered by checksums (stdlib only).

Layout of a checkpoint root (``RUN/checkpoints/``)::

    step_00001000/<data files>      written by the caller into a temporary folder
    step_00001000/state.json        format, version, step, ``files`` {name: sha256} of the data files, …
    latest.json                     {"step": 1000, "dir": "step_00001000", "state_sha256": …}

:func:`publish` writes the data files and ``state.json`` into a temporary folder, renames it into place and
then swaps ``latest.json`` with ``os.replace``: a crash at any point leaves the previous checkpoint whole and
pointed to. :func:`open_latest` follows the pointer and checks every link of the chain before anything is
loaded: the pointer names a folder inside the root, ``state.json`` has the digest the pointer recorded and
the expected format, and every data file matches its digest. Anything else is one
:class:`~.errors.UserInputError` line.

A write that fails (a full disk, a file-size limit) is an ``OSError`` naming the file, raised
after the temporary folder is removed (:func:`~.files.writing`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from ..errors import UserInputError
from .files import (
    TMP_PREFIX,
    atomic_dir,
    file_checksums,
    inside,
    read_json,
    read_versioned_json,
    remove_stale_temporaries,
    sha256,
    verify_checksums,
    write_json_atomic,
    writing,
)

LATEST = "latest.json"
STATE = "state.json"


def publish(root: Path | str, step: int, write: Callable[[Path], None], state: dict, fmt: str, version: int,
            keep: int = 2) -> Path:
    """Write checkpoint ``step`` under ``root`` and point ``latest.json`` at it; keep the newest ``keep``.

    ``write(folder)`` writes the data files; ``state`` (JSON-able) goes into ``state.json`` with the format,
    version, step and the data files' digests. A failed write leaves the previous checkpoint whole and pointed
    to; its ``OSError`` names the file (or the checkpoint folder, when it failed flushing the folder).
    """
    root = Path(root)
    name = f"step_{step:08d}"
    with writing(root / name), atomic_dir(root / name) as tmp:
        write(tmp)
        files = file_checksums(tmp, (p.name for p in tmp.iterdir() if p.is_file()))
        with writing(tmp / STATE):
            write_json_atomic(tmp / STATE, {"format": fmt, "version": version, "step": step, "files": files,
                                            **state})
    with writing(root / LATEST):
        write_json_atomic(root / LATEST, {"step": step, "dir": name, "state_sha256": sha256(root / name / STATE)})
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[: -max(keep, 1)]:
        shutil.rmtree(old, ignore_errors=True)
    return root / name


def open_latest(root: Path | str, fmt: str, version: int, label: str) -> tuple[Path, dict] | None:
    """``(folder, state)`` of the checkpoint ``root/latest.json`` points to, verified; None when there is
    no pointer (nothing was checkpointed yet). ``label`` names the kind of checkpoint in messages."""
    root = Path(root)
    pointer = root / LATEST
    if not pointer.exists():
        return None
    redo = "restore the folder from a backup or start the run again"
    data = read_json(pointer, f"{label} pointer")
    folder = inside(root, data.get("dir"), str(pointer))
    if not folder.is_dir():
        raise UserInputError(f"{pointer} points to {data.get('dir')!r}, which is missing ({redo})")
    state_file = folder / STATE
    if not state_file.is_file():
        raise UserInputError(f"{label} {folder} has no {STATE} ({redo})")
    if sha256(state_file) != data.get("state_sha256"):
        raise UserInputError(f"checksum mismatch for {state_file}: it changed after the checkpoint was written "
                             f"({redo})")
    state = read_versioned_json(state_file, fmt, version, label, redo)
    if not isinstance(state.get("step"), int) or state["step"] != data.get("step"):
        raise UserInputError(f"{state_file} and {pointer} disagree on the step ({redo})")
    verify_checksums(folder, state.get("files"), str(state_file), redo)
    return folder, state


def clean(root: Path | str) -> int:
    """Remove what a killed :func:`publish` left under ``root`` (``.tmp-step_*`` folders and files)."""
    root = Path(root)
    return remove_stale_temporaries(root, f"{TMP_PREFIX}*") if root.is_dir() else 0
