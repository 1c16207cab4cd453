"""Claims: the first delivery of a task's message takes the task, so a copy of it is dropped.

A producer that publishes while Redis restarts may publish a message twice: Redis took the
first push but its answer was lost, and the retry pushes a copy (same task id, new delivery
tag). Each copy is a first delivery, so the worker claims the task id in Redis (SET NX) before
running it; the copy finds the claim taken. A claim lasts a visibility timeout, far longer than
two copies side by side in a queue stay apart.
"""

from __future__ import annotations

import uuid
from typing import Any

from bolt_tasks.names import claim_key
from bolt_tasks.outage import through_restart


def claim(client: Any, task_id: str, attempt: int, ttl_s: float) -> bool:
    """Take the task for this delivery; False if another delivery took it first."""
    key, token = claim_key(task_id, attempt), uuid.uuid4().hex

    def take() -> bool:
        # A retried SET whose first try Redis ran finds its own token: still ours.
        if client.set(key, token, nx=True, ex=max(1, int(ttl_s))):
            return True
        held = client.get(key)
        return (held.decode() if isinstance(held, bytes) else held) == token

    return through_restart(take)


def take_over(client: Any, task_id: str, attempt: int, ttl_s: float) -> None:
    """Take the task for a delivery that replaces a lost one, whoever claimed it before."""
    key, ttl = claim_key(task_id, attempt), max(1, int(ttl_s))
    through_restart(lambda: client.set(key, uuid.uuid4().hex, ex=ttl))
