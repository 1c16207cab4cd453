"""Buffer pools lend preallocated arrays, count hits and misses, and never fail."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from bolt_tasks.buffers import BufferPool, BufferSpec, BufferType, get_pools, specs_from
from bolt_tasks.settings import Settings


def small_pool(count: int = 2, shape: tuple[int, ...] = (8, 4)) -> BufferPool:
    return BufferPool({kind: BufferSpec(count, shape) for kind in BufferType})


def test_defaults_are_ten_five_and_two_buffers_with_the_configured_shapes():
    specs = specs_from(Settings.from_env({"BOLT_EMBEDDING_MATRIX_BUFFER_SHAPE": "128x64"}))
    assert {kind: spec.count for kind, spec in specs.items()} == {
        BufferType.TEMPORARY: 10,
        BufferType.SEARCH_RESULTS: 5,
        BufferType.EMBEDDING_MATRIX: 2,
    }
    assert specs[BufferType.EMBEDDING_MATRIX].shape == (128, 64)
    pools = BufferPool(specs)
    with pools.acquire(BufferType.EMBEDDING_MATRIX) as matrix:
        assert matrix.shape == (128, 64) and matrix.dtype == np.float32


def test_a_released_buffer_is_lent_again_and_counts_as_a_hit():
    pools = small_pool()
    with pools.acquire(BufferType.TEMPORARY) as first:
        first[:] = 7.0
    with pools.acquire(BufferType.TEMPORARY, (3, 4)) as again:
        assert np.shares_memory(first, again)
        assert again.shape == (3, 4)
    stats = pools.stats()["temporary"]
    assert stats["hits"] == 2 and stats["misses"] == 0
    assert stats["in_use"] == 0 and stats["free"] == 2 and stats["high_water"] == 1


def test_an_exhausted_pool_allocates_counts_a_miss_and_keeps_its_own_buffers():
    pools = small_pool(count=2)
    with (
        pools.acquire(BufferType.SEARCH_RESULTS) as a,
        pools.acquire(BufferType.SEARCH_RESULTS) as b,
        pools.acquire(BufferType.SEARCH_RESULTS) as extra,
    ):
        assert not np.shares_memory(a, b) and not np.shares_memory(extra, a)
        extra[:] = 1.0  # a usable array, not a failure
        assert pools.stats()["search_results"]["in_use"] == 3
    stats = pools.stats()["search_results"]
    assert (stats["hits"], stats["misses"], stats["high_water"]) == (2, 1, 3)
    assert stats["free"] == 2  # the extra array was not added to the pool
    assert pools.stats()["temporary"]["hits"] == 0  # each type has its own pool


def test_a_shape_larger_than_the_pooled_buffers_is_a_miss_not_an_error():
    pools = small_pool(shape=(4,))
    with pools.acquire(BufferType.TEMPORARY, (100,)) as big:
        assert big.shape == (100,)
    assert pools.stats()["temporary"]["misses"] == 1
    assert pools.stats()["temporary"]["free"] == 2


def test_warming_touches_every_pooled_byte():
    pools = small_pool(count=3, shape=(16,))
    assert pools.warm() == pools.nbytes == 3 * 3 * 16 * 4


def test_a_buffer_is_released_when_its_block_raises():
    pools = small_pool(count=1)
    with pytest.raises(RuntimeError), pools.acquire(BufferType.TEMPORARY):
        raise RuntimeError("boom")
    assert pools.stats()["temporary"]["free"] == 1
    assert pools.stats()["temporary"]["in_use"] == 0


def test_concurrent_threads_never_share_a_buffer_and_the_counts_add_up():
    pools = small_pool(count=3, shape=(4096,))
    threads, rounds = 8, 300
    clashes: list[int] = []
    start = threading.Barrier(threads)

    def work(number: int) -> None:
        start.wait()
        for _ in range(rounds):
            with pools.acquire(BufferType.TEMPORARY) as buffer:
                buffer.fill(number)
                buffer.sum()  # numpy work that lets other threads run in between
                if not np.all(buffer == number):
                    clashes.append(number)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    stats = pools.stats()["temporary"]
    assert not clashes
    assert stats["hits"] + stats["misses"] == threads * rounds
    assert stats["in_use"] == 0 and stats["free"] == 3
    assert 1 <= stats["high_water"] <= threads


def test_the_process_pools_are_built_once_from_the_settings():
    assert get_pools() is get_pools()
    assert get_pools().specs[BufferType.TEMPORARY].count == Settings.from_env({}).temporary_buffers
