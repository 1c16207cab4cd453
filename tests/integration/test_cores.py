"""A real P worker: children pinned one per core (replacements too) and the autoscaler at work."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import psutil
import pytest
from celery import Celery

from bolt_tasks import tasks  # noqa: F401 - registers the tasks, so sending routes by kind
from bolt_tasks.app import make_app
from bolt_tasks.settings import Settings

# A 60 x 60 product takes about 20 ms of CPU; 120 x 120 about 150 ms.
SHORT, LONG = 60, 120


@pytest.fixture
def producer(redis_server) -> Iterator[Celery]:
    app = make_app(Settings.from_env({"BOLT_BROKER_URL": redis_server.url}))
    try:
        yield app
    finally:
        app.close()


def two_cpus() -> str:
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        pytest.skip("needs two usable CPUs")
    return f"{usable[0]},{usable[1]}"


def pool_children(worker: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """The worker's live pool children (zombies not yet reaped do not count)."""
    children = psutil.Process(worker.pid).children()
    return [child for child in children if _alive(child)]


def _alive(child: psutil.Process) -> bool:
    try:
        return child.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout_s} s")
        time.sleep(0.02)


def whereami_until(producer: Celery, wanted: Callable[[dict[int, list[int]]], bool]) -> dict:
    """Send whereami tasks in rounds until the pids seen (pid -> cpus) satisfy wanted."""
    seen: dict[int, list[int]] = {}
    for _ in range(50):
        results = [producer.send_task("bolt.analysis.whereami") for _ in range(8)]
        for result in results:
            reply = result.get(timeout=20)
            seen[reply["pid"]] = reply["cpus"]
        if wanted(seen):
            return seen
    raise AssertionError(f"whereami never saw what was wanted: {seen}")


def test_each_p_child_is_pinned_to_its_own_core_and_so_is_its_replacement(workers, producer):
    cpus = two_cpus()
    worker = workers.start("p", "p", BOLT_P_CORES=cpus)
    workers.wait_ready("p")
    wanted_cores = {int(cpu) for cpu in cpus.split(",")}

    seen = whereami_until(producer, lambda pids: len(pids) >= 2)
    assert sorted(len(cores) for cores in seen.values()) == [1, 1]
    assert {cores[0] for cores in seen.values()} == wanted_cores
    assert set(seen) == {child.pid for child in pool_children(worker)}

    victim = next(iter(seen))
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: (
            {c.pid for c in pool_children(worker)} - set(seen) and len(pool_children(worker)) == 2
        ),
        10,
        "a replacement child",
    )
    (newcomer,) = {c.pid for c in pool_children(worker)} - set(seen)
    after = whereami_until(producer, lambda pids: newcomer in pids)
    assert after[newcomer] == seen[victim]
    assert {cores[0] for pid, cores in after.items() if pid != victim} == wanted_cores


class SizeWatch:
    """Counts a worker's live pool children every 20 ms on a thread, for the test to check."""

    def __init__(self, worker) -> None:
        self.worker, self.sizes = worker, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.sizes.append(len(pool_children(self.worker)))

    def __enter__(self) -> SizeWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def most_at_once(replies: list[dict]) -> int:
    """The largest number of tasks whose runs overlapped, from their start and wall times."""
    events = []
    for reply in replies:
        events += [(reply["started_at"], 1), (reply["started_at"] + reply["wall_s"], -1)]
    running = peak = 0
    for _, step in sorted(events, key=lambda event: (event[0], event[1])):
        running += step
        peak = max(peak, running)
    return peak


AUTOSCALED = {
    "BOLT_P_AUTOSCALE_MIN": "1",
    "BOLT_P_AUTOSCALE_MAX": "4",
    # The machine running the tests is shared, so the CPU check is off here; the unit tests of
    # the rules cover it. What this proves is the pool's size and its children's safety.
    "BOLT_P_AUTOSCALE_CPU_TARGET_PCT": "100",
    "BOLT_P_AUTOSCALE_KEEPALIVE_S": "0.1",
    "BOLT_P_AUTOSCALE_INTERVAL_S": "0.05",
}


def test_the_autoscaler_grows_to_max_under_load_and_shrinks_to_min_when_idle(workers, producer):
    worker = workers.start("p", "p", BOLT_P_CORES=two_cpus(), **AUTOSCALED)
    workers.wait_ready("p")
    wait_for(lambda: len(pool_children(worker)) == 1, 10, "a pool of the minimum size")

    with SizeWatch(worker) as watch:
        results = [
            producer.send_task("bolt.computation.matrix_checksum", args=(SHORT, seed))
            for seed in range(50)
        ]
        replies = [result.get(timeout=60) for result in results]
        wait_for(lambda: len(pool_children(worker)) == 1, 10, "shrinking back to the minimum")

    # The reservation limit follows the pool down: one child, one reserved task.
    stats = producer.control.inspect(timeout=2).stats() or {}
    assert [node["prefetch_count"] for node in stats.values()] == [1]
    assert most_at_once(replies) == 4
    assert len({reply["pid"] for reply in replies}) >= 4
    assert max(watch.sizes) == 4 and min(watch.sizes) == 1
    log = workers.log("p")
    assert re.search(r"autoscaler grew by \d .*size 1, \d+ waiting", log)
    assert "autoscaler shrank by" in log


def test_twenty_grow_and_shrink_cycles_lose_no_task_and_keep_the_size_in_bounds(workers, producer):
    # Three children at most: forking is the slow part of a cycle on a busy machine.
    env = {**AUTOSCALED, "BOLT_P_AUTOSCALE_MAX": "3"}
    worker = workers.start("p", "p", BOLT_P_CORES=two_cpus(), **env)
    workers.wait_ready("p")
    wait_for(lambda: len(pool_children(worker)) == 1, 10, "a pool of the minimum size")

    replies = []
    with SizeWatch(worker) as watch:
        for cycle in range(20):
            # One long task keeps a child busy while the short ones' children go idle past the
            # keepalive: the autoscaler retires those, and must not touch the busy one.
            sizes = [LONG] + [SHORT] * 5
            results = [
                producer.send_task("bolt.computation.matrix_checksum", args=(size, cycle * 6 + i))
                for i, size in enumerate(sizes)
            ]
            replies += [result.get(timeout=60) for result in results]
            wait_for(lambda: len(pool_children(worker)) == 1, 10, f"cycle {cycle} shrinking")
        log = workers.log("p")

    assert len(replies) == 120
    assert min(watch.sizes) >= 1 and max(watch.sizes) <= 3
    assert "WorkerLostError" not in log and "exited with" not in log
    assert len(re.findall(r"autoscaler grew by", log)) >= 20
    assert len(re.findall(r"autoscaler shrank by", log)) >= 20
    # At least once, idle children retired while another child was still busy with a task.
    retirements = re.findall(
        r"shrank by \d \(children idle[^)]*\): size (\d), \d+ waiting, (\d) idle", log
    )
    assert any(int(idle) < int(size) for size, idle in retirements)
