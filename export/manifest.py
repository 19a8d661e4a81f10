"""The export folder's ``manifest.json``: reading, validating and checksum verification (numpy-free, torch-free).

:func:`read_manifest` turns anything wrong with a manifest into one :class:`ExportError` line naming the file
and the field, before any graph is opened:

* format and version (``read_versioned_json``);
* the schema the runtime relies on: ``files`` (name → SHA-256 hex), ``graphs`` (name → ``{"onnx": …,
  "torchscript": …}`` file names, one per listed format), ``latent`` (int ``u``, ``d``, ``h``),
  ``formats``, ``obs_dim``, ``act_dim``, ``context_len``, ``rollout_horizon``, ``context_reward``,
  ``policy`` (null or int ``obs_dim``/``act_dim``), ``obs_mean``/``obs_std`` (``obs_dim`` finite numbers),
  and the optional ``history_len`` (int >= ``context_len``) and ``rollout_any_horizon`` (bool: the rollout
  graphs loop over any horizon; older exports fused only ``rollout_horizon`` steps);
* always, even with ``verify=False``: every file name in ``files`` and ``graphs`` is a plain relative name
  inside the export folder (no absolute path, no ``..``, no symlink out), and every graph file has a
  checksum in ``files`` (a graph no checksum covers is refused);
* with ``verify``: every ``files`` entry exists and matches its SHA-256.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from mrcom_core.errors import UserInputError
from mrcom_core.files import inside, read_versioned_json, require_fields, sha256, verify_checksums

__all__ = ["FORMAT", "VERSION", "MANIFEST", "GRAPH_FORMATS", "ExportError", "read_manifest", "sha256"]

FORMAT = "mrcom-export"
VERSION = 2  # 2: prime/observe graphs (the runtime no longer stitches context_full + observe itself)
MANIFEST = "manifest.json"
GRAPH_FORMATS = ("onnx", "torchscript")  # a graph's entry holds one file name per format
REDO = "export the model again"
_HEX = re.compile(r"[0-9a-f]{64}")


class ExportError(UserInputError):
    """An export folder or a runtime input is unusable; the message says what and where."""


def _fail(where: str, message: str) -> ExportError:
    return ExportError(f"{where}: {message} (the file is damaged or was not written by this mrcom; {REDO})")


def _check_schema(m: dict, where: str) -> None:
    require_fields(m, {"files": dict, "graphs": dict, "latent": dict, "formats": list, "obs_dim": int,
                       "act_dim": int, "context_len": int, "rollout_horizon": int, "context_reward": bool,
                       "policy": (dict, type(None)), "obs_mean": list, "obs_std": list}, where, ExportError)
    require_fields(m["latent"], {"u": int, "d": int, "h": int}, f"{where} 'latent'", ExportError)
    if m["policy"] is not None:
        require_fields(m["policy"], {"obs_dim": int, "act_dim": int}, f"{where} 'policy'", ExportError)
    for field, low in (("obs_dim", 1), ("act_dim", 1), ("context_len", 1), ("rollout_horizon", 1)):
        if m[field] < low:
            raise _fail(where, f"field {field!r} is {m[field]}, expected >= {low}")
    if not isinstance(m.get("rollout_any_horizon", False), bool):
        raise _fail(where, f"field 'rollout_any_horizon' is {m['rollout_any_horizon']!r}, expected true or false")
    history = m.get("history_len", m["context_len"])  # exports written before the field read m steps
    if isinstance(history, bool) or not isinstance(history, int) or history < m["context_len"]:
        raise _fail(where, f"field 'history_len' is {history!r}, expected an integer >= context_len")
    for key, value in m["latent"].items():
        if key in ("u", "d", "h") and value < 0:
            raise _fail(where, f"'latent' field {key!r} is {value}, expected >= 0")
    if m["policy"] is not None and min(m["policy"]["obs_dim"], m["policy"]["act_dim"]) < 1:
        raise _fail(where, f"'policy' has obs/action dims {m['policy']['obs_dim']}/{m['policy']['act_dim']}")
    for field in ("obs_mean", "obs_std"):
        values = m[field]
        if len(values) != m["obs_dim"] or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise _fail(where, f"field {field!r} must hold obs_dim={m['obs_dim']} finite numbers")
    if any(v <= 0 for v in m["obs_std"]):
        raise _fail(where, "field 'obs_std' must be positive")
    formats = m["formats"]
    if not formats or not all(f in GRAPH_FORMATS for f in formats):
        raise _fail(where, f"field 'formats' is {formats!r}, expected a non-empty list of {', '.join(GRAPH_FORMATS)}")
    for name, digest in m["files"].items():
        if not isinstance(digest, str) or not _HEX.fullmatch(digest):
            raise _fail(where, f"'files' entry {name!r} is not a SHA-256 hex digest")
    for name, graph in m["graphs"].items():
        if not isinstance(graph, dict):
            raise _fail(where, f"graph {name!r} is a {type(graph).__name__}, expected an object")
        for fmt in formats:
            if not isinstance(graph.get(fmt), str):
                raise _fail(where, f"graph {name!r} has no {fmt} file name although 'formats' lists {fmt}")


def _check_names(m: dict, root: Path, where: str) -> None:
    """The security part, enforced whether or not checksums are verified: names stay inside ``root`` and
    every graph file is covered by a checksum."""
    for name in m["files"]:
        inside(root, name, f"{where} 'files'", ExportError)
    for graph, meta in m["graphs"].items():
        for fmt in GRAPH_FORMATS:
            if fmt not in meta:
                continue
            name = meta[fmt]
            inside(root, name, f"{where} graph {graph!r} ({fmt})", ExportError)
            if name not in m["files"]:
                raise ExportError(f"export {root}: graph file {name} is not covered by the manifest's checksums "
                                  f"(refusing to load it; {REDO})")


def read_manifest(export_dir: Path | str, verify: bool = True) -> dict:
    """Load and validate ``export_dir/manifest.json`` (see the module docstring); with ``verify``, also
    check every file's SHA-256. Raises :class:`ExportError` with one line naming the file and field."""
    root = Path(export_dir)
    path = root / MANIFEST
    manifest = read_versioned_json(path, FORMAT, VERSION, "export", REDO, ExportError)
    _check_schema(manifest, str(path))
    _check_names(manifest, root, str(path))
    if verify:
        verify_checksums(root, manifest["files"], str(path), REDO, ExportError)
    return manifest
