"""Stock Celery, every default kept, with bolt's matrix kernel: the baseline of bench/cpu.py."""

import os

from celery import Celery

from bolt_tasks.kernels import timed_checksum

URL = os.environ["BENCH_CELERY_URL"]

app = Celery("stock", broker=URL, backend=URL)


@app.task(name="stock.matrix_checksum")
def matrix_checksum(size, seed):
    """The same pure-Python product as bolt's computation task, and what it cost."""
    return timed_checksum(size, seed)
