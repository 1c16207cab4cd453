"""The P pool's autoscaler: grow while work waits and the cores have room, retire idle children."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from time import monotonic, sleep
from typing import Any

from celery.worker.autoscale import Autoscaler

from bolt_tasks.names import Pool, pool_queues
from bolt_tasks.settings import Settings, get_settings
from bolt_workers.cpu import CoreMeter
from bolt_workers.topology import detect

log = logging.getLogger("bolt.autoscale")

# A queue-depth probe must not hold the worker's event loop: past a second the broker is down.
PROBE_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Figures:
    """What the autoscaler saw at one look at the pool."""

    size: int
    waiting: int
    idle: int
    idle_long: int
    cpu_pct: float

    def __str__(self) -> str:
        return (
            f"size {self.size}, {self.waiting} waiting, {self.idle} idle "
            f"({self.idle_long} past keepalive), cores at {self.cpu_pct:.0f}%"
        )


@dataclass(frozen=True)
class Bounds:
    """The limits a decision keeps to: [low, high] children, a CPU target, the pool's cores."""

    low: int
    high: int
    cpu_target_pct: float
    cores: int

    @property
    def cpu_check(self) -> bool:
        """Whether the CPU target limits growth: a target of 100% turns the check off."""
        return self.cpu_target_pct < 100


@dataclass(frozen=True)
class Decision:
    """How many children to add (positive) or retire (negative), by which rule and why."""

    change: int
    rule: str
    reason: str


def decide(seen: Figures, bounds: Bounds) -> Decision:
    """The autoscaler's rules, in order; a pure function of what it saw."""
    if seen.size < bounds.low:
        return Decision(bounds.low - seen.size, "below-min", f"below the minimum of {bounds.low}")
    if seen.size > bounds.high and seen.idle:
        n = min(seen.idle, seen.size - bounds.high)
        return Decision(-n, "above-max", f"above the maximum of {bounds.high}")
    saturated = bounds.cpu_check and seen.cpu_pct >= bounds.cpu_target_pct
    if seen.waiting and seen.size < bounds.high and not saturated:
        n = min(seen.waiting, bounds.high - seen.size, _room(seen, bounds))
        return Decision(n, "grow", f"work waits and the cores are below {_target(bounds)}")
    crowded = max(bounds.low, bounds.cores)
    if saturated and seen.idle and seen.size > crowded:
        n = min(seen.idle, seen.size - crowded)
        return Decision(
            -n, "saturated", f"cores at or above {_target(bounds)}, more children than cores"
        )
    if not seen.waiting and seen.idle_long and seen.size > bounds.low:
        n = min(seen.idle_long, seen.size - bounds.low)
        return Decision(-n, "idle", "children idle past the keepalive")
    if seen.waiting and seen.size < bounds.high:
        return Decision(0, "held", f"work waits but the cores are at or above {_target(bounds)}")
    if seen.waiting:
        return Decision(0, "at-max", f"work waits and the pool is at its maximum of {bounds.high}")
    return Decision(0, "steady", "nothing to change")


def _room(seen: Figures, bounds: Bounds) -> int:
    # A CPU-bound child fills one core, so the free share of the cores is how many more fit.
    if not bounds.cpu_check:
        return bounds.high
    free = (bounds.cpu_target_pct - seen.cpu_pct) / 100 * bounds.cores
    return max(1, math.floor(free))


def _target(bounds: Bounds) -> str:
    return f"the {bounds.cpu_target_pct:g}% target" if bounds.cpu_check else "100%"


