"""The work-stealing controller: it watches every queue's wait and lends idle pools to busy queues.

Every ``BOLT_CONTROLLER_INTERVAL_MS`` (100 ms) the controller reads, in one pipelined round
trip, every queue's depth (all its priority lists), the workers' records and the queues' run
time averages (bolt_workers.stats). For each queue it estimates

    wait = depth x mean run time / slots of the pool that owns the queue

The owner's slots, not the stealers': a stealer halves the estimate the moment it joins, and
the controller would withdraw it at once. When the wait passes ``BOLT_STEAL_THRESHOLD_S`` and
a worker of another pool has a free slot, those workers are told to steal the queue (one task
at a time, see bolt_workers.stealer); when the wait falls under half the threshold, and they
have stolen for at least ``BOLT_STEAL_HOLD_S``, they are withdrawn. Each switch is logged at
INFO with the figures behind it.

Every look also compares what each worker publishes that it steals with what it was told, and
orders it again after a restart (its record carries a new boot id) or when an order seems
lost; every ``BOLT_STEAL_REPAIR_INTERVAL_S`` the controller asks the workers themselves
(CONSUMING_COMMAND) and repairs what their answers show. Episodes and switches are counted in
Redis (bolt_workers.steal_stats).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery

from bolt_tasks.backpressure import QueueLayout
from bolt_tasks.names import (
    CONSUMING_COMMAND,
    POOL_OF_KIND,
    QUEUES,
    STEAL_COMMAND,
    STEAL_TOTALS_KEY,
    WORKERS_INDEX_KEY,
    Kind,
    Pool,
    service_key,
    worker_record_key,
)
from bolt_tasks.settings import Settings
from bolt_tasks.tls import redis_client_options
from bolt_workers import stats
from bolt_workers.steal_stats import Episode, StealLedger, stolen_field

log = logging.getLogger("bolt.controller")

# A run-time average older than an hour describes work that is no longer running.
SERVICE_MAX_AGE_S = 3600.0
# The repair check asks the workers and waits this long at most for their answers.
AUDIT_TIMEOUT_S = 0.25
# The controller's own Redis calls give up after a second: it retries at its next look.
CLIENT_TIMEOUT_S = 1.0
# A worker applies an order and publishes its record within milliseconds; an order not seen in
# its record this long after it was sent was lost (a worker not yet listening), and is resent.
ORDER_CONFIRM_S = 0.5


def owner_pool(queue: str) -> Pool:
    """The pool whose workers consume a queue when nobody steals."""
    return POOL_OF_KIND[Kind(queue)]


@dataclass(frozen=True)
class Look:
    """What one pipelined read of Redis showed."""

    at: float
    depths: dict[str, int]
    workers: dict[str, stats.WorkerRecord]
    means: dict[str, float | None]
    stolen_totals: dict[str, int]
    nodes: tuple[str, ...]


def read_look(client: redis.Redis, layout: QueueLayout, known: Iterable[str], now: float) -> Look:
    """Depths, worker records, run-time averages and stolen-task totals, in one round trip
    (two when the index names a worker the controller has not read before)."""
    known = sorted(known)
    pipe = client.pipeline(transaction=False)
    lists = {queue: layout.keys(queue) for queue in QUEUES}
    for keys in lists.values():
        for key in keys:
            pipe.llen(key)
    pipe.zrange(WORKERS_INDEX_KEY, 0, -1)
    for queue in QUEUES:
        pipe.hgetall(service_key(queue))
    pipe.hgetall(STEAL_TOTALS_KEY)
    if known:
        pipe.mget([worker_record_key(node) for node in known])
    replies = pipe.execute()
    return _look_from(client, lists, known, replies, now)


def _look_from(
    client: redis.Redis,
    lists: Mapping[str, list[str]],
    known: list[str],
    replies: list[Any],
    now: float,
) -> Look:
    depths: dict[str, int] = {}
    at = 0
    for queue, keys in lists.items():
        depths[queue] = sum(int(n) for n in replies[at : at + len(keys)])
        at += len(keys)
    nodes = tuple(sorted(name.decode() for name in replies[at]))
    services = replies[at + 1 : at + 1 + len(QUEUES)]
    totals = replies[at + 1 + len(QUEUES)]
    raw_records = dict(zip(known, replies[-1], strict=True)) if known else {}
    missing = [node for node in nodes if node not in raw_records]
    if missing:
        fetched = client.mget([worker_record_key(node) for node in missing])
        raw_records.update(zip(missing, fetched, strict=True))
    means = {
        queue: stats.mean_service_s(stats.decode_service(raw).values(), now, SERVICE_MAX_AGE_S)
        for queue, raw in zip(QUEUES, services, strict=True)
    }
    return Look(now, depths, _records(raw_records), means, _stolen(totals), nodes)


def _records(raw: Mapping[str, bytes | None]) -> dict[str, stats.WorkerRecord]:
    records = {}
    for node, value in raw.items():
        record = stats.WorkerRecord.decoded(value) if value is not None else None
        if record is not None:
            records[node] = record
    return records


def _stolen(totals: Mapping[bytes, bytes]) -> dict[str, int]:
    return {queue: int(totals.get(stolen_field(queue).encode(), 0)) for queue in QUEUES}


@dataclass(frozen=True)
class Estimate:
    """A queue's estimated wait and the figures behind it."""

    queue: str
    depth: int
    mean_s: float
    measured: bool
    owner_slots: int
    wait_s: float
    free_elsewhere: int
    stealers: tuple[str, ...]

    def explain(self) -> str:
        """The estimate spelt out for a log line."""
        source = "measured" if self.measured else "assumed"
        if self.owner_slots == 0:
            return f"{self.depth} waiting and no {owner_pool(self.queue).value.upper()} slot"
        return (
            f"{self.wait_s:.2f} s = {self.depth} waiting x {self.mean_s * 1000:.1f} ms "
            f"({source}) / {self.owner_slots} {owner_pool(self.queue).value.upper()} slots"
        )


