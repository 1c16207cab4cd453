"""Celery task messages (protocol 2) exactly as kombu's Redis transport stores them in a queue."""

from __future__ import annotations

import binascii
import json
import os
import re
import threading
from json.encoder import c_make_encoder, encode_basestring_ascii

# The options part of a protocol-2 body: bolt's messages carry no callbacks, chains or chords.
EMBED_JSON = '{"callbacks": null, "errbacks": null, "chain": null, "chord": null}'
# Celery itself cuts argsrepr and kwargsrepr to this many characters.
REPR_MAX_CHARS = 1024
# The fields a message fills in, in the order they appear in its text (the id three times).
FIELDS = ("body", "id", "tag", "argsrepr", "kwargsrepr")
ORDER = ("body", "id", "id", "argsrepr", "kwargsrepr", "id", "tag")


class _IdSource:
    """Version-4 UUID strings: 80 random bits drawn once per process, then a 48-bit counter.

    Celery only needs task ids and delivery tags to be unique; a counter behind a random prefix
    is, and costs a fraction of a fresh uuid4 per message.
    """

    def __init__(self) -> None:
        self._pid = -1
        self._lock = threading.Lock()
        self._prefix, self._next = "", 0

    def take(self, count: int) -> range:
        with self._lock:
            if self._pid != os.getpid():  # a forked child must not repeat its parent's ids
                self._pid, self._prefix, self._next = os.getpid(), _random_prefix(), 0
            start, self._next = self._next, self._next + count
        return range(start, start + count)

    def ids(self, count: int) -> list[str]:
        numbers = self.take(count)
        prefix = self._prefix
        return [f"{prefix}{number:012x}" for number in numbers]


def _random_prefix() -> str:
    h = os.urandom(10).hex()
    variant = "89ab"[int(h[4], 16) & 3]
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-"


_IDS = _IdSource()


def new_ids(count: int) -> list[str]:
    """count distinct version-4 UUID strings, unique across processes and within this one."""
    return _IDS.ids(count)


def _refuse(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# json.dumps builds a new C encoder on every call, which costs three times what encoding a few
# arguments does; bolt keeps one. It skips the check for circular containers, which then fail
# with RecursionError instead of ValueError.
_C_ENCODER = c_make_encoder and c_make_encoder(
    None, _refuse, encode_basestring_ascii, None, ": ", ", ", False, False, True
)


def json_text(value: object) -> str:
    """value as JSON text, as json.dumps writes it; TypeError for what JSON cannot carry."""
    if _C_ENCODER is None:
        return json.dumps(value)
    return "".join(_C_ENCODER(value, 0))


def body_json(args_json: str, kwargs_json: str) -> str:
    """A protocol-2 body, [args, kwargs, options], from its already serialised arguments."""
    return f"[{args_json}, {kwargs_json}, {EMBED_JSON}]"


def envelope(
    task_name: str,
    queue: str,
    priority: int,
    time_limit_s: float | None,
    origin: str,
    reply_to: str,
    fields: dict[str, str],
) -> dict[str, object]:
    """The message kombu's Redis channel stores for Celery's apply_async, fields filled in.

    Headers and properties are those of Celery's protocol 2 and of kombu's virtual channel
    (a base64 body, a delivery tag, delivery_info naming the default exchange and the queue), so
    stock workers, Flower and `celery inspect` read bolt's messages as their own.
    """
    task_id = fields["id"]
    return {
        "body": fields["body"],
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task_name,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [time_limit_s, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": fields["argsrepr"],
            "kwargsrepr": fields["kwargsrepr"],
            "origin": origin,
            "ignore_result": False,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": reply_to,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": priority,
            "body_encoding": "base64",
            "delivery_tag": fields["tag"],
        },
    }


class MessageTemplate:
    """The stored text of one task's messages to one queue at one priority, fields left open.

    Rendering drops five values into fixed text instead of building and serialising a dict of
    two dozen entries per message, which is most of what publishing a message costs in Python.
    """

    def __init__(
        self,
        task_name: str,
        queue: str,
        priority: int,
        time_limit_s: float | None,
        origin: str,
        reply_to: str,
    ) -> None:
        marks = {name: f"\x00{name}\x00" for name in FIELDS}
        text = json.dumps(
            envelope(task_name, queue, priority, time_limit_s, origin, reply_to, marks)
        )
        # Each mark is now the JSON string "\u0000name\u0000"; split the text around them.
        pieces = re.split(r'"\\u0000(' + "|".join(FIELDS) + r')\\u0000"', text)
        if tuple(pieces[1::2]) != ORDER:
            raise AssertionError(f"message fields appear as {pieces[1::2]}, not {ORDER}")
        self._parts = pieces[0::2]

    def render(self, task_id: str, tag: str, body: str, argsrepr: str, kwargsrepr: str) -> bytes:
        """One message's stored JSON, encoded: body is the protocol-2 body as JSON text.

        Bytes, not text: redis-py sends bytes as they are, and encoding costs it twice as much.
        """
        quoted_id = '"' + task_id + '"'
        p = self._parts
        return "".join(
            (
                p[0],
                '"' + binascii.b2a_base64(body.encode(), newline=False).decode("ascii") + '"',
                p[1],
                quoted_id,
                p[2],
                quoted_id,
                p[3],
                encode_basestring_ascii(argsrepr[:REPR_MAX_CHARS]),
                p[4],
                encode_basestring_ascii(kwargsrepr[:REPR_MAX_CHARS]),
                p[5],
                quoted_id,
                p[6],
                '"' + tag + '"',
                p[7],
            )
        ).encode()
