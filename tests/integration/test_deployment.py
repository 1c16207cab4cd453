"""The shipped deployments for real: the Procfile under honcho, Flower, `bolt up`, `bolt health`."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
import redis
import yaml
from celery import Celery
from redis.backoff import NoBackoff
from redis.retry import Retry

from bolt_tasks.job import direct_analysis
from bolt_tasks.settings import Settings
from bolt_workers.processes import child_preexec, stop_process
from bolt_workers.redis_server import find_redis_server, free_port
from tests.trees import write_tree

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent


def bolt(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bolt_tasks.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without BOLT_* (the test's cache dir kept), plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOLT_")}
    env.update(BOLT_CACHE_DIR=os.environ["BOLT_CACHE_DIR"], PYTHONUNBUFFERED="1", **extra)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def get(url: str, user: str | None = None, password: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout_s} s")


def flower_workers(port: int, user: str, password: str) -> dict:
    """Flower's list of workers, asking it to inspect them afresh; {} until it can."""
    try:
        status, body = get(f"http://127.0.0.1:{port}/api/workers?refresh=1", user, password)
    except OSError:
        return {}
    return json.loads(body) if status == 200 else {}


def both_pools_listed(port: int, user: str, password: str) -> dict:
    """Flower's workers once a worker of each pool is among them (Flower's inspect waits for
    replies one second, and a busy worker may miss one round), else {}."""
    workers = flower_workers(port, user, password)
    pools = {name.split("@", 1)[0] for name in workers}
    return workers if pools >= {"p", "e"} else {}


def gone(pids: set[int], timeout_s: float = 20) -> bool:
    def alive() -> set[int]:
        return {
            pid
            for pid in pids
            if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        }

    deadline = time.monotonic() + timeout_s
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not alive()


def kill_all(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def command_of(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.NoSuchProcess:
        return []


def descendants(pid: int) -> set[int]:
    return {child.pid for child in psutil.Process(pid).children(recursive=True)}


def test_honcho_runs_the_procfile_a_job_gets_its_report_and_nothing_is_left(tmp_path):
    port, flower_port, password = free_port(), free_port(), secrets.token_urlsafe(12)
    env_file = tmp_path / "test.env"
    env_file.write_text(
        f"BOLT_BROKER_URL=redis://127.0.0.1:{port}/0\n"
        f"BOLT_REDIS_PASSWORD={password}\n"
        f"BOLT_REDIS_SERVER={find_redis_server()}\n"
        f"BOLT_FLOWER_PASSWORD=flower-{password}\n"
        f"BOLT_FLOWER_PORT={flower_port}\n"
    )
    log = open(tmp_path / "honcho.log", "wb")  # noqa: SIM115 - closed once honcho is started
    honcho = subprocess.Popen(
        [str(BIN / "honcho"), "-f", str(ROOT / "Procfile"), "-e", str(env_file), "start"],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=clean_env(),
        start_new_session=True,
    )
    log.close()
    pids: set[int] = set()
    try:
        env = clean_env(BOLT_REDIS_PASSWORD=password, BOLT_BROKER_URL=f"redis://127.0.0.1:{port}/0")
        for pool in ("p", "e"):
            ready = bolt("health", "--pool", pool, "--wait", "60", env=env, timeout=90)
            assert ready.returncode == 0, ready.stderr + (tmp_path / "honcho.log").read_text()
        tree = write_tree(tmp_path / "tree", copies=3)
        report_file = tmp_path / "report.json"
        # The URL names no password: --broker takes BOLT_REDIS_PASSWORD's, as every role does.
        job = bolt(
            "analyze", str(tree), "--broker", f"redis://127.0.0.1:{port}/0",
            "--json", str(report_file), env=clean_env(BOLT_REDIS_PASSWORD=password),
        )  # fmt: skip
        assert job.returncode == 0, job.stderr
        report = json.loads(report_file.read_text())
        direct = direct_analysis(str(tree), Settings.from_env({}))
        assert (report["files"], report["functions"]) == (direct["files"], direct["functions"])
        assert get(f"http://127.0.0.1:{flower_port}/healthcheck")[0] == 200
        assert (tmp_path / ".bolt" / "redis" / "appendonlydir").is_dir()  # AOF where it said
        pids = descendants(honcho.pid)
        roles = {" ".join(command_of(pid)) for pid in pids}
        assert any("bolt controller" in role for role in roles), roles
        honcho.send_signal(signal.SIGTERM)
        honcho.wait(timeout=30)
        assert gone(pids), "processes left behind by honcho start"
    finally:
        if honcho.poll() is None:
            honcho.kill()
        kill_all(pids | descendants_or_none(honcho))


def descendants_or_none(process: subprocess.Popen) -> set[int]:
    try:
        return descendants(process.pid)
    except psutil.NoSuchProcess:
        return set()


def test_flower_refuses_requests_without_credentials_and_lists_both_pools(both_pools, tmp_path):
    port = free_port()
    env = both_pools.env(BOLT_FLOWER_PORT=str(port), PYTHONUNBUFFERED="1")
    flower = subprocess.Popen(
        [sys.executable, "-m", "bolt_tasks.cli", "flower"],
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "flower.err", "wb"),  # noqa: SIM115 - a child's stderr
        env=env,
        preexec_fn=child_preexec,
    )
    try:
        # No password was set: bolt flower generates one and prints it, once.
        first = flower.stdout.readline().decode()
        password = re.search(r"shown this once\): (\S+)", first).group(1)
        assert password not in " ".join(psutil.Process(flower.pid).cmdline())
        wait_for(lambda: ok(f"http://127.0.0.1:{port}/healthcheck"), 30, "Flower did not start")
        assert get(f"http://127.0.0.1:{port}/api/workers")[0] == 401
        assert get(f"http://127.0.0.1:{port}/api/workers", "bolt", "wrong")[0] == 401
        assert get(f"http://127.0.0.1:{port}/", "bolt", "wrong")[0] == 401
        workers = wait_for(
            lambda: both_pools_listed(port, "bolt", password),
            30,
            "Flower did not list a worker of each pool",
        )
        for name, info in workers.items():
            queues = {queue["name"] for queue in info["active_queues"]}
            expected = {"p": {"analysis", "computation"}, "e": {"io", "coordination"}}
            assert expected[name.split("@")[0]] <= queues, name
    finally:
        stop_process(flower, grace_s=5)


def ok(url: str) -> bool:
    try:
        return get(url)[0] == 200
    except OSError:
        return False


def test_bolt_up_serves_flower_on_loopback_with_a_masked_password_and_worker_events(tmp_path):
    port = free_port()
    up = subprocess.Popen(
        [sys.executable, "-m", "bolt_tasks.cli", "up"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=clean_env(BOLT_FLOWER_PORT=str(port)),
        preexec_fn=child_preexec,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in up.stdout], daemon=True).start()
    pids: set[int] = set()
    try:
        printed = read_until(lines, "Press Ctrl-C", timeout_s=90)
        flower_line = next(line for line in printed if line.startswith("Flower:"))
        assert f"http://127.0.0.1:{port} user bolt password ***" in flower_line
        secret = Path(re.search(r"generated: in (\S+),", flower_line).group(1))
        assert secret.stat().st_mode & 0o777 == 0o600
        password = secret.read_text().strip()
        assert password not in "".join(printed)
        wait_for(
            lambda: both_pools_listed(port, "bolt", password),
            30,
            "Flower did not list a worker of each pool",
        )
        pids = descendants(up.pid)
        commands = [command_of(pid) for pid in pids]
        for worker in (command for command in commands if "worker" in command):
            assert "--events" in worker
        flower_pid = next(pid for pid in pids if "flower" in command_of(pid))
        listening = {
            conn.laddr.ip
            for conn in psutil.Process(flower_pid).net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
        }
        assert listening == {"127.0.0.1"}
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=30) == 130
        assert gone(pids)
    finally:
        if up.poll() is None:
            up.kill()
        kill_all(pids)


