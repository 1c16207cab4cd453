"""Riding out a Redis restart: retry what Redis refused while it is away, up to a limit."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from bolt_tasks.errors import BrokerUnavailable

log = logging.getLogger("bolt.outage")

# A restarting Redis answers again within seconds (its append-only file reloaded); one that has
# not answered for 30 s is down, and whoever waits on it stops with that error.
OUTAGE_LIMIT_S = 30.0
# What redis-py raises while Redis restarts: refused connections, and loading the data file.
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
# Retries start fast (a restart takes tens of milliseconds) and back off to a second.
FIRST_RETRY_S, MAX_RETRY_S = 0.02, 1.0


class Outage:
    """How long Redis has been out of reach of a polling loop; past limit_s, an error."""

    def __init__(self, limit_s: float = OUTAGE_LIMIT_S) -> None:
        self.limit_s = limit_s
        self.since: float | None = None

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args), or None while Redis is away; raises BrokerUnavailable past the limit."""
        try:
            value = fn(*args)
        except REDIS_DOWN as exc:
            self.down(exc)
            return None
        if self.since is not None:
            log.info("Redis answers again after %.1f s away", time.monotonic() - self.since)
            self.since = None
        return value

    def down(self, exc: Exception) -> None:
        """Note that Redis refused; raises BrokerUnavailable once it has for limit_s."""
        now = time.monotonic()
        if self.since is None:
            self.since = now
            log.warning("Redis went away (%s); waiting up to %g s for it", exc, self.limit_s)
        elif now - self.since > self.limit_s:
            raise BrokerUnavailable(f"Redis has not answered for {now - self.since:.0f} s: {exc}")


def through_restart(fn: Callable[..., Any], *args: Any, limit_s: float = OUTAGE_LIMIT_S) -> Any:
    """fn(*args), retried while Redis is away; raises BrokerUnavailable past limit_s.

    fn must be safe to repeat: a command Redis ran just before it went away may run again.
    """
    outage = Outage(limit_s)
    pause_s = FIRST_RETRY_S
    while True:
        try:
            return fn(*args)
        except REDIS_DOWN as exc:
            outage.down(exc)
        time.sleep(pause_s)
        pause_s = min(MAX_RETRY_S, pause_s * 2)
