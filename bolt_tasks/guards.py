"""The base class of bolt's tasks: it refuses what would break delivery, and runs a task once.

At publish, a countdown or ETA beyond the broker's visibility timeout is refused: Redis would
hand the waiting message to a second worker when the timeout passes, and the task would run
twice. In the worker, a delivery runs its task only if it claims it (bolt_tasks.claims): a
second copy of a message published twice is dropped, and so is a message Redis delivered again
after its task stored a success. A result with no JSON form or over BOLT_RESULT_MAX_BYTES fails
the task at once, before it reaches a chained task or the result store.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from celery import Task, states
from celery.exceptions import Ignore

from bolt_tasks import claims
from bolt_tasks.errors import ScheduleTooFar
from bolt_tasks.serialization import check_result
from bolt_tasks.settings import get_settings

log = logging.getLogger("bolt.guards")


def schedule_delay_s(options: dict[str, Any], now: dt.datetime | None = None) -> float | None:
    """Seconds from now until a message published with these options is due (None: at once)."""
    countdown = options.get("countdown")
    if countdown is not None:
        return float(countdown)
    eta = options.get("eta")
    if eta is None:
        return None
    if isinstance(eta, str):
        eta = dt.datetime.fromisoformat(eta)
    if eta.tzinfo is None:
        # Celery reads a naive ETA as UTC (enable_utc), and so does bolt.
        eta = eta.replace(tzinfo=dt.UTC)
    return (eta - (now or dt.datetime.now(dt.UTC))).total_seconds()


def check_schedule(task_name: str, options: dict[str, Any], visibility_timeout_s: float) -> None:
    """Raise ScheduleTooFar unless the message is due within the visibility timeout."""
    delay_s = schedule_delay_s(options)
    if delay_s is None or delay_s < visibility_timeout_s:
        return
    raise ScheduleTooFar(
        f"{task_name} is scheduled {delay_s:.0f} s ahead, at or beyond the broker's visibility "
        f"timeout of {visibility_timeout_s:g} s: Redis would deliver it a second time before it "
        "is due. Schedule it nearer the time, or raise BOLT_VISIBILITY_TIMEOUT_S"
    )


# Task.replace hands its task id on to the replacement (a chord that subdivides the task, say),
# which is a new attempt of the task, not a copy of its message: each level of replacement
# claims attempts of its own, this far above the retries of the level before.
REPLACED_ATTEMPTS = 1000


def claim_attempt(request: Any) -> int:
    """The attempt a delivery claims: its retries, offset by how often the task was replaced."""
    nesting = getattr(request, "replaced_task_nesting", 0) or 0
    return (request.retries or 0) + REPLACED_ATTEMPTS * nesting


class BoltTask(Task):
    """Every bolt task's base: guarded publishing, one run per task, checked results."""

    def apply_async(
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: str | None = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: str | None = None,
        **options: Any,
    ) -> Any:
        """Publish the task, refusing a countdown or ETA beyond the visibility timeout."""
        transport = self.app.conf.broker_transport_options or {}
        timeout_s = transport.get("visibility_timeout")
        if timeout_s is not None:
            check_schedule(self.name, options, float(timeout_s))
        return super().apply_async(
            args, kwargs, task_id, producer, link, link_error, shadow, **options
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        refusal = self._refusal()
        if refusal is not None:
            log.info("%s[%s] %s: dropped", self.name, self.request.id, refusal)
            raise Ignore()
        result = super().__call__(*args, **kwargs)
        check_result(self.name, result, get_settings().result_max_bytes)
        return result

    def _refusal(self) -> str | None:
        """Why this delivery of the task must not run, or None to run it."""
        request = self.request
        if request.called_directly or request.is_eager or not request.id:
            return None
        client, attempt = self.backend.client, claim_attempt(request)
        ttl_s = float(
            (self.app.conf.broker_transport_options or {}).get("visibility_timeout", 3600)
        )
        if (request.delivery_info or {}).get("redelivered"):
            # Delivered again: its first delivery was lost with its worker, or succeeded and
            # lost only its ack, which the stored success tells apart.
            if self.backend.get_task_meta(request.id).get("status") == states.SUCCESS:
                return "was delivered again after it succeeded"
            claims.take_over(client, request.id, attempt, ttl_s)
            return None
        if claims.claim(client, request.id, attempt, ttl_s):
            return None
        return "is a copy of a message another delivery took (published twice)"
