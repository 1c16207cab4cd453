"""Which cores are performance (P) cores and which efficiency (E) cores, for this process."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Topology:
    """The usable cores split into P and E; on a machine of like cores, e_cores is empty."""

    p_cores: tuple[int, ...]
    e_cores: tuple[int, ...]
    source: str

    @property
    def homogeneous(self) -> bool:
        return not self.e_cores

    @property
    def usable(self) -> tuple[int, ...]:
        return tuple(sorted(self.p_cores + self.e_cores))


def usable_cpus() -> tuple[int, ...]:
    """The CPUs this process may run on (its affinity mask, which includes any cpuset)."""
    return tuple(sorted(os.sched_getaffinity(0)))


def detect() -> Topology:
    """The topology of this machine as far as this process can use it."""
    return Topology(p_cores=usable_cpus(), e_cores=(), source="all usable cores alike")
