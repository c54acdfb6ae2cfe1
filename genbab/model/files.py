"""Reading a model file's bytes (plain or gzip, detected by magic bytes), without importing onnx."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

from genbab.errors import ModelError

GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: str | Path) -> bytes:
    """File contents, gunzipped when the file starts with the gzip magic bytes."""
    path = Path(path)
    try:
        irregular = path.exists() and not path.is_file()  # a FIFO or device would block the read until the deadline
    except OSError as err:  # e.g. a name too long for the file system
        raise ModelError(f"{path}: cannot read model file ({err.strerror or err})") from None
    if irregular:
        raise ModelError(f"{path}: not a regular file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ModelError(f"{path}: cannot read model file ({err.strerror or err})") from None
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, ValueError, zlib.error) as err:
            raise ModelError(f"{path}: corrupt gzip data ({err})") from None
    return data
