"""Turning a pool name into the celery worker command line that runs it."""

from __future__ import annotations

from bolt_tasks.names import Pool, pool_queues, worker_name
from bolt_tasks.settings import Settings
from bolt_workers.topology import Topology


def pool_concurrency(pool: Pool, settings: Settings, topology: Topology) -> int:
    """Children of the P pool (one per P core by default) or threads of the E pool."""
    if pool is Pool.P:
        return settings.p_concurrency or len(topology.p_cores)
    return settings.e_concurrency


def worker_argv(
    pool: Pool,
    settings: Settings,
    topology: Topology,
    name: str | None = None,
    concurrency: int | None = None,
    events: bool = False,
) -> list[str]:
    """Arguments for Celery's worker_main that start one worker of the pool."""
    argv = [
        "worker",
        "--pool",
        "prefork" if pool is Pool.P else "threads",
        "--concurrency",
        str(concurrency or pool_concurrency(pool, settings, topology)),
        "--queues",
        ",".join(pool_queues(pool)),
        "--hostname",
        name or worker_name(pool),
        "--loglevel",
        settings.log_level,
        # Mingle waits a second for replies from other workers, and gossip keeps chattering;
        # bolt's controller reads what it needs from Redis instead.
        "--without-mingle",
        "--without-gossip",
        "--optimization",
        "fair",
    ]
    if events:
        argv.append("--task-events")
    return argv
