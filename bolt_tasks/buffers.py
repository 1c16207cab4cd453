"""Pools of numpy buffers allocated up front, so hot paths reuse memory instead of allocating it."""

from __future__ import annotations

import math
import mmap
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from bolt_tasks.settings import Settings, get_settings

# Every buffer holds float32: the type of embeddings and of the scores computed from them.
DTYPE = np.dtype(np.float32)


class BufferType(StrEnum):
    """What a buffer is for; each type has its own pool of same-sized buffers."""

    TEMPORARY = "temporary"
    SEARCH_RESULTS = "search_results"
    EMBEDDING_MATRIX = "embedding_matrix"


@dataclass(frozen=True)
class BufferSpec:
    """How many buffers of one type to allocate up front, and the shape of each."""

    count: int
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        """Elements in one buffer."""
        return math.prod(self.shape)


def specs_from(settings: Settings) -> dict[BufferType, BufferSpec]:
    """The pool sizes and buffer shapes the settings ask for."""
    return {
        BufferType.TEMPORARY: BufferSpec(
            settings.temporary_buffers, settings.temporary_buffer_shape
        ),
        BufferType.SEARCH_RESULTS: BufferSpec(
            settings.search_results_buffers, settings.search_results_buffer_shape
        ),
        BufferType.EMBEDDING_MATRIX: BufferSpec(
            settings.embedding_matrix_buffers, settings.embedding_matrix_buffer_shape
        ),
    }


def _allocate(count: int, size: int) -> list[np.ndarray]:
    """count buffers of size elements, carved from one anonymous memory mapping.

    Where the platform has MAP_POPULATE (Linux) the kernel maps every page of it in one call,
    several times faster than one page fault per 4 KiB the first time each page is written.
    """
    nbytes = count * size * DTYPE.itemsize
    if not nbytes:
        return [np.empty(size, DTYPE) for _ in range(count)]
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
    memory = mmap.mmap(-1, nbytes, flags=flags)
    step = size * DTYPE.itemsize
    return [np.frombuffer(memory, DTYPE, size, number * step) for number in range(count)]


@dataclass
class _Counters:
    hits: int = 0
    misses: int = 0
    in_use: int = 0
    high_water: int = 0


class BufferPool:
    """Buffers of every BufferType, allocated at construction and lent out by acquire().

    Thread-safe. A request the pool cannot serve (every buffer lent, or a shape larger than
    the type's buffers) gets a freshly allocated array and counts as a miss; it never fails.
    """

    def __init__(self, specs: Mapping[BufferType, BufferSpec]) -> None:
        self.specs = dict(specs)
        self._lock = threading.Lock()
        self._free = {kind: _allocate(spec.count, spec.size) for kind, spec in self.specs.items()}
        self._counters = {kind: _Counters() for kind in self.specs}

    def warm(self) -> int:
        """Write every free buffer once, so its pages are mapped before a task needs them.

        Returns the bytes touched.
        """
        with self._lock:
            buffers = [buffer for free in self._free.values() for buffer in free]
        for buffer in buffers:
            buffer.fill(0.0)
        return sum(buffer.nbytes for buffer in buffers)

    @contextmanager
    def acquire(
        self, kind: BufferType, shape: tuple[int, ...] | None = None
    ) -> Iterator[np.ndarray]:
        """Lend a buffer of this type as an array of shape (the type's own shape by default).

        Its contents are whatever the last user left. It goes back to the pool when the block
        ends; keep no reference to it past that.
        """
        shape = self.specs[kind].shape if shape is None else tuple(shape)
        needed = math.prod(shape)
        buffer = self._take(kind, needed)
        pooled = buffer is not None
        if buffer is None:
            buffer = np.empty(needed, DTYPE)
        try:
            yield buffer[:needed].reshape(shape)
        finally:
            self._give_back(kind, buffer if pooled else None)

    def _take(self, kind: BufferType, needed: int) -> np.ndarray | None:
        with self._lock:
            counters = self._counters[kind]
            free = self._free[kind]
            counters.in_use += 1
            counters.high_water = max(counters.high_water, counters.in_use)
            if free and needed <= self.specs[kind].size:
                counters.hits += 1
                return free.pop()
            counters.misses += 1
            return None

    def _give_back(self, kind: BufferType, buffer: np.ndarray | None) -> None:
        with self._lock:
            self._counters[kind].in_use -= 1
            if buffer is not None:
                self._free[kind].append(buffer)

    def stats(self) -> dict[str, dict[str, int]]:
        """Per type: hits, misses, buffers lent now, the most ever lent at once, pooled, free."""
        with self._lock:
            return {
                kind.value: {
                    "hits": counters.hits,
                    "misses": counters.misses,
                    "in_use": counters.in_use,
                    "high_water": counters.high_water,
                    "pooled": self.specs[kind].count,
                    "free": len(self._free[kind]),
                }
                for kind, counters in self._counters.items()
            }

    @property
    def nbytes(self) -> int:
        """Bytes the pooled buffers hold."""
        return sum(spec.count * spec.size * DTYPE.itemsize for spec in self.specs.values())


_POOLS: BufferPool | None = None
_POOLS_LOCK = threading.Lock()


def get_pools() -> BufferPool:
    """This process's buffer pools, allocated from the settings on first use."""
    global _POOLS
    with _POOLS_LOCK:
        if _POOLS is None:
            _POOLS = BufferPool(specs_from(get_settings()))
        return _POOLS


def _forget_after_fork() -> None:
    # A forked child allocates its own pools: a lock held by another thread at the fork would
    # never be released in the child.
    global _POOLS, _POOLS_LOCK
    _POOLS, _POOLS_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
