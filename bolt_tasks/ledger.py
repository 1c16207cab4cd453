"""A job's ledger in Redis: how many times each of its calls began and finished.

A task given a ledger name counts itself in one Redis hash under a key naming its call (its
seed, its file): each run draws a token and sets "began:<call>:<token>" as it starts and
"finished:<call>:<token>" once its work is done. Read after a job, the ledger shows what
delivery did: a task killed and delivered again began twice and finished once; a task that
finished twice did its work twice. Setting a field is safe to repeat, so a write retried
through a Redis restart never counts twice. The hash expires with the job's results.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from bolt_tasks.names import ledger_key
from bolt_tasks.outage import through_restart

BEGAN = "began"
FINISHED = "finished"


def record(client: Any, name: str, event: str, call: str, token: str, ttl_s: float) -> None:
    """Mark one event (BEGAN or FINISHED) of one run of a call, and keep the ledger ttl_s."""
    key = ledger_key(name)

    def write() -> None:
        pipe = client.pipeline(transaction=False)
        pipe.hset(key, f"{event}:{call}:{token}", 1)
        pipe.expire(key, max(1, int(ttl_s)))
        pipe.execute()

    through_restart(write)


@contextmanager
def counting(client: Any, name: str | None, call: str, ttl_s: float) -> Iterator[None]:
    """Count the work inside as one run of a call: BEGAN before it, FINISHED once it succeeded."""
    if name is None:
        yield
        return
    token = uuid.uuid4().hex
    record(client, name, BEGAN, call, token, ttl_s)
    yield
    record(client, name, FINISHED, call, token, ttl_s)


@dataclass
class Ledger:
    """What a ledger holds: per call, how many runs began and how many finished."""

    began: Counter[str] = field(default_factory=Counter)
    finished: Counter[str] = field(default_factory=Counter)

    def lost(self, calls: set[str]) -> set[str]:
        """The calls that never finished."""
        return {call for call in calls if not self.finished[call]}

    def doubled(self) -> dict[str, int]:
        """The calls that finished more than once, with how often."""
        return {call: n for call, n in self.finished.items() if n > 1}

    def begun_again(self) -> dict[str, int]:
        """The calls that began more than once (delivered again), with how often."""
        return {call: n for call, n in self.began.items() if n > 1}


def read(client: Any, name: str) -> Ledger:
    """The ledger called name as it stands in Redis."""
    ledger = Ledger()
    for raw_field, _ in client.hscan_iter(ledger_key(name), count=10_000):
        event, _, rest = _text(raw_field).partition(":")
        call = rest.rpartition(":")[0]
        (ledger.began if event == BEGAN else ledger.finished)[call] += 1
    return ledger


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
