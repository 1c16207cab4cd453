"""Building the Einstein index: embedding through the per-file vector cache, then assembling.

The main job's tasks do the work: plan_chunks (io) fingerprints each file, embed_chunks
(computation) calls embed_plans, which embeds only files whose vectors are not cached yet, and
write_index (io) calls assemble, which writes the index unless the one on disk already holds
exactly this corpus. build_in_process runs the same steps in one process; a worker uses it to
rebuild an index it found damaged.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bolt_tasks import job
from bolt_tasks.buffers import BufferPool, BufferType
from bolt_tasks.einstein.embed import EMBED_VERSION, embed_texts
from bolt_tasks.einstein.index import (
    META,
    FileVectors,
    Index,
    IndexCorrupt,
    fingerprint,
    write_index,
)
from bolt_tasks.einstein.vectors import VectorCache, vector_key
from bolt_tasks.errors import IndexMissing
from bolt_tasks.tree import SourceError, list_sources

log = logging.getLogger("bolt.einstein")

LOCK = ".build.lock"


def index_params(dim: int, chunk_lines: int) -> dict[str, int]:
    """The parameters that decide an index's vectors; part of its fingerprint."""
    return {"dim": dim, "chunk_lines": chunk_lines, "embed_version": EMBED_VERSION}


def embed_plans(
    root: str, plans: Sequence[Sequence[Any]], dim: int, cache: VectorCache, pools: BufferPool
) -> job.Partial:
    """Embed the chunks of planned files, reusing cached vectors of files seen before.

    Returns the count and checksum of every vector (as job.embed_batch), how many chunks were
    embedded and how many reused, and per file [path, sha256, cache key, chunks] for assembly.
    """
    keys = [vector_key(digest, ranges, dim) for _, digest, ranges in plans]
    cached = [cache.load(key, dim) for key in keys]
    missing = [plan for plan, found in zip(plans, cached, strict=True) if found is None]
    fresh = _embed_missing(root, missing, dim, cache, pools)
    checksum, probe = 0.0, job.probe_vector(dim)
    for (path, _, _), found in zip(plans, cached, strict=True):
        vectors = fresh[path] if found is None else found[1]
        checksum += float((vectors.astype(np.float64) @ probe).sum())
    return {
        "chunks": sum(len(ranges) for _, _, ranges in plans),
        "dim": dim,
        "checksum": checksum,
        "embedded": sum(len(ranges) for _, _, ranges in missing),
        "reused": sum(len(found[0]) for found in cached if found is not None),
        "files": [[p[0], p[1], key, len(p[2])] for p, key in zip(plans, keys, strict=True)],
    }


def _embed_missing(
    root: str, plans: Sequence[Sequence[Any]], dim: int, cache: VectorCache, pools: BufferPool
) -> dict[str, np.ndarray]:
    """Embed the files of plans, store each file's vectors in the cache; path -> vectors."""
    if not plans:
        return {}
    chunks = job.read_chunks(root, plans)
    fresh: dict[str, np.ndarray] = {}
    with pools.acquire(BufferType.EMBEDDING_MATRIX, (len(chunks), dim)) as vectors:
        embed_texts([chunk.text for chunk in chunks], dim, out=vectors)
        first = 0
        for path, digest, ranges in plans:
            block = vectors[first : first + len(ranges)]
            cache.store(vector_key(digest, ranges, dim), ranges, block)
            fresh[path] = block.copy()
            first += len(ranges)
    return fresh


