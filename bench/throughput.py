"""Micro-task throughput: bolt's producer API beside stock Celery and Dramatiq, on one Redis.

Every scenario runs a function that returns its argument, end to end: publish every call,
collect every result, in one process, against workers started for it on the same machine and
the same redis-server (each framework in its own database):

    celery_each     stock Celery (all defaults: prefork, one child per CPU), .delay per call
    celery_chunks   stock Celery, echo.chunks(items, 25)
    dramatiq_each   Dramatiq, 2 processes of 8 threads, one message per call
    bolt_each       bolt's P pool, bolt_tasks.submit per call (calls made within
                    BOLT_SUBMIT_LINGER_MS of each other share a message)
    bolt_each_alone the same with the linger at 0: one ordinary message per call
    bolt_batched    bolt's P pool, bolt_tasks.submit_many with batches of 25
    publish_only    bolt publishing one-call messages with no worker (messages per second)

Each worker is warmed up with a few calls before it is timed. It prints tasks per second and
the ratios the design aims at.

    python bench/throughput.py [--each N] [--batched N] [--publish N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from main_job import machine  # noqa: E402 - bench/ is the script's own folder

from bolt_workers.processes import child_preexec, stop_processes  # noqa: E402
from bolt_workers.redis_server import RedisServer  # noqa: E402

TIMEOUT_S = 300.0
WARM_UP_CALLS = 200
# Calls a producer hands bolt_tasks.submit_many at once: 400 messages, below the depth limit.
SUBMIT_CHUNK = 10_000
GOALS = {
    "bolt_batched": 50_000,
    "publish_only": 100_000,
}


def start_worker(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A worker process whose output goes to log, stopped by stop_processes."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=child_preexec
        )


def timed(run: Callable[[], int]) -> float:
    """Tasks per second of run(), which returns how many tasks it completed."""
    started = time.perf_counter()
    count = run()
    return count / (time.perf_counter() - started)


def check(values: list, count: int) -> int:
    """count, once values are exactly 0..count-1 in order: a benchmark must not count wrong."""
    if values != list(range(count)):
        raise SystemExit(f"wrong results: {len(values)} values, expected 0..{count - 1}")
    return count


def celery_rates(env: dict[str, str], logs: Path, each: int, batched: int) -> dict[str, float]:
    import stock_celery

    worker = start_worker(
        [sys.executable, "-m", "celery", "-A", "stock_celery", "worker", "--loglevel", "WARNING"],
        env,
        logs / "celery.log",
    )
    try:
        for result in [stock_celery.echo.delay(i) for i in range(WARM_UP_CALLS)]:
            result.get(timeout=TIMEOUT_S)

        def run_each() -> int:
            results = [stock_celery.echo.delay(i) for i in range(each)]
            return check([result.get(timeout=TIMEOUT_S) for result in results], each)

        def run_chunks() -> int:
            group = stock_celery.echo.chunks(((i,) for i in range(batched)), 25).apply_async()
            chunks = group.get(timeout=TIMEOUT_S)
            return check([value for chunk in chunks for value in chunk], batched)

        return {"celery_each": timed(run_each), "celery_chunks": timed(run_chunks)}
    finally:
        stop_processes([worker], grace_s=10.0)


def dramatiq_rates(env: dict[str, str], logs: Path, each: int) -> dict[str, float]:
    import stock_dramatiq

    argv = [sys.executable, "-m", "dramatiq", "stock_dramatiq", "--processes", "2"]
    worker = start_worker([*argv, "--threads", "8"], env, logs / "dramatiq.log")
    timeout_ms = int(TIMEOUT_S * 1000)
    try:
        for message in [stock_dramatiq.echo.send(i) for i in range(WARM_UP_CALLS)]:
            message.get_result(block=True, timeout=timeout_ms)

        def run_each() -> int:
            messages = [stock_dramatiq.echo.send(i) for i in range(each)]
            values = [m.get_result(block=True, timeout=timeout_ms) for m in messages]
            return check(values, each)

        return {"dramatiq_each": timed(run_each)}
    finally:
        stop_processes([worker], grace_s=10.0)


def bolt_rates(env: dict[str, str], logs: Path, each: int, batched: int) -> dict[str, float]:
    import bolt_tasks
    from bolt_tasks.batching import Publisher
    from bolt_tasks.settings import Settings
    from bolt_tasks.tasks.computation import echo

    argv = [sys.executable, "-m", "bolt_tasks.cli", "worker", "--pool", "p"]
    worker = start_worker(argv, env, logs / "bolt.log")
    try:
        bolt_tasks.submit_many(echo, [(i,) for i in range(WARM_UP_CALLS)]).get(TIMEOUT_S)

        def run_each(submit: Callable[..., Any]) -> int:
            submissions = [submit(echo, i) for i in range(each)]
            return check([s.get(TIMEOUT_S)[0] for s in submissions], each)

        alone = Publisher.from_settings(Settings.from_env().replace(submit_linger_ms=0))

        def run_batched() -> int:
            submissions = [
                bolt_tasks.submit_many(echo, [(i,) for i in range(start, start + SUBMIT_CHUNK)])
                for start in range(0, batched, SUBMIT_CHUNK)
            ]
            return check([value for s in submissions for value in s.get(TIMEOUT_S)], batched)

        return {
            "bolt_each": timed(lambda: run_each(bolt_tasks.submit)),
            "bolt_each_alone": timed(lambda: run_each(alone.submit)),
            "bolt_batched": timed(run_batched),
        }
    finally:
        stop_processes([worker], grace_s=10.0)


def publish_rates(url: str, messages: int) -> dict[str, float]:
    """Messages per second bolt publishes with no worker, one call to a message, then 25."""
    from bolt_tasks.batching import Publisher
    from bolt_tasks.settings import Settings
    from bolt_tasks.tasks.computation import echo

    settings = Settings.from_env({"BOLT_BROKER_URL": url}).replace(
        queue_limits=(("computation", 10 * messages),)
    )
    publisher = Publisher.from_settings(settings)
    items = [(i,) for i in range(SUBMIT_CHUNK)]
    publisher.submit_many(echo, items[:WARM_UP_CALLS], batch_size=1)

    def run(batch_size: int) -> int:
        for _ in range(messages // SUBMIT_CHUNK):
            publisher.submit_many(echo, items, batch_size=batch_size)
        return messages

    rates = {"publish_only": timed(lambda: run(1))}
    rates["publish_batched_calls"] = timed(lambda: run(25))
    publisher.client.flushdb()
    return rates


def report(rates: dict[str, float]) -> dict[str, float]:
    """Print every rate and the ratios bolt aims at; returns the ratios."""
    for name, rate in rates.items():
        unit = "messages/s" if name == "publish_only" else "tasks/s"
        print(f"{name:22s} {rate:12,.0f} {unit}")
    ratios = {
        "bolt_batched/celery_chunks": rates["bolt_batched"] / rates["celery_chunks"],
        "bolt_each/dramatiq_each": rates["bolt_each"] / rates["dramatiq_each"],
        "bolt_each/celery_each": rates["bolt_each"] / rates["celery_each"],
        "bolt_each_alone/celery_each": rates["bolt_each_alone"] / rates["celery_each"],
        "bolt_batched/celery_each": rates["bolt_batched"] / rates["celery_each"],
    }
    print()
    for name, ratio in ratios.items():
        print(f"{name:28s} {ratio:6.2f}x")
    targets = {
        "bolt_batched >= 50,000 tasks/s": rates["bolt_batched"] >= GOALS["bolt_batched"],
        "bolt_batched >= 3x celery_chunks": ratios["bolt_batched/celery_chunks"] >= 3,
        "bolt_each >= 1.5x dramatiq_each": ratios["bolt_each/dramatiq_each"] >= 1.5,
        "publish_only >= 100,000 messages/s": rates["publish_only"] >= GOALS["publish_only"],
    }
    print()
    for name, met in targets.items():
        print(f"{'met   ' if met else 'missed'} {name}")
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--each", type=int, default=2000, help="calls of the per-call scenarios")
    parser.add_argument("--batched", type=int, default=40_000, help="calls of the batched ones")
    parser.add_argument("--publish", type=int, default=40_000, help="messages published alone")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    if args.batched % SUBMIT_CHUNK or args.publish % SUBMIT_CHUNK:
        parser.error(f"--batched and --publish must be multiples of {SUBMIT_CHUNK}")

    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis", appendonly=False).start()
        try:
            rates = run_all(server.url.rsplit("/", 1)[0], Path(tmp), args)
        finally:
            server.stop()

    ratios = report(rates)
    if args.json:
        results = {key: round(value, 1) for key, value in rates.items()}
        results.update({f"ratio {k}": round(v, 3) for k, v in ratios.items()})
        results.update(
            {
                "calls": {"each": args.each, "batched": args.batched, "publish": args.publish},
                "machine": machine(),
                "date": time.strftime("%Y-%m-%d"),
            }
        )
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def run_all(base_url: str, logs: Path, args: argparse.Namespace) -> dict[str, float]:
    """Every scenario in turn, each framework in its own database of the one redis-server."""
    urls = {
        name: f"{base_url}/{db}" for db, name in enumerate(("bolt", "celery", "dramatiq", "pub"))
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOLT_")}
    env.update(
        {
            "BOLT_BROKER_URL": urls["bolt"],
            "BENCH_CELERY_URL": urls["celery"],
            "BENCH_DRAMATIQ_URL": urls["dramatiq"],
            "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)]),
        }
    )
    # The producers in this process read the same variables as the workers, and no others.
    for name in [name for name in os.environ if name.startswith("BOLT_")]:
        del os.environ[name]
    os.environ.update(env)
    sys.path.insert(0, str(HERE))

    rates = publish_rates(urls["pub"], args.publish)
    rates.update(celery_rates(env, logs, args.each, args.batched))
    rates.update(dramatiq_rates(env, logs, args.each))
    rates.update(bolt_rates(env, logs, args.each, args.batched))
    order = ("celery_each", "celery_chunks", "dramatiq_each", "bolt_each", "bolt_each_alone")
    order = (*order, "bolt_batched")
    return {name: rates[name] for name in (*order, "publish_only", "publish_batched_calls")}


if __name__ == "__main__":
    sys.exit(main())
