"""The producer API through a real Redis and a real P worker: results, errors and backpressure."""

from __future__ import annotations

import time

import pytest

from bolt_tasks.batching import CallError, Publisher
from bolt_tasks.errors import CallsFailed, QueueFull
from bolt_tasks.settings import Settings
from bolt_tasks.tasks import analysis, computation

SOURCES = [
    "def f(x):\n    return 1 if x else 2\n",
    "import os\nclass A:\n    def m(self):\n        pass\n",
    "def broken(:\n",
    "x = [i for i in range(3) if i]\n",
]


def publisher_for(workers, **env: str) -> Publisher:
    return Publisher.from_settings(Settings.from_env(workers.env(**env)))


def test_results_come_in_submission_order_with_kwargs_and_each_error_in_its_place(workers):
    publisher = publisher_for(workers)
    assert publisher.submit_many(computation.echo, []).get(timeout=1) == []
    workers.start("p", "p")
    workers.wait_ready("p")

    assert publisher.submit_many(computation.echo, [({"a": [1, None]},)]).get(30) == [
        {"a": [1, None]}
    ]
    many = publisher.submit_many(computation.echo, [(i,) for i in range(101)], batch_size=10)
    assert len(many.task_ids) == 11
    assert list(many) == list(range(101)) == many.get(timeout=1)

    items = [
        ((text,), {"path": f"m{i}.py"}) if i % 2 else (text,) for i, text in enumerate(SOURCES)
    ]
    mixed = publisher.submit_many(analysis.measure_source, items, batch_size=3)
    results = mixed.get(timeout=30, propagate=False)
    for index, (item, result) in enumerate(zip(items, results, strict=True)):
        args, kwargs = item if isinstance(item[0], tuple) else (item, {})
        if index == 2:
            assert result == CallError(2, "SyntaxError", result.message)
            with pytest.raises(SyntaxError):
                analysis.measure_source(*args, **kwargs)
        else:
            assert result == analysis.measure_source(*args, **kwargs)
    with pytest.raises(CallsFailed) as caught:
        mixed.get(timeout=1)
    assert caught.value.results == results and caught.value.errors == [results[2]]

    assert publisher.submit(analysis.measure_source, SOURCES[0], path="a.py").get(30) == [
        analysis.measure_source(SOURCES[0], path="a.py")
    ]
    singles = [publisher.submit(analysis.measure_source, text) for text in SOURCES]
    assert len({single.task_ids[0] for single in singles}) == 1  # they shared a message
    outcomes = [single.get(30, propagate=False) for single in singles]
    assert outcomes[2] == [CallError(0, "SyntaxError", results[2].message)]
    assert outcomes[3] == [analysis.measure_source(SOURCES[3])]

    alone = publisher_for(workers, BOLT_SUBMIT_LINGER_MS="0")
    [single_error] = alone.submit(analysis.measure_source, SOURCES[2]).get(30, propagate=False)
    assert (single_error.index, single_error.type) == (0, "SyntaxError")


def test_queue_full_at_exactly_the_limit_with_priorities_and_a_key_prefix(workers, redis_client):
    env = {
        "BOLT_BROKER_KEY_PREFIX": "tenant7:",
        "BOLT_BROKER_PRIORITY_STEPS": "0,4,8",
        "BOLT_QUEUE_LIMITS": "computation=12",
        "BOLT_QUEUE_WAIT_S": "0.3",
    }
    publisher = publisher_for(workers, **env)
    held = [
        publisher.submit_many(computation.echo, [(i,) for i in range(4)], batch_size=1),
        publisher.submit_many(
            computation.echo, [(i,) for i in range(40)], batch_size=10, priority=5
        ),
        publisher.submit_many(computation.echo, [(i,) for i in range(3)], batch_size=1, priority=9),
        publisher.submit_many(computation.echo, [(7,)], priority=9),
    ]
    queue_lists = [
        b"tenant7:computation",
        b"tenant7:computation\x06\x164",
        b"tenant7:computation\x06\x168",
    ]
    assert [redis_client.llen(key) for key in queue_lists] == [4, 4, 4]
    assert publisher.depth("computation") == 12

    started = time.monotonic()
    with pytest.raises(QueueFull) as caught:
        publisher.submit(computation.echo, "one too many")
    assert time.monotonic() - started >= 0.3
    assert (caught.value.queue, caught.value.depth, caught.value.limit) == ("computation", 12, 12)
    assert not [key for key in redis_client.keys("*") if not key.startswith(b"tenant7:")]

    workers.start("p", "p", **env)
    drained = sum(len(submission.task_ids) for submission in held)
    results = [submission.get(timeout=60) for submission in held]
    assert results == [list(range(4)), list(range(40)), list(range(3)), [7]]
    assert drained == 12 and publisher.depth("computation") == 0
    # Every message that ran was one of the twelve counted: no result is left over.
    assert redis_client.keys("celery-task-meta-*") == []