class QueueDepth:
    """Messages waiting in the broker for a worker's queues, read on a connection of its own."""

    def __init__(self, app: Any, queues: tuple[str, ...]) -> None:
        self.app, self.queues = app, queues
        self._connection: Any = None

    def __call__(self) -> int:
        """The messages waiting in all the queues; 0 (and a warning) when the broker fails."""
        if self._connection is None:
            timeouts = {
                "socket_timeout": PROBE_TIMEOUT_S,
                "socket_connect_timeout": PROBE_TIMEOUT_S,
            }
            self._connection = self.app.connection_for_read(transport_options=timeouts)
        connection = self._connection
        try:
            channel = connection.default_channel
            return sum(self._size(channel, connection, queue) for queue in self.queues)
        except connection.connection_errors as exc:
            log.warning("autoscaler cannot read the queue depth: %s", exc)
            self.close()
            return 0

    @staticmethod
    def _size(channel: Any, connection: Any, queue: str) -> int:
        try:
            return channel.queue_declare(queue=queue, passive=True).message_count
        except connection.channel_errors:
            # Redis keeps no list for an empty queue, so a passive declare finds nothing.
            return 0

    def close(self) -> None:
        """Release the probe's connection; the next call opens a new one."""
        if self._connection is not None:
            self._connection.release()
            self._connection = None