def wait_s(depth: int, mean_s: float, slots: int) -> float:
    """Estimated wait of the last task in a queue: depth x mean run time / slots."""
    if depth <= 0:
        return 0.0
    if slots <= 0:
        return math.inf
    return depth * mean_s / slots


def estimate(queue: str, look: Look, fallback_mean_s: float) -> Estimate:
    """The queue's wait, counting the owner's slots, and who else could steal it."""
    owner = owner_pool(queue)
    owners = [w for w in look.workers.values() if queue in w.own]
    others = [w for w in look.workers.values() if w.pool is not owner and queue not in w.own]
    measured = look.means.get(queue)
    mean_s = measured if measured is not None else fallback_mean_s
    slots = sum(w.slots for w in owners)
    return Estimate(
        queue=queue,
        depth=look.depths.get(queue, 0),
        mean_s=mean_s,
        measured=measured is not None,
        owner_slots=slots,
        wait_s=wait_s(look.depths.get(queue, 0), mean_s, slots),
        free_elsewhere=sum(w.free for w in others),
        stealers=tuple(sorted(w.node for w in others)),
    )


@dataclass
class QueueState:
    """What the controller remembers of one queue between looks."""

    stealing_since: float | None = None
    episode: Episode | None = None
    last_wait_s: float = 0.0
    last_at: float | None = None


STEAL, WITHDRAW = "steal", "withdraw"


def decide(
    state: QueueState, est: Estimate, now: float, threshold_s: float, hold_s: float
) -> str | None:
    """STEAL, WITHDRAW or None: the hysteresis between the threshold and half of it."""
    if state.stealing_since is None:
        if est.wait_s > threshold_s and est.free_elsewhere > 0:
            return STEAL
        return None
    if est.wait_s < threshold_s / 2 and now - state.stealing_since >= hold_s:
        return WITHDRAW
    return None


def episode_start(state: QueueState, wait: float, now: float, threshold_s: float) -> float:
    """When the wait passed the threshold: between the last look and this one, by linear
    interpolation of the two estimates; the last look itself when the estimate is unbounded
    (no owner slot), and this look when there was no earlier one."""
    if state.last_at is None or state.last_wait_s >= threshold_s:
        return now
    if math.isinf(wait):
        return state.last_at
    share = (threshold_s - state.last_wait_s) / (wait - state.last_wait_s)
    return state.last_at + share * (now - state.last_at)


@dataclass
class Order:
    """The stolen queues last sent to a worker, when, and to which of its boots."""

    queues: frozenset[str]
    at: float
    boot: str


