"""Children that start while Ctrl-C arrives are tracked, then stopped; none is left behind."""

import signal
import subprocess
import sys
import threading
import time

import pytest

from bolt_tasks import cli
from bolt_workers.processes import spawn, stop_process


@pytest.fixture
def bolt_handlers():
    """bolt's own SIGINT and SIGTERM handlers, as the CLI installs them."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    cli._Interrupts().install()
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_an_interrupt_during_a_start_arrives_once_the_child_is_tracked(bolt_handlers):
    tracked: list[subprocess.Popen] = []
    # The kernel may hand a process's signal to any thread that does not hold it (a producer
    # has a result consumer, a progress bar): the handler itself must wait.
    done = threading.Event()
    other = threading.Thread(target=done.wait, daemon=True)
    other.start()

    def track(process: subprocess.Popen) -> None:
        signal.pthread_kill(other.ident, signal.SIGINT)  # Ctrl-C in the middle of starting it
        time.sleep(0.05)  # time enough for the handler to run, were it not held
        tracked.append(process)  # still runs: the interrupt waits until the child is tracked

    with pytest.raises(KeyboardInterrupt):
        spawn([sys.executable, "-c", "import time; time.sleep(60)"], track)
    done.set()
    assert len(tracked) == 1 and tracked[0].poll() is None
    # The child does not inherit the held signals: a plain TERM stops it at once.
    stop_process(tracked[0], grace_s=5.0)
    assert tracked[0].returncode == -signal.SIGTERM


def test_the_parent_gets_its_signal_mask_back():
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    process = spawn([sys.executable, "-c", "pass"], lambda started: None)
    process.wait(timeout=30)
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == before
