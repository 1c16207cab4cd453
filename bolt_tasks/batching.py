"""The producer API: submit calls one at a time or many per message, and read their results."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, NamedTuple

import redis
from celery import states
from celery.app.backends import by_url
from celery.utils.nodenames import anon_nodename

from bolt_tasks.app import KIND_OF_TASK, app, celery_config
from bolt_tasks.backpressure import Backpressure, QueueLayout
from bolt_tasks.errors import CallsFailed, JobFailed, UnserializableArgument, UsageError
from bolt_tasks.linger import Linger, OpenBatch
from bolt_tasks.messages import MessageTemplate, body_json, json_text, new_ids
from bolt_tasks.names import QUEUE_OF_KIND, Kind
from bolt_tasks.producer import CONNECT_TIMEOUT_S, result_keys
from bolt_tasks.settings import Settings, get_settings
from bolt_tasks.tasks.batch import ERRORS, RUNNERS, VALUES
from bolt_tasks.tls import redis_client_options

log = logging.getLogger("bolt.batching")

# 25 calls per message spend Celery's millisecond of messaging per message on 25 calls, while a
# batch of micro tasks still finishes in a few milliseconds and a slow one holds back only 24.
DEFAULT_BATCH_SIZE = 25
MAX_BATCH_SIZE = 1000
# A waiting handle looks for finished messages after this long, doubling up to the maximum:
# soon enough for a batch of micro tasks, rarely enough to leave the cores to the workers.
FIRST_POLL_S, MAX_POLL_S = 0.002, 0.05
# At most this many unfinished messages, the earliest, are asked about in one poll.
POLL_WINDOW = 64

_BROKER_POOLS: dict[str, redis.ConnectionPool] = {}
_PUBLISHERS: dict[tuple[int, str, str], Publisher] = {}


@dataclass(frozen=True)
class CallError:
    """The place of a call that raised: its index in the submission, exception type and message."""

    index: int
    type: str
    message: str

    def __str__(self) -> str:
        return f"call {self.index} raised {self.type}: {self.message}"


class Piece(NamedTuple):
    """Calls of a submission in one message: its task id, the index in the submission of the
    first, how many, whether the message is a batch, where in the batch they start, and whether
    other handles share the message (its result is then left to expire, not deleted)."""

    task_id: str
    first: int
    count: int
    batched: bool
    offset: int = 0
    shared: bool = False


def broker_client(url: str, settings: Settings) -> redis.Redis:
    """A client of the process's one connection pool for this broker URL (TLS as settings say)."""
    pool = _BROKER_POOLS.get(url)
    if pool is None:
        options = redis_client_options(settings, url)
        pool = redis.ConnectionPool.from_url(
            url, socket_connect_timeout=CONNECT_TIMEOUT_S, **options
        )
        _BROKER_POOLS[url] = pool
    return redis.Redis(connection_pool=pool)


