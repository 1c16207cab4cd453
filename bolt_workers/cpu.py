"""Per-core CPU use, measured with psutil: a meter between two reads and a sampler over time."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from bolt_tasks.cpulist import parse_cpulist

ONLINE_CPUS = Path("/sys/devices/system/cpu/online")

# Four samples a second show a 20 ms task's burst without the sampler itself costing a core.
SAMPLE_INTERVAL_S = 0.25
# An hour of samples at four a second: a bound, so a forgotten sampler cannot grow without end.
MAX_SAMPLES = 4 * 3600


@dataclass(frozen=True)
class Sample:
    """Each core's busy percentage over the interval_s that ended at at_s (monotonic time)."""

    at_s: float
    interval_s: float
    per_core: dict[int, float]

    @property
    def mean(self) -> float:
        """The cores' mean busy percentage: 100 means every core was busy all the time."""
        return sum(self.per_core.values()) / len(self.per_core) if self.per_core else 0.0


def _cpu_ids(count: int) -> list[int]:
    """The CPU numbers of psutil's per-CPU list, which lists online CPUs in ascending order."""
    try:
        online = list(parse_cpulist(ONLINE_CPUS.read_text()))
    except (OSError, ValueError):
        online = []
    return online if len(online) == count else list(range(count))


def _busy_and_total(times: object) -> tuple[float, float]:
    fields = times._asdict()  # type: ignore[attr-defined]
    # Guest time is already counted in user and nice time on Linux.
    total = sum(fields.values()) - fields.get("guest", 0.0) - fields.get("guest_nice", 0.0)
    idle = fields.get("idle", 0.0) + fields.get("iowait", 0.0)
    return total - idle, total


def _read_times() -> dict[int, tuple[float, float]]:
    per_cpu = psutil.cpu_times(percpu=True)
    ids = _cpu_ids(len(per_cpu))
    return {cpu: _busy_and_total(times) for cpu, times in zip(ids, per_cpu, strict=True)}


class CoreMeter:
    """The busy percentage of chosen cores between one read() and the next."""

    def __init__(self, cores: Iterable[int] | None = None) -> None:
        self.cores = tuple(sorted(cores)) if cores is not None else None
        self._last = _read_times()
        self._last_at = time.monotonic()

    def read(self) -> Sample:
        """Each chosen core's use since the previous read (or since the meter was made)."""
        now, now_at = _read_times(), time.monotonic()
        cores = self.cores if self.cores is not None else tuple(sorted(now))
        per_core = {}
        for cpu in cores:
            if cpu in now and cpu in self._last:
                busy = now[cpu][0] - self._last[cpu][0]
                total = now[cpu][1] - self._last[cpu][1]
                per_core[cpu] = min(100.0, max(0.0, 100.0 * busy / total)) if total > 0 else 0.0
        sample = Sample(now_at, now_at - self._last_at, per_core)
        self._last, self._last_at = now, now_at
        return sample


class CpuSampler:
    """Records the chosen cores' use every interval_s on a thread, from start() to stop().

    Use it as a context manager around the work to measure; the figures cover that span.
    """

    def __init__(
        self,
        cores: Iterable[int] | None = None,
        interval_s: float = SAMPLE_INTERVAL_S,
        max_samples: int = MAX_SAMPLES,
    ) -> None:
        self.cores = tuple(sorted(cores)) if cores is not None else None
        self.interval_s = interval_s
        self._samples: collections.deque[Sample] = collections.deque(maxlen=max_samples)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._meter: CoreMeter | None = None

    def start(self) -> CpuSampler:
        """Begin sampling; what came before is not measured."""
        self._meter = CoreMeter(self.cores)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bolt-cpu-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._record()

    def _record(self) -> None:
        assert self._meter is not None
        sample = self._meter.read()
        if sample.interval_s > 0 and sample.per_core:
            self._samples.append(sample)

    def stop(self) -> CpuSampler:
        """Stop sampling, recording the last partial interval too."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._record()
        return self

    def __enter__(self) -> CpuSampler:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def samples(self) -> list[Sample]:
        """Every sample recorded so far, oldest first."""
        return list(self._samples)

    def average(self) -> float:
        """Mean busy percentage over the cores and the whole span."""
        return average(self.samples())

    def maximum(self) -> float:
        """The highest busy percentage over the cores in any one sample."""
        return maximum(self.samples())

    def per_core_average(self) -> dict[int, float]:
        """Each core's mean busy percentage over the whole span."""
        return per_core_average(self.samples())


def average(samples: list[Sample]) -> float:
    """Mean busy percentage over the cores and the samples' span, each sample by its length."""
    span = sum(sample.interval_s for sample in samples)
    return sum(s.mean * s.interval_s for s in samples) / span if span else 0.0


def maximum(samples: list[Sample]) -> float:
    """The highest busy percentage over the cores in any one sample."""
    return max((sample.mean for sample in samples), default=0.0)


def per_core_average(samples: list[Sample]) -> dict[int, float]:
    """Each core's mean busy percentage over the samples' span, each sample by its length."""
    span = sum(sample.interval_s for sample in samples)
    if not span:
        return {}
    cores = sorted({cpu for sample in samples for cpu in sample.per_core})
    return {
        cpu: sum(s.per_core.get(cpu, 0.0) * s.interval_s for s in samples) / span for cpu in cores
    }
