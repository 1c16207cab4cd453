"""Warm start: a bolt P worker coming up on a large Einstein index, beside a stock Celery worker.

It writes an index of --chunks synthetic chunks (default 100,000 of width 256) into a fresh
cache folder, starts a private redis-server, and then, for each round:

- queues a search, starts `bolt worker --pool p` (2 children) and times exec to the search's
  result arriving here (exec_to_first_result_s); reads each child's published warm-up timings
  (child_warmup_ms, the slowest child) and the handshake (worker ready to that first result);
- times --searches more searches, inside the worker (search_p50_ms) and round trip from here;
- queues one task for a stock Celery worker (bench/stock_celery.py, prefork with 2 children,
  the same --without-mingle --without-gossip as bolt's) and times exec to its result.

    python bench/warm.py [--chunks 100000] [--dim 256] [--rounds 3] [--searches 200] [--json FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from main_job import machine  # noqa: E402 - bench/ is the script's own folder

from bolt_tasks.einstein.build import index_base  # noqa: E402
from bolt_tasks.einstein.embed import embed_texts  # noqa: E402
from bolt_tasks.einstein.index import FileVectors, index_dir, write_index  # noqa: E402
from bolt_workers.processes import child_preexec, stop_processes  # noqa: E402
from bolt_workers.redis_server import RedisServer  # noqa: E402

GOALS = {
    "child_warmup_ms": 50.0,
    "exec_to_first_result_s": 1.0,
    "handshake_ms": 50.0,
    "search_p50_ms": 5.0,
}
CHILDREN = 2
CHUNKS_PER_FILE = 10
# Distinct synthetic texts embedded for real; a larger index repeats their vectors.
UNIQUE_CHUNKS_MAX = 100_000
TIMEOUT_S = 60.0


def synthetic_texts(count: int, seed: int = 7) -> list[str]:
    """Chunks of code-like text: 30 snake_case names each, from a vocabulary of 20,000."""
    rng = np.random.default_rng(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qu", "be"]
    words = ["".join(rng.choice(syllables, size=3)) for _ in range(2000)]
    names = [f"{words[a]}_{words[b]}" for a, b in rng.integers(0, len(words), (20_000, 2))]
    picks = rng.integers(0, len(names), size=(count, 30))
    return [" ".join(names[i] for i in row) for row in picks]


def write_synthetic_index(cache_dir: Path, chunks: int, dim: int) -> list[str]:
    """Write an index of chunks synthetic chunks; returns queries taken from their texts."""
    texts = synthetic_texts(min(chunks, UNIQUE_CHUNKS_MAX))
    unique = embed_texts(texts, dim)
    vectors = np.resize(unique, (chunks, dim)) if chunks > len(unique) else unique
    ranges = np.array([[i * 40 + 1, i * 40 + 40] for i in range(CHUNKS_PER_FILE)], np.int32)
    files = [
        FileVectors(
            f"synthetic/module_{first // CHUNKS_PER_FILE:06d}.py",
            hashlib.sha256(str(first).encode()).hexdigest(),
            ranges[: len(vectors[first : first + CHUNKS_PER_FILE])],
            vectors[first : first + CHUNKS_PER_FILE],
        )
        for first in range(0, chunks, CHUNKS_PER_FILE)
    ]
    base = index_base("/synthetic", dim, 40, [".py"], [])
    write_index(index_dir(cache_dir), base, files)
    # A query is a dozen names of one chunk, as a person would type a function's name and words.
    return [" ".join(text.split()[:12]) for text in texts[:: max(1, len(texts) // 500)]]


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=child_preexec
        )


def bolt_round(env: dict[str, str], logs: Path, queries: list[str], searches: int) -> dict:
    """One start of a bolt P worker: start-up figures and search latencies."""
    import redis

    from bolt_tasks import handshake
    from bolt_tasks.app import app
    from bolt_tasks.settings import get_settings
    from bolt_tasks.tasks import computation

    client = redis.Redis.from_url(env["BOLT_BROKER_URL"])
    for key in client.keys("bolt:warmup:p-bench@*"):
        client.delete(key)
    probe = computation.search_index.delay(queries[0], 10)
    started = time.perf_counter()
    worker = start(
        [sys.executable, "-m", "bolt_tasks.cli", "worker", "--pool", "p", "--name", "p-bench@%h"],
        env,
        logs / "bolt.log",
    )
    try:
        first = probe.get(timeout=TIMEOUT_S)
        exec_s, arrived_at = time.perf_counter() - started, time.time()
        shake_ms = handshake.note_result(
            app.backend.client, first["node"], probe.id, arrived_at, get_settings().warmup_ttl_s
        )
        warm = child_warmups(client, first["node"])
        inside, round_trip = search_times(computation, queries, searches)
    finally:
        stop_processes([worker], grace_s=10.0)
    assert first["hits"], "the probe search found nothing"
    return {
        "exec_to_first_result_s": exec_s,
        "handshake_ms": shake_ms,
        "child_warmup_ms": max(float(w["total_ms"]) for w in warm),
        "child_index_ms": max(float(w["index_ms"]) for w in warm),
        "child_buffers_ms": max(float(w["buffers_ms"]) for w in warm),
        "child_redis_ms": max(float(w["redis_ms"]) for w in warm),
        "index_chunks": int(warm[0]["index_chunks"]),
        "search_p50_ms": statistics.median(inside),
        "search_roundtrip_p50_ms": statistics.median(round_trip),
        "first_search_waited_ms": first["waited_ms"],
    }


def child_warmups(client, node: str) -> list[dict[str, str]]:
    """The warm-up records of node's children, once all of them have published."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        keys = client.keys(f"bolt:warmup:{node}:*")
        if len(keys) >= CHILDREN:
            return [
                {k.decode(): v.decode() for k, v in client.hgetall(key).items()} for key in keys
            ]
        time.sleep(0.01)
    raise SystemExit(f"the children of {node} published no warm-up timings")


