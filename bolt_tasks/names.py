"""Every name bolt shares between processes: kinds, pools, queues and Redis keys."""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    """What a task does; the kind decides its queue and so its pool."""

    ANALYSIS = "analysis"
    COMPUTATION = "computation"
    IO = "io"
    COORDINATION = "coordination"


class Pool(StrEnum):
    """The two worker pools: P on performance cores, E on efficiency cores."""

    P = "p"
    E = "e"


# A kind's queue carries the kind's own name, so a queue name read from Redis is a kind.
QUEUE_OF_KIND: dict[Kind, str] = {kind: kind.value for kind in Kind}

POOL_OF_KIND: dict[Kind, Pool] = {
    Kind.ANALYSIS: Pool.P,
    Kind.COMPUTATION: Pool.P,
    Kind.IO: Pool.E,
    Kind.COORDINATION: Pool.E,
}

QUEUES: tuple[str, ...] = tuple(QUEUE_OF_KIND[kind] for kind in Kind)


def pool_queues(pool: Pool) -> tuple[str, ...]:
    """The queues a pool consumes when it is not stealing."""
    return tuple(QUEUE_OF_KIND[kind] for kind, owner in POOL_OF_KIND.items() if owner is pool)


def worker_name(pool: Pool) -> str:
    """The Celery node name prefix of a pool's workers (completed with %h by Celery)."""
    return f"{pool.value}@%h"


# Every Redis key bolt itself writes starts with this prefix (Celery's own keys keep theirs).
KEY_PREFIX = "bolt:"


def redis_key(*parts: str) -> str:
    """Join parts into one bolt Redis key: redis_key("stats", "io") -> "bolt:stats:io"."""
    return KEY_PREFIX + ":".join(parts)
