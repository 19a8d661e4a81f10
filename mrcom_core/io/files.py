"""Files every layer writes and reads (stdlib only, so the torch-free runtime can use it too).

Atomic publication: everything the project writes for later reading goes through :func:`atomic_path`,
:func:`write_json_atomic` or :func:`atomic_dir`: the new content is written in full under a temporary name
beside its final place, flushed to disk, then made current by one ``os.replace`` (files) or one rename
(folders; an existing folder is swapped out with ``renameat2(RENAME_EXCHANGE)`` where Linux has it). A crash
at any point leaves either the old version or the new one, never a mix; leftovers are recognisable by their
``.tmp-`` prefix and removed by :func:`remove_stale_temporaries`. :func:`writing` names the file in an
``OSError`` a failed write raises without one (a full disk, a file-size limit).

Reading back: :func:`read_json` and :func:`read_versioned_json` turn a missing, unreadable or foreign JSON
file into one :class:`~.errors.UserInputError` line; :func:`inside` checks that a file name read from such a
file stays inside its folder; :func:`file_checksums` / :func:`verify_checksums` record and check SHA-256
digests.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from ..errors import UserInputError

TMP_PREFIX = ".tmp-"
LOCK_NAME = ".mrcom.lock"  # see :mod:`.locks`; never counts as content of a folder


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


@contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Name ``path`` in an ``OSError`` raised inside the block that carries no file name (a ``write``, ``flush``,
    ``close`` or ``fsync`` that fails for a full disk or a file-size limit names none); other errors pass as
    they are."""
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e


def write_json_atomic(path: Path | str, data) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def exchange(a: Path | str, b: Path | str) -> None:
    """Swap the names of two existing paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); where the
    kernel or file system cannot, fall back to two renames (a crash between them leaves ``b``'s old content
    under ``a``'s temporary name, which :func:`remove_stale_temporaries` finds)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        at_fdcwd, rename_exchange = -100, 2
        if renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), str(b))
    parked = Path(b).with_name(f"{TMP_PREFIX}old-{os.getpid()}-{Path(b).name}")
    os.rename(b, parked)
    os.rename(a, b)
    os.rename(parked, a)


@contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path`` (and all it held).

    Files written into the folder are flushed to disk before the swap; an existing ``path`` is exchanged
    with the new folder in one step (:func:`exchange`) and then deleted. On an exception the temporary
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
        for file in tmp.rglob("*"):
            if file.is_file():
                _fsync(file)
        if path.exists():
            exchange(tmp, path)  # tmp now holds the old content, removed below
        else:
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


def has_content(folder: Path | str) -> bool:
    """Whether ``folder`` exists and holds anything besides its lock file."""
    folder = Path(folder)
    return folder.is_dir() and any(p.name != LOCK_NAME for p in folder.iterdir())


# ------------------------------------------------------------------------------------------------ reading
def inside(folder: Path | str, name, what: str, error: type[UserInputError] = UserInputError) -> Path:
    """``folder / name`` for a file name read from a manifest or pointer, refused unless ``name`` is a plain
    relative path (no absolute path, no ``..``, no backslash) that resolves inside ``folder`` (symlinks
    included). ``what`` names where the name came from, for the message."""
    folder = Path(folder)
    bad = (not isinstance(name, str) or not name or "\\" in name or "\x00" in name
           or PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts)
    if not bad:
        path = folder / name
        root = folder.resolve()
        bad = root not in path.resolve().parents
    if bad:
        raise error(f"{what} names {name!r}, which is not a file inside {folder}; refusing to read it")
    return path


def read_json(path: Path | str, label: str, error: type[UserInputError] = UserInputError) -> dict:
    """The JSON object at ``path``; a missing file, invalid JSON or a non-object is ``error`` in one line
    (``label`` says what the file is, e.g. ``checkpoint pointer``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise error(f"{label} {path} is missing") from None
    except IsADirectoryError:
        raise error(f"{label} {path} is a folder, not a file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" ({e.msg} at line {e.lineno})" if isinstance(e, json.JSONDecodeError) else " (not UTF-8 text)"
        raise error(f"{label} {path} is not valid JSON{where}") from None
    if not isinstance(data, dict):
        raise error(f"{label} {path} holds a JSON {type(data).__name__}, not an object")
    return data


def read_versioned_json(path: Path | str, fmt: str, version: int, label: str, redo: str,
                        error: type[UserInputError] = UserInputError) -> dict:
    """The JSON object at ``path``, checked to carry ``"format": fmt`` and ``"version": version``; otherwise
    ``error`` with one line naming the file (``label``: what it describes, e.g. ``dataset``; ``redo``: how to
    get a readable one, e.g. ``collect the data again``)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"no MrCoM {label} at {path.parent}: {path.name} is missing")
    data = read_json(path, f"{label} manifest", error)
    if data.get("format") != fmt:
        raise error(f"{path} is not an MrCoM {label} manifest (format {data.get('format')!r})")
    if data.get("version") != version:
        raise error(f"{path} has {label} format version {data.get('version')!r}; this mrcom reads version "
                    f"{version} ({redo})")
    return data


def require_fields(data: dict, fields: dict[str, type | tuple[type, ...]], where: str,
                   error: type[UserInputError] = UserInputError) -> None:
    """Check that ``data`` has each of ``fields`` with a value of the given type(s) (``bool`` is not an int);
    otherwise ``error`` naming the first bad field and ``where`` (a file)."""
    for name, kind in fields.items():
        value = data.get(name)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if name not in data or (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            found = "missing" if name not in data else f"a {type(value).__name__}"
            expected = " or ".join(k.__name__ for k in kinds)
            raise error(f"{where}: field {name!r} is {found}, expected {expected} (the file is damaged or "
                        f"was not written by this mrcom)")


# ----------------------------------------------------------------------------------------------- checksums
def sha256(path: Path | str) -> str:
    """The SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_checksums(folder: Path | str, names: Iterable[str]) -> dict[str, str]:
    """``{name: sha256}`` for files ``names`` of ``folder``, sorted by name."""
    return {name: sha256(Path(folder) / name) for name in sorted(names)}


def verify_checksums(folder: Path | str, files, what: str, redo: str,
                     error: type[UserInputError] = UserInputError) -> None:
    """Check every ``{name: sha256}`` entry of ``files`` (read from ``what``, a manifest) against the file
    in ``folder``: names must stay inside the folder, files must exist and match. ``redo`` says how to get
    an intact copy."""
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise error(f"{what} has no valid 'files' checksum table ({redo})")
    for name, expected in files.items():
        path = inside(folder, name, what, error)
        if not path.is_file():
            raise error(f"{path} is missing ({what} lists it; {redo})")
        if sha256(path) != expected:
            raise error(f"checksum mismatch for {path}: the file changed after it was written ({redo})")
