"""The producer API on fakeredis: what it publishes, where, in how many round trips, refusals."""

import base64
import json
import subprocess
import sys
import threading
import time

import fakeredis
import pytest
from kombu.transport.redis import Channel

import bolt_tasks
from bolt_tasks import batching
from bolt_tasks.app import app
from bolt_tasks.backpressure import QueueLayout
from bolt_tasks.batching import Publisher
from bolt_tasks.errors import ConfigError, QueueFull, UnserializableArgument, UsageError
from bolt_tasks.messages import EMBED_JSON
from bolt_tasks.settings import Settings
from bolt_tasks.tasks import analysis, computation
from bolt_tasks.tasks.batch import run_calls

EMBED = json.loads(EMBED_JSON)


class CountingRedis(fakeredis.FakeRedis):
    """fakeredis that counts the commands (round trips) sent to it."""

    commands = 0

    def execute_command(self, *args, **options):
        self.commands += 1
        return super().execute_command(*args, **options)


def make_publisher(**env: str) -> tuple[Publisher, CountingRedis]:
    settings = Settings.from_env({"BOLT_BROKER_URL": "redis://127.0.0.1:1/0", **env})
    client = CountingRedis()
    return Publisher.from_settings(settings, client=client), client


def stored(client, key: str = "computation") -> list[dict]:
    """The messages of a list in the order workers take them (they pop from the right)."""
    return [json.loads(raw) for raw in reversed(client.lrange(key, 0, -1))]


def body(message: dict) -> list:
    return json.loads(base64.b64decode(message["body"]))


def test_zero_items_publish_no_message_and_give_an_empty_result():
    publisher, client = make_publisher()
    submission = publisher.submit_many(computation.echo, [])
    assert len(submission) == 0 and submission.task_ids == []
    assert submission.get(timeout=0.1) == [] and list(submission) == []
    assert client.commands == 0 and client.dbsize() == 0


def test_one_item_is_one_batch_message_of_the_kinds_runner_on_the_kinds_queue():
    publisher, client = make_publisher()
    submission = publisher.submit_many(computation.echo, [(7,)])
    [message] = stored(client)
    assert message["headers"]["task"] == "bolt.computation.run_batch"
    assert message["properties"]["delivery_info"]["routing_key"] == "computation"
    assert body(message) == [["bolt.computation.echo", [[[7], {}]]], {}, EMBED]
    assert submission.task_ids == [message["headers"]["id"]]


def test_101_items_at_batch_size_10_are_11_messages_in_one_round_trip():
    publisher, client = make_publisher()
    publisher.submit_many(computation.echo, [(0,)])  # loads the script into Redis
    client.delete("computation")
    client.commands = 0
    items = [((i,), {}) if i % 2 else (i,) for i in range(101)]
    submission = publisher.submit_many(computation.echo, items, batch_size=10)
    assert client.commands == 1
    messages = stored(client)
    assert [len(body(m)[0][1]) for m in messages] == [10] * 10 + [1]
    calls = [call for m in messages for call in body(m)[0][1]]
    assert calls == [[[i], {}] for i in range(101)]
    assert submission.task_ids == [m["headers"]["id"] for m in messages]
    assert len(set(submission.task_ids)) == 11 and len(submission) == 101


def test_kwargs_travel_with_their_call():
    publisher, client = make_publisher()
    items = [(("x = 1",), {"path": "a.py"}), ("y = 2",)]
    publisher.submit_many(analysis.measure_source, items, batch_size=5)
    [message] = stored(client, "analysis")
    assert body(message)[0][1] == [[["x = 1"], {"path": "a.py"}], [["y = 2"], {}]]


def test_a_single_submit_without_linger_is_an_ordinary_celery_message_of_the_task():
    publisher, client = make_publisher(BOLT_SUBMIT_LINGER_MS="0")
    publisher.submit(analysis.measure_source, "x = 1", path="a.py")
    [message] = stored(client, "analysis")
    task_id = message["headers"]["id"]
    celery = app.amqp.as_task_v2(task_id, analysis.measure_source.name, ("x = 1",), {"path": "a"})
    assert set(message["headers"]) == set(celery.headers)
    assert message["headers"]["task"] == "bolt.analysis.measure_source"
    assert message["headers"]["root_id"] == message["properties"]["correlation_id"] == task_id
    assert body(message) == [["x = 1"], {"path": "a.py"}, EMBED]
    assert json.loads(json.dumps(celery.body)) == [["x = 1"], {"path": "a"}, EMBED]
    assert set(message) == {"body", "content-encoding", "content-type", "headers", "properties"}
    assert message["content-type"] == "application/json"
    assert message["properties"]["body_encoding"] == "base64"
    assert message["properties"]["delivery_tag"] != task_id
    assert set(message["properties"]) == {
        "correlation_id",
        "reply_to",
        "delivery_mode",
        "delivery_info",
        "priority",
        "body_encoding",
        "delivery_tag",
    }


