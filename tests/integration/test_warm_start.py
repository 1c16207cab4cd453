"""Warm start with real workers: every process opens the index, and searches answer from it."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psutil
import redis

from bolt_tasks.buffers import BufferPool, specs_from
from bolt_tasks.einstein.build import build_in_process, index_base
from bolt_tasks.einstein.index import index_dir, vectors_dir
from bolt_tasks.einstein.vectors import VectorCache
from bolt_tasks.settings import Settings
from bolt_workers.processes import child_preexec
from tests.einstein_tree import FILES, documented_functions, write_functions_tree

STEPS = ("index_ms", "buffers_ms", "redis_ms", "total_ms")

# A worker started the way `celery worker -P solo` starts one, with bolt's warm-up installed.
SOLO = (
    "import sys; from bolt_tasks.app import app; from bolt_workers import warmup; "
    "warmup.install(); app.worker_main(sys.argv[1:])"
)


def bolt(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bolt_tasks.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def warmups(client: redis.Redis, node: str, count: int, timeout_s: float = 20.0) -> list[dict]:
    """The published warm-up records of node's processes, once count of them are there."""
    deadline = time.monotonic() + timeout_s
    while True:
        keys = client.keys(f"bolt:warmup:{node}@*")
        if len(keys) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(keys) == count, keys
    for key in keys:
        assert 0 < client.ttl(key) <= 86400
    return [{k.decode(): v.decode() for k, v in client.hgetall(key).items()} for key in keys]


def buffer_stats(client: redis.Redis, node: str, done, timeout_s: float = 15.0) -> list[dict]:
    """The buffer statistics node's processes published, once done(them) holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [
            {k.decode(): v.decode() for k, v in client.hgetall(key).items()}
            for key in client.keys(f"bolt:buffers:{node}@*")
        ]
        if done(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def assert_warmed(record: dict, pool: str, chunks: int) -> None:
    assert record["pool"] == pool
    assert all(float(record[step]) >= 0 for step in STEPS), record
    assert float(record["total_ms"]) >= max(float(record[s]) for s in STEPS[:3])
    assert int(record["buffers_bytes"]) > 0
    assert (int(record["index_open"]), int(record["index_chunks"])) == (int(chunks > 0), chunks)


def test_prefork_children_and_a_threads_worker_warm_up_and_searches_answer(
    tmp_path, workers, redis_client
):
    tree = write_functions_tree(tmp_path / "tree")
    workers.start("e", "e")
    workers.start("p", "p", "--concurrency", "2")
    workers.wait_ready("p", "e")
    env = workers.env()

    # Before any build the workers have no index: one line, status 2.
    early = bolt("search", "polygon area", "--broker", workers.broker_url, env=env)
    assert early.returncode == 2, early.stderr
    assert early.stderr.strip().count("\n") == 0 and "bolt index build" in early.stderr

    built = bolt("index", "build", str(tree), "--broker", workers.broker_url, env=env)
    assert built.returncode == 0, built.stderr
    assert f"of {len(FILES)} files" in built.stdout and "index written" in built.stdout
    again = bolt("index", "build", str(tree), "--broker", workers.broker_url, env=env)
    assert again.returncode == 0, again.stderr
    assert " 0 embedded" in again.stdout and "already up to date" in again.stdout

    # The threads worker warmed up too (before any index existed).
    (threads,) = warmups(redis_client, "e", 1)
    assert_warmed(threads, "threads", 0)

    # A P worker started now: each child opens the index the build wrote.
    workers.stop("p")
    process = workers.start("p-warm", "p", "--concurrency", "2")
    workers.wait_ready("p-warm")
    records = warmups(redis_client, "p-warm", 2)
    chunks = int(records[0]["index_chunks"])
    for record in records:
        assert_warmed(record, "prefork", chunks)
    children = {child.pid for child in psutil.Process(process.pid).children()}
    assert {int(record["pid"]) for record in records} == children

    path, name, doc, line = documented_functions()[7]
    found = bolt("search", f"{name} {doc}", "--json", "--broker", workers.broker_url, env=env)
    assert found.returncode == 0, found.stderr
    result = json.loads(found.stdout)
    assert result["hits"][0]["path"] == path
    assert result["hits"][0]["start"] <= line <= result["hits"][0]["end"]
    assert result["node"].startswith("p-warm@") and result["chunks"] == chunks
    # The search was p-warm's first task: its handshake was measured and published.
    assert result["handshake_ms"] > 0
    handshake = redis_client.hgetall(f"bolt:handshake:{result['node']}")
    assert float(handshake[b"handshake_ms"]) == round(result["handshake_ms"], 3)
    assert redis_client.ttl(f"bolt:handshake:{result['node']}") > 0
    # The child that searched publishes its buffer pools' statistics within a second or so.
    stats = buffer_stats(
        redis_client,
        "p-warm",
        lambda found: len(found) == 2 and any(int(s["search_results_hits"]) for s in found),
    )
    assert sorted(int(s["search_results_hits"]) for s in stats) == [0, 1]
    assert all(int(s["search_results_misses"]) == 0 for s in stats)


def test_a_solo_worker_warms_up_in_its_own_process(tmp_path, workers, redis_client):
    tree = write_functions_tree(tmp_path / "tree")
    settings = Settings.from_env()
    base = index_base(str(tree), settings.embed_dim, settings.chunk_lines, [".py"], [])
    cache = VectorCache(vectors_dir(settings.cache_dir))
    summary = build_in_process(
        index_dir(settings.cache_dir), cache, base, BufferPool(specs_from(settings))
    )
    workers.start("e", "e")
    argv = "worker --pool solo --queues analysis,computation --hostname p-solo@%h"
    with open(tmp_path / "p-solo.log", "wb") as log:
        workers.processes["p-solo"] = subprocess.Popen(
            [sys.executable, "-c", SOLO, *argv.split(), "--without-mingle", "--without-gossip"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=workers.env(),
            preexec_fn=child_preexec,
        )
    workers.wait_ready("e", "p-solo")

    (record,) = warmups(redis_client, "p-solo", 1)
    assert_warmed(record, "solo", summary["chunks"])
    assert int(record["pid"]) == workers.processes["p-solo"].pid

    path, name, doc, _ = documented_functions()[20]
    found = bolt(
        "search", f"{name} {doc}", "-k", "3", "--broker", workers.broker_url, env=workers.env()
    )
    assert found.returncode == 0, found.stderr
    lines = found.stdout.strip().splitlines()
    assert len(lines) == 3 and f"  {path}:" in lines[0]
