"""Ctrl-C and SIGTERM: one interrupt, never lost, never doubled."""

import contextlib
import gc
import os
import signal
import subprocess
import sys

import pytest

from bolt_tasks import cli


@pytest.fixture
def interrupts():
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    watcher = cli._Interrupts()
    watcher.install()
    yield watcher
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_the_first_signal_interrupts_and_later_ones_are_ignored(interrupts):
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0)  # give the interpreter a point to run the handler
    os.kill(os.getpid(), signal.SIGINT)  # arrives while the first one unwinds
    assert interrupts.received == signal.SIGTERM


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_interrupt_swallowed_by_a_finaliser_is_still_reported(interrupts):
    class Finaliser:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 0)

    Finaliser()  # the KeyboardInterrupt raised in __del__ is only printed
    gc.collect()
    assert interrupts.received == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):
        interrupts.check()


def test_an_interrupted_command_writes_no_report_even_when_it_ran_to_its_end(
    tmp_path, monkeypatch, capsys
):
    target = tmp_path / "report.json"

    def handler(args):
        os.kill(os.getpid(), signal.SIGINT)
        with contextlib.suppress(KeyboardInterrupt):  # swallowed, as a finaliser would
            signal.sigtimedwait([], 0)
        cli._write_report(target, {"files": 1})
        return 0

    watcher = cli._Interrupts()
    monkeypatch.setattr(cli, "_interrupts", watcher)
    monkeypatch.setattr(cli, "build_parser", lambda: _Parser(handler))
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    assert cli.main(["analyze", "."]) == cli.EXIT_INTERRUPTED
    # In-process, the caller gets its own handlers back.
    assert {signum: signal.getsignal(signum) for signum in saved} == saved
    assert not target.exists()
    assert capsys.readouterr().err.strip() == "bolt: interrupted"


class _Parser:
    def __init__(self, handler):
        self.handler = handler

    def parse_args(self, argv):
        class Args:
            pass

        args = Args()
        args.handler = self.handler
        return args


def test_an_interrupt_inside_exec_still_exits_with_the_status_returned(tmp_path):
    # CPython ends a `python -m` process by SIGINT when a bare KeyboardInterrupt once left an
    # exec of a string, even if it was caught; the CLI's own interrupt must not trigger that.
    script = (
        "import os, signal, sys\n"
        "from bolt_tasks import cli\n"
        "cli._interrupts.install()\n"
        "try:\n"
        "    exec('os.kill(os.getpid(), signal.SIGINT)\\nfor _ in range(9): pass')\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(cli.EXIT_INTERRUPTED)\n"
    )
    (tmp_path / "interrupted_in_exec.py").write_text(script)
    result = subprocess.run(
        [sys.executable, "-m", "interrupted_in_exec"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == cli.EXIT_INTERRUPTED, result.stderr


def test_the_console_script_ignores_signals_once_its_command_is_done(monkeypatch):
    # The interpreter puts default handlers back while it exits; a signal then would turn a
    # finished command's status into a death by signal.
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(cli, "_main", lambda argv: 0)
    try:
        with pytest.raises(SystemExit) as exited:
            cli.run()
        assert exited.value.code == 0
        assert signal.getsignal(signal.SIGINT) == signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
