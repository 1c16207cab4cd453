"""Dead letters: a message a worker cannot run goes to a bounded Redis list with the reason.

Two places catch them. kombu's Redis transport decodes each item it pops from a queue as its
JSON envelope and stops the worker if that fails, so bolt's worker transport screens every
popped item first (bolt_workers.transport, with envelope_problem here). Past the envelope,
Celery's consumer logs and drops what it cannot use (a body that does not decode, pickle or
another refused content type, an unknown task) or, for missing headers, restarts its
connection over and over; bolt's consumer (DeadLetterConsumer) dead-letters each of those and
goes on consuming.

A dead letter is a JSON object: the reason, the queue, the worker, the time and the message
itself (its first KEPT_BYTES). The list keeps the newest BOLT_DEAD_LETTERS_MAX of them.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import socket
import time
from typing import Any

from celery import Celery
from celery.worker.consumer import Consumer
from kombu.utils.json import loads

from bolt_tasks.names import DEAD_LETTERS_KEY
from bolt_tasks.settings import get_settings

log = logging.getLogger("bolt.deadletter")

# The part of a dead message kept with its reason: enough to recognise it and find its
# producer, and small enough that the bounded list stays small.
KEPT_BYTES = 16 * 1024
# Body encodings kombu's channel can undo.
BODY_ENCODINGS = (None, "utf-8", "base64")


def letter(reason: str, queue: str | None, message: str | bytes, worker: str) -> str:
    """One dead letter as the JSON text stored in the list."""
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    return json.dumps(
        {
            "reason": reason,
            "queue": queue,
            "worker": worker,
            "at": round(time.time(), 3),
            "message": text[:KEPT_BYTES],
            "message_bytes": len(message),
        }
    )


def push(client: Any, text: str, keep: int) -> None:
    """Add a dead letter to the list and drop all but the newest `keep`."""
    pipe = client.pipeline(transaction=False)
    pipe.lpush(DEAD_LETTERS_KEY, text)
    pipe.ltrim(DEAD_LETTERS_KEY, 0, keep - 1)
    pipe.execute()


def read(client: Any, count: int = 100) -> list[dict[str, Any]]:
    """The newest `count` dead letters, newest first."""
    return [json.loads(raw) for raw in client.lrange(DEAD_LETTERS_KEY, 0, count - 1)]


def envelope_problem(raw: bytes | str) -> str | None:
    """What keeps kombu from making a message of a popped queue item, or None if nothing does."""
    try:
        envelope = loads(raw)
    except Exception as exc:  # untrusted bytes: any failure to decode them is the reason
        return f"not JSON: {type(exc).__name__}: {exc}"
    return message_problem(envelope)


def message_problem(envelope: Any) -> str | None:
    """What keeps kombu from making a message of a decoded envelope, or None if nothing does."""
    if not isinstance(envelope, dict):
        return f"not a JSON object but a {type(envelope).__name__}"
    for name in ("headers", "properties"):
        if not isinstance(envelope.get(name), dict):
            return f"field {name!r} is missing or not an object"
    for name in ("body", "content-type", "content-encoding"):
        if not isinstance(envelope.get(name), str | None):
            return f"field {name!r} is not a string"
    return _properties_problem(envelope["properties"], envelope.get("body"))


def _properties_problem(properties: dict[str, Any], body: str | None) -> str | None:
    if not isinstance(properties.get("delivery_tag"), str):
        return "properties.delivery_tag is missing or not a string"
    info = properties.get("delivery_info")
    if not isinstance(info, dict) or not all(
        isinstance(info.get(key), str) for key in ("exchange", "routing_key")
    ):
        return "properties.delivery_info lacks its exchange and routing_key strings"
    encoding = properties.get("body_encoding")
    if encoding not in BODY_ENCODINGS:
        return f"body_encoding {encoding!r} is not one of base64, utf-8"
    if encoding == "base64" and body:
        try:
            base64.b64decode(body)
        except (binascii.Error, ValueError) as exc:
            return f"body is not base64: {exc}"
    return None


def worker_id(node: str | None = None) -> str:
    """How a dead letter names the worker process that buried it."""
    return f"{node or socket.gethostname()} pid {os.getpid()}"


class DeadLetterConsumer(Consumer):
    """Celery's consumer, dead-lettering each message it cannot turn into a task, and going on."""

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        """Dead-letter a message whose body does not decode."""
        self._bury(message, f"body does not decode: {exc}")

    def on_unknown_message(self, body: Any, message: Any) -> None:
        """Dead-letter a message that names no task."""
        self._bury(message, "not a task message: no task header and no task in the body")

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        """Dead-letter a refused message: a content type not accepted, bad headers."""
        self._bury(message, f"refused: {exc}")

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        """Dead-letter a message of an unregistered task, and fail its task id."""
        name = (message.headers or {}).get("task")
        self._dead_letter(message, f"no task named {name!r} is registered")
        try:
            # Celery stores a NotRegistered failure under the message's id, so its producer
            # hears of it rather than waiting.
            super().on_unknown_task(body, message, exc)
        except Exception as failure:  # no id to store a failure under: the letter is enough
            log.warning("unknown task message without an id: %r", failure)
            self._settle(message)

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's message handler, dead-lettering what it raises for a message's own fault."""
        handle = super().create_task_handler(*args, **kwargs)
        # kombu's Redis transport counts KeyError among connection errors (a stale socket can
        # raise one); raised while a message is read, it is the message's missing field.
        connection_errors = tuple(e for e in self.connection_errors if e is not KeyError)

        def on_task_received(message: Any) -> Any:
            try:
                return handle(message)
            except connection_errors:
                raise
            except Exception as exc:  # a message's own fault must not stop the consumer
                self._bury(message, f"malformed task message: {type(exc).__name__}: {exc}")
                return None

        return on_task_received

    def _bury(self, message: Any, reason: str) -> None:
        self._dead_letter(message, reason)
        self._settle(message)

    def _dead_letter(self, message: Any, reason: str) -> None:
        queue = (message.delivery_info or {}).get("routing_key")
        log.warning("dead letter from queue %s: %s", queue, reason)
        raw = json.dumps(_describe(message), default=repr)
        with message.channel.conn_or_acquire() as client:
            push(client, letter(reason, queue, raw, worker_id(self.hostname)), _keep())

    def _settle(self, message: Any) -> None:
        # Rejected without requeueing: the message leaves the queue's unacked bookkeeping.
        if not message.acknowledged:
            message.reject_log_error(log, self.connection_errors)


def _describe(message: Any) -> dict[str, Any]:
    body = message.body
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    return {
        "headers": message.headers,
        "content-type": message.content_type,
        "content-encoding": message.content_encoding,
        "body": text[:KEPT_BYTES],
    }


def _keep() -> int:
    return get_settings().dead_letters_max


def install(app: Celery) -> None:
    """Give this process's worker bolt's transport and consumer, before it starts.

    The transport (bolt_workers.transport) screens popped items and keeps acks through a Redis
    restart; the consumer dead-letters the messages it cannot run.
    """
    app.conf.broker_transport = "bolt_workers.transport:WorkerTransport"
    app.conf.worker_consumer = f"{__name__}:DeadLetterConsumer"