def test_priority_and_key_prefix_place_messages_where_kombu_puts_and_counts_them():
    kombu = Channel.__new__(Channel)  # only its placement arithmetic is used, no connection
    kombu.priority_steps = [0, 4, 8]
    layout = QueueLayout({"global_keyprefix": "t7:", "priority_steps": [0, 4, 8]})
    for priority in range(-1, 12):
        clamped = max(0, min(priority, 9))
        assert layout.key("io", priority) == "t7:" + kombu._q_for_pri("io", clamped)
    assert layout.keys("io") == ["t7:" + kombu._q_for_pri("io", step) for step in (0, 4, 8)]

    publisher, client = make_publisher(
        BOLT_BROKER_KEY_PREFIX="t7:", BOLT_BROKER_PRIORITY_STEPS="0,4,8"
    )
    for priority, count in ((0, 1), (5, 2), (9, 3)):
        publisher.submit_many(computation.echo, [(1,)] * count, batch_size=1, priority=priority)
    assert [client.llen(key) for key in layout.keys("computation")] == [1, 2, 3]
    assert publisher.depth("computation") == publisher.depth(computation.echo) == 6
    assert stored(client, layout.key("computation", 9))[0]["properties"]["priority"] == 9


@pytest.mark.parametrize("bad", [{1, 2}, object(), b"bytes"], ids=["set", "object", "bytes"])
@pytest.mark.parametrize("batch_size", [1, 25])
def test_an_argument_json_cannot_carry_is_refused_before_anything_is_published(bad, batch_size):
    publisher, client = make_publisher()
    items = [(1,), (2,), ((3,), {"ok": True}), ((4,), {"bad": bad}), (5,)]
    with pytest.raises(UnserializableArgument, match=r"call 3 of bolt\.computation\.echo"):
        publisher.submit_many(computation.echo, items, batch_size=batch_size)
    assert client.dbsize() == 0


def test_a_circular_argument_is_refused_too():
    publisher, client = make_publisher()
    loop: list = []
    loop.append(loop)
    with pytest.raises(UnserializableArgument, match="call 0"):
        publisher.submit(computation.echo, loop)
    assert client.dbsize() == 0


@pytest.mark.parametrize("batch_size", [0, 1001, 2.5, "25"])
def test_a_batch_size_outside_1_to_1000_is_an_error(batch_size):
    publisher, client = make_publisher()
    with pytest.raises(UsageError, match="batch_size"):
        publisher.submit_many(computation.echo, [(1,)], batch_size=batch_size)
    assert client.dbsize() == 0


def test_what_is_not_a_bolt_task_or_an_argument_tuple_is_refused():
    publisher, _ = make_publisher()
    with pytest.raises(UsageError, match="not a bolt task"):
        publisher.submit_many(print, [(1,)])
    with pytest.raises(UsageError, match="runs batches itself"):
        publisher.submit_many("bolt.computation.run_batch", [(1,)])
    with pytest.raises(
        UsageError, match=r"item 1 must be an argument tuple or an \(args, kwargs\) pair, not int"
    ):
        publisher.submit_many(computation.echo, [(1,), 2])
    with pytest.raises(UsageError, match="must be strings"):
        publisher.submit_many(computation.echo, [((1,), {3: 4})])


def test_queue_full_at_exactly_the_limit_counting_every_priority_list():
    publisher, _ = make_publisher(BOLT_QUEUE_LIMITS="computation=5", BOLT_QUEUE_WAIT_S="0")
    publisher.submit_many(computation.echo, [(1,)] * 3, batch_size=1, priority=9)
    publisher.submit_many(computation.echo, [(1,)] * 20, batch_size=10)  # 2 messages: 5 in all
    assert publisher.depth("computation") == 5
    with pytest.raises(QueueFull) as caught:
        publisher.submit(computation.echo, 1)
    assert (caught.value.queue, caught.value.depth, caught.value.limit) == ("computation", 5, 5)
    assert "'computation'" in str(caught.value) and "5 messages at a limit of 5" in str(
        caught.value
    )
    assert publisher.depth("computation") == 5


def test_a_batch_that_does_not_fit_is_refused_whole_and_one_that_never_can_at_once():
    publisher, _ = make_publisher(BOLT_QUEUE_LIMITS="computation=4", BOLT_QUEUE_WAIT_S="0")
    publisher.submit_many(computation.echo, [(1,)] * 2, batch_size=1)
    with pytest.raises(QueueFull):
        publisher.submit_many(computation.echo, [(1,)] * 3, batch_size=1)
    assert publisher.depth("computation") == 2
    with pytest.raises(UsageError, match="can never fit"):
        publisher.submit_many(computation.echo, [(1,)] * 5, batch_size=1)


