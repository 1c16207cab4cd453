"""What workers publish for the controller: each queue's task run times, and each worker's slots.

Two records, both in Redis and both expiring:

- ``service_key(queue)``, a hash with one field per worker process (``NODE:SLOT``), whose value
  is ``"MEAN_S SAMPLES AT CPU_S"``: the moving average of that process's run times on the
  queue, how many tasks it has seen, when it last wrote (epoch seconds), and the CPU seconds
  those tasks used in all. Every process keeps its own average and writes it at most once per
  ``BOLT_STATS_INTERVAL_MS`` (one pipelined round trip, after a task ends), so a task of a few
  milliseconds does not pay a round trip each.
- ``worker_record_key(node)``, JSON written by the worker's main process every
  ``BOLT_STATS_INTERVAL_MS`` (see bolt_workers.stealer): its pool, slots, busy slots, its own
  queues and the queues it steals. The key expires a second or so after the worker stops
  publishing, so a worker that died disappears; ``WORKERS_INDEX_KEY`` lists the live names.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
from billiard.process import current_process
from celery import signals

from bolt_tasks.names import (
    STEAL_TOTALS_KEY,
    WORKERS_INDEX_KEY,
    Pool,
    pool_queues,
    service_key,
    worker_record_key,
)
from bolt_workers.steal_stats import TOTALS_TTL_S, stolen_field

log = logging.getLogger("bolt.stats")

# Weight of the newest run time in a moving average: about the last five tasks count, so the
# average follows a change of workload within a few tasks and one outlier moves it by a fifth.
EWMA_WEIGHT = 0.2
# A service average outlives idle spells (the next burst is likely of the same work), a day.
SERVICE_TTL_S = 86400.0
# A worker record lives this many publish intervals: a few late publishes are not a death.
RECORD_LIFETIMES = 10
# Never less than a second, so a worker busy for a moment still counts as alive.
MIN_RECORD_TTL_S = 1.0
# Redis calls of a worker fail fast: a task or the event loop must not hang on a lost broker.
CLIENT_TIMEOUT_S = 0.5
# After a failed write a process stays quiet this long before it tries again.
RETRY_AFTER_S = 1.0


def record_ttl_s(interval_s: float) -> float:
    """How long a worker record outlives its last publish."""
    return max(MIN_RECORD_TTL_S, RECORD_LIFETIMES * interval_s)


def make_client(url: str, options: Mapping[str, Any] | None = None) -> redis.Redis:
    """A Redis client whose calls give up quickly, for code that must not block on Redis;
    options are more redis-py arguments (the TLS ones of a rediss:// URL)."""
    return redis.Redis.from_url(
        url,
        socket_timeout=CLIENT_TIMEOUT_S,
        socket_connect_timeout=CLIENT_TIMEOUT_S,
        **dict(options or {}),
    )


@dataclass
class QueueRuns:
    """One process's figures for one queue, and what it has not written yet."""

    mean_s: float = 0.0
    samples: int = 0
    cpu_s: float = 0.0
    unsent_stolen: int = 0
    dirty: bool = False

    def add(self, wall_s: float, cpu_s: float, stolen: bool) -> None:
        """Fold one task's run time into the average."""
        self.mean_s = (
            wall_s if not self.samples else self.mean_s + EWMA_WEIGHT * (wall_s - self.mean_s)
        )
        self.samples += 1
        self.cpu_s += cpu_s
        self.unsent_stolen += int(stolen)
        self.dirty = True

    def encoded(self, at: float) -> str:
        """The hash value other processes read: mean, samples, time written, CPU seconds."""
        return f"{self.mean_s:.6f} {self.samples} {at:.3f} {self.cpu_s:.6f}"


@dataclass
class ServiceRecorder:
    """The run times of the tasks one process runs, written to Redis in batches."""

    own_queues: frozenset[str]
    interval_s: float
    runs: dict[str, QueueRuns] = field(default_factory=dict)
    last_write: float = 0.0
    quiet_until: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, queue: str, wall_s: float, cpu_s: float) -> bool:
        """Record one task; True when it is time to write (interval passed, or a new queue)."""
        with self.lock:
            runs = self.runs.get(queue)
            first = runs is None
            if first:
                runs = self.runs[queue] = QueueRuns()
            runs.add(wall_s, cpu_s, stolen=queue not in self.own_queues)
            now = time.monotonic()
            return now >= self.quiet_until and (first or now - self.last_write >= self.interval_s)

    def flush(self, client: redis.Redis, field_name: str) -> None:
        """Write every queue's figures that changed, in one pipelined round trip."""
        with self.lock:
            pending = {queue: runs for queue, runs in self.runs.items() if runs.dirty}
            if not pending:
                return
            at = time.time()
            pipe = client.pipeline(transaction=False)
            for queue, runs in pending.items():
                pipe.hset(service_key(queue), field_name, runs.encoded(at))
                pipe.expire(service_key(queue), int(SERVICE_TTL_S))
                if runs.unsent_stolen:
                    pipe.hincrby(STEAL_TOTALS_KEY, stolen_field(queue), runs.unsent_stolen)
                    pipe.expire(STEAL_TOTALS_KEY, int(TOTALS_TTL_S))
            self.last_write = time.monotonic()
            try:
                pipe.execute()
            except (redis.RedisError, OSError) as exc:
                self.quiet_until = self.last_write + RETRY_AFTER_S
                log.debug("run times not written (%s); retrying in %.0f s", exc, RETRY_AFTER_S)
                return
            for runs in pending.values():
                runs.dirty, runs.unsent_stolen = False, 0


