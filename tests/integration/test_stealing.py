"""Work stealing through a real Redis, real workers of both pools and a real `bolt controller`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery, group

from bolt_tasks import tasks  # noqa: F401 - registers the built-in tasks, so they route by kind
from bolt_tasks.app import make_app
from bolt_tasks.backpressure import QueueLayout
from bolt_tasks.job import direct_analysis
from bolt_tasks.names import CONSUMING_COMMAND, WORKERS_INDEX_KEY, worker_record_key
from bolt_tasks.settings import Settings
from bolt_workers import stats
from bolt_workers.controller import estimate, read_look
from bolt_workers.processes import child_preexec, stop_processes
from bolt_workers.steal_stats import steal_statistics
from tests.integration.conftest import Workers
from tests.trees import write_tree
from tests.workload import seconds_per_function, write_module

ANALYZE = "bolt.analysis.analyze_files"
BOLT = (sys.executable, "-m", "bolt_tasks.cli")
THRESHOLD_S = 0.5


@pytest.fixture
def producer(workers: Workers) -> Iterator[Celery]:
    """A Celery app of the test's own on the test's Redis, to send tasks and read results."""
    app = make_app(Settings.from_env({"BOLT_BROKER_URL": workers.broker_url}))
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def start_controller(workers: Workers) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Starts `bolt controller` on the test's Redis; every one started is stopped after."""
    started: list[subprocess.Popen[bytes]] = []

    def start(**env: str) -> subprocess.Popen[bytes]:
        log = open(workers.log_dir / "controller.log", "wb")  # noqa: SIM115 - closed below
        process = subprocess.Popen(
            [*BOLT, "controller"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=workers.env(**env),
            preexec_fn=child_preexec,
        )
        log.close()
        started.append(process)
        wait_for(lambda: "controller looking" in workers.log("controller"), 20, "controller up")
        return process

    try:
        yield start
    finally:
        stop_processes(started, grace_s=5.0)


def wait_for(condition: Callable[[], object], timeout_s: float, what: str) -> float:
    """Poll condition every 5 ms; the time it became true, or fail naming what was awaited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(0.005)
    raise AssertionError(f"{what}: not within {timeout_s} s")


def node_of(client: redis.Redis, name: str) -> str:
    """The full node name (name@host) of a worker that publishes its record."""
    found: list[str] = []

    def published() -> bool:
        found[:] = [n.decode() for n in client.zrange(WORKERS_INDEX_KEY, 0, -1)]
        return any(node.startswith(name + "@") for node in found)

    wait_for(published, 20, f"record of worker {name}")
    return next(node for node in found if node.startswith(name + "@"))


def worker_record(client: redis.Redis, node: str) -> stats.WorkerRecord | None:
    raw = client.get(worker_record_key(node))
    return stats.WorkerRecord.decoded(raw) if raw is not None else None


def steals(client: redis.Redis, node: str, queue: str) -> bool:
    record = worker_record(client, node)
    return record is not None and queue in record.stolen


def send(producer: Celery, root: Path, path: str, count: int) -> list:
    """Send `count` analyses of one file at once; their AsyncResults."""
    signatures = [producer.signature(ANALYZE, args=(str(root), [path])) for _ in range(count)]
    return group(signatures).apply_async().results


def wait_results(results: list, timeout_s: float = 90) -> None:
    for result in results:
        result.get(timeout=timeout_s)


def succeeded(log: str, task: str = ANALYZE) -> int:
    return len(re.findall(re.escape(task) + r"\[[^\]]+\] succeeded", log))


def consuming(producer: Celery, node: str) -> dict:
    """What the worker answers that it consumes, asked on a connection of its own (a pooled
    one may have died with a restarted Redis)."""
    with producer.connection_for_write() as connection:
        replies = producer.control.broadcast(
            CONSUMING_COMMAND,
            destination=[node],
            reply=True,
            timeout=3.0,
            limit=1,
            connection=connection,
        )
    return replies[0][node] if replies else {}


class WaitWatch(threading.Thread):
    """Watches, every 5 ms, the analysis queue's estimated wait and whether a node steals it."""

    def __init__(self, url: str, node: str) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url)
        self.layout = QueueLayout({})
        self.node = node
        self.passed_at: float | None = None
        self.stealing_at: float | None = None
        self.done = threading.Event()

    def run(self) -> None:
        nodes: tuple[str, ...] = ()
        while not self.done.is_set() and self.stealing_at is None:
            look = read_look(self.client, self.layout, nodes, time.time())
            nodes = look.nodes
            now = time.monotonic()
            wait = estimate("analysis", look, fallback_mean_s=0.2).wait_s
            if self.passed_at is None and wait > THRESHOLD_S:
                self.passed_at = now
            record = look.workers.get(self.node)
            if record is not None and "analysis" in record.stolen:
                self.stealing_at = now
            time.sleep(0.005)
        self.client.close()


