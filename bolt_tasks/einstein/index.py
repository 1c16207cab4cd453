"""The Einstein index on disk: a memory-mapped matrix of chunk vectors, and what each row is.

An index is a folder of four files. ``meta.json`` (small) records the code base, the embedding
parameters, the corpus fingerprint and the size and checksums of the other three, which carry
that fingerprint in their names:

- ``matrix-*.npy``: float32, one row per chunk, stored column-major, so the column of one
  feature is contiguous: a search reads only the columns of its query's features;
- ``rows-*.npy``: int32 (file, first line, last line) per chunk;
- ``paths-*.json``: the files, by the index the rows refer to.

Opening maps the matrix without reading it and checks every file's size; each column's CRC-32
is checked the first time a search reads it (verify_all() checks them all), so a damaged file
raises IndexCorrupt instead of giving a wrong answer.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bolt_tasks.buffers import BufferPool, BufferType
from bolt_tasks.einstein.embed import embed_texts
from bolt_tasks.einstein.vectors import atomic_file, write_atomic
from bolt_tasks.errors import IndexMissing

FORMAT = 1
META = "meta.json"
# A query with more features than this share of the columns reads the whole matrix in one
# matrix-vector product; fewer are added column by column.
DENSE_SHARE = 0.25


def index_dir(cache_dir: Path) -> Path:
    """Where the index of a cache folder lives."""
    return Path(cache_dir) / "einstein" / "index"


def vectors_dir(cache_dir: Path) -> Path:
    """Where the per-file vector cache of a cache folder lives."""
    return Path(cache_dir) / "einstein" / "vectors"


class IndexCorrupt(ValueError):
    """Raised when an index file's size, layout or checksum differs from what meta.json says."""


@dataclass(frozen=True)
class FileVectors:
    """One file of a corpus: its path, content SHA-256, chunk line ranges and their vectors."""

    path: str
    digest: str
    ranges: np.ndarray
    vectors: np.ndarray


@dataclass(frozen=True)
class Hit:
    """One search result: a chunk's file and line range, and its cosine similarity."""

    path: str
    start: int
    end: int
    score: float

    def as_dict(self) -> dict[str, Any]:
        """The hit as plain data for JSON."""
        return {"path": self.path, "start": self.start, "end": self.end, "score": self.score}


