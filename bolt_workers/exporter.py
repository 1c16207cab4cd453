"""bolt's Prometheus exporter: a collector that reads what bolt publishes in Redis at each scrape.

Each scrape is one pipelined round trip (bolt_workers.figures), one more when a worker appears
that the exporter has not seen, and a SCAN for new warm-up records at most every 30 s. Between
scrapes the exporter holds no figures, so what Prometheus stores is what Redis held then.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from bolt_tasks.app import celery_config
from bolt_tasks.errors import UsageError
from bolt_tasks.names import QUEUES, Pool
from bolt_tasks.settings import Settings, mask_url
from bolt_tasks.tls import redis_client_options
from bolt_workers.figures import FigureReader, Snapshot, make_reader

log = logging.getLogger("bolt.exporter")

# A scrape that waits on Redis longer than this answers bolt_up 0 instead: Prometheus's own
# scrape timeout is 10 s, and a Redis this slow is as good as down.
REDIS_TIMEOUT_S = 2.0


def _gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def queue_metrics(snap: Snapshot, reader: FigureReader, settings: Settings) -> Iterator[Metric]:
    """Depths (all priority lists, and each), limits and mean run times of every queue."""
    length = _gauge("bolt_queue_length", "Messages waiting in a queue, every priority.", ("queue",))
    lists = _gauge(
        "bolt_queue_priority_length",
        "Messages waiting in one priority list of a queue.",
        ("queue", "priority"),
    )
    limit = _gauge("bolt_queue_limit", "Depth at which a submit waits for room.", ("queue",))
    service = _gauge(
        "bolt_queue_service_seconds", "Mean run time of a queue's recent tasks.", ("queue",)
    )
    for queue in QUEUES:
        length.add_metric([queue], snap.depths[queue])
        for step in dict.fromkeys(reader.layout.steps):
            count = snap.lists[queue].get(reader.layout.key(queue, step), 0)
            lists.add_metric([queue, str(step)], count)
        limit.add_metric([queue], settings.queue_limit(queue))
        if snap.service_s.get(queue) is not None:
            service.add_metric([queue], snap.service_s[queue])
    yield from (length, lists, limit, service)


def pool_metrics(snap: Snapshot) -> Iterator[Metric]:
    """Live workers, slots and busy slots of each pool."""
    workers = _gauge("bolt_pool_workers", "Live workers of a pool.", ("pool",))
    slots = _gauge("bolt_pool_slots", "Slots (children or threads) of a pool.", ("pool",))
    busy = _gauge("bolt_pool_busy_slots", "Slots of a pool holding a task.", ("pool",))
    for pool in Pool:
        records = [f.record for f in snap.nodes.values() if f.record.pool is pool]
        workers.add_metric([pool.value], len(records))
        slots.add_metric([pool.value], sum(r.slots for r in records))
        busy.add_metric([pool.value], sum(min(r.busy, r.slots) for r in records))
    yield from (workers, slots, busy)


def steal_metrics(snap: Snapshot) -> Iterator[Metric]:
    """Stealing now (per queue) and its counters since they began."""
    on = _gauge("bolt_queue_stolen", "1 while workers of another pool steal the queue.", ("queue",))
    stealers = _gauge("bolt_queue_stealers", "Workers stealing the queue now.", ("queue",))
    for queue, nodes in snap.stolen_queues().items():
        on.add_metric([queue], int(bool(nodes)))
        stealers.add_metric([queue], len(nodes))
    yield from (on, stealers)
    steal = snap.steal
    for name, doc, value in (
        ("bolt_steal_episodes", "Spells of a queue's wait above the threshold.", steal.episodes),
        ("bolt_steal_activations", "Episodes in which a stealer began.", steal.activations),
        (
            "bolt_steal_fast_activations",
            "Activations within the activation window.",
            steal.fast_activations,
        ),
        (
            "bolt_steal_activation_seconds",
            "Time from episodes' start to their activation.",
            steal.activation_s_total,
        ),
    ):
        yield CounterMetricFamily(name, doc, value=value)
    orders = CounterMetricFamily(
        "bolt_steal_orders", "Orders the controller sent.", labels=["action"]
    )
    orders.add_metric(["steal"], steal.steals)
    orders.add_metric(["withdraw"], steal.withdrawals)
    stolen = CounterMetricFamily(
        "bolt_steal_stolen_tasks", "Tasks a worker of another pool ran.", labels=["queue"]
    )
    for queue in QUEUES:
        stolen.add_metric([queue], steal.stolen_tasks.get(queue, 0))
    yield from (orders, stolen)
    if steal.episodes:
        yield GaugeMetricFamily(
            "bolt_steal_activation_ratio",
            "Fast activations per episode (absent before the first episode).",
            value=steal.fast_activations / steal.episodes,
        )


def buffer_metrics(snap: Snapshot) -> Iterator[Metric]:
    """Buffer-pool requests, hits and misses, and buffers lent, per node and buffer type.

    Summed over every process of the node that published within BOLT_WARMUP_TTL_S, so a
    counter falls back only when a long-gone process's record expires.
    """
    requests = CounterMetricFamily(
        "bolt_buffer_requests",
        "Buffer requests served from the pool (hit) or allocated afresh (miss).",
        labels=["node", "type", "outcome"],
    )
    in_use = _gauge("bolt_buffer_in_use", "Buffers lent out now.", ("node", "type"))
    high = _gauge("bolt_buffer_high_water", "Most buffers lent at once.", ("node", "type"))
    pooled = _gauge("bolt_buffer_pooled", "Buffers allocated up front.", ("node", "type"))
    totals: dict[tuple[str, str], dict[str, int]] = {}
    for stats in snap.buffers:
        for kind, counts in stats.types.items():
            into = totals.setdefault((stats.node, kind), {})
            for figure, value in counts.items():
                # The most lent at once in the node is the most of any one process, not a sum.
                earlier = into.get(figure, 0)
                into[figure] = max(earlier, value) if figure == "high_water" else earlier + value
    for (node, kind), counts in sorted(totals.items()):
        requests.add_metric([node, kind, "hit"], counts.get("hits", 0))
        requests.add_metric([node, kind, "miss"], counts.get("misses", 0))
        in_use.add_metric([node, kind], counts.get("in_use", 0))
        high.add_metric([node, kind], counts.get("high_water", 0))
        pooled.add_metric([node, kind], counts.get("pooled", 0))
    yield from (requests, in_use, high, pooled)


def worker_metrics(snap: Snapshot) -> Iterator[Metric]:
    """Each live worker's warm start (slowest process, and each step) and handshake."""
    startup = _gauge(
        "bolt_worker_startup_seconds",
        "Slowest warm start among a worker's current processes.",
        ("node", "pool"),
    )
    steps = _gauge(
        "bolt_worker_warmup_step_seconds",
        "Slowest process's time for one warm-up step.",
        ("node", "step"),
    )
    handshake = _gauge(
        "bolt_worker_handshake_seconds",
        "Time from a worker being ready to its first result at a producer.",
        ("node",),
    )
    ready = _gauge("bolt_worker_ready_timestamp_seconds", "When a worker became ready.", ("node",))
    for node, figures in sorted(snap.nodes.items()):
        if figures.startup_ms is not None:
            startup.add_metric([node, figures.record.pool.value], figures.startup_ms / 1000)
        for step, ms in _slowest_steps(figures.current_warmups()).items():
            steps.add_metric([node, step], ms / 1000)
        if figures.handshake_ms is not None:
            handshake.add_metric([node], figures.handshake_ms / 1000)
        if figures.ready_at is not None:
            ready.add_metric([node], figures.ready_at)
    yield from (startup, steps, handshake, ready)


