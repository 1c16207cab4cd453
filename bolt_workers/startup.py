"""What a worker does as it starts: pin itself (or each pool child) to its pool's cores."""

from __future__ import annotations

import logging
import os

from billiard.process import current_process
from celery import signals

from bolt_tasks.names import Pool
from bolt_workers.topology import Topology

log = logging.getLogger("bolt.startup")


def child_core(index: int, cores: tuple[int, ...]) -> int:
    """The core of the pool child in slot index: slots are spread over the cores in turn."""
    return cores[index % len(cores)]


def install(pool: Pool, topology: Topology) -> None:
    """Connect the start-up hooks of a worker of this pool, before Celery starts it."""
    if pool is Pool.P:

        def pin_child(**_: object) -> None:
            # A replacement child takes over the slot index of the one it replaces, so it is
            # pinned to the same core.
            index = getattr(current_process(), "index", 0) or 0
            core = child_core(index, topology.p_cores)
            os.sched_setaffinity(0, {core})
            log.debug("P child %d (pid %d) pinned to core %d", index, os.getpid(), core)

        signals.worker_process_init.connect(pin_child, weak=False)
    elif topology.e_cores:
        os.sched_setaffinity(0, set(topology.e_cores))
        log.info("E worker pinned to cores %s", ",".join(map(str, topology.e_cores)))
