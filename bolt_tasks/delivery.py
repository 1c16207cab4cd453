"""The Celery and kombu options behind bolt's delivery guarantees, derived from its settings.

A message a dead worker held comes back after the visibility timeout, looked for every few
seconds; publishing and storing a result wait through a Redis restart instead of failing;
control replies expire; and rediss:// URLs get their TLS options.
"""

from __future__ import annotations

from typing import Any

from bolt_tasks.settings import Settings
from bolt_tasks.tls import celery_tls_options

# kombu looks for messages whose visibility timeout has passed every interval x throttle
# seconds (100 s by its defaults); bolt looks five times per timeout, at most every 10 s, and
# at least every half second so short test timeouts stay short.
SWEEPS_PER_TIMEOUT = 5
SWEEP_BOUNDS_S = (0.5, 10.0)
# Publishing retries for about 25 s (0, 0.2, 0.4 ... then 1 s apart): long enough for Redis to
# restart and reload its append-only file, short enough that a dead Redis is reported.
PUBLISH_RETRY_POLICY = {
    "max_retries": 30,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 1.0,
}
# Storing a result retries with jittered backoff up to 1 s, 40 times: about 20 s on average.
RESULT_STORE_RETRIES = 40
RESULT_STORE_SLEEP_MS = (50, 1000)


def sweep_interval_s(visibility_timeout_s: float) -> float:
    """How often a worker looks for unacknowledged messages whose timeout has passed."""
    low, high = SWEEP_BOUNDS_S
    return min(high, max(low, visibility_timeout_s / SWEEPS_PER_TIMEOUT))


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """kombu Redis transport options: the sweep for messages of dead workers."""
    return {
        "unacked_restore_interval": sweep_interval_s(settings.visibility_timeout_s),
        # Every sweep scans: the interval alone sets the pace.
        "unacked_restore_throttle": 1,
    }


def celery_options(settings: Settings) -> dict[str, Any]:
    """Celery options: retries through a Redis restart, and TLS for rediss:// URLs."""
    base_ms, max_ms = RESULT_STORE_SLEEP_MS
    return {
        "task_publish_retry": True,
        "task_publish_retry_policy": dict(PUBLISH_RETRY_POLICY),
        "result_backend_always_retry": True,
        "result_backend_max_retries": RESULT_STORE_RETRIES,
        "result_backend_base_sleep_between_retries_ms": base_ms,
        "result_backend_max_sleep_between_retries_ms": max_ms,
        # The worker keeps reconnecting to a Redis that went away, as long as it takes.
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,
        # Reply queues of remote control (ping, inspect) expire 10 s after their last use, so a
        # producer that stops listening leaves nothing behind; Celery's default, kept explicit.
        "control_queue_expires": 10.0,
        **celery_tls_options(settings),
    }
