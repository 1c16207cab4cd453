"""Children that start while Ctrl-C arrives are tracked, then stopped; none is left behind."""

import os
import signal
import subprocess
import sys

import pytest

from bolt_workers.processes import spawn, stop_process


def test_an_interrupt_during_a_start_arrives_once_the_child_is_tracked():
    tracked: list[subprocess.Popen] = []

    def track(process: subprocess.Popen) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of starting it
        tracked.append(process)  # still runs: the signal waits until the child is tracked

    with pytest.raises(KeyboardInterrupt):
        spawn([sys.executable, "-c", "import time; time.sleep(60)"], track)
    assert len(tracked) == 1 and tracked[0].poll() is None
    # The child does not inherit the held signals: a plain TERM stops it at once.
    stop_process(tracked[0], grace_s=5.0)
    assert tracked[0].returncode == -signal.SIGTERM


def test_the_parent_gets_its_signal_mask_back():
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    process = spawn([sys.executable, "-c", "pass"], lambda started: None)
    process.wait(timeout=30)
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == before
