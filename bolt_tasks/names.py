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


def warmup_key(node: str, pid: int) -> str:
    """Start-up timings of one worker process (a prefork child, or a solo or threads worker)."""
    return redis_key("warmup", node, str(pid))


def ready_key(node: str) -> str:
    """When a worker node last became ready to take tasks."""
    return redis_key("ready", node)


def handshake_key(node: str) -> str:
    """Time from a worker node being ready to its first result arriving at a producer."""
    return redis_key("handshake", node)


def worker_record_key(node: str) -> str:
    """A live worker's slots, busy slots and stolen queues (expires when it stops publishing)."""
    return redis_key("worker", node)


# Sorted set of worker node names by their last publish, so the controller finds every record.
WORKERS_INDEX_KEY = redis_key("workers")


def service_key(queue: str) -> str:
    """Per-process moving averages of one queue's task run times."""
    return redis_key("service", queue)


# Counters of work stealing (episodes, activations, stolen tasks) and its recent episodes.
STEAL_TOTALS_KEY = redis_key("steal", "totals")
STEAL_EPISODES_KEY = redis_key("steal", "episodes")

# Remote-control commands of bolt's workers: set the queues a worker steals, and report what it
# consumes (its own queues and the stolen ones).
STEAL_COMMAND = "bolt_steal"
CONSUMING_COMMAND = "bolt_consuming"

# Bounded list (newest first) of messages workers could not run, each with the reason.
DEAD_LETTERS_KEY = redis_key("deadletters")


def ledger_key(name: str) -> str:
    """A job's ledger of how many times each of its calls began and finished."""
    return redis_key("ledger", name)


def buffers_key(node: str, pid: int) -> str:
    """Buffer-pool statistics of one worker process: hits, misses, high-water mark per type."""
    return redis_key("buffers", node, str(pid))


def claim_key(task_id: str, attempt: int = 0) -> str:
    """Which delivery of a task's message runs it: set by the first, so copies are dropped."""
    return redis_key("claim", task_id, str(attempt))
