"""Warm start: each worker process opens the index, fills its buffer pools and connects to Redis.

The three steps run in threads side by side, started from Celery's start-up signals: in every
prefork child (worker_process_init), or in the worker itself for the solo and threads pools
(worker_init; they start no child). The signal handler returns at once, so the process takes
tasks while it warms up; a search that comes meanwhile waits only for the index to open. When
the steps are done their timings are logged and written to Redis (names.warmup_key) for the
analyzer and the metrics. The worker also records when it became ready and which task it
started first, for the handshake (bolt_tasks.handshake).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import signals
from celery.concurrency import ALIASES, get_implementation
from kombu.exceptions import KombuError

from bolt_tasks import handshake
from bolt_tasks.app import app
from bolt_tasks.buffers import get_pools
from bolt_tasks.einstein.index import index_dir
from bolt_tasks.einstein.search import SLOT
from bolt_tasks.names import buffers_key, warmup_key
from bolt_tasks.settings import Settings, get_settings

log = logging.getLogger("bolt.warmup")

_POOL_NAMES = {path: alias for alias, path in reversed(ALIASES.items())}
# A process writes its buffer-pool statistics at most this often, when they changed.
BUFFER_STATS_INTERVAL_S = 1.0


@dataclass
class Warmup:
    """One process's warm-up and what it measured."""

    node: str
    pool: str
    settings: Settings
    pid: int = field(default_factory=os.getpid)
    started_at: float = field(default_factory=time.time)
    started: float = field(default_factory=time.perf_counter)
    figures: dict[str, Any] = field(default_factory=dict)

    def run(self) -> None:
        """Start every step in a thread of its own, and one that publishes what they measured."""
        backend = app.backend  # this thread's: the one its tasks store their results with
        steps: dict[str, Callable[[], dict[str, Any]]] = {
            "index": self._open_index,
            "buffers": self._warm_buffers,
            "redis": lambda: self._open_redis(backend),
        }
        threads = [
            threading.Thread(
                target=self._timed, args=(name, step), name=f"bolt-warm-{name}", daemon=True
            )
            for name, step in steps.items()
        ]
        for thread in threads:
            thread.start()
        threading.Thread(
            target=self._finish, args=(threads, backend), name="bolt-warm-stats", daemon=True
        ).start()

    def _timed(self, name: str, step: Callable[[], dict[str, Any]]) -> None:
        began = time.perf_counter()
        try:
            self.figures.update(step())
        except Exception as exc:  # a failed step must not stop the worker: it is logged
            self.figures[f"{name}_error"] = f"{type(exc).__name__}: {exc}"
            log.warning("warm-up step %s of %s failed: %s", name, self.node, exc)
        self.figures[f"{name}_ms"] = round((time.perf_counter() - began) * 1000, 3)

    def _open_index(self) -> dict[str, Any]:
        index = SLOT.open(index_dir(self.settings.cache_dir))
        return {"index_open": int(index is not None), "index_chunks": index.chunks if index else 0}

    def _warm_buffers(self) -> dict[str, Any]:
        return {"buffers_bytes": get_pools().warm()}

    def _open_redis(self, backend: Any) -> dict[str, Any]:
        backend.client.ping()
        with app.pool.acquire(block=True) as connection:
            connection.ensure_connection(max_retries=1)
        return {}

    def _finish(self, threads: list[threading.Thread], backend: Any) -> None:
        for thread in threads:
            thread.join()
        self.figures["total_ms"] = round((time.perf_counter() - self.started) * 1000, 3)
        log.info(
            "%s pid %d (%s) warm in %.1f ms: index %.1f ms (%d chunks), buffers %.1f ms "
            "(%.1f MiB), redis %.1f ms",
            self.node,
            self.pid,
            self.pool,
            self.figures["total_ms"],
            self.figures["index_ms"],
            self.figures.get("index_chunks", 0),
            self.figures["buffers_ms"],
            self.figures.get("buffers_bytes", 0) / 2**20,
            self.figures["redis_ms"],
        )
        self._publish(backend.client)
        _publish_buffer_stats_forever(backend.client, self.node, self.settings)

    def record(self) -> dict[str, Any]:
        """What is published: who, when, and each step's figures."""
        return {
            "node": self.node,
            "pid": self.pid,
            "pool": self.pool,
            "started_at": repr(self.started_at),
            **self.figures,
        }

    def _publish(self, client: redis.Redis) -> None:
        key = warmup_key(self.node, self.pid)
        try:
            pipe = client.pipeline()
            pipe.hset(key, mapping={k: str(v) for k, v in self.record().items()})
            pipe.expire(key, int(self.settings.warmup_ttl_s))
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("warm-up timings of %s not published: %s", self.node, exc)