class ProcessStats:
    """The recorder and the Redis client of this process, remade after a fork."""

    def __init__(
        self,
        pool: Pool,
        broker_url: str,
        interval_s: float,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.pool, self.broker_url, self.interval_s = pool, broker_url, interval_s
        self.client_options = dict(client_options or {})
        self.pid = -1
        self.client: redis.Redis | None = None
        self.recorder: ServiceRecorder | None = None
        # The hash field this process writes, known from its first task.
        self.field = ""
        # task id -> (wall clock, thread CPU clock) at the task's start
        self.started: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def here(self) -> tuple[redis.Redis, ServiceRecorder]:
        """This process's client and recorder: a forked child never shares its parent's."""
        with self.lock:
            if self.pid != os.getpid() or self.client is None or self.recorder is None:
                self.pid = os.getpid()
                self.client = make_client(self.broker_url, self.client_options)
                queues = frozenset(pool_queues(self.pool))
                self.recorder = ServiceRecorder(queues, self.interval_s)
                self.started, self.field = {}, ""
            return self.client, self.recorder

    def on_prerun(self, task_id: str | None = None, **_: Any) -> None:
        """task_prerun: note when the task started, by the clock and the thread's CPU clock."""
        if task_id is not None:
            self.here()
            self.started[task_id] = (time.perf_counter(), time.thread_time())

    def on_postrun(self, task_id: str | None = None, task: Any = None, **_: Any) -> None:
        """task_postrun: fold the task's run time into its queue's average, writing if due."""
        begun = self.started.pop(task_id, None) if task_id is not None else None
        if begun is None or task is None:
            return
        wall_s, cpu_s = time.perf_counter() - begun[0], time.thread_time() - begun[1]
        queue = (task.request.delivery_info or {}).get("routing_key")
        if not queue:
            return
        client, recorder = self.here()
        self.field = self.field or process_field(task.request.hostname or "?")
        if recorder.note(queue, wall_s, cpu_s):
            recorder.flush(client, self.field)

    def on_shutdown(self, **_: Any) -> None:
        """Write what is left, so a stopped worker's totals are complete."""
        mine = self.pid == os.getpid() and self.client is not None
        if mine and self.recorder is not None and self.field:
            self.recorder.flush(self.client, self.field)


def process_field(node: str) -> str:
    """The field of this process in a service hash: its node and its pool slot (0 if none)."""
    index = getattr(current_process(), "index", None) or 0
    return f"{node}:{index}"


def install(
    pool: Pool, broker_url: str, interval_s: float, client_options: Mapping[str, Any] | None = None
) -> ProcessStats:
    """Time every task this worker runs and publish the averages; returns the process's stats."""
    stats = ProcessStats(pool, broker_url, interval_s, client_options)
    signals.task_prerun.connect(stats.on_prerun, weak=False)
    signals.task_postrun.connect(stats.on_postrun, weak=False)
    signals.worker_process_shutdown.connect(stats.on_shutdown, weak=False)
    signals.worker_shutdown.connect(stats.on_shutdown, weak=False)
    return stats


# -- worker records -------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerRecord:
    """What one worker publishes about itself."""

    node: str
    pool: Pool
    slots: int
    busy: int
    own: tuple[str, ...]
    stolen: Mapping[str, float]
    boot: str
    at: float

    @property
    def free(self) -> int:
        """Slots with no task in them."""
        return max(0, self.slots - self.busy)

    def encoded(self) -> str:
        """The record as the JSON the worker writes."""
        return json.dumps(
            {
                "node": self.node,
                "pool": self.pool.value,
                "slots": self.slots,
                "busy": self.busy,
                "own": list(self.own),
                "stolen": dict(self.stolen),
                "boot": self.boot,
                "at": self.at,
            }
        )

    @classmethod
    def decoded(cls, raw: bytes | str) -> WorkerRecord | None:
        """The record, or None if it is not one bolt wrote."""
        try:
            data = json.loads(raw)
            return cls(
                node=str(data["node"]),
                pool=Pool(data["pool"]),
                slots=int(data["slots"]),
                busy=int(data["busy"]),
                own=tuple(data["own"]),
                stolen={str(q): float(t) for q, t in data["stolen"].items()},
                boot=str(data["boot"]),
                at=float(data["at"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


def publish_record(client: redis.Redis, record: WorkerRecord, ttl_s: float) -> None:
    """Write a worker record and index its node, pruning names whose records have expired."""
    pipe = client.pipeline(transaction=False)
    pipe.set(worker_record_key(record.node), record.encoded(), px=int(ttl_s * 1000))
    pipe.zadd(WORKERS_INDEX_KEY, {record.node: record.at})
    pipe.zremrangebyscore(WORKERS_INDEX_KEY, "-inf", record.at - ttl_s)
    pipe.pexpire(WORKERS_INDEX_KEY, int(ttl_s * 1000))
    pipe.execute()


@dataclass(frozen=True)
class ServiceFigure:
    """One process's moving average for a queue, as read back."""

    mean_s: float
    samples: int
    at: float
    cpu_s: float


def decode_service(raw: Mapping[bytes, bytes]) -> dict[str, ServiceFigure]:
    """A service hash as {process field: figure}; malformed values are left out."""
    figures = {}
    for name, value in raw.items():
        try:
            mean_s, samples, at, cpu_s = value.split()
            figures[name.decode()] = ServiceFigure(
                float(mean_s), int(samples), float(at), float(cpu_s)
            )
        except ValueError:
            continue
    return figures


def mean_service_s(figures: Iterable[ServiceFigure], now: float, max_age_s: float) -> float | None:
    """The queue's mean run time: the processes' averages, each weighted by its samples (up to
    five, so a process that ran one task counts less); None if no process has a recent one."""
    weight_cap = round(1 / EWMA_WEIGHT)
    total = weight = 0.0
    for figure in figures:
        if now - figure.at <= max_age_s and figure.samples > 0:
            share = min(figure.samples, weight_cap)
            total += figure.mean_s * share
            weight += share
    return total / weight if weight else None
