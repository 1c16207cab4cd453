"""Soak: many micro tasks through submit_many with pool children recycled; nothing lost or doubled.

One redis-server and one P worker are started for the run. Each call is a counted hash chain
(bolt.computation.hash_chain with a ledger, bolt_tasks.ledger): its result is checked against
one computed here, and the ledger shows whether any call finished twice. Two phases:

    baseline   a tenth of the calls (--baseline), children never replaced
    soak       --count calls, each child replaced after --recycle messages
               (BOLT_P_MAX_TASKS_PER_CHILD)

It prints, for each phase, calls per second, calls lost (no result, a wrong one, or never
finished in the ledger) and doubled (finished twice), and for the soak the worker's resident
memory (the worker and its children, sampled twice a second) after warm-up and at the end: the
growth must stay at most 10%. The throughput ratio soak/baseline is the cost of recycling.

    python bench/soak.py [--count N] [--recycle N] [--batch N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from main_job import machine  # noqa: E402 - bench/ is the script's own folder

from bolt_tasks import ledger  # noqa: E402
from bolt_tasks.batching import CallError, Publisher  # noqa: E402
from bolt_tasks.probes import hash_chain  # noqa: E402
from bolt_tasks.settings import Settings  # noqa: E402
from bolt_tasks.tasks import computation  # noqa: E402
from bolt_workers.processes import child_preexec, stop_processes  # noqa: E402
from bolt_workers.redis_server import RedisServer  # noqa: E402

# Calls handed to submit_many at once: 100 messages of 25, well below the queue depth limit, so
# two waves in flight keep the pool busy while the producer checks the one before.
WAVE_CALLS = 2_500
# One SHA-256 round: the call is all messaging and counting, the worst case for overhead.
ROUNDS = 1
# Resident memory is compared between the samples after this share of the calls (the worker
# warm, its caches filled) and those of the last tenth.
WARM_UP_SHARE = 0.2
RSS_GROWTH_LIMIT = 0.10
SAMPLE_INTERVAL_S = 0.5


class RssSampler(threading.Thread):
    """Samples the resident memory of a process and its children, with the progress then."""

    def __init__(self, pid: int, progress: list[int]) -> None:
        super().__init__(daemon=True)
        self.pid, self.progress = pid, progress
        self.samples: list[tuple[int, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(SAMPLE_INTERVAL_S):
            try:
                root = psutil.Process(self.pid)
                tree = [root, *root.children(recursive=True)]
                rss = sum(process.memory_info().rss for process in tree)
            except psutil.Error:
                continue
            self.samples.append((self.progress[0], rss))

    def growth(self, total: int) -> dict[str, Any]:
        """Median RSS after warm-up and over the last tenth, and the growth between them."""
        warm = [rss for done, rss in self.samples if WARM_UP_SHARE * total <= done < 0.5 * total]
        last = [rss for done, rss in self.samples if done >= 0.9 * total]
        if not warm or not last:
            return {"warm_mib": None, "end_mib": None, "growth": None}
        warm_rss, end_rss = statistics.median(warm), statistics.median(last)
        return {
            "warm_mib": round(warm_rss / 2**20, 1),
            "end_mib": round(end_rss / 2**20, 1),
            "growth": round(end_rss / warm_rss - 1, 4),
        }


def start_worker(url: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BOLT_")}
    environ.update({"BOLT_BROKER_URL": url, "BOLT_LOG_LEVEL": "WARNING", **env})
    environ["BOLT_CACHE_DIR"] = str(log.parent / "cache")
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bolt_tasks.cli", "worker", "--pool", "p"],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=child_preexec,
        )


def wait_until_consuming(publisher: Publisher) -> None:
    publisher.submit_many(computation.echo, [(0,)], batch_size=1).get(timeout=60)


def run_phase(publisher: Publisher, client: redis.Redis, count: int, batch: int, progress):
    """Submit count counted calls in waves, check every result; the figures of the phase."""
    name = uuid.uuid4().hex
    seeds = [f"{name}-{index}" for index in range(count)]
    wrong = 0
    started = time.perf_counter()
    waves = [seeds[i : i + WAVE_CALLS] for i in range(0, count, WAVE_CALLS)]
    in_flight: list[tuple[list[str], Any]] = []
    for wave in [*waves, None]:
        if wave is not None:
            items = [(seed, ROUNDS, name) for seed in wave]
            in_flight.append((wave, publisher.submit_many(computation.hash_chain, items, batch)))
        if len(in_flight) == 2 or (wave is None and in_flight):
            done_wave, submission = in_flight.pop(0)
            results = submission.get(timeout=600, propagate=False)
            wrong += sum(
                isinstance(got, CallError) or got != hash_chain(seed, ROUNDS)
                for seed, got in zip(done_wave, results, strict=True)
            )
            progress[0] += len(done_wave)
    elapsed_s = time.perf_counter() - started
    counted = ledger.read(client, name)
    client.delete(ledger.ledger_key(name))
    return {
        "calls": count,
        "calls_per_s": round(count / elapsed_s, 1),
        "elapsed_s": round(elapsed_s, 2),
        "lost": wrong + len(counted.lost(set(seeds))),
        "doubled": len(counted.doubled()),
        "delivered_again": len(counted.begun_again()),
    }


def phase(url: str, log: Path, count: int, batch: int, **env: str) -> dict[str, Any]:
    """One worker started for the phase, count calls through it; the figures and its RSS."""
    settings = Settings.from_env({"BOLT_BROKER_URL": url})
    publisher = Publisher.from_settings(settings)
    client = redis.Redis.from_url(url)
    worker = start_worker(url, log, **env)
    progress = [0]
    sampler = RssSampler(worker.pid, progress)
    try:
        wait_until_consuming(publisher)
        sampler.start()
        figures = run_phase(publisher, client, count, batch, progress)
    finally:
        sampler.done.set()
        stop_processes([worker], grace_s=10.0)
        client.close()
    figures["rss"] = sampler.growth(count)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="calls of the soak")
    parser.add_argument("--recycle", type=int, default=1000, help="messages per child")
    parser.add_argument("--batch", type=int, default=25, help="calls per message")
    parser.add_argument("--baseline", type=int, help="calls of the baseline (count / 10)")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    baseline_count = args.baseline or max(10_000, args.count // 10)

    with tempfile.TemporaryDirectory(prefix="bolt-soak-") as tmp:
        folder = Path(tmp)
        with RedisServer(folder / "redis", appendonly=False) as server:
            baseline = phase(server.url, folder / "baseline.log", baseline_count, args.batch)
            soak = phase(
                server.url,
                folder / "soak.log",
                args.count,
                args.batch,
                BOLT_P_MAX_TASKS_PER_CHILD=str(args.recycle),
            )
    growth = soak["rss"]["growth"]
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "recycle_messages": args.recycle,
        "batch": args.batch,
        "baseline": baseline,
        "soak": soak,
        "ratio_soak_to_baseline": round(soak["calls_per_s"] / baseline["calls_per_s"], 3),
        "ok": soak["lost"] == soak["doubled"] == 0
        and growth is not None
        and growth <= RSS_GROWTH_LIMIT,
    }
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["ok"] else 1


def print_report(report: dict[str, Any]) -> None:
    print(f"{report['date']}  {report['machine']}  load {report['load_average']}")
    for name in ("baseline", "soak"):
        figures = report[name]
        print(
            f"{name:>8}: {figures['calls']:,} calls at {figures['calls_per_s']:,.0f}/s, "
            f"{figures['lost']} lost, {figures['doubled']} doubled, "
            f"{figures['delivered_again']} delivered again"
        )
    rss = report["soak"]["rss"]
    print(
        f"    soak RSS: {rss['warm_mib']} MiB after warm-up, {rss['end_mib']} MiB at the end, "
        f"growth {rss['growth']:.1%} (limit {RSS_GROWTH_LIMIT:.0%}); children replaced every "
        f"{report['recycle_messages']} messages of {report['batch']} calls"
        if rss["growth"] is not None
        else "    soak RSS: too few samples to compare"
    )
    print(f"   ratio: soak/baseline calls per second {report['ratio_soak_to_baseline']:.2f}")
    print("      ok" if report["ok"] else "  FAILED")


if __name__ == "__main__":
    sys.exit(main())