def search_times(computation, queries: list[str], count: int) -> tuple[list[float], list[float]]:
    """Milliseconds of each search inside the worker, and from here to its result."""
    inside, round_trip = [], []
    for number in range(count):
        started = time.perf_counter()
        found = computation.search_index.delay(queries[number % len(queries)], 10).get(TIMEOUT_S)
        round_trip.append((time.perf_counter() - started) * 1000)
        inside.append(found["search_ms"])
    return inside, round_trip


def celery_round(env: dict[str, str], logs: Path) -> float:
    """Seconds from exec of a stock Celery worker to its first task's result arriving here."""
    import stock_celery

    probe = stock_celery.echo.delay(1)
    started = time.perf_counter()
    argv = [sys.executable, "-m", "celery", "-A", "stock_celery", "worker"]
    argv += [
        "--concurrency",
        str(CHILDREN),
        "--without-mingle",
        "--without-gossip",
        "-l",
        "WARNING",
    ]
    worker = start(argv, env, logs / "celery.log")
    try:
        assert probe.get(timeout=TIMEOUT_S) == 1
        return time.perf_counter() - started
    finally:
        stop_processes([worker], grace_s=10.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--searches", type=int, default=200)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bolt-bench-warm-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        queries = write_synthetic_index(work / "cache", args.chunks, args.dim)
        print(
            f"index of {args.chunks:,} chunks x {args.dim} written in "
            f"{time.perf_counter() - started:.1f} s"
        )
        with RedisServer(work / "redis") as server:
            results = run_rounds(server.url, work, queries, args)
    print_results(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def run_rounds(url: str, work: Path, queries: list[str], args: argparse.Namespace) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOLT_")}
    env.update(
        BOLT_BROKER_URL=url,
        BOLT_CACHE_DIR=str(work / "cache"),
        BOLT_P_CONCURRENCY=str(CHILDREN),
        BENCH_CELERY_URL=url.replace("/0", "/1"),
        PYTHONPATH=os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]),
    )
    os.environ.update({k: env[k] for k in ("BOLT_BROKER_URL", "BENCH_CELERY_URL")})
    from bolt_tasks.app import configure
    from bolt_tasks.settings import Settings

    configure(Settings.from_env())
    bolt, celery = [], []
    for number in range(1, args.rounds + 1):
        bolt.append(bolt_round(env, work, queries, args.searches))
        celery.append(celery_round(env, work))
        print(
            f"round {number}: bolt exec->first result {bolt[-1]['exec_to_first_result_s']:.3f} s"
            f", stock celery {celery[-1]:.3f} s, child warm-up "
            f"{bolt[-1]['child_warmup_ms']:.1f} ms, handshake {bolt[-1]['handshake_ms']:.1f} ms"
        )
    results = {key: statistics.median(r[key] for r in bolt) for key in bolt[0]}
    results["celery_exec_to_first_result_s"] = statistics.median(celery)
    results["exec_ratio_to_celery"] = (
        results["exec_to_first_result_s"] / results["celery_exec_to_first_result_s"]
    )
    results = {k: round(v, 4) if isinstance(v, float) else v for k, v in results.items()}
    results.update(
        chunks=args.chunks,
        dim=args.dim,
        rounds=args.rounds,
        searches=args.searches,
        goals_met={key: results[key] <= goal for key, goal in GOALS.items()},
        machine=machine(),
        date=time.strftime("%Y-%m-%d"),
    )
    return results


def print_results(results: dict) -> None:
    print(f"\nmedians of {results['rounds']} rounds, index of {results['chunks']:,} chunks")
    for key in (
        "child_warmup_ms",
        "child_index_ms",
        "child_buffers_ms",
        "child_redis_ms",
        "exec_to_first_result_s",
        "celery_exec_to_first_result_s",
        "exec_ratio_to_celery",
        "handshake_ms",
        "search_p50_ms",
        "search_roundtrip_p50_ms",
    ):
        goal = GOALS.get(key)
        mark = (
            ""
            if goal is None
            else f"  (goal <= {goal:g}: {'met' if results[key] <= goal else 'MISSED'})"
        )
        print(f"{key:32s} {results[key]:10.3f}{mark}")


if __name__ == "__main__":
    sys.exit(main())
