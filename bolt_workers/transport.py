"""The kombu Redis transport of bolt's workers: screened queues, and acks that outlive a restart.

Three changes to kombu's Redis transport, for worker processes only:

- Every item popped from a queue is screened before kombu decodes it, and every broadcast
  (remote control) before kombu delivers it: one that is not a message envelope goes to the
  dead letters (bolt_workers.deadletter) instead of stopping the worker.
- An ack Redis refuses because it is restarting is owed, not lost: the worker settles it as soon
  as Redis answers (before its next ack or sweep), so the message is not delivered again when
  its visibility timeout passes. So is a message popped from its queue just as Redis went away,
  before kombu could note it as unacknowledged: it goes back on its queue.
- When the connection breaks, kombu puts every delivered, unacknowledged message back on its
  queue; a message this worker has handed to its pool is left alone, since its task runs and
  acks it when done, and putting it back would run it twice. The others go back at once, or
  as soon as Redis answers when it is the one away.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import redis
from celery.worker import state as worker_state
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from bolt_tasks.outage import REDIS_DOWN
from bolt_tasks.settings import get_settings
from bolt_workers import deadletter

log = logging.getLogger("bolt.transport")


@dataclass
class Owed:
    """What this process owes Redis since it went away; tags are global in Redis, so any live
    channel of the process can settle them."""

    acks: set[str] = field(default_factory=set)
    # Messages a worker dropped from memory (waiting for a free child when the connection
    # broke), to be put back on their queues from the unacked hash.
    restores: set[str] = field(default_factory=set)
    # Messages popped but never noted as unacked: (envelope, exchange, routing key).
    returns: list[tuple[Any, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> tuple[list[str], list[str], list[tuple[Any, str, str]]]:
        """A copy of everything owed, to settle."""
        with self.lock:
            return list(self.acks), list(self.restores), list(self.returns)

    def settled(self, acks: list[str], restores: list[str], returns: int) -> None:
        """Forget what was settled."""
        with self.lock:
            self.acks.difference_update(acks)
            self.restores.difference_update(restores)
            del self.returns[:returns]


owed = Owed()


def _tags_in_hand() -> set[str]:
    """Tags of the messages this worker will still run after its connection breaks.

    Celery drops a reserved task that waits for a free prefork child (on the consumer's
    semaphore), and the prefork pool discards every job no child has accepted yet, as it would
    for a broker that redelivers them: those messages must go back on their queues. A job a
    child accepted runs on, and so does every job queued in a thread pool (which drops none).
    """
    requests = [*list(worker_state.reserved_requests), *list(worker_state.active_requests)]
    return {request.message.delivery_tag for request in requests if _runs_on(request)}


def _runs_on(request: Any) -> bool:
    # execute_using_pool keeps a weak reference to the pool's job (none: never handed over).
    # billiard keeps its jobs in the pool until they finish, with the _accepted flag its flush()
    # checks; a thread pool's job is referenced by nothing else (the weak reference is dead at
    # once) and never discarded.
    handle = getattr(request, "_apply_result", None)
    if handle is None:
        return False
    job = handle()
    return job is None or bool(getattr(job, "_accepted", True))


class WorkerQoS(kombu_redis.QoS):
    """kombu's Redis QoS, whose acks survive a Redis restart and whose restores spare tasks."""

    def append(self, message: Any, delivery_tag: str) -> None:
        """Note a delivered message as unacked; if Redis refuses, owe the message back."""
        try:
            super().append(message, delivery_tag)
        except REDIS_DOWN:
            delivery = message.delivery_info
            with owed.lock:
                owed.returns.append((message._raw, delivery["exchange"], delivery["routing_key"]))
            log.warning(
                "message %s popped as Redis went away: owed back to its queue", delivery_tag
            )
            raise

    def ack(self, delivery_tag: str) -> None:
        """Acknowledge a message, or owe the ack while Redis (or its channel) is away."""
        if self._closed():
            # A task that ran through a reconnection acks on the channel it came from, which
            # is closed now: the worker's live channel settles it.
            self._owe_ack(delivery_tag, "its channel closed with the old connection")
        else:
            self.settle_owed()
            try:
                self._remove_from_indices(delivery_tag).execute()
            except REDIS_DOWN as exc:
                self._owe_ack(delivery_tag, str(exc))
        virtual.QoS.ack(self, delivery_tag)

    def _closed(self) -> bool:
        transport = self.channel.connection
        return transport is None or transport.client is None

    def _owe_ack(self, delivery_tag: str, why: str) -> None:
        with owed.lock:
            owed.acks.add(delivery_tag)
        log.warning("ack of %s owed until Redis answers again: %s", delivery_tag, why)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        """Put a message back (requeue) or drop it, as an ack that Redis may owe."""
        if requeue:
            super().reject(delivery_tag, requeue=True)
        else:
            self.ack(delivery_tag)

    def restore_visible(self, *args: Any, **kwargs: Any) -> Any:
        """Settle what is owed, then deliver again what passed its visibility timeout."""
        # An owed ack must be settled before the sweep, or the sweep would deliver it again.
        self.settle_owed()
        return super().restore_visible(*args, **kwargs)

    def restore_unacked(self, client: Any = None) -> None:
        """Put back the messages this worker will not run, sparing those its pool runs."""
        in_hand = _tags_in_hand()
        tags = [tag for tag in self._delivered if tag not in in_hand]
        self._delivered.clear()
        for number, tag in enumerate(tags):
            try:
                if self._closed():
                    raise redis.ConnectionError("the transport is closed")
                self.restore_by_tag(tag, client=client)
            except REDIS_DOWN:
                # Redis is away, or kombu closed the transport first as the connection broke:
                # the rest go back on their queues as soon as Redis answers.
                with owed.lock:
                    owed.restores.update(tags[number:])
                log.warning("%d unacked messages owed back to their queues", len(tags) - number)
                return

    def settle_owed(self) -> None:
        """Send what Redis refused while it was away; keep it owed if Redis still refuses."""
        acks, restores, returns = owed.take()
        if not (acks or restores or returns) or self._closed():
            return
        try:
            with self.channel.conn_or_acquire() as client:
                pipe = client.pipeline()
                if acks:
                    pipe.zrem(self.unacked_index_key, *acks).hdel(self.unacked_key, *acks)
                for payload, exchange, routing_key in returns:
                    self.channel._do_restore_message(payload, exchange, routing_key, pipe, True)
                pipe.execute()
                for tag in restores:
                    self.restore_by_tag(tag, client=client, leftmost=True)
        except REDIS_DOWN:
            return
        owed.settled(acks, restores, len(returns))
        log.info(
            "settled %d acks, %d restores and %d returns owed since Redis went away",
            len(acks),
            len(restores),
            len(returns),
        )


