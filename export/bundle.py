"""A tiny binary format for named float32 arrays, shared by Python and the C++ examples (numpy only).

Layout (little-endian): ``b"MRCB"``, uint32 version (1), uint32 count, then per array: uint32 name length,
the UTF-8 name, uint32 ndim, int64 dims[ndim], float32 data (C order). The C++ reader is
``cpp_examples/common/bundle.hpp``.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from .manifest import ExportError

MAGIC, VERSION = b"MRCB", 1


def write_bundle(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        f.write(MAGIC + struct.pack("<II", VERSION, len(arrays)))
        for name, array in arrays.items():
            a = np.ascontiguousarray(array, dtype="<f4")
            encoded = name.encode()
            f.write(struct.pack("<I", len(encoded)) + encoded + struct.pack("<I", a.ndim))
            f.write(struct.pack(f"<{a.ndim}q", *a.shape))
            f.write(a.tobytes())


def read_bundle(path: str | Path) -> dict[str, np.ndarray]:
    data = Path(path).read_bytes()
    if data[:4] != MAGIC:
        raise ExportError(f"{path} is not an MrCoM array bundle")
    version, count = struct.unpack_from("<II", data, 4)
    if version != VERSION:
        raise ExportError(f"{path} has bundle version {version}, expected {VERSION}")
    pos, out = 12, {}
    for _ in range(count):
        (n,) = struct.unpack_from("<I", data, pos)
        name = data[pos + 4 : pos + 4 + n].decode()
        pos += 4 + n
        (ndim,) = struct.unpack_from("<I", data, pos)
        shape = struct.unpack_from(f"<{ndim}q", data, pos + 4)
        pos += 4 + 8 * ndim
        size = int(np.prod(shape, dtype=np.int64)) if ndim else 1
        out[name] = np.frombuffer(data, "<f4", size, pos).reshape(shape).copy()
        pos += 4 * size
    return out