@pytest.fixture
def sized(tmp_path: Path) -> Callable[[str, float], str]:
    """Writes modules whose analysis takes about the given time here; returns their names."""
    per_function_s = seconds_per_function()

    def make(name: str, target_s: float) -> str:
        write_module(tmp_path / "load" / name, target_s, per_function_s)
        return name

    return make


def test_a_skewed_load_is_shared_by_the_idle_pool_and_given_back_once_drained(
    tmp_path, workers, producer, start_controller, sized
):
    short = sized("short.py", 0.03)
    workers.start("p", "p", "--concurrency", "2")
    workers.start("e", "e")
    workers.wait_ready("p", "e")
    client = redis.Redis.from_url(workers.broker_url)
    e_node = node_of(client, "e")
    start_controller()
    # A few tasks first, too few to be stolen, so the run time is measured.
    wait_results(send(producer, tmp_path / "load", short, 3))
    assert not steals(client, e_node, "analysis")

    watch = WaitWatch(workers.broker_url, e_node)
    watch.start()
    results = send(producer, tmp_path / "load", short, 100)
    watch.join(timeout=10)
    watch.done.set()
    wait_results(results)

    assert watch.passed_at is not None and watch.stealing_at is not None
    assert watch.stealing_at - watch.passed_at <= 0.2, watch.stealing_at - watch.passed_at
    assert 1 <= succeeded(workers.log("e")) < 100
    wait_for(lambda: not steals(client, e_node, "analysis"), 10, "stealers withdrawn")
    assert consuming(producer, e_node) == {"own": ["coordination", "io"], "stolen": []}
    log = workers.log("controller")
    assert re.search(r"steal analysis: estimated wait [\d.]+ s = \d+ waiting x", log)
    assert "withdraw stealers from analysis" in log
    counted = steal_statistics(client)
    assert counted.episodes >= 1 and counted.fast_activations >= 1
    client.close()


def test_a_stealer_gets_its_queues_back_after_its_own_restart_and_after_redis_restarts(
    tmp_path, redis_server, workers, producer, start_controller, sized
):
    slow = sized("slow.py", 0.1)
    workers.start("p", "p", "--concurrency", "2")
    workers.start("e", "e")
    workers.wait_ready("p", "e")
    client = redis.Redis.from_url(workers.broker_url)
    e_node = node_of(client, "e")
    start_controller()
    send(producer, tmp_path / "load", slow, 400)  # minutes of work for two slots
    wait_for(lambda: steals(client, e_node, "analysis"), 10, "E stealing analysis")

    boot = worker_record(client, e_node).boot
    workers.stop("e")
    workers.start("e", "e")
    back = wait_for(lambda: reconnected(client, e_node, boot), 30, "E back")
    stealing = wait_for(lambda: steals(client, e_node, "analysis"), 5, "E stealing again")
    assert stealing - back <= 2.0
    assert consuming(producer, e_node) == {"own": ["coordination", "io"], "stolen": ["analysis"]}

    boot = worker_record(client, e_node).boot
    redis_server.stop()
    redis_server.start()
    back = wait_for(lambda: reconnected(client, e_node, boot), 30, "E reconnected")
    stealing = wait_for(lambda: steals(client, e_node, "analysis"), 5, "E stealing again")
    assert stealing - back <= 2.0
    assert consuming(producer, e_node) == {"own": ["coordination", "io"], "stolen": ["analysis"]}
    assert "repair" in workers.log("controller")
    client.close()


def reconnected(client: redis.Redis, node: str, old_boot: str) -> bool:
    try:
        record = worker_record(client, node)
    except redis.ConnectionError:
        return False
    return record is not None and record.boot != old_boot


