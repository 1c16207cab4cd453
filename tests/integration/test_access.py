"""What bolt lets in and leaves behind: Redis passwords and binding, and every key's lifetime."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import redis

from bolt_tasks.batching import Publisher
from bolt_tasks.names import DEAD_LETTERS_KEY, QUEUES
from bolt_tasks.settings import Settings
from bolt_tasks.tasks import computation
from tests.trees import write_tree


def bolt(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bolt_tasks.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def bounded_without_ttl(client: redis.Redis, key: str) -> str | None:
    """Why a key with no TTL is still bounded, or None if nothing bounds it."""
    if key.split("\x06\x16", 1)[0] in QUEUES:
        return "a queue: the producer's depth limit bounds it"
    if key.startswith(("_kombu.binding.", "_kombu.binding_permanent.")):
        return "kombu's bindings: one member per queue declared"
    if key == "_kombu.binding_deadlines":
        return "kombu's binding expiry index: one member per expiring binding"
    if key in ("unacked", "unacked_index"):
        return "kombu's unacked bookkeeping: one entry per message a worker holds"
    if key == DEAD_LETTERS_KEY and client.llen(key) <= Settings().dead_letters_max:
        return "the dead letters: trimmed to BOLT_DEAD_LETTERS_MAX"
    return None


def test_every_key_bolt_writes_expires_or_is_a_known_bounded_structure(
    tmp_path, both_pools, redis_client
):
    env = {**both_pools.env(), "BOLT_LOG_LEVEL": "WARNING"}
    controller = subprocess.Popen(
        [sys.executable, "-m", "bolt_tasks.cli", "controller"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        tree = write_tree(tmp_path / "tree", copies=3)
        broker = ("--broker", both_pools.broker_url)
        assert bolt("analyze", str(tree), *broker, env=env).returncode == 0
        assert (
            bolt("probe", "--calls", "5", "--folder", str(tmp_path), *broker, env=env).returncode
            == 0
        )
        publisher = Publisher.from_settings(Settings.from_env(env))
        calls = [(i,) for i in range(60)]
        assert publisher.submit_many(computation.echo, calls, batch_size=25).get(30) == list(
            range(60)
        )
        redis_client.lpush("io", b"not a message")  # a dead letter
        time.sleep(1.0)  # let the controller look a few times and the workers publish stats
    finally:
        controller.terminate()
        controller.wait(timeout=10)

    unbounded = {}
    for raw in redis_client.scan_iter(count=1000):
        key = raw.decode(errors="replace")
        if redis_client.ttl(raw) < 0 and bounded_without_ttl(redis_client, key) is None:
            unbounded[key] = redis_client.type(raw).decode()
    assert not unbounded
    assert redis_client.llen(DEAD_LETTERS_KEY) == 1
    # Control replies (the pings above) went to reply queues that expire, not linger.
    assert not [
        k for k in redis_client.scan_iter("*reply.celery.pidbox*") if redis_client.ttl(k) < 0
    ]


def _redis_child(process: subprocess.Popen, timeout_s: float = 30) -> psutil.Process:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in psutil.Process(process.pid).children(recursive=True):
            if "redis-server" in child.name() and child.net_connections(kind="inet"):
                return child
        time.sleep(0.05)
    raise AssertionError("no redis-server listening under the command")


def test_the_embedded_redis_has_a_password_listens_on_loopback_and_is_never_shown(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOLT_")}
    env.update({"BOLT_LOG_LEVEL": "DEBUG", "BOLT_CACHE_DIR": os.environ["BOLT_CACHE_DIR"]})
    up = subprocess.Popen(
        [sys.executable, "-m", "bolt_tasks.cli", "up"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    # Both pipes are drained as the command writes, so its DEBUG logging never fills one and
    # stalls it, and the test can wait for the banner before it interrupts.
    out_lines: list[str] = []
    err_lines: list[str] = []
    readers = [
        threading.Thread(target=lambda: out_lines.extend(up.stdout), daemon=True),
        threading.Thread(target=lambda: err_lines.extend(up.stderr), daemon=True),
    ]
    for reader in readers:
        reader.start()
    server = _redis_child(up)
    # redis-server renames its process and works in its folder, where its config lies.
    folder = Path(server.cwd())
    config = (folder / "redis.conf").read_text()
    password = next(
        line.split()[1] for line in config.splitlines() if line.startswith("requirepass")
    )
    listening = [c for c in server.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    port = listening[0].laddr.port
    with pytest.raises(redis.AuthenticationError):
        redis.Redis("127.0.0.1", port, socket_timeout=3).ping()
    assert redis.Redis("127.0.0.1", port, password=password, socket_timeout=3).ping()
    worker_logs = [folder.parent / f"worker-{pool}.log" for pool in "pe"]
    _wait_for(lambda: all(log.exists() and "ready." in log.read_text() for log in worker_logs))
    logs = [log.read_text() for log in worker_logs]
    _wait_for(lambda: any("Press Ctrl-C" in line for line in out_lines))
    up.send_signal(signal.SIGINT)
    up.wait(timeout=60)
    for reader in readers:
        reader.join(timeout=10)
    stdout, stderr = "".join(out_lines), "".join(err_lines)

    assert len(password) >= 24
    assert {c.laddr.ip for c in listening} == {"127.0.0.1"}
    assert "bind 127.0.0.1" in config and "appendonly yes" in config
    assert "BOLT_BROKER_URL=redis://:***@127.0.0.1" in stdout
    assert "DEBUG" in stderr and all("DEBUG" in log for log in logs)  # logs there to leak it
    assert not [text for text in (stdout, stderr, *logs) if password in text]


def _wait_for(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.05)


def test_worker_logs_and_producer_output_mask_the_password(tmp_path, workers, redis_server):
    workers.start("p", "p", BOLT_LOG_LEVEL="DEBUG")
    workers.start("e", "e", BOLT_LOG_LEVEL="DEBUG")
    workers.wait_ready("p", "e")
    env = {**workers.env(), "BOLT_LOG_LEVEL": "DEBUG"}
    done = bolt("probe", "--calls", "3", "--broker", workers.broker_url, env=env)
    down = bolt(
        "probe", "--broker", workers.broker_url.replace(str(redis_server.port), "1"), env=env
    )
    assert done.returncode == 0 and down.returncode == 2
    shown = [done.stdout, done.stderr, down.stdout, down.stderr, workers.log("p"), workers.log("e")]
    assert "***" in down.stderr  # the unreachable broker is named, password masked
    assert not [text for text in shown if redis_server.password in text]
    assert workers.log("p").count("succeeded") >= 3  # the DEBUG logs saw the work