def read_until(lines: queue.Queue[str], marker: str, timeout_s: float) -> list[str]:
    printed: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        printed.append(line)
        if marker in line:
            return printed
    raise AssertionError(f"{marker!r} not printed within {timeout_s} s: {''.join(printed)}")


def test_bolt_health_passes_for_a_consuming_worker_and_fails_in_one_line_otherwise(both_pools):
    env = both_pools.env()
    healthy = bolt("health", "--pool", "p", env=env)
    assert healthy.returncode == 0, healthy.stderr
    assert bolt("health", "--broker", env=env).returncode == 0

    missing = bolt("health", "--pool", "e", "--name", "nobody@%h", "--timeout", "0.5", env=env)
    assert missing.returncode == 1
    assert "does not answer" in missing.stderr and len(missing.stderr.splitlines()) == 1

    control = Celery(broker=both_pools.broker_url)
    try:
        replies = control.control.ping(timeout=1.0)
        node = next(name for reply in replies for name in reply if name.startswith("p@"))
        control.control.cancel_consumer("computation", destination=[node], reply=True)
    finally:
        control.close()
    idle = bolt("health", "--pool", "p", env=env)
    assert idle.returncode == 1
    assert "does not consume queue(s) computation" in idle.stderr

    password = both_pools.broker_url.split(":")[2].split("@")[0]
    wrong = bolt(
        "health", "--pool", "p", env={**env, "BOLT_BROKER_URL": both_pools.broker_url.replace(
            password, "wrong-password")},
    )  # fmt: skip
    assert wrong.returncode == 1 and "wrong-password" not in wrong.stderr


def test_the_compose_redis_command_runs_redis_with_its_password_and_an_aof(tmp_path):
    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["redis"]
    script = service["command"][2].replace("$$", "$")  # compose's escape for a literal $
    # The image's entrypoint and its redis user are all this machine lacks; they only
    # drop privileges, so stand-ins that pass the command through are enough here.
    shims = tmp_path / "bin"
    shims.mkdir()
    for name, body in (("docker-entrypoint.sh", 'exec "$@"'), ("chown", "exit 0")):
        (shims / name).write_text(f"#!/bin/sh\n{body}\n")
        (shims / name).chmod(0o755)
    redis_dir = Path(find_redis_server()).parent
    port, password = free_port(), secrets.token_urlsafe(12)
    script = script.replace("/tmp/auth.conf", str(tmp_path / "auth.conf"))
    script += f" --port {port} --bind 127.0.0.1 --dir {shlex.quote(str(tmp_path))}"
    server = subprocess.Popen(
        ["sh", "-c", script],
        env={"PATH": f"{shims}:{redis_dir}:/usr/bin:/bin", "REDIS_PASSWORD": password},
        stdout=subprocess.DEVNULL,
        preexec_fn=child_preexec,
    )
    try:
        wait_for(lambda: _accepts(port), 10, "the compose redis command did not start")
        client = redis.Redis(port=port, password=password, socket_connect_timeout=1)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, retry=Retry(NoBackoff(), 0)).ping()
        assert password not in " ".join(psutil.Process(server.pid).cmdline())
        assert (tmp_path / "auth.conf").stat().st_mode & 0o777 == 0o600
        client.close()
    finally:
        stop_process(server, grace_s=5)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True