def test_a_steady_load_near_the_threshold_switches_a_bounded_number_of_times(
    tmp_path, workers, producer, start_controller, sized
):
    short = sized("short.py", 0.03)
    workers.start("p", "p", "--concurrency", "1")
    workers.start("e", "e")
    workers.wait_ready("p", "e")
    client = redis.Redis.from_url(workers.broker_url)
    start_controller()
    wait_results(send(producer, tmp_path / "load", short, 3))
    mean_s = measured_mean(client)
    depth = max(2, round(1.1 * THRESHOLD_S / mean_s))  # the wait of one P slot: 0.55 s

    held_for_s = 6.0
    deadline = time.monotonic() + held_for_s
    while time.monotonic() < deadline:  # top the queue up to `depth` every 20 ms
        missing = depth - client.llen("analysis")
        if missing > 0:
            send(producer, tmp_path / "load", short, missing)
        time.sleep(0.02)
    wait_for(lambda: client.llen("analysis") == 0, 30, "queue drained")

    counted = steal_statistics(client)
    assert counted.steals >= 1
    # One steal while the load is held, one withdrawal once it drains; a hold of 1 s would
    # still allow a switch a second, so four is hysteresis at work, not luck.
    assert counted.steals + counted.withdrawals <= 4
    client.close()


def measured_mean(client: redis.Redis) -> float:
    figures = stats.decode_service(client.hgetall("bolt:service:analysis")).values()
    mean_s = stats.mean_service_s(figures, time.time(), 3600)
    assert mean_s is not None
    return mean_s


def test_one_long_task_does_not_hold_short_ones_behind_it(tmp_path, workers, producer, sized):
    short = sized("short.py", 0.1)
    # Nothing is cut into subtasks here: the test is about whole tasks and two children.
    workers.start("p", "p", "--concurrency", "2", BOLT_MIN_STEAL_TASK_S="600")
    workers.wait_ready("p")
    root = str(tmp_path / "load")
    # A batch of one file repeated a hundred times: about 10 s of work in one task.
    long_task = producer.signature(ANALYZE, args=(root, [short] * 100)).apply_async()
    wait_for(lambda: "bolt.analysis.analyze_files" in workers.log("p"), 10, "long task taken")
    sent = time.monotonic()
    results = send(producer, tmp_path / "load", short, 6)
    wait_results(results, timeout_s=8)
    took_s = time.monotonic() - sent
    assert not long_task.ready()
    # All six ran one after another in the other child: their own run times (0.6 s on a quiet
    # machine, more on a busy one) and a little messaging, never the long task's 10 s.
    own_s = sum(float(t) for t in re.findall(r"\] succeeded in ([\d.]+)s", workers.log("p")))
    assert took_s <= own_s + 1.4
    os.killpg(workers.processes["p"].pid, signal.SIGKILL)  # no warm shutdown of the long task


def test_a_huge_file_is_cut_into_spans_and_the_report_still_matches_direct(
    tmp_path, workers, start_controller
):
    tree = write_tree(tmp_path / "tree", copies=3)
    write_module(tree / "huge.py", 0.4)
    inside = "def in_a_string():\n    pass\n" * 4000
    (tree / "doc.py").write_text(f'"""Docs."""\nTEXT = """\n{inside}"""\n\ndef real():\n    pass\n')
    # Cut anything over 10 ms, so both files are cut however fast this machine parses.
    workers.start("p", "p", "--concurrency", "2", BOLT_MIN_STEAL_TASK_S="0.01")
    workers.start("e", "e", BOLT_MIN_STEAL_TASK_S="0.01")
    workers.wait_ready("p", "e")
    start_controller()
    out = tmp_path / "report.json"
    env = {**workers.env(), "BOLT_BATCH_COST_S": "0.0002"}  # a batch per file
    result = subprocess.run(
        [*BOLT, "analyze", str(tree), "--json", str(out), "--broker", workers.broker_url],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    direct = direct_analysis(str(tree), Settings.from_env({}))
    for key in ("files", "functions", "classes", "lines", "code_lines", "imports", "chunks"):
        assert report[key] == direct[key], key
    assert report["parse_errors"] == direct["parse_errors"]
    assert report["top_complex"] == direct["top_complex"]
    assert succeeded(workers.log("p"), "bolt.analysis.analyze_span") >= 4
    assert "cutting huge.py" in workers.log("p") and "cutting doc.py" in workers.log("p")
    assert "a span of doc.py did not parse alone" in workers.log("e")
