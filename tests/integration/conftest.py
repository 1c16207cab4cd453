"""Integration fixtures: a private redis-server on a free port and real workers of both pools."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from bolt_workers.processes import child_preexec, stop_processes
from bolt_workers.redis_server import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, never the machine's shared one."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Workers:
    """Worker processes of a test, started with `bolt worker` against the test's Redis."""

    broker_url: str
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOLT_")}
        env.update({"BOLT_BROKER_URL": self.broker_url, "BOLT_LOG_LEVEL": "INFO"})
        env["BOLT_CACHE_DIR"] = os.environ["BOLT_CACHE_DIR"]
        env.update(extra)
        return env

    def start(self, name: str, pool: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        """Start `bolt worker --pool POOL --name NAME@%h` with extra BOLT_* variables."""
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bolt_tasks.cli",
                "worker",
                "--pool",
                pool,
                "--name",
                f"{name}@%h",
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env(**env),
            preexec_fn=child_preexec,
        )
        log.close()
        self.processes[name] = process
        return process

    def wait_ready(self, *names: str, timeout_s: float = 30.0) -> None:
        """Wait until each named worker answers a ping."""
        from celery import Celery

        probe = Celery(broker=self.broker_url)
        wanted = set(names or self.processes)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                for name, process in self.processes.items():
                    if process.poll() is not None:
                        raise AssertionError(f"worker {name} exited: {self.log(name)[-2000:]}")
                replies = probe.control.ping(timeout=0.3) or []
                seen = {node.split("@", 1)[0] for reply in replies for node in reply}
                if wanted <= seen:
                    return
            raise AssertionError(f"workers {wanted - seen} did not answer within {timeout_s} s")
        finally:
            probe.close()

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def stop(self, *names: str) -> None:
        chosen = [self.processes.pop(name) for name in (names or list(self.processes))]
        stop_processes(chosen, grace_s=10.0)


@pytest.fixture
def workers(redis_server: RedisServer, tmp_path: Path) -> Iterator[Workers]:
    """Start nothing by itself: a test starts the workers it needs; all are stopped after it."""
    group = Workers(redis_server.url, tmp_path)
    try:
        yield group
    finally:
        group.stop()


@pytest.fixture
def both_pools(workers: Workers) -> Workers:
    """A P worker and an E worker, both answering."""
    workers.start("p", "p")
    workers.start("e", "e")
    workers.wait_ready("p", "e")
    return workers


def restart_redis(server: RedisServer, down_s: float = 0.0) -> None:
    """Stop the server (SIGTERM: it flushes its append-only file) and start it on the same port."""
    server.stop()
    if down_s:
        time.sleep(down_s)
    server.start()


@pytest.fixture
def redis_restart(redis_server: RedisServer):
    """restart(down_s=0.0): stop the test's redis-server and start it again, data kept."""
    return lambda down_s=0.0: restart_redis(redis_server, down_s)


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        client.close()
