"""Starting and stopping the child processes of a deployment so that none outlives it."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

_PR_SET_PDEATHSIG = 1


def child_preexec() -> None:
    """Run in a child before exec: its own process group, and SIGTERM if the parent dies."""
    os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


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
