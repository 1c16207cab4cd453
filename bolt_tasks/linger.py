"""Single submits of one task made within a few milliseconds of each other share one message."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from bolt_tasks.messages import new_ids
from bolt_tasks.names import Kind

log = logging.getLogger("bolt.linger")

# Refused batches remembered for their handles; a producer that keeps a million handles to
# refused calls for longer has a problem this bound should not hide.
MAX_REFUSALS = 10_000


@dataclass
class OpenBatch:
    """Calls of one task and priority waiting to travel together; their message ids are fixed."""

    name: str
    kind: Kind
    priority: int
    deadline: float
    task_id: str
    tag: str
    calls: list[str] = field(default_factory=list)  # the JSON of each [args, kwargs]


class Linger:
    """Holds single submits in open batches until full, until their linger ends, or a flush.

    publish(batch) sends a batch; it runs in the submitting thread when the batch fills (so its
    backpressure reaches that caller), else in a flusher thread. A batch that cannot be
    published is remembered as refused, with the error, for its callers' handles to report.
    """

    def __init__(
        self, linger_s: float, batch_size: int, publish: Callable[[OpenBatch], None]
    ) -> None:
        self.linger_s, self.batch_size, self._publish = linger_s, batch_size, publish
        self._reset()
        _LINGERS.add(self)

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._open: dict[tuple[str, int], OpenBatch] = {}
        self._refused: dict[str, tuple[str, str]] = {}
        self._thread: threading.Thread | None = None

    def add(
        self, name: str, kind: Kind, priority: int, call_json: str, make_room: Callable[[], None]
    ) -> tuple[str, int]:
        """Place a call in its task's open batch; returns the batch's task id and its position.

        make_room() runs, outside the lock, before a call opens a new batch: it is where a
        submit waits for room in a full queue, or raises QueueFull.
        """
        key = (name, priority)
        with self._cond:
            opening = key not in self._open
        if opening:
            make_room()
        with self._cond:
            batch = self._open.get(key)
            if batch is None:
                task_id, tag = new_ids(2)
                deadline = time.monotonic() + self.linger_s
                batch = self._open[key] = OpenBatch(name, kind, priority, deadline, task_id, tag)
                self._start_flusher()
            position = len(batch.calls)
            batch.calls.append(call_json)
            full = len(batch.calls) >= self.batch_size
            if full:
                del self._open[key]
        if full:
            try:
                self._publish(batch)
            except Exception as exc:
                self._refuse(batch, exc)
                raise
        return batch.task_id, position

    def flush(self) -> None:
        """Publish every open batch now, in this thread."""
        with self._cond:
            batches, self._open = list(self._open.values()), {}
        for batch in batches:
            self._publish_or_refuse(batch)

    def refusal(self, task_id: str) -> tuple[str, str] | None:
        """(error type, message) if the batch of this task id could not be published."""
        return self._refused.get(task_id)

    def _start_flusher(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._flush_due, name="bolt-linger", daemon=True)
            self._thread.start()
        self._cond.notify()

    def _flush_due(self) -> None:
        while True:
            for batch in self._wait_for_due():
                self._publish_or_refuse(batch)

    def _wait_for_due(self) -> list[OpenBatch]:
        with self._cond:
            while True:
                now = time.monotonic()
                due = [key for key, batch in self._open.items() if batch.deadline <= now]
                if due:
                    return [self._open.pop(key) for key in due]
                earliest = min((batch.deadline for batch in self._open.values()), default=None)
                self._cond.wait(None if earliest is None else earliest - now)

    def _publish_or_refuse(self, batch: OpenBatch) -> None:
        try:
            self._publish(batch)
        except Exception as exc:  # the flusher must go on; the batch's handles report the error
            self._refuse(batch, exc)

    def _refuse(self, batch: OpenBatch, exc: Exception) -> None:
        log.warning("%d calls of %s were not published: %s", len(batch.calls), batch.name, exc)
        with self._cond:
            self._refused[batch.task_id] = (type(exc).__name__, str(exc))
            while len(self._refused) > MAX_REFUSALS:  # forget the oldest
                del self._refused[next(iter(self._refused))]


# Every linger of the process: flushed at exit, emptied in a forked child (whose copy of the
# open batches its parent publishes, and whose copy of a lock may be held by a lost thread).
_LINGERS: weakref.WeakSet[Linger] = weakref.WeakSet()


def _flush_all() -> None:
    for linger in list(_LINGERS):
        linger.flush()


def _forget_in_child() -> None:
    for linger in list(_LINGERS):
        linger._reset()


atexit.register(_flush_all)
os.register_at_fork(after_in_child=_forget_in_child)