_CURRENT: Warmup | None = None
_LOCK = threading.Lock()


def start(node: str, pool: str, settings: Settings | None = None) -> Warmup:
    """Warm this process up in the background (once per process); returns at once."""
    global _CURRENT
    with _LOCK:
        if _CURRENT is not None and _CURRENT.pid == os.getpid():
            return _CURRENT
        SLOT.begin_opening()
        _CURRENT = Warmup(node, pool, settings or get_settings())
    _CURRENT.run()
    return _CURRENT


def install() -> None:
    """Connect the warm-up and the handshake records to a worker's start-up signals."""
    signals.worker_init.connect(_on_worker_init, weak=False)
    signals.worker_ready.connect(_on_worker_ready, weak=False)
    signals.task_prerun.connect(_on_task_prerun, weak=False)


def _pool_name(worker: Any) -> str:
    cls = get_implementation(worker.pool_cls)
    return _POOL_NAMES.get(f"{cls.__module__}:{cls.__qualname__}", cls.__qualname__)


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    pool = _pool_name(sender)
    if pool == "prefork":
        # Connected now rather than in install(), so it runs after the hooks connected before
        # the worker started (the P children's pinning): its threads start on the child's core.
        signals.worker_process_init.connect(_on_process_init, weak=False)
        # The parent needs the result backend for the ready time anyway; made before the fork,
        # every child inherits it (and the scan of installed packages for backends, ~25 ms)
        # instead of building its own. It holds no connection yet: the children open theirs.
        _ = app.backend
        return
    start(sender.hostname, pool)


def _on_process_init(sender: Any = None, **_: Any) -> None:
    start(str(sender), "prefork")


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    settings = get_settings()
    try:
        handshake.record_ready(
            app.backend.client, sender.hostname, os.getpid(), settings.warmup_ttl_s
        )
    except (redis.RedisError, KombuError) as exc:
        log.warning("ready time of %s not recorded: %s", sender.hostname, exc)


_FIRST_TASK: dict[int, bool] = {}


def _on_task_prerun(task_id: str = "", task: Any = None, **_: Any) -> None:
    with _LOCK:
        if _FIRST_TASK.get(os.getpid()):
            return
        _FIRST_TASK[os.getpid()] = True
    node = task.request.hostname
    try:
        handshake.record_first_task(app.backend.client, node, task_id, get_settings().warmup_ttl_s)
    except redis.RedisError as exc:
        log.warning("first task of %s not recorded: %s", node, exc)


def publish_buffer_stats(client: redis.Redis, node: str, settings: Settings) -> None:
    """Write this process's buffer-pool statistics to names.buffers_key: <type>_<figure>."""
    flat = {
        f"{kind}_{name}": value
        for kind, figures in get_pools().stats().items()
        for name, value in figures.items()
    }
    key = buffers_key(node, os.getpid())
    pipe = client.pipeline()
    pipe.hset(key, mapping={"node": node, "pid": os.getpid(), **flat})
    pipe.expire(key, int(settings.warmup_ttl_s))
    pipe.execute()


def _publish_buffer_stats_forever(client: redis.Redis, node: str, settings: Settings) -> None:
    """Every BUFFER_STATS_INTERVAL_S, publish the statistics if they changed since last time.

    It runs in a thread of its own, so a slow or absent Redis never holds a task back.
    """
    published = None
    while True:
        stats = get_pools().stats()
        if stats != published:
            try:
                publish_buffer_stats(client, node, settings)
                published = stats
            except redis.RedisError as exc:
                log.debug("buffer statistics of %s not published: %s", node, exc)
        time.sleep(BUFFER_STATS_INTERVAL_S)
