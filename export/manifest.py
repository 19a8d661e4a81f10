"""The export folder's ``manifest.json``: reading, validating and checksum verification (numpy-free, torch-free)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from mrcom_core.errors import UserInputError
from mrcom_core.files import read_versioned_json

FORMAT = "mrcom-export"
VERSION = 2  # 2: prime/observe graphs (the runtime no longer stitches context_full + observe itself)
MANIFEST = "manifest.json"


class ExportError(UserInputError):
    """An export folder or a runtime input is unusable; the message says what and where."""


def sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(export_dir: Path | str, verify: bool = True) -> dict:
    """Load and validate ``export_dir/manifest.json``; with ``verify``, check every file's SHA-256."""
    root = Path(export_dir)
    manifest = read_versioned_json(root / MANIFEST, FORMAT, VERSION, "export", "export the model again", ExportError)
    if verify:
        for name, expected in manifest["files"].items():
            file = root / name
            if not file.is_file():
                raise ExportError(f"export {root} lists {name}, which is missing")
            if sha256(file) != expected:
                raise ExportError(f"checksum mismatch for {file}: the file changed after export")
    return manifest
