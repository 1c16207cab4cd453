"""The handshake: the time from a worker being ready to its first task's result at a producer.

The worker writes when it became ready (worker_ready, before it reads any message) and which
task it started first; a producer that receives a result calls note_result, which, for that
first task, publishes the handshake. Both sides use wall-clock time, so they must share a
clock: one machine, or hosts kept in step by NTP (whose error then adds to the figure).
"""

from __future__ import annotations

import time
from typing import Any

import redis

from bolt_tasks.names import handshake_key, ready_key


def record_ready(client: redis.Redis, node: str, pid: int, ttl_s: float) -> float:
    """Write that node is ready now, forgetting its previous start; returns the time written."""
    ready_at = time.time()
    key = ready_key(node)
    pipe = client.pipeline()
    pipe.delete(key, handshake_key(node))
    pipe.hset(key, mapping={"ready_at": repr(ready_at), "pid": pid})
    pipe.expire(key, int(ttl_s))
    pipe.execute()
    return ready_at


def record_first_task(client: redis.Redis, node: str, task_id: str, ttl_s: float) -> bool:
    """Claim task_id as node's first task since it became ready; False if another was first."""
    pipe = client.pipeline()
    pipe.hsetnx(ready_key(node), "first_task_id", task_id)
    pipe.expire(ready_key(node), int(ttl_s))
    claimed, _ = pipe.execute()
    return bool(claimed)


def note_result(
    client: redis.Redis, node: str, task_id: str, arrived_at: float, ttl_s: float
) -> float | None:
    """Publish node's handshake if task_id was its first task; returns it in ms, else None."""
    ready = _decoded(client.hgetall(ready_key(node)))
    if ready.get("first_task_id") != task_id or "ready_at" not in ready:
        return None
    handshake_ms = (arrived_at - float(ready["ready_at"])) * 1000
    key = handshake_key(node)
    pipe = client.pipeline()
    pipe.hset(
        key,
        mapping={
            "ready_at": ready["ready_at"],
            "first_result_at": repr(arrived_at),
            "task_id": task_id,
            "handshake_ms": f"{handshake_ms:.3f}",
        },
    )
    pipe.expire(key, int(ttl_s))
    pipe.execute()
    return handshake_ms


def read_handshake(client: redis.Redis, node: str) -> dict[str, Any]:
    """The handshake published for node (empty if none): ready_at, first_result_at, ..."""
    return _decoded(client.hgetall(handshake_key(node)))


def _decoded(raw: dict[Any, Any]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }
