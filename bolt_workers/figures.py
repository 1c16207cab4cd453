"""What a deployment publishes in Redis, read in one pipelined round trip: for metrics and analysis.

A Snapshot holds every queue's depth (each priority list and their sum), the live workers'
records and run-time averages (bolt_workers.stats), the stealing statistics
(bolt_workers.steal_stats), and each live worker's ready, handshake (bolt_tasks.handshake),
warm-up and buffer-pool (bolt_workers.warmup) records. The last two are keyed by process id,
which nothing indexes, so a FigureReader finds their keys with SCAN, at most every
``SCAN_INTERVAL_S``, and reads the known ones in the same round trip as the rest.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from bolt_tasks.backpressure import QueueLayout
from bolt_tasks.names import (
    QUEUES,
    STEAL_EPISODES_KEY,
    STEAL_TOTALS_KEY,
    WORKERS_INDEX_KEY,
    handshake_key,
    ready_key,
    redis_key,
    service_key,
    worker_record_key,
)
from bolt_workers import stats
from bolt_workers.steal_stats import StealStatistics, statistics_from

# A run-time average older than an hour describes work that is no longer running.
SERVICE_MAX_AGE_S = 3600.0
# Workers start new processes rarely (a restart, the autoscaler); a scan every 30 s finds their
# records soon enough, at a few hundred keys looked at per scan.
SCAN_INTERVAL_S = 30.0
# SCAN's COUNT: keys Redis looks at per call, so a large database is walked in short steps.
SCAN_COUNT = 1000
# A worker's processes start within seconds of its main process being ready; a warm-up record
# older than this before the node's ready time belongs to an earlier start of the node.
BOOT_WINDOW_S = 60.0
# Every warm-up record's key: names.warmup_key(node, pid) for any node and pid.
WARMUP_PATTERN = redis_key("warmup", "*")
# Every buffer-pool record's key: names.buffers_key(node, pid).
BUFFERS_PATTERN = redis_key("buffers", "*")
# The figures of each buffer type in a buffer-pool record, whose fields are <type>_<figure>.
BUFFER_FIGURES = ("high_water", "in_use", "misses", "pooled", "hits", "free")
# Reads of each node in a snapshot's pipeline: its record, ready and handshake records.
READS = 3
# Episodes read with each snapshot: the latest few, for a log or a report.
RECENT_EPISODES = 10


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decoded(raw: Mapping[Any, Any] | None) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in (raw or {}).items()}


def _number(record: Mapping[str, str], name: str) -> float | None:
    try:
        return float(record[name])
    except (KeyError, ValueError):
        return None


@dataclass(frozen=True)
class Warmup:
    """One worker process's published warm start."""

    node: str
    pid: int
    pool: str
    started_at: float
    total_ms: float
    steps_ms: dict[str, float]
    errors: dict[str, str]


def warmup_from(raw: Mapping[Any, Any]) -> Warmup | None:
    """A Warmup from the hash bolt_workers.warmup writes; None if it is not complete."""
    record = _decoded(raw)
    total, started = _number(record, "total_ms"), _number(record, "started_at")
    if total is None or started is None or "node" not in record:
        return None
    steps = {
        name[: -len("_ms")]: float(value)
        for name, value in record.items()
        if name.endswith("_ms") and name != "total_ms" and _number(record, name) is not None
    }
    errors = {name[: -len("_error")]: v for name, v in record.items() if name.endswith("_error")}
    pid = _number(record, "pid")
    return Warmup(
        record["node"], int(pid or 0), record.get("pool", ""), started, total, steps, errors
    )


@dataclass(frozen=True)
class BufferStats:
    """One worker process's published buffer-pool counters, per buffer type."""

    node: str
    pid: int
    types: dict[str, dict[str, int]]

    def total(self, figure: str) -> int:
        """A figure summed over the buffer types (hits, misses, ...)."""
        return sum(counts.get(figure, 0) for counts in self.types.values())


