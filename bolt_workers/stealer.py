"""The worker's side of work stealing: consuming another pool's queues one task at a time.

Celery's own add_consumer puts a queue on the worker's one task channel, whose prefetch is the
worker's concurrency: an idle threads worker of four would take four analysis tasks at once
and run them four times slower each under the GIL, and a prefork worker would hold tasks the
owner pool could have started. So a stolen queue gets a channel of its own, with a prefetch
of one, which takes a message only while the worker has a free slot. The controller sets the
stolen queues with the STEAL_COMMAND remote-control command (idempotent: it names the whole
set), and CONSUMING_COMMAND reports what the worker consumes.

The main process also publishes the worker's record (bolt_workers.stats.WorkerRecord) every
``BOLT_STATS_INTERVAL_MS``, and at once when its stolen queues change.
"""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import suppress
from typing import Any

import redis
from celery import bootsteps
from celery.worker import state as worker_state
from celery.worker.consumer.control import Control
from celery.worker.consumer.tasks import Tasks
from celery.worker.control import control_command, inspect_command
from kombu import Consumer

from bolt_tasks.names import CONSUMING_COMMAND, QUEUES, STEAL_COMMAND, Pool
from bolt_tasks.settings import Settings
from bolt_tasks.tls import redis_client_options
from bolt_workers import stats

log = logging.getLogger("bolt.stealer")

# A stealer holds at most this many messages of the queues it steals: one, so every other
# waiting task stays in Redis for the owner pool (and a threads pool computes one at a time).
STEAL_PREFETCH = 1


class Stealer:
    """The stolen queues of one worker's consumer, on a channel of their own."""

    def __init__(self, consumer: Any, pool: Pool, client: redis.Redis, interval_s: float):
        self.c, self.pool, self.client, self.interval_s = consumer, pool, client, interval_s
        self.boot = uuid.uuid4().hex[:12]
        self.stolen: dict[str, float] = {}
        self.channel: Any = None
        self.kombu_consumer: Consumer | None = None
        self.timer_entry: Any = None
        self.quiet_until = 0.0
        self.stopped = False

    def start(self) -> None:
        """Publish the record every interval from the worker's event loop.

        The first record goes out one interval from now, from the running loop: by then the
        worker listens for remote-control commands, so an order sent on seeing the record
        (after a restart) is not lost.
        """
        self.timer_entry = self.c.timer.call_repeatedly(self.interval_s, self.publish)

    def stop(self) -> None:
        """Stop consuming stolen queues (on a restart of the consumer or a shutdown)."""
        if self.timer_entry is not None:
            with suppress(Exception):
                self.c.timer.cancel(self.timer_entry)
            self.timer_entry = None
        if self.kombu_consumer is not None:
            with suppress(Exception):
                self.kombu_consumer.cancel()
        if self.stolen:
            log.info("stopped stealing %s: the consumer stops", ", ".join(sorted(self.stolen)))
        self.stolen.clear()
        self.stopped = True

    def steal(self, queues: list[str]) -> None:
        """Consume exactly these other pools' queues besides the worker's own."""
        if self.stopped:
            return  # an order that came as the consumer stopped; the next one will repeat it
        wanted = {q for q in queues if q in QUEUES and q not in self.own_queues()}
        for queue in sorted(wanted - set(self.stolen)):
            self._add(queue)
        for queue in sorted(set(self.stolen) - wanted):
            self._remove(queue)
        self.publish()

    def _add(self, queue: str) -> None:
        consumer = self._consumer()
        consumer.add_queue(self.c.app.amqp.queues[queue])
        consumer.consume()
        self.stolen[queue] = time.time()
        log.info(
            "stealing %s: one task at a time, whenever one of its %d slots is free",
            queue,
            self.c.pool.num_processes,
        )

    def _remove(self, queue: str) -> None:
        if self.kombu_consumer is not None:
            self.kombu_consumer.cancel_by_queue(queue)
        since = self.stolen.pop(queue)
        log.info("stopped stealing %s after %.1f s", queue, time.time() - since)

    def _consumer(self) -> Consumer:
        if self.kombu_consumer is None or self.channel is None:
            self.channel = self.c.connection.channel()
            self.channel.basic_qos(0, STEAL_PREFETCH, False)
            _take_only_with_a_free_slot(self.channel, self.c)
            self.kombu_consumer = Consumer(
                self.channel,
                queues=[],
                accept=self.c.app.conf.accept_content,
                on_message=self.c.create_task_handler(),
                auto_declare=False,
            )
        return self.kombu_consumer

    def own_queues(self) -> list[str]:
        """The queues the worker's own task consumer reads."""
        task_consumer = self.c.task_consumer
        return [q.name for q in task_consumer.queues] if task_consumer is not None else []

    def consuming(self) -> dict[str, list[str]]:
        """What the worker consumes now: its own queues and the stolen ones."""
        return {"own": sorted(self.own_queues()), "stolen": sorted(self.stolen)}

    def record(self) -> stats.WorkerRecord:
        """The worker's record as it stands."""
        return stats.WorkerRecord(
            node=self.c.hostname,
            pool=self.pool,
            slots=self.c.pool.num_processes if self.c.pool is not None else 0,
            busy=len(worker_state.reserved_requests),
            own=tuple(sorted(self.own_queues())),
            stolen=dict(self.stolen),
            boot=self.boot,
            at=time.time(),
        )

    def publish(self) -> None:
        """Write the record; a failure is retried a second later, never raised into the loop."""
        if time.monotonic() < self.quiet_until:
            return
        try:
            stats.publish_record(self.client, self.record(), stats.record_ttl_s(self.interval_s))
        except (redis.RedisError, OSError) as exc:
            self.quiet_until = time.monotonic() + stats.RETRY_AFTER_S
            log.debug("worker record not published (%s)", exc)


