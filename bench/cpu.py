"""CPU-bound tasks of about 20 ms on every usable core: bolt's P pool beside stock Celery.

The task multiplies two seeded integer matrices in pure Python (bolt_tasks.kernels); its size
is calibrated here so one product takes about 20 ms of CPU, and enough of them are sent to keep
every usable core busy for --seconds at the ideal rate (usable cores / mean task CPU time).
Each contender gets its own redis-server and worker, a warm-up, then the timed run:

    bolt_pinned     `bolt worker --pool p`, each child pinned to one core (BOLT_P_PIN=always)
    bolt_unpinned   `bolt worker --pool p`, children free to move (BOLT_P_PIN=never)
    celery          a plain `celery worker` on a minimal app, every default kept

bolt_* figures are those of the policy bolt picks by default on this machine (BOLT_P_PIN=auto).
Both producers publish with send_task and collect with one MGET poll, so what differs is the
worker side. CPU use is sampled per usable core (bolt_workers.cpu) over each timed run.

    python bench/cpu.py [--seconds 12] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from main_job import machine  # noqa: E402 - bench/ is the script's own folder

from bolt_tasks.kernels import timed_checksum  # noqa: E402
from bolt_workers.cpu import CpuSampler  # noqa: E402
from bolt_workers.processes import child_preexec, stop_processes  # noqa: E402
from bolt_workers.redis_server import RedisServer  # noqa: E402
from bolt_workers.topology import usable_cpus  # noqa: E402

TARGET_TASK_CPU_S = 0.020
CALIBRATION_RUNS = 30
WARM_UP_TASKS = 20
POLL_S = 0.02
TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Contender:
    """One worker set-up to measure: its command, its environment and its task's name."""

    name: str
    argv: list[str]
    env: Callable[[str], dict[str, str]]
    task: str
    app: Callable[[str], Any]


def mean_cpu_s(size: int, runs: int) -> float:
    """Mean CPU seconds of one product of this size, run here in one thread."""
    return statistics.mean(timed_checksum(size, seed)["cpu_s"] for seed in range(runs))


def calibrate(target_s: float) -> tuple[int, float]:
    """The matrix size whose product takes about target_s of CPU, and its measured mean."""
    size = 60
    for _ in range(4):
        # The work grows with the cube of the size; the median resists a busy neighbour.
        measured = statistics.median(timed_checksum(size, seed)["cpu_s"] for seed in range(15))
        size = max(8, round(size * (target_s / measured) ** (1 / 3)))
    return size, mean_cpu_s(size, CALIBRATION_RUNS)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("BOLT_", "BENCH_"))}


def bolt_env(pin: str) -> Callable[[str], dict[str, str]]:
    def env(url: str) -> dict[str, str]:
        return {**clean_env(), "BOLT_BROKER_URL": url, "BOLT_P_PIN": pin}

    return env


def bolt_app(url: str) -> Any:
    from bolt_tasks import tasks  # noqa: F401 - registers the tasks, so send_task routes by kind
    from bolt_tasks.app import make_app
    from bolt_tasks.settings import Settings

    return make_app(Settings.from_env({"BOLT_BROKER_URL": url}))


def celery_env(url: str) -> dict[str, str]:
    return {**clean_env(), "BENCH_CELERY_URL": url}


def celery_app(url: str) -> Any:
    from celery import Celery

    return Celery("stock", broker=url, backend=url)


def contenders() -> list[Contender]:
    bolt = [sys.executable, "-m", "bolt_tasks.cli", "worker", "--pool", "p"]
    celery = [sys.executable, "-m", "celery", "-A", "stock_celery_cpu", "worker", "-l", "WARNING"]
    bolt_task = "bolt.computation.matrix_checksum"
    return [
        Contender("bolt_pinned", bolt, bolt_env("always"), bolt_task, bolt_app),
        Contender("celery", celery, celery_env, "stock.matrix_checksum", celery_app),
        Contender("bolt_unpinned", bolt, bolt_env("never"), bolt_task, bolt_app),
    ]


