"""The kernel's cpulist syntax ("0-3,8"): parsing it and writing it back."""

from __future__ import annotations

from collections.abc import Iterable


def parse_cpulist(text: str, allow_empty: bool = False) -> tuple[int, ...]:
    """The sorted CPU numbers of a cpulist such as "0-3,8"; ValueError if it is not one.

    Kernel files may hold an empty list (no CPU of that kind); a list a user writes may not,
    unless allow_empty is set.
    """
    text = text.strip()
    if not text:
        if allow_empty:
            return ()
        raise ValueError("is empty; write CPU numbers and ranges such as 0-3,8")
    cpus: set[int] = set()
    for item in text.split(","):
        cpus.update(_cpu_range(item.strip()))
    return tuple(sorted(cpus))


def _cpu_range(item: str) -> range:
    first, dash, last = item.partition("-")
    if not first.isdigit() or (dash and not last.isdigit()):
        raise ValueError(f"{item!r} is not a CPU number or a range such as 0-3")
    start, end = int(first), int(last) if dash else int(first)
    if end < start:
        raise ValueError(f"{item!r} is a range that ends before it starts")
    return range(start, end + 1)


def format_cpulist(cpus: Iterable[int]) -> str:
    """The shortest cpulist naming these CPUs: (0, 1, 2, 3, 8) -> "0-3,8"; "" for none."""
    ordered = sorted(set(cpus))
    spans: list[str] = []
    index = 0
    while index < len(ordered):
        start = end = ordered[index]
        while index + 1 < len(ordered) and ordered[index + 1] == end + 1:
            index += 1
            end = ordered[index]
        spans.append(str(start) if start == end else f"{start}-{end}")
        index += 1
    return ",".join(spans)
