"""Faults injected into a running deployment: killed pool children and workers, Redis restarts.

Every task here counts its runs in a ledger (bolt_tasks.ledger), so each test checks that its
results are complete and right and that nothing did its work twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil

from bolt_tasks import ledger
from bolt_tasks.batching import Publisher
from bolt_tasks.probes import hash_chain
from bolt_tasks.settings import Settings
from bolt_tasks.tasks import computation
from tests.integration.test_main_job import assert_same_as_direct
from tests.trees import write_tree

# kombu's bookkeeping of delivered, unacknowledged messages.
UNACKED_KEYS = ("unacked", "unacked_index")


def wait_for(condition, timeout_s: float = 60.0, what: str = "condition"):
    """Poll condition() until it returns something true; that value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what} not reached within {timeout_s} s")


def began(client, name: str) -> int:
    return sum(ledger.read(client, name).began.values())


def only_child(worker: subprocess.Popen) -> int:
    children = psutil.Process(worker.pid).children()
    assert len(children) == 1, children
    return children[0].pid


def test_a_pool_child_killed_twice_mid_task_is_redelivered_and_finishes_once(workers, redis_client):
    workers.start("p", "p", "--concurrency", "1")
    workers.wait_ready("p")
    publisher = Publisher.from_settings(Settings.from_env(workers.env()))
    seed, rounds = "killed-twice", 1_500_000  # about 1 s of hashing

    submission = publisher.submit(computation.hash_chain, seed, rounds, "child-kills")
    killed = []
    for delivery in (1, 2):
        wait_for(lambda n=delivery: began(redis_client, "child-kills") >= n, what="a delivery")
        pid = only_child(workers.processes["p"])
        assert pid not in killed  # the replacement child took the task up again
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    assert submission.get(timeout=60) == [hash_chain(seed, rounds)]
    counted = ledger.read(redis_client, "child-kills")
    assert counted.began[seed] == 3 and counted.finished[seed] == 1
    assert not any(redis_client.exists(key) for key in UNACKED_KEYS)
    assert workers.processes["p"].poll() is None


def test_a_killed_worker_s_tasks_come_back_after_the_visibility_timeout_and_run_once(
    workers, redis_client
):
    # A short timeout, with the task time limit below it as bolt's settings require; a task
    # takes 0.5 s alone, and stays under the limit on a machine six times as busy.
    env = {"BOLT_VISIBILITY_TIMEOUT_S": "6", "BOLT_TASK_TIME_LIMIT_S": "5"}
    publisher = Publisher.from_settings(Settings.from_env(workers.env(**env)))
    seeds, rounds = [f"w{i}" for i in range(4)], 700_000
    submission = publisher.submit_many(
        computation.hash_chain, [(seed, rounds, "worker-kill") for seed in seeds], batch_size=1
    )
    queued = redis_client.lrange("computation", 0, -1)  # the messages as published
    doomed = workers.start("p1", "p", "--concurrency", "2", **env)
    wait_for(lambda: began(redis_client, "worker-kill") == 2, what="two tasks running")

    family = [doomed.pid, *(child.pid for child in psutil.Process(doomed.pid).children())]
    for pid in family:
        os.kill(pid, signal.SIGKILL)
    doomed.wait(timeout=10)
    # Still held for the dead worker: the two it ran, and any it had reserved beside them.
    assert redis_client.hlen("unacked") >= 2
    workers.start("p2", "p", "--concurrency", "2", **env)

    # Read without deleting them (as a Submission does): the results stay stored.
    results = wait_for(lambda: stored_results(redis_client, submission.task_ids), what="results")
    assert results == [hash_chain(seed, rounds) for seed in seeds]
    counted = ledger.read(redis_client, "worker-kill")
    assert all(counted.finished[seed] == 1 for seed in seeds)
    assert sorted(counted.began.values()) == [1, 1, 2, 2]
    wait_for(lambda: not any(redis_client.exists(key) for key in UNACKED_KEYS), 10, "acks")

    # A message delivered again after its task succeeded (a worker lost between storing the
    # result and acknowledging) is dropped while its result is stored, not run a second time.
    again = json.loads(queued[-1])
    again["properties"]["delivery_info"]["redelivered"] = True
    redis_client.lpush("computation", json.dumps(again))
    wait_for(lambda: "delivered again after it succeeded" in workers.log("p2"), 20, "the drop")
    assert ledger.read(redis_client, "worker-kill").finished == counted.finished
    wait_for(lambda: not any(redis_client.exists(key) for key in UNACKED_KEYS), 10, "its ack")


def stored_results(client, task_ids: list[str]) -> list | None:
    """The results of these tasks once every one has succeeded, else None."""
    metas = [client.get(f"celery-task-meta-{task_id}") for task_id in task_ids]
    if not all(metas):
        return None
    decoded = [json.loads(meta) for meta in metas]
    assert all(meta["status"] == "SUCCESS" for meta in decoded), decoded
    return [meta["result"] for meta in decoded]


def bolt_process(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bolt_tasks.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_jobs_complete_through_redis_restarts_and_the_workers_resume_by_themselves(
    tmp_path, both_pools, redis_client, redis_restart
):
    pids = {name: process.pid for name, process in both_pools.processes.items()}
    env = {**both_pools.env(), "BOLT_BATCH_COST_S": "0.0002"}  # many small batches
    tree = write_tree(tmp_path / "tree", copies=12)
    report = tmp_path / "report.json"

    # The main job, Redis restarted once while its batches run.
    job = bolt_process(
        "analyze", str(tree), "--json", str(report), "--broker", both_pools.broker_url, env=env
    )
    wait_for(lambda: redis_client.llen("analysis"), what="the batches queued")
    redis_restart()
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 0, stderr
    assert_same_as_direct(json.loads(report.read_text()), tree)

    # A counted probe job, Redis restarted three times within 3 s.
    folder = tmp_path / "reports"
    folder.mkdir()
    figures = tmp_path / "probe.json"
    broker = ("--broker", both_pools.broker_url)
    probe = bolt_process(
        *("probe", "--calls", "400", "--rounds", "5000", "--folder", str(folder)),
        *("--json", str(figures), *broker),
        env=env,
    )
    wait_for(lambda: list(redis_client.scan_iter("bolt:ledger:*")), what="the probe running")
    started = time.monotonic()
    for _ in range(3):
        redis_restart()
        time.sleep(0.5)
    assert time.monotonic() - started < 3.0
    _, stderr = probe.communicate(timeout=120)
    result = json.loads(figures.read_text())
    assert probe.returncode == 0, (stderr, result)
    assert result["finished"] == result["tasks"] == 800
    assert result["lost"] == result["doubled"] == result["wrong"] == []

    # The same worker processes did it all, and take new work after the last restart.
    after = bolt_process(*("probe", "--calls", "2", "--folder", str(folder)), *broker, env=env)
    assert after.wait(timeout=60) == 0, after.stderr.read()
    assert {name: p.pid for name, p in both_pools.processes.items()} == pids
    assert all(process.poll() is None for process in both_pools.processes.values())