def wait_ready(app: Any, worker: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SystemExit(f"worker exited: {log.read_text(errors='replace')[-2000:]}")
        if app.control.ping(timeout=0.5):
            return
    raise SystemExit("worker did not answer a ping within 60 s")


def run_tasks(app: Any, task: str, size: int, seeds: range) -> list[dict[str, Any]]:
    """Publish one task per seed, then collect every result (in seed order)."""
    ids = [app.send_task(task, args=(size, seed)).id for seed in seeds]
    backend = app.backend
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + TIMEOUT_S
    while len(found) < len(ids):
        pending = [task_id for task_id in ids if task_id not in found]
        raw = backend.client.mget([backend.get_key_for_task(task_id) for task_id in pending])
        for task_id, value in zip(pending, raw, strict=True):
            meta = backend.decode_result(value) if value is not None else None
            if meta and meta["status"] == "SUCCESS":
                found[task_id] = meta["result"]
            elif meta and meta["status"] in ("FAILURE", "REVOKED"):
                raise SystemExit(f"task {task_id} failed: {meta['result']}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(ids) - len(found)} tasks unfinished after {TIMEOUT_S:g} s")
        time.sleep(POLL_S)
    return [found[task_id] for task_id in ids]


def measure(contender: Contender, size: int, count: int, cores: tuple[int, ...], tmp: Path):
    """Start the contender's Redis and worker, warm it up, time count tasks, stop it all."""
    folder = tmp / contender.name
    with RedisServer(folder / "redis", appendonly=False) as server:
        log = folder / "worker.log"
        with open(log, "wb") as out:
            worker = subprocess.Popen(
                contender.argv,
                env=contender.env(server.url),
                cwd=HERE,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=child_preexec,
            )
        app = contender.app(server.url)
        try:
            wait_ready(app, worker, log)
            run_tasks(app, contender.task, size, range(WARM_UP_TASKS))
            with CpuSampler(cores) as sampler:
                started = time.perf_counter()
                replies = run_tasks(app, contender.task, size, range(count))
                elapsed_s = time.perf_counter() - started
        finally:
            stop_processes([worker], grace_s=10.0)
            app.close()
    return summary(replies, elapsed_s, sampler)


def summary(replies: list[dict[str, Any]], elapsed_s: float, sampler: CpuSampler) -> dict:
    return {
        "tasks_per_s": round(len(replies) / elapsed_s, 1),
        "elapsed_s": round(elapsed_s, 2),
        "cpu_avg": round(sampler.average(), 1),
        "cpu_max": round(sampler.maximum(), 1),
        "cpu_per_core": {str(k): round(v, 1) for k, v in sampler.per_core_average().items()},
        "task_cpu_s": round(statistics.mean(r["cpu_s"] for r in replies), 4),
        "task_wall_s": round(statistics.mean(r["wall_s"] for r in replies), 4),
        "children": len({r["pid"] for r in replies}),
        "checksums": [r["checksum"] for r in replies],
    }


def default_pinning() -> bool:
    """Whether bolt pins P children on this machine with no BOLT_ variable set."""
    from bolt_tasks.names import Pool
    from bolt_tasks.settings import Settings
    from bolt_workers.launcher import plan_pool
    from bolt_workers.topology import detect

    settings = Settings.from_env({})
    return plan_pool(Pool.P, settings, detect(settings)).pinned


def results(runs: dict[str, dict], ideal: float, size: int, task_cpu_s: float, count: int):
    bolt = runs["bolt_pinned" if default_pinning() else "bolt_unpinned"]
    celery = runs["celery"]
    checksums = {name: run.pop("checksums") for name, run in runs.items()}
    out = {
        "ideal_tasks_per_s": round(ideal, 1),
        "bolt_tasks_per_s": bolt["tasks_per_s"],
        "celery_tasks_per_s": celery["tasks_per_s"],
        "bolt_cpu_avg": bolt["cpu_avg"],
        "bolt_cpu_max": bolt["cpu_max"],
        "celery_cpu_avg": celery["cpu_avg"],
        "bolt_pins_by_default": default_pinning(),
        "bolt_of_ideal": round(bolt["tasks_per_s"] / ideal, 3),
        "bolt_over_celery": round(bolt["tasks_per_s"] / celery["tasks_per_s"], 3),
        "pinned_over_unpinned": round(
            runs["bolt_pinned"]["tasks_per_s"] / runs["bolt_unpinned"]["tasks_per_s"], 3
        ),
        "checksums_match": len({tuple(c) for c in checksums.values()}) == 1,
        "task_size": size,
        "task_cpu_s": round(task_cpu_s, 4),
        "tasks": count,
        "usable_cores": len(usable_cpus()),
        "runs": runs,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    return out


def report(out: dict[str, Any]) -> None:
    print(
        f"{out['tasks']} tasks of {out['task_cpu_s'] * 1000:.1f} ms CPU "
        f"(size {out['task_size']}) on {out['usable_cores']} usable cores"
    )
    print(f"{'ideal':14s} {out['ideal_tasks_per_s']:8.1f} tasks/s")
    for name, run in out["runs"].items():
        print(
            f"{name:14s} {run['tasks_per_s']:8.1f} tasks/s  cpu avg {run['cpu_avg']:5.1f}% "
            f"max {run['cpu_max']:5.1f}%  task cpu {run['task_cpu_s'] * 1000:5.1f} ms "
            f"wall {run['task_wall_s'] * 1000:5.1f} ms  {run['children']} children"
        )
    policy = "pinned" if out["bolt_pins_by_default"] else "unpinned"
    print(f"bolt (default here: {policy}): {out['bolt_of_ideal']:.1%} of ideal, ", end="")
    print(
        f"{out['bolt_over_celery']:.2f}x celery; pinned/unpinned {out['pinned_over_unpinned']:.2f}"
    )
    print(f"checksums match: {out['checksums_match']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="timed run at ideal speed")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()

    cores = usable_cpus()
    size, task_cpu_s = calibrate(TARGET_TASK_CPU_S)
    ideal = len(cores) / task_cpu_s
    count = math.ceil(ideal * args.seconds)
    with tempfile.TemporaryDirectory(prefix="bolt-bench-cpu-") as tmp:
        runs = {c.name: measure(c, size, count, cores, Path(tmp)) for c in contenders()}
    out = results(runs, ideal, size, task_cpu_s, count)
    report(out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0 if out["checksums_match"] else 1


if __name__ == "__main__":
    sys.exit(main())
