"""Splitting an operation whose estimated cost passes BOLT_MIN_STEAL_TASK_S into subtasks.

A slot that steals takes whole tasks: one long task stays on the slot that took it while the
others idle. So a task that is about to do much more than ``BOLT_MIN_STEAL_TASK_S`` of work
asks this module how many pieces to cut it into, each of about that cost, and sends the
pieces as subtasks that any free slot can take.

The cost is estimated from what this process has measured of the same operation (a moving
average of seconds per unit of work, such as bytes of source), or from a default rate until
it has measured any::

    parts = subdivide.parts_for(subdivide.estimate_s("analysis", size, 1 / 2e6), min_task_s)
    with subdivide.measured("analysis", size):
        ...  # the work, when it is not split
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

# Weight of the newest measurement in a rate's moving average (about the last five count).
RATE_WEIGHT = 0.2
# Split only what is at least this many times the minimum, so every piece stays near it.
SPLIT_FACTOR = 1.5


@dataclass
class RateBook:
    """Moving averages of seconds per unit of work, one per operation, for this process."""

    rates: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, operation: str, units: float, seconds: float) -> None:
        """Fold one measured run of `units` of work into the operation's rate."""
        if units <= 0:
            return
        rate = seconds / units
        with self.lock:
            old = self.rates.get(operation)
            self.rates[operation] = rate if old is None else old + RATE_WEIGHT * (rate - old)

    def seconds_per_unit(self, operation: str, default: float) -> float:
        """The measured rate, or default when this process has not measured the operation."""
        return self.rates.get(operation, default)


RATES = RateBook()


def estimate_s(operation: str, units: float, default_s_per_unit: float) -> float:
    """Estimated seconds of `units` of work of an operation, from this process's measurements."""
    return units * RATES.seconds_per_unit(operation, default_s_per_unit)


def parts_for(cost_s: float, min_task_s: float) -> int:
    """Into how many subtasks of about min_task_s to cut work of cost_s; 1 means do not split."""
    if cost_s < SPLIT_FACTOR * min_task_s:
        return 1
    return max(2, round(cost_s / min_task_s))


@contextmanager
def measured(operation: str, units: float) -> Iterator[None]:
    """Time the block and fold it into the operation's rate (not when it raises)."""
    started = time.perf_counter()
    yield
    RATES.note(operation, units, time.perf_counter() - started)