def test_a_full_queue_takes_the_submission_once_a_worker_makes_room():
    publisher, client = make_publisher(BOLT_QUEUE_LIMITS="computation=2", BOLT_QUEUE_WAIT_S="20")
    publisher.submit_many(computation.echo, [(1,)] * 2, batch_size=1)
    taker = threading.Timer(0.2, client.rpop, args=("computation",))
    taker.start()
    started = time.monotonic()
    publisher.submit_many(computation.echo, [(2,)])
    taker.join()
    assert 0.2 <= time.monotonic() - started < 20
    assert publisher.depth("computation") == 2


def test_single_submits_share_a_message_published_as_soon_as_it_holds_25():
    publisher, client = make_publisher(BOLT_SUBMIT_LINGER_MS="60000")
    handles = [publisher.submit(computation.echo, i) for i in range(26)]
    [message] = stored(client)
    assert body(message)[0][1] == [[[i], {}] for i in range(25)]
    assert {h.task_ids[0] for h in handles[:25]} == {message["headers"]["id"]}
    assert [h.pieces[0].offset for h in handles] == [*range(25), 0]
    publisher.flush()
    assert [len(body(m)[0][1]) for m in stored(client)] == [25, 1]


def test_lingering_submits_are_published_when_their_linger_ends():
    publisher, client = make_publisher(BOLT_SUBMIT_LINGER_MS="20")
    publisher.submit(computation.echo, 1)
    publisher.submit(computation.echo, 2)
    publisher.submit(analysis.measure_source, "x = 1", path="a.py")
    deadline = time.monotonic() + 10
    while (client.llen("computation"), client.llen("analysis")) != (1, 1):
        assert time.monotonic() < deadline, "lingering calls were never published"
        time.sleep(0.01)
    assert body(stored(client)[0])[0][1] == [[[1], {}], [[2], {}]]


def test_a_submit_opening_a_batch_in_a_full_queue_raises_queue_full():
    publisher, _ = make_publisher(BOLT_QUEUE_LIMITS="computation=1", BOLT_QUEUE_WAIT_S="0")
    publisher.submit_many(computation.echo, [(1,)])
    with pytest.raises(QueueFull):
        publisher.submit(computation.echo, 2)
    with pytest.raises(UnserializableArgument):
        publisher.submit(computation.echo, {3})


def test_a_batch_runs_every_call_and_keeps_each_error_in_its_place():
    def reciprocal(x, scale=1):
        return scale / x

    outcome = run_calls(reciprocal, [[[2], {}], [[0], {}], [[4], {"scale": 8}]])
    assert outcome == {
        "values": [0.5, None, 2.0],
        "errors": [[1, "ZeroDivisionError", "division by zero"]],
    }


def test_a_result_that_cannot_be_stored_is_that_calls_error_alone():
    outcome = run_calls(lambda x: {x} if x == 2 else x, [[[1], {}], [[2], {}], [[3], {}]])
    assert outcome["values"] == [1, None, 3]
    [(index, kind, message)] = outcome["errors"]
    assert (index, kind) == (1, "TypeError") and "cannot be stored" in message


def test_the_producer_api_is_exported_lazily_from_bolt_tasks():
    assert bolt_tasks.submit is batching.submit
    assert bolt_tasks.submit_many is batching.submit_many
    assert bolt_tasks.CallError is batching.CallError
    with pytest.raises(AttributeError):
        _ = bolt_tasks.no_such_name
    code = "import sys, bolt_tasks; print('celery' in sys.modules, 'redis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_queue_limits_default_to_1000_and_are_overridden_per_queue():
    settings = Settings.from_env({"BOLT_QUEUE_LIMITS": "analysis=500, io=2000"})
    assert [settings.queue_limit(q) for q in ("analysis", "io", "computation")] == [500, 2000, 1000]
    assert Settings.from_env({"BOLT_QUEUE_DEPTH_LIMIT": "7"}).queue_limit("io") == 7
    assert Settings.from_env({}).broker_priority_steps == tuple(Channel.priority_steps)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BOLT_QUEUE_LIMITS", "nosuchqueue=5"),
        ("BOLT_QUEUE_LIMITS", "io"),
        ("BOLT_QUEUE_LIMITS", "io=0"),
        ("BOLT_QUEUE_DEPTH_LIMIT", "0"),
        ("BOLT_QUEUE_WAIT_S", "-1"),
        ("BOLT_BROKER_PRIORITY_STEPS", "0,12"),
        ("BOLT_BROKER_PRIORITY_STEPS", "5,3"),
    ],
)
def test_a_bad_queue_setting_is_refused_naming_its_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_result_keys_are_the_keys_the_result_backend_reads():
    from bolt_tasks.producer import result_keys

    publisher, _ = make_publisher()
    ids = ["0f8fad5b-d9cb-469f-a165-70867728950e", "task-é"]
    expected = [publisher.backend.get_key_for_task(task_id) for task_id in ids]
    assert result_keys(publisher.backend, ids) == expected
    assert result_keys(app.backend, ids) == [app.backend.get_key_for_task(i) for i in ids]
