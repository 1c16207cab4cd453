"""Bad input to `bolt` gets one line and exit status 2, and nothing is started or written."""

import socket
import subprocess
import sys
import time

import pytest

from bolt_tasks.cli import EXIT_USAGE, main


def run_bolt(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bolt_tasks.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("make", ["missing", "file", "unreadable"])
def test_a_path_that_is_not_a_readable_folder_is_one_line_and_status_2(tmp_path, make, capsys):
    target = tmp_path / "target"
    if make == "file":
        target.write_text("x")
    elif make == "unreadable":
        target.mkdir(mode=0o000)
    if make == "unreadable" and __import__("os").access(target, __import__("os").R_OK):
        pytest.skip("running as root: permissions do not stop reading")
    assert main(["analyze", str(target)]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(target) in err


def test_a_json_report_into_a_missing_folder_is_refused_before_any_work(tmp_path, capsys):
    assert main(["analyze", str(tmp_path), "--json", str(tmp_path / "no" / "r.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


def test_an_unreachable_broker_is_named_with_its_password_masked_within_10_s(tmp_path):
    url = f"redis://:hunter2@127.0.0.1:{closed_port()}/0"
    started = time.monotonic()
    result = run_bolt("analyze", str(tmp_path), "--broker", url)
    assert time.monotonic() - started < 10
    assert result.returncode == EXIT_USAGE
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "redis://:***@127.0.0.1" in lines[0] and "hunter2" not in result.stderr


def test_a_broker_url_that_is_not_redis_is_refused(tmp_path, capsys):
    assert main(["analyze", str(tmp_path), "--broker", "amqp://x"]) == EXIT_USAGE
    assert "--broker" in capsys.readouterr().err


def test_a_bad_setting_is_refused_naming_the_variable(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bolt_tasks.cli", "analyze", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**__import__("os").environ, "BOLT_CHUNK_LINES": "many"},
    )
    assert result.returncode == EXIT_USAGE
    assert "BOLT_CHUNK_LINES" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_an_unknown_command_or_option_is_status_2(capsys):
    assert main(["frobnicate"]) == EXIT_USAGE
    assert main(["analyze"]) == EXIT_USAGE
    assert main(["worker", "--pool", "x"]) == EXIT_USAGE


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["analyze", ""], "PATH is empty"),
        (["analyze", ".", "--broker", ""], "--broker needs a URL"),
        (["analyze", ".", "--json", ""], "--json needs a file name"),
    ],
)
def test_an_empty_argument_is_refused_not_taken_for_a_default(args, named, capsys):
    assert main(args) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err