class _ScreeningMixin:
    """A redis-py client that hands each popped queue item to a screen before kombu sees it."""

    def __init__(self, *args: Any, screen: Any, **kwargs: Any) -> None:
        self._screen = screen
        super().__init__(*args, **kwargs)

    def parse_response(self, connection: Any, command_name: str, **options: Any) -> Any:
        """redis-py's reply, with a BRPOP item the screen refuses read as no item."""
        reply = super().parse_response(connection, command_name, **options)  # type: ignore[misc]
        # BRPOP answers [queue, item]; a refused item reads as an empty pop, as on a timeout.
        if command_name == "BRPOP" and reply and not self._screen(reply[0], reply[1]):
            return None
        return reply


@functools.cache
def _screening_class(base: type) -> type:
    return type(f"Screening{base.__name__}", (_ScreeningMixin, base), {})


class WorkerChannel(kombu_redis.Channel):
    """kombu's Redis channel with screened pops and WorkerQoS."""

    QoS = WorkerQoS

    def _get_client(self) -> Any:
        factory = super()._get_client()
        base, keywords = factory, {}
        if isinstance(factory, functools.partial):
            base, keywords = factory.func, dict(factory.keywords)
        return functools.partial(_screening_class(base), screen=self._screen, **keywords)

    def _screen(self, queue: bytes | str, item: bytes | str) -> bool:
        problem = deadletter.envelope_problem(item)
        if problem is None:
            return True
        name = queue.decode(errors="replace") if isinstance(queue, bytes) else queue
        self._bury(name, problem, item)
        return False

    def _deliver_fanout_message(self, message: Any, exchange: str) -> Any:
        # Broadcasts (remote control) arrive decoded from Redis pub/sub; kombu hands on any
        # JSON, and a list or a dict without the envelope's fields would stop the worker.
        problem = deadletter.message_problem(message)
        if problem is None and exchange in self._fanout_to_queue:
            return super()._deliver_fanout_message(message, exchange)
        self._bury(f"broadcast {exchange}", problem or "no queue bound to the exchange", message)
        # Not delivered; returning (not raising Empty, as kombu does for bad JSON) lets kombu
        # read on the broadcasts already buffered behind this one.
        return False

    def _bury(self, queue: str, problem: str, message: Any) -> None:
        log.warning("dead letter from %s: %s", queue, problem)
        text = message if isinstance(message, str | bytes) else json.dumps(message, default=repr)
        letter = deadletter.letter(problem, queue, text, deadletter.worker_id())
        with self.conn_or_acquire() as client:
            deadletter.push(client, letter, get_settings().dead_letters_max)


class WorkerTransport(kombu_redis.Transport):
    """kombu's Redis transport with WorkerChannel: the broker connection of a worker."""

    Channel = WorkerChannel
