"""The pure-Python matrix kernel agrees with numpy and reports what it cost."""

import os

import numpy as np

from bolt_tasks.kernels import MODULUS, lcg_matrix, matmul_mod, matrix_checksum, timed_checksum


def test_the_product_matches_numpys_modulo_the_prime():
    a, b = lcg_matrix(17, 3), lcg_matrix(17, 4)
    expected = (np.array(a, dtype=np.int64) @ np.array(b, dtype=np.int64)) % MODULUS
    assert matmul_mod(a, b) == expected.tolist()
    assert matrix_checksum(17, 3) == int(expected.sum() % MODULUS)


def test_seeds_give_their_own_matrices_and_the_same_seed_the_same_one():
    assert lcg_matrix(5, 1) == lcg_matrix(5, 1) != lcg_matrix(5, 2)
    assert all(0 <= value < MODULUS for row in lcg_matrix(5, 9) for value in row)


def test_the_timed_checksum_reports_its_cost_and_process():
    reply = timed_checksum(20, 1)
    assert reply["checksum"] == matrix_checksum(20, 1)
    assert reply["pid"] == os.getpid() and reply["cpu_s"] > 0 and reply["wall_s"] > 0