class PressureAutoscaler(Autoscaler):
    """Celery's autoscaler with bolt's rules: CPU pressure, queue depth and truly idle children.

    Celery calls maybe_scale every `keepalive` seconds from the worker's event loop (and on each
    task message); bolt uses that period as its look interval and keeps its own keepalive for
    idle children. Only a child with no job written to it, acknowledged or finished is retired,
    and the worker's reservation limit is kept at the pool size after every change.
    """

    def __init__(
        self,
        pool: Any,
        max_concurrency: int,
        min_concurrency: int = 0,
        worker: Any = None,
        keepalive: float | None = None,
        mutex: Any = None,
        settings: Settings | None = None,
    ) -> None:
        settings = settings or get_settings()
        interval_s = settings.p_autoscale_interval_s
        super().__init__(
            pool, max_concurrency, min_concurrency, worker=worker, keepalive=interval_s, mutex=mutex
        )
        self.settings = settings
        self.cores = detect(settings).p_cores
        self.meter = CoreMeter(self.cores)
        self.idle_since: dict[int, float] = {}
        self.last_rule = ""
        self._last_look = 0.0
        self._depth: QueueDepth | None = None
        self._limit: int | None = None
        # The autoscaler owns the reservation limit of its worker, the reserve included.
        self.reserve = settings.worker_reserve

    def body(self) -> None:
        # Only workers without an event loop run the autoscaler on its own thread.
        with self.mutex:
            self.maybe_scale()
        sleep(self.keepalive)

    def _maybe_scale(self, req: Any = None) -> bool:
        now = monotonic()
        if req is not None and now - self._last_look < self.keepalive:
            return False
        self._last_look = now
        self._follow_pool_size()
        seen = self.figures(now)
        decision = decide(seen, self.bounds())
        change = decision.change
        if change > 0:
            self._grow(change)
        elif change < 0:
            change = -self._shrink(-change)
        self._log(decision, change, seen)
        return change != 0

    def bounds(self) -> Bounds:
        """The limits in force now (remote control may change min and max)."""
        target = self.settings.p_autoscale_cpu_target_pct
        return Bounds(self.min_concurrency, self.max_concurrency, target, len(self.cores))

    def figures(self, now: float) -> Figures:
        """Look at the pool: its size, waiting work, idle children and its cores' CPU use."""
        idle = self.idle_children()
        pids = {proc.pid for proc in idle}
        self.idle_since = {pid: self.idle_since.get(pid, now) for pid in pids}
        keepalive_s = self.settings.p_autoscale_keepalive_s
        idle_long = sum(1 for pid in pids if now - self.idle_since[pid] >= keepalive_s)
        cpu_pct = self.meter.read().mean
        return Figures(self.processes, self.waiting(), len(idle), idle_long, cpu_pct)

    def waiting(self) -> int:
        """Tasks waiting: in the broker's queues of this worker, and inside it for a child."""
        if self._depth is None:
            self._depth = QueueDepth(self.worker.app, self._queues())
        # The queues consumed can change at run time (a pool stealing another's queue).
        self._depth.queues = self._queues()
        inside = len(getattr(self.pool._pool, "outbound_buffer", ()))
        return self._depth() + inside

    def _queues(self) -> tuple[str, ...]:
        consumer = getattr(self.worker.consumer, "task_consumer", None)
        names = tuple(queue.name for queue in getattr(consumer, "queues", ()) or ())
        return names or pool_queues(Pool.P)

    def idle_children(self) -> list[Any]:
        """Live children with no job written to, accepted by or scheduled for them."""
        pool = self.pool._pool
        claimed: set[int] = set()
        for job in list(pool._cache.values()):
            if job.ready():
                continue
            claimed.update(job.worker_pids())
            claimed.update(p.pid for p in (job._write_to, job._scheduled_for) if p is not None)
        busy_fds = getattr(pool, "_busy_workers", set())
        ready_fds = getattr(pool, "_all_inqueues", None)
        return [
            proc
            for proc in pool._pool
            if proc.exitcode is None
            and not proc._controlled_termination
            and proc.pid not in claimed
            and getattr(proc, "inqW_fd", None) not in busy_fds
            and (ready_fds is None or proc.inqW_fd in ready_fds)
        ]

    def _grow(self, n: int) -> None:
        self.pool.grow(n)
        self._follow_pool_size()

    def _shrink(self, n: int) -> int:
        """Retire up to n idle children, those idle longest first; returns how many retired."""
        idle = sorted(self.idle_children(), key=lambda proc: self.idle_since.get(proc.pid, 0.0))
        floor = max(self.min_concurrency, 1)
        retired = 0
        for proc in idle[:n]:
            if self.processes <= floor:
                break
            self._retire(proc)
            retired += 1
        self._follow_pool_size()
        return retired

    def _retire(self, proc: Any) -> None:
        # What billiard's own shrink does for a child it picks, for the child bolt picked.
        pool = self.pool._pool
        pool._processes -= 1
        if pool._putlock is not None:
            pool._putlock.shrink()
        proc.terminate_controlled()
        pool.on_shrink(1)
        self.idle_since.pop(proc.pid, None)
        log.debug("retired idle P child pid %d", proc.pid)

    def _update_consumer_prefetch_count(self, new_max: int) -> None:
        # Celery moves the limit with the maximum; bolt keeps it at the pool's size instead.
        self._follow_pool_size()

    def _follow_pool_size(self) -> None:
        """Set the worker's reservation limit to the pool size plus the configured reserve."""
        consumer = getattr(self.worker, "consumer", None)
        qos = getattr(consumer, "qos", None)
        if qos is None:
            return
        limit = max(1, self.processes) * consumer.prefetch_multiplier + self.reserve
        if self._limit is None:
            # Celery started the consumer at the maximum pool size.
            self._limit = consumer.initial_prefetch_count
        change, self._limit = limit - self._limit, limit
        consumer.initial_prefetch_count = limit
        # Moved by the change, not set: Celery raises the limit by one for each task it holds
        # for a later ETA, and those raises must stay. The consumer's event loop applies the
        # new value before it reads the next message.
        if change > 0:
            qos.increment_eventually(change)
        elif change < 0:
            qos.decrement_eventually(-change)

    def _log(self, decision: Decision, change: int, seen: Figures) -> None:
        # Every change is logged, and a hold only when the rule behind it changes.
        if change or decision.rule != self.last_rule:
            verb = "grew by" if change > 0 else "shrank by" if change else "held"
            amount = f" {abs(change)}" if change else ""
            log.info(
                "autoscaler %s%s (%s): %s; now %d %s",
                verb,
                amount,
                decision.reason,
                seen,
                self.processes,
                "child" if self.processes == 1 else "children",
            )
        self.last_rule = decision.rule