class Submission:
    """The handle of submitted calls: their results in submission order, as messages finish.

    Iterating yields each call's value, or a CallError in the place of a call that raised (or
    whose message failed as a whole); it waits up to BOLT_JOB_TIMEOUT_S and raises JobFailed
    past it. get() returns the list of values, and raises CallsFailed when a call raised unless
    propagate is False, in which case the CallErrors stand in their places. Results are deleted
    from Redis as they are read (but for a message single submits shared, left to expire); the
    handle keeps them, so it can be read again.
    """

    def __init__(
        self,
        backend: Any,
        pieces: Sequence[Piece],
        timeout_s: float,
        linger: Linger | None = None,
    ) -> None:
        self.backend, self.pieces, self.timeout_s = backend, list(pieces), timeout_s
        self._linger = linger
        self._outcomes: dict[int, list[Any]] = {}
        self._read_keys: list[str] = []  # results read, to delete with the next poll
        self._keys = result_keys(backend, (piece.task_id for piece in self.pieces))

    def __len__(self) -> int:
        return sum(piece.count for piece in self.pieces)

    @property
    def task_ids(self) -> list[str]:
        """The Celery task id of each message, in submission order."""
        return [piece.task_id for piece in self.pieces]

    def __iter__(self) -> Iterator[Any]:
        return self.stream()

    def stream(self, timeout: float | None = None) -> Iterator[Any]:
        """Each call's value (or CallError) in submission order, as soon as its message is done."""
        deadline = time.monotonic() + (self.timeout_s if timeout is None else timeout)
        if self._linger is not None:
            self._linger.flush()  # a caller who waits for results gains nothing by lingering
        for number in range(len(self.pieces)):
            poll_s = FIRST_POLL_S
            while not (number in self._outcomes or self._poll(number)):
                if time.monotonic() > deadline:
                    raise JobFailed(self._late(number, timeout))
                time.sleep(poll_s)
                poll_s = min(poll_s * 2, MAX_POLL_S)
            yield from self._outcomes[number]

    def get(self, timeout: float | None = None, propagate: bool = True) -> list[Any]:
        """Every call's value in submission order, waiting up to timeout seconds for them all."""
        results = list(self.stream(timeout))
        errors = [result for result in results if isinstance(result, CallError)]
        if errors and propagate:
            raise CallsFailed(errors, results)
        return results

    def _poll(self, number: int) -> bool:
        """Fetch what finished among the earliest unfinished messages; True if any did.

        One round trip: the MGET of the window, and the DEL of what the last poll read.
        """
        unfinished = (n for n in range(number, len(self.pieces)) if n not in self._outcomes)
        window = list(islice(unfinished, POLL_WINDOW))
        keys = [self._keys[n] for n in window]
        pipe = self.backend.client.pipeline(transaction=False)
        pipe.mget(keys)
        if self._read_keys:
            pipe.delete(*self._read_keys)
        raws = pipe.execute()[0]
        self._read_keys = []
        for n, key, raw in zip(window, keys, raws, strict=True):
            if raw is None:
                self._check_refused(n)
                continue
            meta = self.backend.decode_result(raw)
            if meta["status"] in states.READY_STATES:
                self._outcomes[n] = _outcome(self.pieces[n], meta)
                if not self.pieces[n].shared:
                    self._read_keys.append(key)
        if len(self._outcomes) == len(self.pieces) and self._read_keys:
            self.backend.client.delete(*self._read_keys)
            self._read_keys = []
        return bool(window) and window[0] in self._outcomes

    def _check_refused(self, n: int) -> None:
        refusal = self._linger.refusal(self.pieces[n].task_id) if self._linger else None
        if refusal is not None:
            piece = self.pieces[n]
            self._outcomes[n] = [CallError(piece.first + i, *refusal) for i in range(piece.count)]

    def _late(self, number: int, timeout: float | None) -> str:
        waiting = len(self) - self.pieces[number].first
        waited = self.timeout_s if timeout is None else timeout
        return f"{waiting} of {len(self)} calls had not finished after {waited:g} s"


def _outcome(piece: Piece, meta: dict[str, Any]) -> list[Any]:
    result = meta["result"]
    if meta["status"] != states.SUCCESS:
        kind, message = _failure(result)
        return [CallError(piece.first + i, kind, message) for i in range(piece.count)]
    if not piece.batched:
        return [result]
    values = list(result[VALUES])
    for index, kind, message in result[ERRORS]:
        values[index] = CallError(piece.first + index - piece.offset, kind, message)
    return values[piece.offset : piece.offset + piece.count]


def _failure(result: Any) -> tuple[str, str]:
    # The backend has turned a failed task's stored error back into an exception.
    if isinstance(result, BaseException):
        return type(result).__name__, str(result)
    return "TaskFailed", str(result)


def _task_name(task: Any) -> tuple[str, Kind]:
    name = task if isinstance(task, str) else getattr(task, "name", None)
    kind = KIND_OF_TASK.get(name) if isinstance(name, str) else None
    if kind is None:
        raise UsageError(f"{task!r} is not a bolt task: declare it with @bolt_task(kind)")
    if name == RUNNERS[kind].name:
        raise UsageError(f"{name} runs batches itself; submit the task it would run instead")
    return name, kind


def _call(index: int, item: Any) -> list[Any]:
    """[args, kwargs] of one item: an argument tuple, or an (args, kwargs) pair."""
    if not isinstance(item, tuple | list):
        raise UsageError(
            f"item {index} must be an argument tuple or an (args, kwargs) pair, "
            f"not {type(item).__name__}"
        )
    if len(item) == 2 and isinstance(item[0], tuple | list) and isinstance(item[1], dict):
        if not all(isinstance(key, str) for key in item[1]):
            raise UsageError(f"item {index}: keyword argument names must be strings")
        return [item[0], item[1]]
    return [item, {}]


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise UsageError(
            f"batch_size must be a whole number from 1 to {MAX_BATCH_SIZE}, not {batch_size!r}"
        )