def buffers_from(raw: Mapping[Any, Any]) -> BufferStats | None:
    """BufferStats from the hash bolt_workers.warmup writes; None if it names no process."""
    record = _decoded(raw)
    pid = _number(record, "pid")
    if pid is None or "node" not in record:
        return None
    types: dict[str, dict[str, int]] = {}
    for name in record:
        figure = next((f for f in BUFFER_FIGURES if name.endswith("_" + f)), None)
        number = _number(record, name)
        if figure is not None and number is not None:
            types.setdefault(name[: -len(figure) - 1], {})[figure] = int(number)
    return BufferStats(record["node"], int(pid), types)


@dataclass(frozen=True)
class NodeFigures:
    """A live worker node: its record, its ready and handshake records, its processes' warm-ups."""

    record: stats.WorkerRecord
    ready_at: float | None
    first_task_id: str | None
    handshake_ms: float | None
    warmups: tuple[Warmup, ...]
    buffers: tuple[BufferStats, ...] = ()

    @property
    def startup_ms(self) -> float | None:
        """The slowest warm start among the processes of the node's current start."""
        current = [w.total_ms for w in self.warmups if self._current(w)]
        return max(current) if current else None

    def _current(self, warm: Warmup) -> bool:
        return self.ready_at is None or warm.started_at >= self.ready_at - BOOT_WINDOW_S

    def current_warmups(self) -> list[Warmup]:
        """The warm-ups of the processes started with the node's current start."""
        return [w for w in self.warmups if self._current(w)]


@dataclass(frozen=True)
class Snapshot:
    """One read of everything bolt publishes (see the module docstring)."""

    at: float
    lists: dict[str, dict[str, int]]
    nodes: dict[str, NodeFigures]
    service_s: dict[str, float | None]
    steal: StealStatistics
    buffers: tuple[BufferStats, ...] = ()

    @property
    def depths(self) -> dict[str, int]:
        """Messages waiting per queue, all its priority lists counted."""
        return {queue: sum(lists.values()) for queue, lists in self.lists.items()}

    def stolen_queues(self) -> dict[str, list[str]]:
        """Per queue, the workers of another pool that consume it now."""
        return {
            queue: sorted(n for n, f in self.nodes.items() if queue in f.record.stolen)
            for queue in QUEUES
        }


