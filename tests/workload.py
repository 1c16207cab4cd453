"""Python modules whose analysis takes about a chosen time on this machine, for load tests."""

from __future__ import annotations

import time
from pathlib import Path

from bolt_tasks.codemetrics import analyze_source

FUNCTION = '''

def step_{n}(items, flag):
    """Fold the items, one branch per kind of item."""
    total = 0
    for item in items:
        if item > {n} and flag:
            total += item
        elif item < 0 or item == {n}:
            total -= item
        else:
            total = [x * 2 for x in range(item) if x % 3]
    return total
'''
# Functions timed to find the per-function cost; enough that the clock's resolution is nothing.
PROBE_FUNCTIONS = 400


def module_text(functions: int) -> str:
    """A module of `functions` small branchy functions."""
    return '"""Generated."""\n' + "".join(FUNCTION.format(n=n) for n in range(functions))


def seconds_per_function() -> float:
    """What analysing one generated function costs here (the best of three probes)."""
    text = module_text(PROBE_FUNCTIONS)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        analyze_source(text)
        best = min(best, time.perf_counter() - started)
    return best / PROBE_FUNCTIONS


def write_module(path: Path, target_s: float, per_function_s: float | None = None) -> Path:
    """Write a module whose analysis takes about target_s alone on this machine."""
    per_function_s = per_function_s or seconds_per_function()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(module_text(max(1, round(target_s / per_function_s))))
    return path
