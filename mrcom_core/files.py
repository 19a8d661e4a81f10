"""Files every layer writes and reads (stdlib only, so the torch-free runtime can use it too).

Atomic publication: everything the project writes for later reading goes through :func:`atomic_path`,
:func:`write_json_atomic` or :func:`atomic_dir`: the new content is written in full under a temporary name
beside its final place, flushed to disk, then made current by one ``os.replace`` (files) or ``os.rename``
(folders). A crash at any point leaves either the old version or the new one, never a mix; leftovers are
recognisable by their ``.tmp-`` prefix.

Versioned manifests: :func:`read_versioned_json` reads a dataset's or an export's ``manifest.json`` and
checks its format name and version, with one error message scheme.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserInputError

TMP_PREFIX = ".tmp-"


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to (by any library); on success it replaces ``path``.

    The temporary name keeps ``path``'s suffix (``np.savez`` and friends look at it). On an exception the
    temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}.{path.name}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(path: Path | str, data) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


@contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path`` (and all it held).

    Files written into the folder are flushed to disk before the rename. On an exception the temporary
    folder is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        for file in tmp.iterdir():
            if file.is_file():
                _fsync(file)
        if path.exists():
            shutil.rmtree(path)
        os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temporaries(folder: Path | str, pattern: str = "*") -> int:
    """Delete what a killed writer left under ``folder`` (names starting ``.tmp-`` matching ``pattern``)."""
    removed = 0
    for tmp in Path(folder).glob(pattern):
        if tmp.name.startswith(TMP_PREFIX):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def read_versioned_json(path: Path | str, fmt: str, version: int, label: str, redo: str,
                        error: type[UserInputError] = UserInputError) -> dict:
    """The JSON object at ``path``, checked to carry ``"format": fmt`` and ``"version": version``; otherwise
    ``error`` with one line naming the file (``label``: what it describes, e.g. ``dataset``; ``redo``: how to
    get a readable one, e.g. ``collect the data again``)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"no MrCoM {label} at {path.parent}: {path.name} is missing")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise error(f"{path} is not valid JSON (not UTF-8 text)") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise error(f"{path} is not an MrCoM {label} manifest (format {found!r})")
    if data.get("version") != version:
        raise error(f"{path} has {label} format version {data.get('version')!r}; this mrcom reads version "
                    f"{version} ({redo})")
    return data
