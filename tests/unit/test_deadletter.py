"""The dead-letter screen and list: what kombu could not make a message of, kept with its reason."""

import functools
import json

import fakeredis
from hypothesis import given, settings
from hypothesis import strategies as st

from bolt_tasks.batching import Publisher
from bolt_tasks.names import DEAD_LETTERS_KEY
from bolt_tasks.settings import Settings
from bolt_tasks.tasks import computation
from bolt_workers import deadletter


@functools.cache
def published_envelope() -> str:
    """A message exactly as a producer leaves it in a queue."""
    client = fakeredis.FakeRedis()
    settings = Settings.from_env({"BOLT_BROKER_URL": "redis://127.0.0.1:1/0"})
    publisher = Publisher.from_settings(settings, client=client)
    publisher.submit_many(computation.echo, [([1, "a"],)], batch_size=1)
    [item] = client.lrange("computation", 0, -1)
    return item.decode()


def test_a_published_message_passes_the_screen_and_its_breakages_are_named():
    good = published_envelope()
    assert deadletter.envelope_problem(good) is None
    envelope = json.loads(good)

    def broken(**changes: object) -> str:
        return deadletter.envelope_problem(json.dumps({**envelope, **changes})) or ""

    assert "not JSON" in deadletter.envelope_problem(b"\xff\xfe{")
    assert "not a JSON object but a list" in deadletter.envelope_problem("[1]")
    assert "'headers'" in broken(headers="x")
    assert "'body' is not a string" in broken(body=3)
    properties = envelope["properties"]
    assert "delivery_tag" in broken(properties={**properties, "delivery_tag": [1]})
    assert "routing_key" in broken(properties={**properties, "delivery_info": {}})
    assert "body_encoding" in broken(properties={**properties, "body_encoding": "rot13"})
    assert "not base64" in broken(body="abc")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_the_screen_names_a_reason_for_any_bytes_and_never_raises(raw):
    problem = deadletter.envelope_problem(raw)
    assert problem is None or isinstance(problem, str)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["headers", "properties", "body"]), json_values))
def test_the_screen_never_raises_on_a_mangled_envelope(changes):
    envelope = {**json.loads(published_envelope()), **changes}
    problem = deadletter.envelope_problem(json.dumps(envelope))
    assert problem is None or isinstance(problem, str)


def test_the_list_keeps_the_newest_letters_up_to_its_bound_and_each_message_in_part():
    client = fakeredis.FakeRedis()
    for number in range(12):
        text = deadletter.letter(f"reason {number}", "io", "x" * 40_000, "w pid 1")
        deadletter.push(client, text, keep=10)
    letters = deadletter.read(client, count=100)
    assert client.llen(DEAD_LETTERS_KEY) == 10
    assert [letter["reason"] for letter in letters] == [f"reason {n}" for n in range(11, 1, -1)]
    assert len(letters[0]["message"]) == deadletter.KEPT_BYTES
    assert letters[0]["message_bytes"] == 40_000 and letters[0]["queue"] == "io"
