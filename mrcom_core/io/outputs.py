"""Which folders a command may write into, replace or remove (stdlib only).

Every command that writes a folder claims it first with :func:`claim_output` (:func:`claimed` also holds the
folder's lock), which refuses, in one
:class:`~.errors.UserInputError` line and before anything is touched:

* an output that is, contains or lies inside one of the command's inputs (``mrcom export RUN --out RUN``,
  ``--out DATASET``, ``--out PARENT_OF_RUN``; ``mrcom train --out DATASET/run``; ``mrcom adapt --out EXPORT``);
* a non-empty output, unless the command continues it (``--resume``: it must be a folder of the same kind)
  or replaces it (``--force``: it must be a folder of the same kind that holds nothing but what that kind
  writes, e.g. an export whose every file its manifest lists).

What kind a folder is comes from the files each command writes (:func:`folder_kind`): a manifest's
``format`` (dataset, export), a checkpoint's ``state.json`` format or the keys of ``config.json``
(training and adaptation runs). Nothing here trusts those files beyond recognising them: the commands
verify them fully when they read them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserInputError
from .files import LOCK_NAME, has_content
from .locks import folder_lock

DATASET, EXPORT, TRAINING_RUN, ADAPT_RUN = "dataset", "export", "training run", "adaptation run"
#: manifest.json formats and checkpoint state.json formats of each kind
_MANIFEST_FORMATS = {"mrcom-dataset": DATASET, "mrcom-export": EXPORT}
_CHECKPOINT_FORMATS = {"mrcom-checkpoint": TRAINING_RUN, "mrcom-adapt-checkpoint": ADAPT_RUN}
#: keys a run's config.json always has (written first thing by ``mrcom train`` / ``mrcom adapt``)
_CONFIG_KEYS = {TRAINING_RUN: ("preset", "model", "train"), ADAPT_RUN: ("split", "domain", "env_steps")}


def a(kind: str) -> str:
    """``kind`` with its indefinite article (``an export``, ``a dataset``)."""
    return f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind}"


def _json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def folder_kind(folder: Path | str) -> str | None:
    """What MrCoM folder ``folder`` is (:data:`DATASET`, :data:`EXPORT`, :data:`TRAINING_RUN`,
    :data:`ADAPT_RUN`), or None when it is none of them (or does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    manifest = _json(folder / "manifest.json")
    if manifest is not None and manifest.get("format") in _MANIFEST_FORMATS:
        return _MANIFEST_FORMATS[manifest["format"]]
    for state in sorted((folder / "checkpoints").glob("step_*/state.json")):
        kind = _CHECKPOINT_FORMATS.get((_json(state) or {}).get("format"))
        if kind:
            return kind
    config = _json(folder / "config.json")
    if config is not None:
        for kind, keys in _CONFIG_KEYS.items():
            if all(k in config for k in keys):
                return kind
    return None


def _relation(a: Path, b: Path) -> str | None:
    """How folder ``a`` relates to path ``b`` (both resolved): ``is``, ``contains``, ``lies inside``, or None."""
    if a == b:
        return "is"
    if a in b.parents:
        return "contains"
    if b in a.parents:
        return "lies inside"
    return None


def check_apart(out: Path | str, inputs: Mapping[str, Path | str | None],
                error: type[UserInputError] = UserInputError) -> None:
    """Refuse ``out`` when it is, contains or lies inside one of ``inputs`` (``{description: path}``, e.g.
    ``{"training run": RUN, "its dataset": DATA}``; None entries are skipped). Symlinks are resolved."""
    target = Path(out).resolve()
    for what, path in inputs.items():
        if path is None:
            continue
        relation = _relation(target, Path(path).resolve())
        if relation:
            raise error(f"output folder {out} {relation} the {what} {path}; write to a folder apart from the "
                        f"command's inputs")


def claim_output(out: Path | str, kind: str, *, inputs: Mapping[str, Path | str | None] | None = None,
                 flag: str = "--resume", given: bool = False, replaces: bool = False,
                 allowed: Iterable[str] | None = None, label: str = "output folder",
                 error: type[UserInputError] = UserInputError) -> bool:
    """Check that a command making a ``kind`` folder may write ``out``; returns whether ``out`` is empty (or
    missing). Call it with the folder's lock held, before anything in ``out`` is read or written.

    ``inputs``: the command's input folders and files (:func:`check_apart`). A non-empty ``out`` is refused
    unless the command's ``flag`` was ``given`` (``--resume`` continues the folder, ``--force`` with
    ``replaces`` swaps it for a new one) and it is a ``kind`` folder; when it is to be replaced, ``allowed``
    names the entries a ``kind`` folder may hold (e.g. the files its manifest lists) and any other entry is
    refused, so nothing the command did not write is ever deleted. ``label`` names the folder in messages
    (``run folder``); refusals raise ``error``.
    """
    out = Path(out)
    check_apart(out, inputs or {}, error)
    if out.exists() and not out.is_dir():
        raise error(f"{label} {out} is a file, not a folder")
    if not has_content(out):
        return True
    verb = "replace" if replaces else "continue"
    if not given:
        raise error(f"{label} {out} is not empty; pass {flag} to {verb} it, or choose another folder")
    found = folder_kind(out)
    if found != kind:
        what = a(found) if found else f"not {a(kind)} (it holds files that no {kind} has)"
        raise error(f"{label} {out} is {what}; {flag} only {verb}s {a(kind)}, so nothing was touched: choose "
                    f"another folder")
    if replaces and allowed is not None:
        extra = sorted(p.name for p in out.iterdir() if p.name not in {*allowed, LOCK_NAME})
        if extra:
            more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
            raise error(f"{label} {out} holds {extra[0]!r}{more}, which its {kind} did not write; {flag} would "
                        f"delete it, so nothing was touched: move it away or choose another folder")
    return False


@contextmanager
def claimed(out: Path | str, kind: str, command: str, *, beside: bool = False, **claim) -> Iterator[bool]:
    """Claim ``out`` (:func:`claim_output` with ``claim``'s arguments) and hold its lock
    (:func:`~.locks.folder_lock` for ``command``) for the ``with`` block; yields whether ``out`` was empty.

    The claim is checked once before the lock is taken, so a refused folder does not even get a lock file,
    and again once it is held, which is the check that counts."""
    claim_output(out, kind, **claim)
    with folder_lock(out, command, beside=beside):
        yield claim_output(out, kind, **claim)


def undo_fresh(folder: Path | str, created: bool) -> None:
    """Undo a command that saved nothing in a folder it found empty: remove ``folder`` if the command created
    it, else empty it again (keeping the lock file, which is held)."""
    import shutil

    folder = Path(folder)
    if created:
        shutil.rmtree(folder, ignore_errors=True)
        return
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.name != LOCK_NAME:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() and not path.is_symlink() else path.unlink()