@contextlib.contextmanager
def build_lock(directory: Path) -> Iterator[None]:
    """Hold the index folder's lock: one build at a time, across processes."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def assemble(
    directory: Path, cache: VectorCache, base: dict[str, Any], files: Sequence[Sequence[Any]]
) -> dict[str, Any]:
    """Write the index of files ([path, sha256, key, chunks]) unless it is already on disk.

    base holds root, params, suffixes and excludes. An index on disk whose fingerprint matches
    and whose every checksum holds is kept; a damaged one is logged and written again.
    """
    started = time.perf_counter()
    corpus = fingerprint(base["params"], ((path, digest) for path, digest, _, _ in files))
    with build_lock(directory):
        if _intact(directory, base, corpus):
            return _summary(corpus, files, False, started)
        vectors = [_file_vectors(base, entry, cache) for entry in files]
        write_index(directory, base, vectors)
    summary = _summary(corpus, files, True, started)
    log.info(
        "Einstein index of %s written: %d chunks of %d files in %.2f s",
        base["root"],
        summary["chunks"],
        summary["files"],
        summary["elapsed_s"],
    )
    return summary


def _summary(corpus: str, files: Sequence[Sequence[Any]], written: bool, started: float) -> dict:
    return {
        "fingerprint": corpus,
        "chunks": sum(int(entry[3]) for entry in files),
        "files": len(files),
        "written": written,
        "elapsed_s": round(time.perf_counter() - started, 3),
    }


def _intact(directory: Path, base: dict[str, Any], corpus: str) -> bool:
    """Whether the index on disk is of this code base and corpus, and passes every check."""
    try:
        index = Index.open(directory)
        same_build = all(index.meta.get(key) == value for key, value in base.items())
        if index.meta["fingerprint"] != corpus or not same_build:
            return False
        index.verify_all()
        return True
    except IndexMissing:
        return False
    except IndexCorrupt as exc:
        log.warning("Einstein index in %s is damaged (%s): writing it again", directory, exc)
        return False


def _file_vectors(base: dict[str, Any], entry: Sequence[Any], cache: VectorCache) -> FileVectors:
    path, digest, key, _ = entry
    dim = int(base["params"]["dim"])
    found = cache.load(key, dim)
    if found is None:
        # The entry vanished or was damaged since it was written: embed the file again, but only
        # if it still holds the content that was planned.
        plan = job.chunk_plan(base["root"], [path], int(base["params"]["chunk_lines"]))
        if not plan or plan[0][1] != digest:
            raise SourceError(f"{path} changed while its index was built")
        found = _embed_one(base["root"], plan[0], dim, cache)
    return FileVectors(path, digest, found[0], found[1])


def _embed_one(
    root: str, plan: Sequence[Any], dim: int, cache: VectorCache
) -> tuple[np.ndarray, np.ndarray]:
    chunks = job.read_chunks(root, [plan])
    vectors = embed_texts([chunk.text for chunk in chunks], dim)
    cache.store(vector_key(plan[1], plan[2], dim), plan[2], vectors)
    return np.asarray(plan[2], dtype=np.int32).reshape(-1, 2), vectors


def index_base(
    root: str, dim: int, chunk_lines: int, suffixes: Sequence[str], excludes: Sequence[str]
) -> dict[str, Any]:
    """What an index records about how it was built, so that it can be built again."""
    return {
        "root": root,
        "params": index_params(dim, chunk_lines),
        "suffixes": list(suffixes),
        "excludes": list(excludes),
    }


def build_in_process(
    directory: Path, cache: VectorCache, base: dict[str, Any], pools: BufferPool
) -> dict[str, Any]:
    """List, plan, embed (through the cache) and assemble in this process; returns a summary."""
    started = time.perf_counter()
    root, params = base["root"], base["params"]
    paths = [path for path, _ in list_sources(root, base["suffixes"], base["excludes"])]
    plans = job.chunk_plan(root, paths, int(params["chunk_lines"]))
    embedded = embed_plans(root, plans, int(params["dim"]), cache, pools)
    summary = assemble(directory, cache, base, embedded["files"])
    summary.update(
        embedded=embedded["embedded"],
        reused=embedded["reused"],
        elapsed_s=round(time.perf_counter() - started, 3),
    )
    return summary


def rebuild(directory: Path, cache: VectorCache, pools: BufferPool) -> dict[str, Any]:
    """Build again the index in directory from the code base its meta.json names.

    Raises IndexMissing when that is impossible: no readable meta.json, or the code base gone.
    """
    try:
        meta = json.loads((directory / META).read_bytes())
        base = {key: meta[key] for key in ("root", "params", "suffixes", "excludes")}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IndexMissing(
            f"the Einstein index in {directory} cannot be read ({exc}): "
            "build it again with `bolt index build PATH`"
        ) from None
    if not os.path.isdir(base["root"]):
        raise IndexMissing(
            f"the Einstein index in {directory} is damaged and its code base {base['root']} "
            "is gone: build it again with `bolt index build PATH`"
        )
    return build_in_process(directory, cache, base, pools)