def _json(name: str, value: Any, index: int) -> str:
    """The JSON of call index's arguments, or UnserializableArgument saying why they cannot be."""
    try:
        return json_text(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise UnserializableArgument(
            f"call {index} of {name}: its arguments cannot travel as JSON ({exc}); "
            "pass None, booleans, numbers, strings, lists and dicts with string keys"
        ) from None


def _dumps(name: str, calls: Sequence[Any], first: int) -> str:
    """The JSON of a batch of calls; on failure, find the first call that cannot travel."""
    try:
        return json_text(calls)
    except (TypeError, ValueError, RecursionError):
        for offset, call in enumerate(calls):
            _json(name, call, first + offset)
        raise


class Publisher:
    """Publishes calls of bolt tasks on one broker and hands back their Submission."""

    def __init__(
        self,
        settings: Settings,
        broker_url: str,
        results_url: str,
        transport_options: dict[str, Any],
        client: redis.Redis | None = None,
    ) -> None:
        self.settings = settings
        self.client = client if client is not None else broker_client(broker_url, settings)
        self.gate = Backpressure(self.client, QueueLayout(transport_options), settings, broker_url)
        backend_cls, url = by_url(results_url, app.loader)
        self.backend = backend_cls(app=app, url=url)
        self._origin, self._reply_to = anon_nodename(), app.thread_oid
        self._templates: dict[tuple[str, str, int], MessageTemplate] = {}
        linger_s = settings.submit_linger_ms / 1000
        self._linger = (
            Linger(linger_s, DEFAULT_BATCH_SIZE, self._publish_open) if linger_s else None
        )

    @classmethod
    def from_settings(cls, settings: Settings, client: redis.Redis | None = None) -> Publisher:
        """A publisher of the broker, results and transport options that settings describe."""
        conf = celery_config(settings)
        return cls(
            settings,
            conf["broker_url"],
            conf["result_backend"],
            conf["broker_transport_options"],
            client,
        )

    def depth(self, task_or_queue: Any) -> int:
        """Messages waiting in a queue (named, or the queue of a task's kind)."""
        if isinstance(task_or_queue, str) and task_or_queue in QUEUE_OF_KIND.values():
            return self.gate.depth(task_or_queue)
        return self.gate.depth(QUEUE_OF_KIND[_task_name(task_or_queue)[1]])

    def submit(self, task: Any, /, *args: Any, **kwargs: Any) -> Submission:
        """Publish one call of a task.

        It waits up to BOLT_SUBMIT_LINGER_MS for more calls of the task to share its message (a
        batch, published at once when it holds 25); with the linger at 0 it is an ordinary
        message of the task itself. Reading the handle's results publishes what lingers.
        """
        if self._linger is None:
            return self.submit_many(task, [(args, kwargs)], batch_size=1)
        name, kind = _task_name(task)
        call_json = _json(name, _call(0, (args, kwargs)), 0)
        queue = QUEUE_OF_KIND[kind]
        task_id, position = self._linger.add(
            name, kind, 0, call_json, lambda: self.gate.make_room(queue)
        )
        piece = Piece(task_id, 0, 1, True, position, shared=True)
        return Submission(self.backend, [piece], self.settings.job_timeout_s, self._linger)

    def flush(self) -> None:
        """Publish the calls that single submits left lingering, now."""
        if self._linger is not None:
            self._linger.flush()

    def submit_many(
        self,
        task: Any,
        items: Iterable[Any],
        batch_size: int = DEFAULT_BATCH_SIZE,
        priority: int = 0,
    ) -> Submission:
        """Publish calls batch_size to a message, all messages in one round trip, or none.

        Each item is an argument tuple, or an (args, kwargs) pair. A batch of one call is an
        ordinary message of the task; larger ones are messages of the kind's batch runner.
        """
        name, kind = _task_name(task)
        _check_batch_size(batch_size)
        calls = [_call(index, item) for index, item in enumerate(items)]
        if not calls:
            return Submission(self.backend, [], self.settings.job_timeout_s)
        queue = QUEUE_OF_KIND[kind]
        if batch_size == 1:
            pieces, messages = self._singles(name, queue, priority, calls)
        else:
            pieces, messages = self._batches(name, kind, queue, priority, calls, batch_size)
        depth = self.gate.publish(queue, priority, messages)
        log.debug(
            "%d calls of %s in %d messages to %s (depth %d)",
            len(calls),
            name,
            len(messages),
            queue,
            depth,
        )
        return Submission(self.backend, pieces, self.settings.job_timeout_s)

    def _template(self, name: str, queue: str, priority: int) -> MessageTemplate:
        key = (name, queue, priority)
        template = self._templates.get(key)
        if template is None:
            template = MessageTemplate(
                name, queue, priority, self.settings.task_time_limit_s, self._origin, self._reply_to
            )
            self._templates[key] = template
        return template

    def _singles(
        self, name: str, queue: str, priority: int, calls: list[list[Any]]
    ) -> tuple[list[Piece], list[bytes]]:
        template = self._template(name, queue, priority)
        ids = new_ids(2 * len(calls))
        pieces, messages = [], []
        for index, (args, kwargs) in enumerate(calls):
            args_json = _json(name, args, index)
            kwargs_json = _json(name, kwargs, index) if kwargs else "{}"
            task_id = ids[2 * index]
            body = body_json(args_json, kwargs_json)
            messages.append(
                template.render(task_id, ids[2 * index + 1], body, args_json, kwargs_json)
            )
            pieces.append(Piece(task_id, index, 1, False))
        return pieces, messages

    def _batches(
        self,
        name: str,
        kind: Kind,
        queue: str,
        priority: int,
        calls: list[list[Any]],
        batch_size: int,
    ) -> tuple[list[Piece], list[bytes]]:
        starts = range(0, len(calls), batch_size)
        ids = new_ids(2 * len(starts))
        pieces, messages = [], []
        for number, first in enumerate(starts):
            chunk = calls[first : first + batch_size]
            task_id, tag = ids[2 * number], ids[2 * number + 1]
            calls_json = _dumps(name, chunk, first)
            messages.append(
                self._batch_message(name, kind, priority, task_id, tag, calls_json, len(chunk))
            )
            pieces.append(Piece(task_id, first, len(chunk), True))
        return pieces, messages

    def _batch_message(
        self,
        name: str,
        kind: Kind,
        priority: int,
        task_id: str,
        tag: str,
        calls_json: str,
        count: int,
    ) -> bytes:
        """A message of the kind's batch runner: run_batch(name, calls)."""
        template = self._template(RUNNERS[kind].name, QUEUE_OF_KIND[kind], priority)
        body = body_json(f"[{json.dumps(name)}, {calls_json}]", "{}")
        return template.render(task_id, tag, body, f"({name!r}, <{count} calls>)", "{}")

    def _publish_open(self, batch: OpenBatch) -> None:
        calls_json = "[" + ", ".join(batch.calls) + "]"
        message = self._batch_message(
            batch.name,
            batch.kind,
            batch.priority,
            batch.task_id,
            batch.tag,
            calls_json,
            len(batch.calls),
        )
        self.gate.publish(QUEUE_OF_KIND[batch.kind], batch.priority, [message])


def default_publisher() -> Publisher:
    """The process's publisher of the broker and result backend the shared app points at."""
    conf = app.conf
    key = (os.getpid(), conf.broker_url, conf.result_backend)
    publisher = _PUBLISHERS.get(key)
    if publisher is None:
        publisher = Publisher(
            get_settings(),
            conf.broker_url,
            conf.result_backend,
            dict(conf.broker_transport_options),
        )
        _PUBLISHERS[key] = publisher
    return publisher


def submit(task: Any, /, *args: Any, **kwargs: Any) -> Submission:
    """Publish one call of a bolt task; submit(f, x).get() == [f(x)]."""
    return default_publisher().submit(task, *args, **kwargs)


def submit_many(
    task: Any, items: Iterable[Any], batch_size: int = DEFAULT_BATCH_SIZE, priority: int = 0
) -> Submission:
    """Publish many calls of a bolt task, batch_size calls to a message, in one round trip."""
    return default_publisher().submit_many(task, items, batch_size, priority)
