"""Stock Celery, every default kept, with one micro task: the baseline of bench/throughput.py."""

import os

from celery import Celery

URL = os.environ["BENCH_CELERY_URL"]

app = Celery("stock", broker=URL, backend=URL)


@app.task
def echo(value):
    """Return value as it came."""
    return value
