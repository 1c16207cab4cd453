"""Pure-Python compute kernels: CPU-bound work that needs no I/O and no library."""

from __future__ import annotations

import os
import time
from typing import Any

# The largest prime below 2**16: entries stay small, so products never leave machine words.
MODULUS = 65521
# The Park-Miller generator's multiplier and modulus: a full-period stream from any seed.
_LCG_A, _LCG_M = 48271, 2**31 - 1


def lcg_matrix(size: int, seed: int) -> list[list[int]]:
    """A size x size matrix of pseudo-random entries below MODULUS, the same for the same seed."""
    state = seed % _LCG_M or 1
    rows = []
    for _ in range(size):
        row = []
        for _ in range(size):
            state = state * _LCG_A % _LCG_M
            row.append(state % MODULUS)
        rows.append(row)
    return rows


def matmul_mod(a: list[list[int]], b: list[list[int]], modulus: int = MODULUS) -> list[list[int]]:
    """The product a x b with every entry reduced modulo modulus."""
    columns = list(zip(*b, strict=True))
    return [
        [sum(x * y for x, y in zip(row, col, strict=True)) % modulus for col in columns]
        for row in a
    ]


def matrix_checksum(size: int, seed: int) -> int:
    """The sum, modulo MODULUS, of the entries of the product of two seeded matrices."""
    product = matmul_mod(lcg_matrix(size, seed), lcg_matrix(size, seed + 1))
    return sum(sum(row) for row in product) % MODULUS


def timed_checksum(size: int, seed: int) -> dict[str, Any]:
    """matrix_checksum with what it cost: CPU and wall seconds, start time, and the pid."""
    started_at, wall, cpu = time.time(), time.perf_counter(), time.thread_time()
    checksum = matrix_checksum(size, seed)
    return {
        "checksum": checksum,
        "cpu_s": time.thread_time() - cpu,
        "wall_s": time.perf_counter() - wall,
        "started_at": started_at,
        "pid": os.getpid(),
    }
