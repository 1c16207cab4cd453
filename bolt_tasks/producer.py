"""The producer's side of the broker: reaching it, finding its workers, collecting results."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import redis
from celery import states

from bolt_tasks.app import app
from bolt_tasks.errors import BrokerUnavailable, JobFailed, NoWorkers
from bolt_tasks.names import Pool
from bolt_tasks.outage import Outage
from bolt_tasks.settings import get_settings, mask_url
from bolt_tasks.tls import redis_client_options

# A broker that has not answered in 3 s is down or unreachable for the user's purposes.
CONNECT_TIMEOUT_S = 3.0
# How often a waiting producer looks for finished results: a quarter of a 0.2 s batch.
POLL_INTERVAL_S = 0.05


def check_broker(url: str) -> None:
    """Raise BrokerUnavailable, naming the URL with its password masked, unless Redis answers."""
    try:
        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=CONNECT_TIMEOUT_S,
            **redis_client_options(get_settings(), url),
        )
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError) as exc:
        reason = str(exc).split("\n")[0] or type(exc).__name__
        raise BrokerUnavailable(f"broker {mask_url(url)} does not answer: {reason}") from None


def ping_pools(timeout_s: float = 1.0) -> set[str]:
    """The pools (p, e) of which no worker answered a ping within timeout_s."""
    replies = app.control.ping(timeout=timeout_s) or []
    seen = {name.split("@", 1)[0].split("-", 1)[0] for reply in replies for name in reply}
    return {pool.value for pool in Pool} - seen


def require_pools(url: str, timeout_s: float = 2.0) -> None:
    """Raise NoWorkers unless a worker of each pool answers on the broker."""
    missing = ping_pools(timeout_s)
    if missing:
        names = " and ".join(sorted(missing))
        raise NoWorkers(
            f"no worker of pool {names} answers on {mask_url(url)}; "
            f"start one with `bolt worker --pool {sorted(missing)[0]}`"
        )


def collect(
    task_ids: Iterable[str],
    timeout_s: float,
    on_result: Callable[[str, Any], None],
    on_wait: Callable[[], None] | None = None,
) -> None:
    """Call on_result(task_id, value) for each task as it finishes, in finishing order.

    on_wait runs between polls (a deployment's health check, say). A failed task raises
    JobFailed; so does a job that has not finished within timeout_s.
    """
    pending = set(task_ids)
    backend = app.backend
    deadline = time.monotonic() + timeout_s
    outage = Outage()
    while pending:
        for task_id, meta in _ready(backend, pending, outage):
            pending.discard(task_id)
            if meta["status"] != states.SUCCESS:
                raise JobFailed(f"task {task_id} failed: {_error_text(meta)}")
            on_result(task_id, meta["result"])
        if not pending:
            return
        if time.monotonic() > deadline:
            raise JobFailed(f"{len(pending)} tasks had not finished after {timeout_s:g} s")
        if on_wait is not None:
            on_wait()
        time.sleep(POLL_INTERVAL_S)


def result_keys(backend: Any, task_ids: Iterable[str]) -> list[bytes]:
    """The Redis keys of these tasks' results, as the backend names them.

    The backend's own get_key_for_task spends about 1 us a key on byte conversions, a sixth of
    what building a task's message costs; its prefix plus the id is the same key.
    """
    probe = backend.get_key_for_task("0")  # the backend refuses an empty id
    prefix = probe[:-1]
    return [prefix + task_id.encode() for task_id in task_ids]


def _ready(backend: Any, pending: set[str], outage: Outage) -> Iterator[tuple[str, dict[str, Any]]]:
    ids = list(pending)
    keys = result_keys(backend, ids)
    raws = outage.call(backend.mget, keys)
    if raws is None:
        return
    for task_id, raw in zip(ids, raws, strict=True):
        if raw is None:
            continue
        meta = backend.decode_result(raw)
        if meta["status"] in states.READY_STATES:
            yield task_id, meta


def _error_text(meta: dict[str, Any]) -> str:
    result = meta.get("result")
    if isinstance(result, dict) and "exc_type" in result:
        return f"{result['exc_type']}: {result.get('exc_message')}"
    return f"{meta['status']}: {result}"


def forget(task_ids: Iterable[str]) -> None:
    """Delete the stored results of finished tasks in one round trip."""
    backend = app.backend
    keys = result_keys(backend, task_ids)
    if keys:
        # Results expire by themselves: a Redis away at this moment must not fail the job.
        Outage(0.0).call(backend.client.delete, *keys)


def wait_one(task_id: str, timeout_s: float, on_wait: Callable[[], None] | None = None) -> Any:
    """The value of one task once it finishes, its stored result deleted after reading."""
    values: list[Any] = []
    collect([task_id], timeout_s, lambda _id, value: values.append(value), on_wait)
    forget([task_id])
    return values[0]
