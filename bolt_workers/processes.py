"""Starting and stopping the child processes of a deployment so that none outlives it."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

_PR_SET_PDEATHSIG = 1
# The signals that stop bolt's commands; held while a child starts (see spawn).
STOPPING_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def child_preexec() -> None:
    """Run in a child before exec: its own process group, SIGTERM if the parent dies, and the
    stopping signals that spawn held in the parent delivered again."""
    os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPPING_SIGNALS)


@dataclass
class _Hold:
    """How deep the running signals_held blocks are, and what a deferred signal asks to run."""

    depth: int = 0
    pending: Callable[[], None] | None = None


_HOLD = _Hold()


def defer_while_held(action: Callable[[], None]) -> bool:
    """For a signal handler: True when a signals_held block runs, and action (raising the
    interrupt, say) then runs as the outermost block ends, instead of now."""
    if _HOLD.depth == 0:
        return False
    _HOLD.pending = action
    return True


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for the block; one that came meanwhile acts after it.

    For the steps an interrupt must not cut in two: starting a child and recording it, and
    stopping a deployment, so that Ctrl-C never leaves a child nothing knows of or half of a
    deployment running. The thread's signal mask holds the signals themselves; a handler that
    asks defer_while_held holds its action, which is what counts when another thread of the
    process (which the mask does not cover) is the one the kernel hands the signal to.
    """
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOPPING_SIGNALS)
    _HOLD.depth += 1
    try:
        yield
    finally:
        _HOLD.depth -= 1
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if _HOLD.depth == 0 and _HOLD.pending is not None:
            action, _HOLD.pending = _HOLD.pending, None
            action()


def spawn(
    argv: Sequence[str], track: Callable[[subprocess.Popen], None], **options: Any
) -> subprocess.Popen:
    """Start a child (child_preexec) and hand it to track before Ctrl-C can interrupt: an
    interrupt arrives once the child is tracked, and the caller's clean-up stops it."""
    with signals_held():
        process = subprocess.Popen(argv, preexec_fn=child_preexec, **options)
        track(process)
    return process


def stop_process(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """TERM a child's whole process group, KILL it after grace_s, and reap the child."""
    stop_processes([process], grace_s)


def stop_processes(processes: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    """Stop several children at once: TERM every group, wait up to grace_s, KILL what is left."""
    for process in processes:
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        # Whatever is left of the group (the pool children of a worker) goes too.
        _signal_group(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5.0)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)