def _slowest_steps(warmups: list[Any]) -> dict[str, float]:
    slowest: dict[str, float] = {}
    for warm in warmups:
        for step, ms in warm.steps_ms.items():
            slowest[step] = max(ms, slowest.get(step, 0.0))
    return slowest


class BoltCollector:
    """A prometheus_client collector over one Redis: every family is read at scrape time."""

    def __init__(self, reader: FigureReader, settings: Settings, url: str) -> None:
        self.reader, self.settings, self.url = reader, settings, url
        self.failing = False

    def collect(self) -> Iterator[Metric]:
        """Every metric family; only bolt_up (0) and the scrape time when Redis does not answer."""
        started = time.perf_counter()
        snap = self._read()
        yield GaugeMetricFamily(
            "bolt_up", "1 when Redis answered this scrape.", value=int(bool(snap))
        )
        if snap is not None:
            yield from queue_metrics(snap, self.reader, self.settings)
            yield from pool_metrics(snap)
            yield from steal_metrics(snap)
            yield from worker_metrics(snap)
            yield from buffer_metrics(snap)
        yield GaugeMetricFamily(
            "bolt_scrape_duration_seconds",
            "Time this scrape spent reading Redis.",
            value=time.perf_counter() - started,
        )

    def _read(self) -> Snapshot | None:
        try:
            snap = self.reader.read()
        except (redis.RedisError, OSError) as exc:
            if not self.failing:
                log.warning("Redis at %s does not answer the exporter: %s", mask_url(self.url), exc)
            self.failing = True
            return None
        if self.failing:
            log.info("Redis at %s answers the exporter again", mask_url(self.url))
        self.failing = False
        return snap


def make_registry(settings: Settings) -> CollectorRegistry:
    """A registry holding bolt's collector for the broker settings name."""
    conf = celery_config(settings)
    url = conf["broker_url"]
    client = redis.Redis.from_url(
        url,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        **redis_client_options(settings, url),
    )
    registry = CollectorRegistry()
    registry.register(
        BoltCollector(make_reader(client, conf["broker_transport_options"]), settings, url)
    )
    return registry


def serve(
    settings: Settings, address: str, port: int, on_ready: Callable[[str], None] | None = None
) -> None:
    """Serve /metrics on address:port until SIGTERM or Ctrl-C."""
    if not settings.broker_url:
        raise UsageError("BOLT_BROKER_URL is not set: the exporter reads a deployment's Redis")
    registry = make_registry(settings)
    try:
        server, thread = start_http_server(port, addr=address, registry=registry)
    except OSError as exc:
        raise UsageError(
            f"the exporter cannot listen on {address}:{port}: {exc.strerror}"
        ) from None
    url = f"http://{address}:{port}/metrics"
    log.info("exporter on %s, reading %s", url, mask_url(settings.broker_url))
    if on_ready is not None:
        on_ready(url)
    try:
        thread.join()
    finally:
        server.shutdown()
        server.server_close()
