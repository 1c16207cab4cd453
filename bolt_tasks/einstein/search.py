"""Searching the Einstein index from a worker: the process's open index, reopened on rebuild.

A worker opens the index as it starts (bolt_workers.warmup) while it already takes tasks; a
search that arrives meanwhile waits for the opening to finish, and only for that. Every search
checks that meta.json is the one it opened, so a build elsewhere is picked up at once; a damaged
index is rebuilt from the code base (through the vector cache) and the search answered from it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from bolt_tasks.buffers import BufferPool
from bolt_tasks.einstein.build import rebuild
from bolt_tasks.einstein.index import Index, IndexCorrupt, index_dir, meta_stamp, vectors_dir
from bolt_tasks.einstein.vectors import VectorCache
from bolt_tasks.errors import IndexMissing
from bolt_tasks.settings import Settings

log = logging.getLogger("bolt.einstein")


class IndexSlot:
    """The index one process searches. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._opened = threading.Event()
        self._opened.set()
        self._index: Index | None = None

    def begin_opening(self) -> None:
        """Make searches wait until open() has finished."""
        self._opened.clear()

    def open(self, directory: Path) -> Index | None:
        """Open the index (at start-up); None when there is none yet or it is damaged (logged).

        A search that then finds none open tries again itself, and rebuilds a damaged one.
        """
        try:
            index: Index | None = Index.open(directory)
        except IndexMissing:
            index = None
        except IndexCorrupt as exc:
            log.warning("Einstein index in %s is damaged (%s)", directory, exc)
            index = None
        finally:
            self._opened.set()
        with self._lock:
            self._index = index
        return index

    @property
    def index(self) -> Index | None:
        """The index open now, if any."""
        return self._index

    def wait_opened(self, timeout_s: float) -> float:
        """Wait while the start-up opening runs; returns the seconds waited."""
        if self._opened.is_set():
            return 0.0
        started = time.perf_counter()
        self._opened.wait(timeout_s)
        return time.perf_counter() - started

    def current(self, directory: Path) -> Index:
        """The open index, reopened first if a build has replaced it since."""
        index = self._index
        fresh = index is not None and index.directory == directory
        if fresh and index.stamp == meta_stamp(directory):
            return index
        with self._lock:
            index = self._index
            stale = index is None or index.directory != directory
            if stale or index.stamp != meta_stamp(directory):
                index = self._index = Index.open(directory)
            return index

    def forget(self) -> None:
        """Drop the open index, so the next search opens the one on disk."""
        with self._lock:
            self._index = None


SLOT = IndexSlot()


def _fresh_slot_after_fork() -> None:
    global SLOT
    SLOT = IndexSlot()


# A forked child opens its own index: the parent's lock state means nothing there.
os.register_at_fork(after_in_child=_fresh_slot_after_fork)


def search(query: str, k: int, settings: Settings, pools: BufferPool) -> dict[str, Any]:
    """Search this process's index: hits, the index's size, and where the time went."""
    directory = index_dir(settings.cache_dir)
    waited_s = SLOT.wait_opened(settings.search_wait_s)
    started = time.perf_counter()
    try:
        index = SLOT.current(directory)
        hits = index.search(query, k, pools)
    except IndexCorrupt as exc:
        log.warning("Einstein index in %s is damaged (%s): rebuilding it", directory, exc)
        SLOT.forget()
        summary = rebuild(directory, VectorCache(vectors_dir(settings.cache_dir)), pools)
        log.warning(
            "Einstein index in %s rebuilt: %d chunks, %d embedded again, in %.2f s",
            directory,
            summary["chunks"],
            summary["embedded"],
            summary["elapsed_s"],
        )
        index = SLOT.current(directory)
        hits = index.search(query, k, pools)
    return {
        "hits": [hit.as_dict() for hit in hits],
        "chunks": index.chunks,
        "fingerprint": index.meta["fingerprint"],
        "waited_ms": round(waited_s * 1000, 3),
        "search_ms": round((time.perf_counter() - started) * 1000, 3),
    }