def fingerprint(params: dict[str, Any], files: Iterable[tuple[str, str]]) -> str:
    """SHA-256 of the embedding parameters and every (path, content SHA-256), in path order."""
    material = json.dumps({"params": params, "files": sorted(files)}, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()


def meta_stamp(directory: Path) -> tuple[int, int, int] | None:
    """(inode, mtime, size) of meta.json, which every build replaces; None if there is none."""
    try:
        stat = os.stat(directory / META)
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def write_index(directory: Path, base: dict[str, Any], files: Sequence[FileVectors]) -> dict:
    """Write the index of files into directory, replacing the one there; returns its meta.

    base holds root, params and the listing options. The data files are written first and
    meta.json last, each atomically, so a reader sees the old index or the whole new one.
    """
    directory.mkdir(parents=True, exist_ok=True)
    files = sorted(files, key=lambda item: item.path)
    corpus = fingerprint(base["params"], ((f.path, f.digest) for f in files))
    dim = int(base["params"]["dim"])
    matrix = np.asfortranarray(_stack([f.vectors for f in files], dim))
    rows = _rows(files)
    paths = json.dumps([f.path for f in files]).encode()
    names = {part: f"{part}-{corpus[:16]}{ext}" for part, ext in _PARTS.items()}
    meta = {
        **base,
        "format": FORMAT,
        "fingerprint": corpus,
        "chunks": int(matrix.shape[0]),
        "files": len(files),
        "matrix": _write_matrix(directory / names["matrix"], matrix),
        "rows": _write_npy(directory / names["rows"], rows),
        "paths": _write_bytes(directory / names["paths"], paths),
    }
    meta["matrix"]["column_crc32"] = [zlib.crc32(matrix[:, c]) for c in range(dim)]
    write_atomic(directory / META, json.dumps(meta).encode())
    _remove_others(directory, set(names.values()))
    return meta


_PARTS = {"matrix": ".npy", "rows": ".npy", "paths": ".json"}


def _stack(blocks: list[np.ndarray], dim: int) -> np.ndarray:
    if not blocks:
        return np.zeros((0, dim), dtype=np.float32)
    return np.concatenate(blocks).astype(np.float32, copy=False)


def _rows(files: Sequence[FileVectors]) -> np.ndarray:
    rows = np.zeros((sum(len(f.ranges) for f in files), 3), dtype=np.int32)
    first = 0
    for number, item in enumerate(files):
        last = first + len(item.ranges)
        rows[first:last, 0] = number
        rows[first:last, 1:] = item.ranges
        first = last
    return rows


def _write_npy(path: Path, array: np.ndarray) -> dict[str, Any]:
    out = io.BytesIO()
    np.save(out, array)
    return _write_bytes(path, out.getvalue())


def _write_matrix(path: Path, matrix: np.ndarray) -> dict[str, Any]:
    # Streamed to the file: a million chunks are a gigabyte, not to be copied once more.
    with atomic_file(path) as out:
        np.save(out, matrix)
    return {"name": path.name, "bytes": path.stat().st_size}


def _write_bytes(path: Path, data: bytes) -> dict[str, Any]:
    write_atomic(path, data)
    return {"name": path.name, "bytes": len(data), "crc32": zlib.crc32(data)}


def _remove_others(directory: Path, keep: set[str]) -> None:
    # A worker that still maps an older matrix keeps reading it: unlinking leaves its pages.
    for entry in directory.iterdir():
        if entry.name in keep or entry.name == META or entry.name.startswith("."):
            continue
        entry.unlink(missing_ok=True)


class Index:
    """An opened index: the matrix memory-mapped, rows and paths read and checked."""

    def __init__(self, directory: Path, meta: dict[str, Any], stamp: tuple[int, int, int]):
        self.directory = directory
        self.meta = meta
        self.stamp = stamp
        self.matrix = _open_matrix(directory, meta)
        self._matrix_file = os.stat(directory / meta["matrix"]["name"])
        self.rows = np.load(io.BytesIO(_read_checked(directory, meta["rows"])))
        self.paths: list[str] = json.loads(_read_checked(directory, meta["paths"]))
        self._column_crc = np.asarray(meta["matrix"]["column_crc32"], dtype=np.uint64)
        self._verified = np.zeros(self.dim, dtype=bool)
        self._lock = threading.Lock()
        if self.rows.shape != (self.chunks, 3):
            raise IndexCorrupt(f"rows file holds {self.rows.shape}, not {self.chunks} rows")

    @classmethod
    def open(cls, directory: Path) -> Index:
        """Open the index in directory: IndexMissing if there is none, IndexCorrupt if damaged."""
        stamp = meta_stamp(directory)
        if stamp is None:
            raise IndexMissing(
                f"no Einstein index in {directory}: build one with `bolt index build PATH`"
            )
        try:
            meta = json.loads((directory / META).read_bytes())
        except (OSError, ValueError) as exc:
            raise IndexCorrupt(f"{META} unreadable: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise IndexCorrupt(f"{META} is not an index of format {FORMAT}")
        try:
            return cls(directory, meta, stamp)
        except (OSError, KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, IndexCorrupt):
                raise
            raise IndexCorrupt(f"unreadable: {exc}") from None

    @property
    def chunks(self) -> int:
        """Rows of the matrix: one per chunk."""
        return int(self.meta["chunks"])

    @property
    def dim(self) -> int:
        """Width of the vectors."""
        return int(self.meta["params"]["dim"])

    def verify(self, columns: Iterable[int]) -> None:
        """Check the CRC-32 of each column not checked yet; IndexCorrupt on a mismatch."""
        for column in columns:
            if self._verified[column]:
                continue
            if zlib.crc32(self.matrix[:, column]) != self._column_crc[column]:
                raise IndexCorrupt(f"column {column} of {self.meta['matrix']['name']} is damaged")
            self._verified[column] = True

    def verify_all(self) -> None:
        """Check every column: reads the whole matrix once."""
        self.verify(range(self.dim))

    def check_mapping(self) -> None:
        """IndexCorrupt if the mapped matrix file was cut short or grown in place since opening.

        Reading a page past the end of a shortened mapped file would kill the process with
        SIGBUS. A file replaced by a new one (a rebuild) leaves the mapping whole: that is fine.
        """
        try:
            now = os.stat(self.directory / self.meta["matrix"]["name"])
        except FileNotFoundError:
            return
        same_file = now.st_ino == self._matrix_file.st_ino
        if same_file and now.st_size != self._matrix_file.st_size:
            raise IndexCorrupt(
                f"{self.meta['matrix']['name']} changed size in place: {now.st_size} bytes, "
                f"expected {self._matrix_file.st_size}"
            )

    def search(self, query: str, k: int, pools: BufferPool) -> list[Hit]:
        """The k chunks most like query, best first; those sharing no feature are left out."""
        with pools.acquire(BufferType.TEMPORARY, (1, self.dim)) as embedded:
            embed_texts([query], self.dim, out=embedded)
            weights = embedded[0]
            features = np.flatnonzero(weights)
            if not features.size or not self.chunks:
                return []
            dense = features.size > DENSE_SHARE * self.dim
            self.check_mapping()
            self.verify(range(self.dim) if dense else features)
            scores, rows = self._top(weights, features, dense, k, pools)
        return [self._hit(row, score) for score, row in zip(scores, rows, strict=True)]

    def _top(
        self, weights: np.ndarray, features: np.ndarray, dense: bool, k: int, pools: BufferPool
    ) -> tuple[list[float], list[int]]:
        block = pools.specs[BufferType.SEARCH_RESULTS].size
        found_scores, found_rows = [], []
        with (
            pools.acquire(BufferType.SEARCH_RESULTS, (block,)) as block_scores,
            pools.acquire(BufferType.TEMPORARY, (block,)) as scratch,
        ):
            for first in range(0, self.chunks, block):
                last = min(self.chunks, first + block)
                scores = block_scores[: last - first]
                self._score(first, last, weights, features, dense, scores, scratch)
                take = min(k, last - first)
                best = np.argpartition(scores, -take)[-take:]
                found_scores.append(scores[best].copy())
                found_rows.append(best + first)
        scores, rows = np.concatenate(found_scores), np.concatenate(found_rows)
        order = np.lexsort((rows, -scores))[:k]
        keep = order[scores[order] > 0]
        return scores[keep].tolist(), rows[keep].tolist()

    def _score(
        self,
        first: int,
        last: int,
        weights: np.ndarray,
        features: np.ndarray,
        dense: bool,
        scores: np.ndarray,
        scratch: np.ndarray,
    ) -> None:
        block = self.matrix[first:last]
        if dense:
            np.matmul(block, weights, out=scores)
            return
        products = scratch[: last - first]
        np.multiply(block[:, features[0]], weights[features[0]], out=scores)
        for column in features[1:]:
            np.multiply(block[:, column], weights[column], out=products)
            np.add(scores, products, out=scores)

    def _hit(self, row: int, score: float) -> Hit:
        number, start, end = (int(value) for value in self.rows[row])
        return Hit(self.paths[number], start, end, round(float(score), 6))


def _open_matrix(directory: Path, meta: dict[str, Any]) -> np.ndarray:
    part = meta["matrix"]
    path = directory / part["name"]
    size = path.stat().st_size
    if size != part["bytes"]:
        raise IndexCorrupt(f"{part['name']} is {size} bytes, expected {part['bytes']}")
    shape = (int(meta["chunks"]), int(meta["params"]["dim"]))
    # A memory map of no rows cannot be made; an empty index is read instead.
    matrix = np.load(path, mmap_mode="r" if shape[0] else None)
    if matrix.shape != shape or matrix.dtype != np.float32 or not matrix.flags.f_contiguous:
        raise IndexCorrupt(f"{part['name']} holds {matrix.dtype} {matrix.shape}, not {shape}")
    # A plain array over the same mapping: every slice of a memmap is a memmap too, and making
    # one costs microseconds that a search taking a hundred slices would feel.
    return matrix.view(np.ndarray)


def _read_checked(directory: Path, part: dict[str, Any]) -> bytes:
    data = (directory / part["name"]).read_bytes()
    if len(data) != part["bytes"]:
        raise IndexCorrupt(f"{part['name']} is {len(data)} bytes, expected {part['bytes']}")
    if zlib.crc32(data) != part["crc32"]:
        raise IndexCorrupt(f"{part['name']} fails its checksum")
    return data