@dataclass
class FigureReader:
    """Reads Snapshots of one Redis, remembering which workers and warm-up records exist."""

    client: redis.Redis
    layout: QueueLayout
    nodes: tuple[str, ...] = ()
    warmup_keys: tuple[str, ...] = ()
    buffer_keys: tuple[str, ...] = ()
    scanned_at: float | None = None

    def read(self) -> Snapshot:
        """One snapshot: one pipelined round trip, one more when unseen workers appear."""
        now = time.time()
        if self.scanned_at is None or now - self.scanned_at >= SCAN_INTERVAL_S:
            self.rescan()
        lists = {queue: self.layout.keys(queue) for queue in QUEUES}
        pipe = self.client.pipeline(transaction=False)
        for keys in lists.values():
            for key in keys:
                pipe.llen(key)
        pipe.zrange(WORKERS_INDEX_KEY, 0, -1)
        for queue in QUEUES:
            pipe.hgetall(service_key(queue))
        pipe.hgetall(STEAL_TOTALS_KEY)
        pipe.lrange(STEAL_EPISODES_KEY, 0, RECENT_EPISODES - 1)
        known = list(self.nodes)
        _queue_node_reads(pipe, known)
        for key in (*self.warmup_keys, *self.buffer_keys):
            pipe.hgetall(key)
        replies = pipe.execute()
        return self._snapshot(now, lists, known, replies)

    def depths(self) -> dict[str, int]:
        """Messages waiting per queue, all its priority lists counted, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        lists = {queue: self.layout.keys(queue) for queue in QUEUES}
        for keys in lists.values():
            for key in keys:
                pipe.llen(key)
        reply = iter(pipe.execute())
        return {queue: sum(int(next(reply)) for _ in keys) for queue, keys in lists.items()}

    def rescan(self) -> None:
        """Find the warm-up and buffer-pool records' keys (SCAN, SCAN_COUNT keys a step)."""
        self.warmup_keys = self._scan(WARMUP_PATTERN)
        self.buffer_keys = self._scan(BUFFERS_PATTERN)
        self.scanned_at = time.time()

    def _scan(self, pattern: str) -> tuple[str, ...]:
        found = self.client.scan_iter(match=pattern, count=SCAN_COUNT)
        return tuple(sorted(_text(key) for key in found))

    def _snapshot(
        self, now: float, lists: dict[str, list[str]], known: list[str], replies: list[Any]
    ) -> Snapshot:
        reply = iter(replies)
        queue_lists = {
            queue: {key: int(next(reply)) for key in keys} for queue, keys in lists.items()
        }
        index = sorted(_text(name) for name in next(reply))
        services = [next(reply) for _ in QUEUES]
        totals, episodes = next(reply), next(reply)
        node_raw = _split_node_reads(known, [next(reply) for _ in range(READS * len(known))])
        warm_raw = [next(reply) for _ in self.warmup_keys]
        warmups = [w for w in map(warmup_from, warm_raw) if w is not None]
        buffers = tuple(b for b in map(buffers_from, reply) if b is not None)
        unseen = [node for node in index if node not in node_raw]
        if unseen:
            pipe = self.client.pipeline(transaction=False)
            _queue_node_reads(pipe, unseen)
            node_raw.update(_split_node_reads(unseen, pipe.execute()))
        self.nodes = tuple(index)
        return Snapshot(
            at=now,
            lists=queue_lists,
            nodes=_nodes(index, node_raw, warmups, buffers),
            service_s=_service_means(services, now),
            steal=statistics_from(totals, episodes),
            buffers=buffers,
        )


def _queue_node_reads(pipe: Any, nodes: Iterable[str]) -> None:
    for node in nodes:
        pipe.get(worker_record_key(node))
        pipe.hgetall(ready_key(node))
        pipe.hgetall(handshake_key(node))


def _split_node_reads(nodes: list[str], replies: list[Any]) -> dict[str, tuple[Any, ...]]:
    return {node: tuple(replies[READS * i : READS * (i + 1)]) for i, node in enumerate(nodes)}


def _nodes(
    index: list[str],
    raw: Mapping[str, tuple[Any, ...]],
    warmups: list[Warmup],
    buffers: tuple[BufferStats, ...],
) -> dict[str, NodeFigures]:
    nodes = {}
    for name in index:
        record_raw, ready_raw, handshake_raw = raw.get(name, (None, {}, {}))
        record = stats.WorkerRecord.decoded(record_raw) if record_raw is not None else None
        if record is None:
            continue
        ready, handshake = _decoded(ready_raw), _decoded(handshake_raw)
        nodes[name] = NodeFigures(
            record=record,
            ready_at=_number(ready, "ready_at"),
            first_task_id=ready.get("first_task_id"),
            handshake_ms=_number(handshake, "handshake_ms"),
            warmups=tuple(sorted((w for w in warmups if w.node == name), key=lambda w: w.pid)),
            buffers=tuple(sorted((b for b in buffers if b.node == name), key=lambda b: b.pid)),
        )
    return nodes


def _service_means(services: list[Mapping[bytes, bytes]], now: float) -> dict[str, float | None]:
    return {
        queue: stats.mean_service_s(stats.decode_service(raw).values(), now, SERVICE_MAX_AGE_S)
        for queue, raw in zip(QUEUES, services, strict=True)
    }


def make_reader(client: redis.Redis, transport_options: Mapping[str, Any]) -> FigureReader:
    """A reader of the Redis client points at, laid out as the broker's transport options say."""
    return FigureReader(client, QueueLayout(transport_options))
