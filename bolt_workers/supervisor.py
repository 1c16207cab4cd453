"""The embedded deployment: a private redis-server and both pools as children of one command."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bolt_tasks.errors import DeploymentError
from bolt_tasks.names import Pool
from bolt_tasks.settings import ENV_PREFIX, Settings
from bolt_workers.flower import with_password
from bolt_workers.processes import signals_held, spawn, stop_processes
from bolt_workers.redis_server import RedisServer

log = logging.getLogger("bolt.supervisor")
# The folder of the deployment's own that its roles use as TMPDIR.
SCRATCH = "tmp"

# The embedded deployment's Redis is private and goes with it, and acks are late, so a worker
# has nothing to save on the way out: it gets a second to exit on SIGTERM, then SIGKILL. A
# prefork worker's warm shutdown measured 0.6 to 2.5 s on 2 busy cores, most of the stop time.
STOP_GRACE_S = 1.0


@dataclass
class Child:
    """One long-running process of the deployment and the file its output goes to."""

    role: str
    process: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class Deployment:
    """redis-server, a P worker, an E worker and the controller, started and stopped together.

    Use it as a context manager: whatever happens inside, every child is stopped on the way out.
    """

    settings: Settings
    roles: tuple[str, ...] = ("worker-p", "worker-e", "controller")
    children: list[Child] = field(default_factory=list)
    redis: RedisServer | None = None
    workdir: Path | None = None
    flower_password_generated: bool = False

    def start(self) -> Deployment:
        """Start redis-server, then every role; returns at once, without waiting for workers."""
        self.workdir = Path(tempfile.mkdtemp(prefix="bolt-deploy-"))
        (self.workdir / SCRATCH).mkdir()
        try:
            self.redis = RedisServer(self.workdir / "redis", binary=self.settings.redis_server)
            self.redis.start()
            self.settings = self.settings.replace(broker_url=self.redis.url, result_url=None)
            if "flower" in self.roles:
                self.settings, self.flower_password_generated = with_password(self.settings)
            for role in self.roles:
                self._spawn(role)
        except BaseException:
            self.stop()
            raise
        return self

    def _command(self, role: str) -> list[str]:
        bolt = [sys.executable, "-m", "bolt_tasks.cli"]
        # With Flower watching, workers send task events from their first task on.
        events = ["--events"] if "flower" in self.roles else []
        if role == "worker-p":
            return [*bolt, "worker", "--pool", Pool.P.value, *events]
        if role == "worker-e":
            return [*bolt, "worker", "--pool", Pool.E.value, *events]
        if role == "flower":
            return [*bolt, "flower"]
        if role == "controller":
            return [*bolt, "controller"]
        raise DeploymentError(f"unknown deployment role {role!r}")

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # The roles' temporary files (billiard's pymp-* folders) go with the deployment's.
        assert self.workdir is not None
        env["TMPDIR"] = str(self.workdir / SCRATCH)
        env[ENV_PREFIX + "BROKER_URL"] = self.settings.broker_url or ""
        env.pop(ENV_PREFIX + "RESULT_URL", None)
        if self.settings.flower_password:
            env[ENV_PREFIX + "FLOWER_PASSWORD"] = self.settings.flower_password
        return env

    def _spawn(self, role: str) -> None:
        assert self.workdir is not None
        log_path = self.workdir / f"{role}.log"
        with open(log_path, "wb") as out:
            process = spawn(
                self._command(role),
                lambda started: self.children.append(Child(role, started, log_path)),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._environment(),
            )
        log.info("started %s (pid %d)", role, process.pid)

    @property
    def broker_url(self) -> str:
        """The URL, password included, of the deployment's Redis."""
        if self.redis is None:
            raise DeploymentError("the deployment is not running")
        return self.redis.url

    def pids(self) -> list[int]:
        """Pids of every direct child: redis-server and each role."""
        pids = [child.process.pid for child in self.children]
        if self.redis is not None and self.redis.process is not None:
            pids.append(self.redis.process.pid)
        return pids

    def check(self) -> None:
        """Raise DeploymentError, with the end of its log, when a child has exited."""
        for child in self.children:
            code = child.process.poll()
            if code is not None:
                raise DeploymentError(
                    f"{child.role} exited with status {code}: {tail(child.log_path)}"
                )
        redis_process = self.redis.process if self.redis is not None else None
        if redis_process is not None and redis_process.poll() is not None:
            raise DeploymentError("the deployment's redis-server exited")

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Wait until a worker of every pool answers a ping."""
        from bolt_tasks.producer import ping_pools

        deadline = time.monotonic() + timeout_s
        missing: set[str] = set()
        while time.monotonic() < deadline:
            self.check()
            missing = ping_pools(timeout_s=0.25)
            if not missing:
                return
        raise DeploymentError(f"no worker of pool(s) {', '.join(sorted(missing))} came up")

    def stop(self) -> None:
        """Stop every role, then redis-server, and remove the deployment's files; Ctrl-C
        meanwhile waits until all of it is done."""
        with signals_held():
            stop_processes([child.process for child in self.children], grace_s=STOP_GRACE_S)
            self.children.clear()
            if self.redis is not None:
                self.redis.stop()
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None

    def __enter__(self) -> Deployment:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def tail(path: Path, lines: int = 5) -> str:
    """The last lines of a log file, joined on one line."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"