@dataclass
class Controller:
    """Looks at the queues every interval and moves stealers in and out (see module docstring)."""

    settings: Settings
    app: Celery
    client: redis.Redis
    states: dict[str, QueueState] = field(default_factory=dict)
    orders: dict[str, Order] = field(default_factory=dict)
    nodes: tuple[str, ...] = ()
    last_audit: float = 0.0
    failing: bool = False
    connection: Any = None

    def __post_init__(self) -> None:
        self.layout = QueueLayout(self.app.conf.broker_transport_options or {})
        self.ledger = StealLedger(self.client)
        self.states = {queue: QueueState() for queue in QUEUES}
        self.threshold_s = self.settings.steal_threshold_s

    @property
    def interval_s(self) -> float:
        """Seconds between two looks."""
        return self.settings.controller_interval_ms / 1000

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Look and decide every interval until should_stop() is true."""
        log.info(
            "controller looking every %.0f ms: steal above %.2f s of estimated wait, withdraw "
            "under %.2f s after at least %.1f s, check workers every %.1f s",
            self.settings.controller_interval_ms,
            self.threshold_s,
            self.threshold_s / 2,
            self.settings.steal_hold_s,
            self.settings.steal_repair_interval_s,
        )
        next_at = time.monotonic()
        while not should_stop():
            self.safe_tick()
            next_at += self.interval_s
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = time.monotonic()  # fell behind: start again from now, no burst

    def safe_tick(self) -> None:
        """One look; a broker that does not answer is logged once and tried again next time."""
        try:
            self.tick(time.time())
        except Exception as exc:  # the loop's boundary: any failure waits for the next look
            if not self.failing:
                log.warning("controller look failed, trying again each look: %s", exc)
            self.failing = True
            self._drop_connection()
        else:
            if self.failing:
                log.info("controller looks again")
            self.failing = False

    def tick(self, now: float) -> None:
        """Read Redis once, update every queue, and bring the workers in line."""
        look = read_look(self.client, self.layout, self.nodes, now)
        self.nodes = look.nodes
        for queue in QUEUES:
            self._update(queue, look, now)
        self._sync(look, now)
        if now - self.last_audit >= self.settings.steal_repair_interval_s:
            self.last_audit = now
            self._audit(look, now)

    def _update(self, queue: str, look: Look, now: float) -> None:
        state = self.states[queue]
        est = estimate(queue, look, self.settings.batch_cost_s)
        self._follow_episode(state, est, look, now)
        action = decide(state, est, now, self.threshold_s, self.settings.steal_hold_s)
        if action == STEAL:
            self._steal(state, est, now)
        elif action == WITHDRAW:
            self._withdraw(state, est, look, now)
        if state.stealing_since is None and state.episode and est.wait_s < self.threshold_s / 2:
            self._end_episode(state, look, now)
        state.last_wait_s, state.last_at = est.wait_s, now

    def _follow_episode(self, state: QueueState, est: Estimate, look: Look, now: float) -> None:
        if state.episode is None and est.wait_s > self.threshold_s:
            start = episode_start(state, est.wait_s, now, self.threshold_s)
            before = look.stolen_totals.get(est.queue, 0)
            state.episode = Episode(est.queue, start, est.wait_s, before)
            self.ledger.episode_started()
        episode = state.episode
        if episode is None:
            return
        episode.peak_wait_s = max(episode.peak_wait_s, min(est.wait_s, 1e9))
        if episode.activation_s is None:
            since = [w.stolen[est.queue] for w in look.workers.values() if est.queue in w.stolen]
            if since:
                episode.activation_s = max(0.0, min(since) - episode.start)
                self.ledger.activated(episode.activation_s)

    def _steal(self, state: QueueState, est: Estimate, now: float) -> None:
        state.stealing_since = now
        if state.episode is not None:
            state.episode.stealers = est.stealers
        self.ledger.switched(steal=True)
        log.info(
            "steal %s: estimated wait %s passed %.2f s; %d free slots in %s",
            est.queue,
            est.explain(),
            self.threshold_s,
            est.free_elsewhere,
            ", ".join(est.stealers),
        )

    def _withdraw(self, state: QueueState, est: Estimate, look: Look, now: float) -> None:
        held_s = now - (state.stealing_since or now)
        state.stealing_since = None
        self.ledger.switched(steal=False)
        stolen = look.stolen_totals.get(est.queue, 0)
        if state.episode is not None:
            stolen -= state.episode.stolen_before
        log.info(
            "withdraw stealers from %s: estimated wait %s under %.2f s, after %.1f s and "
            "about %d stolen tasks",
            est.queue,
            est.explain(),
            self.threshold_s / 2,
            held_s,
            stolen,
        )
        self._end_episode(state, look, now)

    def _end_episode(self, state: QueueState, look: Look, now: float) -> None:
        episode = state.episode
        state.episode = None
        if episode is None:
            return
        episode.end = now
        episode.stolen = look.stolen_totals.get(episode.queue, 0) - episode.stolen_before
        self.ledger.episode_ended(episode)

    def wanted(self, pool: Pool) -> frozenset[str]:
        """The queues a worker of this pool should be stealing now."""
        return frozenset(
            queue
            for queue, state in self.states.items()
            if state.stealing_since is not None and owner_pool(queue) is not pool
        )

    def _sync(self, look: Look, now: float) -> None:
        by_order: dict[frozenset[str], list[str]] = {}
        for node, record in look.workers.items():
            want = self.wanted(record.pool)
            if self._needs_order(record, want, now):
                by_order.setdefault(want, []).append(node)
                if self.orders.get(node) and self.orders[node].queues == want:
                    log.info(
                        "repair %s: it steals %s but should steal %s",
                        node,
                        _names(record.stolen),
                        _names(want),
                    )
        for want, nodes in by_order.items():
            self._send(want, nodes, {n: look.workers[n].boot for n in nodes}, now)

    def _needs_order(self, record: stats.WorkerRecord, want: frozenset[str], now: float) -> bool:
        have = frozenset(record.stolen)
        order = self.orders.get(record.node)
        if order is None or order.queues != want:
            return order is not None or have != want
        if have == want:
            return False
        restarted = order.boot != record.boot
        return restarted or now - order.at >= ORDER_CONFIRM_S

    def _send(self, want: frozenset[str], nodes: list[str], boots: dict[str, str], now: float):
        self.app.control.broadcast(
            STEAL_COMMAND,
            arguments={"queues": sorted(want)},
            destination=nodes,
            reply=False,
            connection=self._connection(),
        )
        for node in nodes:
            self.orders[node] = Order(want, now, boots[node])

    def _connection(self) -> Any:
        """The controller's own broker connection for remote control, made again after a
        failure: one that outlived a Redis restart would retry its first command for seconds."""
        if self.connection is None:
            self.connection = self.app.connection_for_write()
        return self.connection

    def _drop_connection(self) -> None:
        if self.connection is not None:
            with suppress(Exception):
                self.connection.close()
        self.connection = None

    def _audit(self, look: Look, now: float) -> None:
        """Ask every live worker what it consumes and order again those that differ."""
        nodes = sorted(look.workers)
        if not nodes:
            return
        replies = self.app.control.broadcast(
            CONSUMING_COMMAND,
            destination=nodes,
            reply=True,
            timeout=AUDIT_TIMEOUT_S,
            limit=len(nodes),
            connection=self._connection(),
        )
        for reply in replies or []:
            for node, answer in reply.items():
                self._repair_from(node, answer, look, now)

    def _repair_from(self, node: str, answer: Any, look: Look, now: float) -> None:
        record = look.workers.get(node)
        if record is None or not isinstance(answer, dict):
            return
        want = self.wanted(record.pool)
        have = frozenset(answer.get("stolen", ()))
        order = self.orders.get(node)
        settled = order is None or now - order.at >= 2 * self.interval_s
        if have != want and settled:
            log.info(
                "repair %s: it answers that it steals %s but should steal %s",
                node,
                _names(have),
                _names(want),
            )
            self._send(want, [node], {node: record.boot}, now)


def _names(queues: Iterable[str]) -> str:
    return ", ".join(sorted(queues)) or "nothing"


def make_controller(settings: Settings, app: Celery) -> Controller:
    """A controller for the broker the app points at."""
    url = app.conf.broker_url
    client = redis.Redis.from_url(
        url,
        socket_timeout=CLIENT_TIMEOUT_S,
        socket_connect_timeout=CLIENT_TIMEOUT_S,
        **redis_client_options(settings, url),
    )
    return Controller(settings, app, client)
