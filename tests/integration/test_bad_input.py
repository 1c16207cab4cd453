"""Bad input against real workers: malformed and pickled messages, oversized results, fuzzing."""

from __future__ import annotations

import base64
import json
import pickle
import time
import uuid
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bolt_tasks.batching import CallError, Publisher
from bolt_tasks.errors import UnserializableArgument
from bolt_tasks.names import DEAD_LETTERS_KEY, QUEUES
from bolt_tasks.settings import Settings
from bolt_tasks.tasks import computation, io
from bolt_workers import deadletter

UNACKED_KEYS = ("unacked", "unacked_index")


def envelope(body: bytes, headers: object, queue: str, content_type: str = "application/json"):
    """A message as kombu's Redis transport stores it, around any body and headers."""
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": content_type,
            "headers": headers,
            "properties": {
                "delivery_info": {"exchange": "", "routing_key": queue},
                "delivery_mode": 2,
                "delivery_tag": str(uuid.uuid4()),
                "body_encoding": "base64",
                "priority": 0,
            },
        }
    )


def task_headers(name: str = "bolt.computation.echo", **changes: object) -> dict:
    headers = {
        "lang": "py",
        "task": name,
        "id": str(uuid.uuid4()),
        "argsrepr": "",
        "kwargsrepr": "",
    }
    headers.update(changes)
    return {key: value for key, value in headers.items() if value is not None}


