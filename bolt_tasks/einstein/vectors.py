"""The per-file vector cache: each file's chunk vectors on disk, keyed by its content.

A file's entry is named by a key derived from the SHA-256 of its bytes, its chunks' line ranges,
the embedding width and EMBED_VERSION, so an unchanged file is never embedded again and a
changed one gets a new entry. Each entry holds a header (magic, rows, width, CRC-32 of the
rest), the line ranges and the float32 vectors; one that is truncated or fails its checksum is
logged and treated as absent.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from bolt_tasks.einstein.embed import EMBED_VERSION

log = logging.getLogger("bolt.einstein")

_MAGIC = b"BOLTVEC1"
_HEADER = struct.Struct("<8sIII")  # magic, rows, width, CRC-32 of ranges and vectors


def vector_key(digest: str, ranges: Sequence[Sequence[int]], dim: int) -> str:
    """The cache key of a file's vectors: its content, its chunks and the embedding."""
    spans = np.asarray(ranges, dtype=np.int32).reshape(-1, 2)
    material = f"{digest}:{dim}:{EMBED_VERSION}:".encode() + spans.tobytes()
    return hashlib.sha256(material).hexdigest()


class VectorCache:
    """A folder of per-file vector entries (two-level, by the key's first two characters)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        """Where the entry of key lives."""
        return self.folder / key[:2] / f"{key}.vec"

    def load(self, key: str, dim: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(ranges, vectors) of an entry, or None when it is absent or damaged (logged)."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("vector cache entry %s unreadable (%s): embedding again", path, exc)
            return None
        problem = _check(data, dim)
        if problem:
            log.warning("vector cache entry %s is damaged (%s): embedding again", path, problem)
            return None
        rows = _HEADER.unpack_from(data)[1]
        ranges = np.frombuffer(data, np.int32, rows * 2, _HEADER.size).reshape(rows, 2)
        vectors = np.frombuffer(data, np.float32, rows * dim, _HEADER.size + rows * 8)
        return ranges, vectors.reshape(rows, dim)

    def store(self, key: str, ranges: Sequence[Sequence[int]], vectors: np.ndarray) -> None:
        """Write an entry atomically: a reader sees no entry or the whole of it."""
        spans = np.ascontiguousarray(ranges, dtype=np.int32).reshape(-1, 2)
        payload = spans.tobytes() + np.ascontiguousarray(vectors, dtype=np.float32).tobytes()
        header = _HEADER.pack(_MAGIC, len(spans), vectors.shape[1], zlib.crc32(payload))
        write_atomic(self.path(key), header + payload)


def _check(data: bytes, dim: int) -> str | None:
    if len(data) < _HEADER.size:
        return f"{len(data)} bytes, shorter than its header"
    magic, rows, width, crc = _HEADER.unpack_from(data)
    if magic != _MAGIC or width != dim:
        return f"not an entry of width {dim}"
    expected = _HEADER.size + rows * 8 + rows * width * 4
    if len(data) != expected:
        return f"{len(data)} bytes, expected {expected}"
    if zlib.crc32(memoryview(data)[_HEADER.size :]) != crc:
        return "checksum mismatch"
    return None


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A file written beside path and renamed onto it when the block ends without an error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as out:
            yield out
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file through a temporary one beside it, then rename it into place."""
    with atomic_file(path) as out:
        out.write(data)
