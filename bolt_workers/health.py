"""Health checks for containers and probes: a worker answers and consumes its pool's queues."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from celery.utils.nodenames import host_format

from bolt_tasks.errors import BrokerUnavailable
from bolt_tasks.names import Pool, pool_queues, worker_name
from bolt_tasks.settings import Settings

# Within a container or pod a worker answers a control message in milliseconds; three seconds
# leaves room for a busy machine and stays inside a probe's usual ten.
DEFAULT_TIMEOUT_S = 3.0
# Between tries of a waiting check: Redis or a worker coming up is seen within a tenth of a second.
RETRY_INTERVAL_S = 0.1


@dataclass(frozen=True)
class Check:
    """What to check: a pool's worker (on this host, or by name), a URL, or the broker."""

    pool: str | None = None
    name: str | None = None
    url: str | None = None
    broker: bool = False

    def problem(self, settings: Settings, timeout_s: float = DEFAULT_TIMEOUT_S) -> str | None:
        """None when the target is healthy, else one line saying why not."""
        if self.url:
            return http_problem(self.url, timeout_s)
        if self.broker:
            return broker_problem(settings)
        return worker_problem(settings, Pool(self.pool), self.name, timeout_s)

    def target(self) -> str:
        """The target in words, for the line a healthy check prints."""
        if self.url:
            return self.url
        if self.broker:
            return "the broker"
        return node_name(Pool(self.pool), self.name)


def wait_healthy(probe: Callable[[], str | None], wait_s: float = 0.0) -> str | None:
    """Run probe until it finds no problem or wait_s has passed; the last problem, or None."""
    deadline = time.monotonic() + wait_s
    while True:
        problem = probe()
        if problem is None or time.monotonic() >= deadline:
            return problem
        time.sleep(RETRY_INTERVAL_S)


def node_name(pool: Pool, name: str | None = None) -> str:
    """The node name of the worker to check: the pool's worker on this host, or the one named."""
    return host_format(name or worker_name(pool))


def broker_problem(settings: Settings) -> str | None:
    """None when the broker answers with these settings (URL, password, TLS), else why not."""
    from bolt_tasks.producer import check_broker

    if not settings.broker_url:
        return "BOLT_BROKER_URL is not set: there is no broker to reach"
    try:
        check_broker(settings.broker_url)
    except BrokerUnavailable as exc:
        return str(exc)
    return None


def worker_problem(
    settings: Settings, pool: Pool, name: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
) -> str | None:
    """None when the worker answers a ping and consumes every queue of its pool, else why not."""
    from bolt_tasks.app import app, configure

    problem = broker_problem(settings)
    if problem:
        return problem
    configure(settings)
    node = node_name(pool, name)
    inspect = app.control.inspect(destination=[node], timeout=timeout_s)
    if not inspect.ping():
        return f"worker {node} does not answer a ping within {timeout_s:g} s"
    replies = inspect.active_queues() or {}
    consumed = {queue["name"] for queue in replies.get(node, [])}
    missing = [queue for queue in pool_queues(pool) if queue not in consumed]
    if missing:
        return f"worker {node} does not consume queue(s) {', '.join(missing)}"
    return None


def http_problem(url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> str | None:
    """None when url answers 200 (Flower's health page, an exporter's metrics), else why not."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            if reply.status == 200:
                return None
            return f"{url} answered {reply.status}"
    except urllib.error.HTTPError as exc:
        return f"{url} answered {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{url} does not answer: {reason}"
