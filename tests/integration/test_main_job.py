"""The main job through a real Redis and real P and E workers, and the embedded deployment."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from bolt_tasks.job import direct_analysis
from bolt_tasks.settings import Settings
from tests.trees import write_tree

COMPARED = (
    "files",
    "functions",
    "classes",
    "lines",
    "code_lines",
    "imports",
    "chunks",
    "parse_errors",
    "top_complex",
)


def bolt(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run(
        [sys.executable, "-m", "bolt_tasks.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def assert_same_as_direct(report: dict, root) -> None:
    direct = direct_analysis(str(root), Settings.from_env({}))
    for key in COMPARED:
        assert report[key] == direct[key], key
    assert report["embedding_checksum"] == pytest.approx(direct["embedding_checksum"], rel=1e-9)


def test_analyze_through_running_workers_matches_a_direct_computation(tmp_path, both_pools):
    tree = write_tree(tmp_path / "tree", copies=12)
    out = tmp_path / "report.json"
    env = {**both_pools.env(), "BOLT_BATCH_COST_S": "0.0002"}  # many small batches
    result = bolt(
        "analyze", str(tree), "--json", str(out), "--broker", both_pools.broker_url, env=env
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert_same_as_direct(report, tree)
    assert report["batches"] > 10
    assert report["tasks"] == {
        "analysis": report["batches"],
        "computation": report["batches"],
        "coordination": 2,
        "io": report["batches"] + 1,
    }
    assert {e["path"] for e in report["parse_errors"]} == {"broken.py", "binary.py", "latin.py"}
    assert report["tasks_per_s"] > 0 and report["elapsed_s"] > 0
    assert "functions" in result.stdout and "most complex functions" in result.stdout
    # Both pools really took part: each worker's log shows tasks of its own queues only.
    ran_p, ran_e = ran_tasks(both_pools.log("p")), ran_tasks(both_pools.log("e"))
    assert ran_p == {"bolt.analysis.analyze_files", "bolt.computation.embed_chunks"}
    assert ran_e == {
        "bolt.io.list_tree",
        "bolt.io.plan_chunks",
        "bolt.coordination.plan_job",
        "bolt.coordination.merge_report",
    }


def ran_tasks(log: str) -> set[str]:
    return set(re.findall(r"Task (bolt\.[\w.]+)\[[^\]]+\] succeeded", log))


def test_an_empty_tree_gives_an_empty_report(tmp_path, both_pools):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "r.json"
    result = bolt(
        "analyze",
        str(tmp_path / "empty"),
        "--json",
        str(out),
        "--broker",
        both_pools.broker_url,
        env=both_pools.env(),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["files"] == 0 and report["functions"] == 0 and report["batches"] == 0


def test_a_broker_without_workers_is_reported_not_waited_on(tmp_path, workers):
    result = bolt(
        "analyze", str(tmp_path), "--broker", workers.broker_url, env=workers.env(), timeout=30
    )
    assert result.returncode == 2
    assert "no worker of pool e and p" in result.stderr
    assert workers.broker_url.split("@")[0].split(":")[-1] not in result.stderr  # no password


def _descendants_while_running(process: subprocess.Popen, want: int, timeout_s: float = 30):
    """Pids under process once at least `want` of them run (redis-server, workers, children)."""
    parent = psutil.Process(process.pid)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = {child.pid for child in parent.children(recursive=True)}
        if len(found) >= want:
            return found
        time.sleep(0.05)
    raise AssertionError(f"only {len(found)} processes appeared under the command")


def _all_gone(pids: set[int], timeout_s: float = 15) -> set[int]:
    deadline = time.monotonic() + timeout_s
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {
            pid
            for pid in alive
            if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        }
        time.sleep(0.1)
    return alive


def test_embedded_analyze_matches_direct_and_leaves_no_process_behind(tmp_path):
    tree = write_tree(tmp_path / "tree", copies=30)
    out = tmp_path / "r.json"
    env = {k: v for k, v in os.environ.items() if k != "BOLT_BROKER_URL"}
    process = subprocess.Popen(
        [sys.executable, "-m", "bolt_tasks.cli", "analyze", str(tree), "--json", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # redis-server, the P worker with its two children, the E worker.
    pids = _descendants_while_running(process, want=4)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    report = json.loads(out.read_text())
    assert report["embedded"] is True
    assert_same_as_direct(report, tree)
    assert not _all_gone(pids)


def test_interrupted_embedded_analyze_stops_every_child(tmp_path):
    tree = write_tree(tmp_path / "tree", copies=200)
    out = tmp_path / "r.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "bolt_tasks.cli", "analyze", str(tree), "--json", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pids = _descendants_while_running(process, want=4)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    assert not _all_gone(pids)
    assert not out.exists()  # no half-written report
