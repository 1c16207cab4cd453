"""Which cores are performance (P) cores and which efficiency (E) cores, for this process."""

from __future__ import annotations

import itertools
import math
import os
import posixpath
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bolt_tasks.cpulist import format_cpulist, parse_cpulist
from bolt_tasks.errors import ConfigError
from bolt_tasks.settings import Settings, get_settings

# Two tiers of cores are different kinds only if the slower runs below 80% of the faster. Cores
# of one kind differ by a few percent (Intel's favoured cores report 100-200 MHz more); a
# LITTLE core runs at half a big one or less.
KIND_GAP = 0.8

# How long a sysctl may take before bolt treats it as absent.
SYSCTL_TIMEOUT_S = 2.0


def _sysctl(name: str) -> str | None:
    """The value of a macOS sysctl, or None when it does not exist."""
    try:
        done = subprocess.run(
            ["sysctl", "-n", name], capture_output=True, text=True, timeout=SYSCTL_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _affinity() -> set[int]:
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    # A platform without affinity (macOS) lets a process run on every CPU.
    return set(range(os.cpu_count() or 1))


@dataclass(frozen=True)
class Host:
    """Where detection reads the machine from; tests point it at trees they build."""

    sysfs: Path = Path("/sys")
    cgroup: Path = Path("/sys/fs/cgroup")
    proc_cgroup: Path = Path("/proc/self/cgroup")
    affinity: Callable[[], set[int]] = _affinity
    sysctl: Callable[[str], str | None] = _sysctl
    platform: str = sys.platform


@dataclass(frozen=True)
class Topology:
    """The usable cores split into P and E; on a machine of like cores, e_cores is empty."""

    p_cores: tuple[int, ...]
    e_cores: tuple[int, ...]
    source: str
    quota_cpus: float | None = None
    can_pin: bool = True
    reasons: tuple[str, ...] = field(default=())

    @property
    def homogeneous(self) -> bool:
        return not self.e_cores

    @property
    def usable(self) -> tuple[int, ...]:
        return tuple(sorted(self.p_cores + self.e_cores))

    @property
    def p_children(self) -> int:
        """Default size of the P pool: one child per P core, within any CPU quota."""
        if self.quota_cpus is None:
            return len(self.p_cores)
        return max(1, min(len(self.p_cores), math.ceil(self.quota_cpus)))

    def as_dict(self) -> dict[str, object]:
        """The topology as plain data, for `bolt cores --json`."""
        return {
            "p_cores": list(self.p_cores),
            "e_cores": list(self.e_cores),
            "source": self.source,
            "quota_cpus": self.quota_cpus,
            "can_pin": self.can_pin,
            "p_children": self.p_children,
            "reasons": list(self.reasons),
        }


def usable_cpus(host: Host | None = None) -> tuple[int, ...]:
    """The CPUs this process may run on: its affinity mask within its cgroup's cpuset."""
    return _usable(host or Host(), [])


def detect(settings: Settings | None = None, host: Host | None = None) -> Topology:
    """The topology of this machine as far as this process can use it.

    BOLT_P_CORES / BOLT_E_CORES override what the machine reports; either naming a CPU the
    process may not use raises ConfigError naming the variable.
    """
    settings = settings or get_settings()
    host = host or Host()
    if host.platform == "darwin":
        return _detect_macos(settings, host)
    reasons: list[str] = []
    usable = _usable(host, reasons)
    quota = _quota(host, reasons)
    p, e, source = _split(settings, host, usable, reasons)
    if quota is not None:
        children = max(1, min(len(p), math.ceil(quota)))
        reasons.append(f"a CPU quota of {quota:g} CPUs sizes the P pool at {children} children")
    return Topology(p, e, source, quota, True, tuple(reasons))


def _split(
    settings: Settings, host: Host, usable: tuple[int, ...], reasons: list[str]
) -> tuple[tuple[int, ...], tuple[int, ...], str]:
    if settings.p_cores is not None or settings.e_cores is not None:
        return (*_override(settings, usable, reasons), "override")
    for source, finder in (
        ("intel-hybrid", _intel_hybrid),
        ("cpu-capacity", _capacity_tiers),
        ("cpu-frequency", _frequency_tiers),
    ):
        found = finder(host, usable, reasons)
        if found is not None:
            return (*_with_p_cores(found, reasons), source)
    reasons.append("no kind of core told apart, so every usable core is a P core")
    return usable, (), "alike"


def _with_p_cores(
    found: tuple[tuple[int, ...], tuple[int, ...]], reasons: list[str]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    p, e = found
    if p:
        return p, e
    reasons.append("no P core is usable, so the usable E cores serve as P cores")
    return e, ()


# --- usable CPUs and quota ---------------------------------------------------------------


def _usable(host: Host, reasons: list[str]) -> tuple[int, ...]:
    allowed = set(host.affinity())
    reasons.append(f"affinity mask allows CPUs {format_cpulist(allowed)}")
    cpuset = _cpuset(host)
    if cpuset is not None:
        path, cpus = cpuset
        allowed &= set(cpus)
        reasons.append(f"cgroup cpuset {path} allows CPUs {format_cpulist(cpus)}")
    if not allowed:
        raise ConfigError("this process may run on no CPU: its affinity and cpuset do not meet")
    return tuple(sorted(allowed))


def _cgroup_paths(host: Host) -> dict[str, str]:
    """This process's cgroup path per controller ("" for the unified v2 hierarchy)."""
    try:
        lines = host.proc_cgroup.read_text().splitlines()
    except OSError:
        return {"": "/"}
    paths: dict[str, str] = {}
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                paths[controller] = parts[2] or "/"
    return paths


def _ancestors(path: str) -> list[str]:
    """The cgroup path and each parent up to the root, nearest first, relative to the mount."""
    current = posixpath.normpath("/" + path.lstrip("/"))
    chain = [current]
    while current != "/":
        current = posixpath.dirname(current)
        chain.append(current)
    return [item.lstrip("/") for item in chain]


def _v2_mounts(host: Host) -> list[Path]:
    # A hybrid host mounts the unified hierarchy under "unified"; a v2-only host at the root.
    return [host.cgroup, host.cgroup / "unified"]


def _cpuset(host: Host) -> tuple[str, tuple[int, ...]] | None:
    paths = _cgroup_paths(host)
    candidates: list[Path] = []
    if "" in paths:
        rel = _ancestors(paths[""])[0]
        candidates += [mount / rel / "cpuset.cpus.effective" for mount in _v2_mounts(host)]
    if "cpuset" in paths:
        rel = _ancestors(paths["cpuset"])[0]
        base = host.cgroup / "cpuset" / rel
        candidates += [base / "cpuset.effective_cpus", base / "cpuset.cpus"]
    for path in candidates:
        cpus = _read_cpulist(path)
        if cpus:
            return str(path), cpus
    return None


def _quota(host: Host, reasons: list[str]) -> float | None:
    paths = _cgroup_paths(host)
    quotas: list[tuple[float, str]] = []
    if "" in paths:
        for mount in _v2_mounts(host):
            quotas += _walk_quota(mount, paths[""], _v2_quota)
    if "cpu" in paths:
        # cgroup v1 mounts the cpu controller alone or together with cpuacct.
        for mount in ("cpu", "cpu,cpuacct"):
            quotas += _walk_quota(host.cgroup / mount, paths["cpu"], _v1_quota)
    if not quotas:
        reasons.append("no cgroup CPU quota applies")
        return None
    cpus, where = min(quotas)
    reasons.append(f"cgroup CPU quota {where} allows {cpus:g} CPUs")
    return cpus


def _walk_quota(
    mount: Path, path: str, read: Callable[[Path], float | None]
) -> list[tuple[float, str]]:
    found = []
    for rel in _ancestors(path):
        cpus = read(mount / rel)
        if cpus is not None:
            found.append((cpus, str(mount / rel)))
    return found


def _v2_quota(folder: Path) -> float | None:
    parts = _read(folder / "cpu.max").split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    return _ratio(parts[0], parts[1])


def _v1_quota(folder: Path) -> float | None:
    return _ratio(_read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us"))


def _ratio(quota_us: str, period_us: str) -> float | None:
    try:
        quota, period = int(quota_us), int(period_us)
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


# --- telling kinds of core apart -----------------------------------------------------------


def _intel_hybrid(
    host: Host, usable: tuple[int, ...], reasons: list[str]
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    core = _read_cpulist(host.sysfs / "devices" / "cpu_core" / "cpus")
    atom = _read_cpulist(host.sysfs / "devices" / "cpu_atom" / "cpus")
    if core is None or atom is None:
        reasons.append("not an Intel hybrid: no cpu_core and cpu_atom devices")
        return None
    p = tuple(cpu for cpu in usable if cpu not in atom)
    e = tuple(cpu for cpu in usable if cpu in atom)
    reasons.append(
        f"Intel hybrid: the kernel lists cpu_core {format_cpulist(core)} (P) and cpu_atom "
        f"{format_cpulist(atom)} (E)"
    )
    return p, e


def _capacity_tiers(
    host: Host, usable: tuple[int, ...], reasons: list[str]
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    return _tiers(host, usable, reasons, "cpu_capacity", "cpu_capacity")


def _frequency_tiers(
    host: Host, usable: tuple[int, ...], reasons: list[str]
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    return _tiers(host, usable, reasons, "cpufreq/cpuinfo_max_freq", "cpuinfo_max_freq")


def _tiers(
    host: Host, usable: tuple[int, ...], reasons: list[str], file: str, label: str
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """Split at the widest gap between the cores' figures, if the slower side is a kind apart."""
    figures = {
        cpu: _read_int(host.sysfs / "devices/system/cpu" / f"cpu{cpu}" / file) for cpu in usable
    }
    if any(value is None or value <= 0 for value in figures.values()):
        reasons.append(f"{label}: not reported for every usable CPU")
        return None
    levels = sorted(set(figures.values()))
    ratio, cut = min(
        ((low / high, high) for low, high in itertools.pairwise(levels)),
        default=(1.0, 0),
    )
    if len(levels) == 1:
        reasons.append(f"{label}: {levels[0]} on every usable CPU")
        return None
    if ratio >= KIND_GAP:
        reasons.append(f"{label}: {_levels(levels)} on the usable CPUs, too close to tell apart")
        return None
    p = tuple(cpu for cpu in usable if figures[cpu] >= cut)
    e = tuple(cpu for cpu in usable if figures[cpu] < cut)
    reasons.append(
        f"{label}: CPUs {format_cpulist(p)} at {_levels(figures[c] for c in p)} are P, "
        f"{format_cpulist(e)} at {_levels(figures[c] for c in e)} are E"
    )
    return p, e


def _levels(values: Iterable[int]) -> str:
    return "/".join(str(value) for value in sorted(set(values), reverse=True))


# --- overrides and macOS -------------------------------------------------------------------


def _override(
    settings: Settings, usable: tuple[int, ...], reasons: list[str]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    for name, cpus in (("BOLT_P_CORES", settings.p_cores), ("BOLT_E_CORES", settings.e_cores)):
        outside = sorted(set(cpus or ()) - set(usable))
        if outside:
            raise ConfigError(
                f"{name}={format_cpulist(cpus or ())} names CPU(s) {format_cpulist(outside)} "
                f"this process may not use (usable: {format_cpulist(usable)})"
            )
    p = settings.p_cores or tuple(cpu for cpu in usable if cpu not in (settings.e_cores or ()))
    e = settings.e_cores or tuple(cpu for cpu in usable if cpu not in p)
    given = "BOLT_P_CORES" if settings.e_cores is None else "BOLT_E_CORES"
    if settings.p_cores is not None and settings.e_cores is not None:
        reasons.append(f"BOLT_P_CORES={format_cpulist(p)} and BOLT_E_CORES={format_cpulist(e)}")
    else:
        other = "E" if given == "BOLT_P_CORES" else "P"
        named = format_cpulist(p if given == "BOLT_P_CORES" else e)
        reasons.append(f"{given}={named}; the other usable CPUs are {other} cores")
    if not p:
        raise ConfigError(f"BOLT_E_CORES={format_cpulist(e)} leaves no usable CPU for the P pool")
    return tuple(p), tuple(e)


def _detect_macos(settings: Settings, host: Host) -> Topology:
    # macOS lets no process choose its cores, so the numbers below only size the pools.
    reasons = ["macOS: the pools are sized from the perflevel sysctls and cannot be pinned"]
    total = _int(host.sysctl("hw.logicalcpu")) or os.cpu_count() or 1
    levels = _int(host.sysctl("hw.nperflevels")) or 1
    counts = [_int(host.sysctl(f"hw.perflevel{level}.logicalcpu")) or 0 for level in range(levels)]
    usable = tuple(range(total))
    if settings.p_cores is not None or settings.e_cores is not None:
        p, e = _override(settings, usable, reasons)
        return Topology(p, e, "override", None, False, tuple(reasons))
    if levels < 2 or not counts[0]:
        reasons.append(f"hw.nperflevels={levels}: all {total} CPUs alike, every one a P core")
        return Topology(usable, (), "alike", None, False, tuple(reasons))
    p = tuple(range(counts[0]))
    e = tuple(range(counts[0], min(total, sum(counts))))
    reasons.append(
        f"hw.nperflevels={levels}: perflevel0 has {len(p)} CPUs (P), the others {len(e)} (E)"
    )
    return Topology(p, e, "macos-perflevels", None, False, tuple(reasons))


# --- reading files -------------------------------------------------------------------------


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _read_cpulist(path: Path) -> tuple[int, ...] | None:
    """A kernel cpulist file's CPUs; None when the file is missing or unreadable."""
    if not path.exists():
        return None
    try:
        return parse_cpulist(_read(path), allow_empty=True)
    except ValueError:
        return None


def _read_int(path: Path) -> int | None:
    return _int(_read(path))


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
