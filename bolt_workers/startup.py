"""What a worker does as it starts: pin itself (or each pool child) to its pool's cores."""

from __future__ import annotations

import functools
import logging
import os

from billiard.process import current_process
from celery import signals

from bolt_tasks.app import app
from bolt_tasks.cpulist import format_cpulist
from bolt_tasks.names import Pool
from bolt_tasks.settings import Settings, get_settings
from bolt_workers import deadletter, stealer, warmup
from bolt_workers.launcher import plan_pool
from bolt_workers.topology import Topology

log = logging.getLogger("bolt.startup")


def child_core(index: int, cores: tuple[int, ...]) -> int:
    """The core of the pool child in slot index: slots are spread over the cores in turn."""
    return cores[index % len(cores)]


def install(pool: Pool, topology: Topology, settings: Settings | None = None) -> None:
    """Connect the start-up hooks of a worker of this pool, before Celery starts it."""
    plan = plan_pool(pool, settings or get_settings(), topology)
    log.info("%s pool: %s", pool.value.upper(), "; ".join(plan.reasons))
    warmup.install()
    deadletter.install(app)
    stealer.install(pool, settings or get_settings())
    if plan.autoscale is None:  # an autoscaled worker's limit, reserve included, is its own
        reserve = (settings or get_settings()).worker_reserve
        signals.worker_ready.connect(functools.partial(hold_reserve, reserve), weak=False)
    if not plan.pinned:
        return
    if pool is Pool.P:
        # billiard gives every child a slot index before it starts it: 0..n-1 for the first
        # children, and the lowest free slot below the pool size for a replacement or a child
        # the autoscaler adds. So a replacement lands on the core of the child it replaces.
        signals.worker_process_init.connect(functools.partial(pin_child, plan.cores), weak=False)
    else:
        os.sched_setaffinity(0, set(plan.cores))
        log.info("E worker pinned to cores %s", format_cpulist(plan.cores))


def hold_reserve(extra: int, sender: object = None, **_: object) -> None:
    """Raise the worker's reservation limit by extra messages beyond its pool size."""
    qos = getattr(sender, "qos", None)
    if qos is None or extra <= 0:
        return
    sender.initial_prefetch_count += extra
    qos.increment_eventually(extra)
    log.info("worker holds %d message(s) beyond its busy slots", extra)


def pin_child(cores: tuple[int, ...], **_: object) -> None:
    """Pin the pool child this runs in to the core of its slot."""
    index = getattr(current_process(), "index", None)
    if index is None:
        log.warning(
            "P child (pid %d) has no slot index; it stays on cores %s",
            os.getpid(),
            format_cpulist(cores),
        )
        os.sched_setaffinity(0, set(cores))
        return
    core = child_core(index, cores)
    os.sched_setaffinity(0, {core})
    log.info("P child %d (pid %d) pinned to core %d", index, os.getpid(), core)