class Touch:
    """Unpickled, it creates a file: proof that a pickle was (or was not) loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def malformed(queue: str, marker: Path) -> dict[str, str | bytes]:
    """One of each kind of bad message, by the reason it must be dead-lettered for."""
    args = json.dumps([[1], {}, {}]).encode()
    return {
        "not JSON": b"\x00 not json {",
        "not a JSON object": json.dumps([1, 2]),
        "'properties' is missing": json.dumps({"headers": {}, "body": ""}),
        "'headers' is missing": envelope(args, "a string", queue),
        "body does not decode": envelope(b"{not json", task_headers(), queue),
        "not a task message": envelope(args, task_headers(task=None), queue),
        "no task named 'bolt.nope'": envelope(args, task_headers("bolt.nope"), queue),
        "KeyError: 'id'": envelope(args, task_headers(id=None), queue),
        "not enough values to unpack": envelope(b'{"a": 1}', task_headers(), queue),
        "untrusted content of type pickle": envelope(
            pickle.dumps(((Touch(marker),), {}, {})),
            task_headers(),
            queue,
            "application/x-python-serialize",
        ),
    }


def wait_for(condition, timeout_s: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what} not reached within {timeout_s} s")


def drained(client) -> bool:
    return not any(client.llen(queue) for queue in QUEUES) and not any(
        client.exists(key) for key in UNACKED_KEYS
    )


def test_malformed_and_pickled_messages_are_dead_lettered_and_both_pools_go_on(
    tmp_path, workers, redis_client
):
    env = {"BOLT_RESULT_MAX_BYTES": "1000"}
    workers.start("p", "p", **env)
    workers.start("e", "e", **env)
    workers.wait_ready("p", "e")
    marker = tmp_path / "unpickled"
    pickle.loads(pickle.dumps(Touch(marker)))  # the payload is live: loading it makes the file
    assert marker.exists()
    marker.unlink()

    sent = []
    for queue in ("computation", "io"):  # one queue of each pool
        for reason, message in malformed(queue, marker).items():
            redis_client.lpush(queue, message)
            sent.append(reason)
    # Remote-control broadcasts reach every worker through pub/sub, unscreened by kombu.
    for broadcast in ("[1]", "{}", json.dumps({"headers": {}, "properties": {}})):
        assert redis_client.publish("/0.celery.pidbox", broadcast) == 2
    wait_for(lambda: redis_client.llen(DEAD_LETTERS_KEY) == len(sent) + 6, what="dead letters")

    letters = deadletter.read(redis_client, count=100)
    from_queues = [letter for letter in letters if letter["queue"] in ("computation", "io")]
    for reason in set(sent):
        assert sum(reason in letter["reason"] for letter in from_queues) == 2, reason
    broadcasts = [letter for letter in letters if letter["queue"] == "broadcast celery.pidbox"]
    assert len(from_queues) == len(sent) and len(broadcasts) == 6
    workers.wait_ready("p", "e")  # both still answer remote control
    assert not marker.exists()  # the pickle was refused, never loaded
    publisher = Publisher.from_settings(Settings.from_env(workers.env()))
    assert publisher.submit(computation.echo, [1, "two"]).get(timeout=30) == [[1, "two"]]
    written = publisher.submit(io.write_report, str(tmp_path), {"ok": True}, "after").get(30)
    assert json.loads(Path(written[0]).read_text()) == {"ok": True}

    # A result over BOLT_RESULT_MAX_BYTES fails at once with the figures, and only once.
    [too_big] = publisher.submit(computation.echo, "x" * 2000).get(timeout=30, propagate=False)
    assert isinstance(too_big, CallError) and too_big.type == "ResultTooLarge"
    assert "BOLT_RESULT_MAX_BYTES" in too_big.message
    wait_for(lambda: drained(redis_client), what="queues drained")
    assert workers.log("p").count("ResultTooLarge") >= 1
    assert all(process.poll() is None for process in workers.processes.values())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
headers_strategy = st.fixed_dictionaries(
    {},
    optional={
        "task": st.sampled_from(["bolt.computation.echo", "bolt.io.nope", ""]) | json_values,
        "id": st.uuids().map(str) | json_values,
        "expires": st.text(max_size=30) | json_values,
        "retries": json_values,
        "timelimit": json_values,
        "argsrepr": json_values,
    },
)


@st.composite
def queue_items(draw) -> tuple[str, bytes | str]:
    """A queue and anything it could hold: raw bytes, JSON, or an envelope with fuzzed parts."""
    queue = draw(st.sampled_from(QUEUES))
    kind = draw(st.sampled_from(["bytes", "json", "envelope", "envelope"]))
    if kind == "bytes":
        return queue, draw(st.binary(max_size=200))
    if kind == "json":
        return queue, json.dumps(draw(json_values))
    body = draw(st.binary(max_size=100) | json_values.map(lambda v: json.dumps(v).encode()))
    item = json.loads(envelope(body, draw(headers_strategy | json_values), queue))
    for field in draw(st.lists(st.sampled_from(sorted(item)), max_size=2)):
        item[field] = draw(json_values)
    return queue, json.dumps(item)


any_values = st.recursive(
    json_values
    | st.binary(max_size=10)
    | st.sets(st.integers(), max_size=3)
    | st.complex_numbers(),
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner),
    max_leaves=8,
)


def test_no_message_or_submitted_value_stops_a_worker(tmp_path, both_pools, redis_client):
    fuzz = settings(
        max_examples=60,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )

    @fuzz
    @given(queue_items())
    def push(queue_item: tuple[str, bytes | str]) -> None:
        redis_client.lpush(*queue_item)

    push()
    publisher = Publisher.from_settings(Settings.from_env(both_pools.env()))

    @fuzz
    @given(st.lists(any_values, min_size=1, max_size=4), st.integers(1, 3))
    def round_trip(values: list[object], batch_size: int) -> None:
        # Values travel as JSON and come back as JSON has them, or are refused at submit;
        # a batch of one is an ordinary message, larger ones go through the batch runner.
        try:
            expected = json.loads(json.dumps(values))
        except (TypeError, ValueError):
            expected = UnserializableArgument
        items = [(value,) for value in values]
        try:
            got = publisher.submit_many(computation.echo, items, batch_size).get(timeout=30)
        except UnserializableArgument:
            got = UnserializableArgument
        assert got == expected

    round_trip()
    wait_for(lambda: drained(redis_client), 60, "every fuzzed message taken")
    assert all(process.poll() is None for process in both_pools.processes.values())
    assert publisher.submit(computation.echo, "still here").get(timeout=30) == ["still here"]
    assert publisher.submit(io.list_tree, str(tmp_path), [".py"], []).get(timeout=30) == [[]]