def _take_only_with_a_free_slot(channel: Any, c: Any) -> None:
    """Make a channel fetch only while the worker has a slot with no task in it."""
    qos = channel.qos
    can_consume = qos.can_consume

    def can_consume_with_free_slot() -> bool:
        slots = c.pool.num_processes if c.pool is not None else 0
        return len(worker_state.reserved_requests) < slots and can_consume()

    qos.can_consume = can_consume_with_free_slot


class StealStep(bootsteps.StartStopStep):
    """Consumer bootstep that owns the worker's Stealer (installed by install())."""

    requires = (Tasks, Control)
    pool: Pool = Pool.P
    broker_url: str = ""
    client_options: dict[str, Any] = {}  # replaced whole by install(), never changed in place
    interval_s: float = 0.1

    def __init__(self, c: Any, **kwargs: Any) -> None:
        c.bolt_stealer = None
        self.client = stats.make_client(self.broker_url, self.client_options)
        super().__init__(c, **kwargs)

    def start(self, c: Any) -> None:
        """A fresh Stealer for each start of the consumer (a new connection steals nothing)."""
        c.bolt_stealer = Stealer(c, self.pool, self.client, self.interval_s)
        c.bolt_stealer.start()

    def stop(self, c: Any) -> None:
        """Stop consuming stolen queues. The channel stays open for the acks of tasks still
        running, and closes with the worker's connection, as Celery's own task channel does."""
        if c.bolt_stealer is not None:
            c.bolt_stealer.stop()

    def shutdown(self, c: Any) -> None:
        """As stop."""
        self.stop(c)


@control_command(name=STEAL_COMMAND, args=[("queues", list)], signature="<queues>")
def bolt_steal(state: Any, queues: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """Consume exactly these queues of other pools besides this worker's own."""
    if getattr(state.consumer, "bolt_stealer", None) is None:
        return {"error": "this worker does not steal"}
    # Applied from the event loop, by whichever Stealer the consumer has by then.
    state.consumer.call_soon(_steal_now, state.consumer, list(queues))
    return {"ok": f"stealing {', '.join(queues) or 'nothing'}"}


def _steal_now(consumer: Any, queues: list[str]) -> None:
    stealer = getattr(consumer, "bolt_stealer", None)
    if stealer is None:
        return
    try:
        stealer.steal(queues)
    except Exception:  # an event-loop callback: log it, and let the controller order again
        log.exception("could not steal %s", ", ".join(queues) or "nothing")


@inspect_command(name=CONSUMING_COMMAND)
def bolt_consuming(state: Any) -> dict[str, Any]:
    """The queues this worker consumes: its own and those it steals."""
    stealer = getattr(state.consumer, "bolt_stealer", None)
    if stealer is None:
        return {"own": [], "stolen": []}
    return stealer.consuming()


def install(pool: Pool, settings: Settings, app: Any = None) -> None:
    """Make this worker publish its figures and accept steal orders; call before it starts."""
    if app is None:
        from bolt_tasks.app import app
    interval_s = settings.stats_interval_ms / 1000
    broker_url = app.conf.broker_url
    options = redis_client_options(settings, broker_url)
    stats.install(pool, broker_url, interval_s, options)
    fields = {
        "pool": pool,
        "broker_url": broker_url,
        "client_options": options,
        "interval_s": interval_s,
    }
    step = type("BoltStealStep", (StealStep,), fields)
    app.steps["consumer"].add(step)
