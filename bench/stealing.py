"""Work stealing: a skewed mix that lands on the P queues only, with and without bolt's controller.

The usable cores are split in two: the first half is the P pool's, the second the E pool's
(BOLT_P_CORES, BOLT_E_CORES), as on a machine of performance and efficiency cores. The work is
analyses of generated modules (analysis queue) and pure-Python matrix products (computation
queue), durations drawn from 5 ms to 500 ms (log-uniform, seeded), all sent at once: the E
pool's own queues stay empty. Each set-up gets its own redis-server and workers:

    celery_default  the same two pools under stock Celery settings: prefetch multiplier 4,
                    early acks, no fair scheduling, no subdivision; nothing steals
    bolt_nosteal    `bolt worker` for both pools, no controller
    bolt_steal      the same with `bolt controller`

Each makespan runs from the first message sent to the last result seen (10 ms polls). The
ideal is the least CPU time the pool processes used for the work in any of the three runs
(psutil, the P worker with its children and the E worker) divided by the usable cores; the
steal run's own CPU time over the cores is printed beside it, and so is the share of each run's
makespan each pool spent running tasks (the run times Celery logs). The activation rate is
that of bolt_workers.steal_stats after the steal run.

    python bench/stealing.py [--work-s 12] [--seed 7] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from main_job import machine  # noqa: E402 - bench/ is the script's own folder

from bolt_tasks import tasks  # noqa: E402, F401 - registers the tasks, so they route by kind
from bolt_tasks.app import make_app  # noqa: E402
from bolt_tasks.codemetrics import analyze_source  # noqa: E402
from bolt_tasks.cpulist import format_cpulist  # noqa: E402
from bolt_tasks.kernels import matrix_checksum  # noqa: E402
from bolt_tasks.settings import Settings  # noqa: E402
from bolt_workers.processes import child_preexec, stop_processes  # noqa: E402
from bolt_workers.redis_server import RedisServer  # noqa: E402
from bolt_workers.steal_stats import steal_statistics  # noqa: E402
from bolt_workers.topology import usable_cpus  # noqa: E402

SHORTEST_S, LONGEST_S = 0.005, 0.5
# Three parts in four of the work are analyses, the rest matrix products.
ANALYSIS_SHARE = 0.75
POLL_S = 0.01
TIMEOUT_S = 600.0
BOLT = [sys.executable, "-m", "bolt_tasks.cli"]

FUNCTION = """

def step_{n}(items, flag):
    total = 0
    for item in items:
        if item > {n} and flag:
            total += item
        elif item < 0 or item == {n}:
            total -= item
        else:
            total = [x * 2 for x in range(item) if x % 3]
    return total
"""

# A stock Celery worker on bolt's tasks and queues: only the settings bolt changes go back to
# Celery's defaults (prefetch multiplier 4, acks on receipt); -O default is Celery's own.
STOCK_WORKER = """
import os, sys
from bolt_tasks.cpulist import parse_cpulist
os.sched_setaffinity(0, set(parse_cpulist(sys.argv[1])))
from bolt_tasks.app import app
app.conf.update(worker_prefetch_multiplier=4, task_acks_late=False)
app.worker_main(sys.argv[2:])
"""


@dataclass(frozen=True)
class Job:
    """One task of the mix: its Celery name and arguments, and its calibrated duration."""

    name: str
    args: tuple[Any, ...]
    seconds: float


def module_text(functions: int) -> str:
    return '"""Generated."""\n' + "".join(FUNCTION.format(n=n) for n in range(functions))


def best_of(fn: Any, runs: int = 3) -> float:
    """The least CPU time of a few runs of fn: CPU, so a busy machine does not skew it."""
    best = math.inf
    for _ in range(runs):
        started = time.thread_time()
        fn()
        best = min(best, time.thread_time() - started)
    return best


def calibrate() -> tuple[float, float]:
    """Seconds per generated function analysed, and per cubed size of a matrix product."""
    text = module_text(300)
    per_function = best_of(lambda: analyze_source(text)) / 300
    per_cube = best_of(lambda: matrix_checksum(40, 1)) / 40**3
    return per_function, per_cube


def make_mix(root: Path, work_s: float, seed: int) -> list[Job]:
    """Tasks of 5 to 500 ms until their calibrated durations add up to work_s, shuffled."""
    per_function, per_cube = calibrate()
    rng = random.Random(seed)
    jobs: list[Job] = []
    total = 0.0
    while total < work_s:
        seconds = math.exp(rng.uniform(math.log(SHORTEST_S), math.log(LONGEST_S)))
        if rng.random() < ANALYSIS_SHARE:
            name = f"m{len(jobs)}.py"
            (root / name).write_text(module_text(max(1, round(seconds / per_function))))
            jobs.append(Job("bolt.analysis.analyze_files", (str(root), [name]), seconds))
        else:
            size = max(2, round((seconds / per_cube) ** (1 / 3)))
            jobs.append(Job("bolt.computation.matrix_checksum", (size, len(jobs)), seconds))
        total += seconds
    rng.shuffle(jobs)
    return jobs


def split_cores() -> tuple[tuple[int, ...], tuple[int, ...]]:
    cores = usable_cpus()
    half = max(1, len(cores) // 2)
    return cores[:half], cores[half:] or cores[:half]


def base_env(url: str, p_cores: tuple[int, ...], e_cores: tuple[int, ...]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOLT_")}
    env.update(
        BOLT_BROKER_URL=url,
        BOLT_P_CORES=format_cpulist(p_cores),
        BOLT_E_CORES=format_cpulist(e_cores),
        BOLT_LOG_LEVEL="INFO",
    )
    return env


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=child_preexec
        )


def bolt_roles(env: dict[str, str], tmp: Path, steal: bool) -> list[subprocess.Popen[bytes]]:
    roles = [
        spawn([*BOLT, "worker", "--pool", "p"], env, tmp / "p.log"),
        spawn([*BOLT, "worker", "--pool", "e"], env, tmp / "e.log"),
    ]
    if steal:
        roles.append(spawn([*BOLT, "controller"], env, tmp / "controller.log"))
    return roles


def stock_roles(env: dict[str, str], tmp: Path, p_cores, e_cores) -> list[subprocess.Popen]:
    env = {**env, "BOLT_MIN_STEAL_TASK_S": "1e9"}  # stock Celery cuts nothing
    common = ["--without-mingle", "--without-gossip", "--loglevel", "INFO"]
    p_argv = ["worker", "--pool", "prefork", "--concurrency", str(len(p_cores))]
    e_argv = ["worker", "--pool", "threads", "--concurrency", "4"]
    stock = [sys.executable, "-c", STOCK_WORKER]
    p_queues = ["-Q", "analysis,computation", "-n", "p@%h", *common]
    e_queues = ["-Q", "io,coordination", "-n", "e@%h", *common]
    return [
        spawn([*stock, format_cpulist(p_cores), *p_argv, *p_queues], env, tmp / "p.log"),
        spawn([*stock, format_cpulist(e_cores), *e_argv, *e_queues], env, tmp / "e.log"),
    ]


def wait_ready(app: Any, roles: list[subprocess.Popen[bytes]], tmp: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for role in roles:
            if role.poll() is not None:
                raise SystemExit(f"a role exited while starting; see the logs in {tmp}")
        seen = {n.split("@")[0] for r in app.control.ping(timeout=0.5) or [] for n in r}
        if {"p", "e"} <= seen:
            return
    raise SystemExit("the workers did not answer within 60 s")


def pool_cpu_s(workers: list[subprocess.Popen[bytes]]) -> float:
    """User and system CPU seconds of the worker processes and their children so far."""
    total = 0.0
    for worker in workers:
        try:
            parent = psutil.Process(worker.pid)
            for process in [parent, *parent.children(recursive=True)]:
                times = process.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def collect(app: Any, ids: list[str]) -> float:
    """Poll the results of ids with one MGET every 10 ms; the time the last one arrived."""
    backend, pending = app.backend, set(ids)
    deadline = time.monotonic() + TIMEOUT_S
    while pending:
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(pending)} tasks had not finished after {TIMEOUT_S:g} s")
        order = list(pending)
        raws = backend.mget([backend.get_key_for_task(task_id) for task_id in order])
        for task_id, raw in zip(order, raws, strict=True):
            if raw is not None and backend.decode_result(raw)["status"] in ("SUCCESS", "FAILURE"):
                pending.discard(task_id)
        time.sleep(POLL_S)
    return time.monotonic()


def busy_s(log: Path) -> float:
    """Seconds the worker spent running tasks, from the run times Celery logs for each one."""
    return sum(float(s) for s in re.findall(r"\] succeeded in ([\d.]+)s", log.read_text()))


def run(setup: str, jobs: list[Job], p_cores, e_cores, logs: Path) -> dict[str, Any]:
    """One set-up's makespan, the pools' CPU seconds and (for bolt_steal) its statistics."""
    tmp = logs / setup
    tmp.mkdir(parents=True, exist_ok=True)
    server = RedisServer(tmp / "redis", appendonly=False).start()
    app = make_app(Settings.from_env({"BOLT_BROKER_URL": server.url}))
    env = base_env(server.url, p_cores, e_cores)
    roles = (
        stock_roles(env, tmp, p_cores, e_cores)
        if setup == "celery_default"
        else bolt_roles(env, tmp, steal=setup == "bolt_steal")
    )
    try:
        wait_ready(app, roles, tmp)
        time.sleep(0.5)  # the controller's first looks, the workers' first records
        cpu_before = pool_cpu_s(roles[:2])
        started = time.monotonic()
        ids = [app.send_task(job.name, args=job.args).id for job in jobs]
        finished = collect(app, ids)
        makespan_s = finished - started
        figures = {
            "makespan_s": makespan_s,
            "cpu_s": pool_cpu_s(roles[:2]) - cpu_before,
            "busy_share": {pool: busy_s(tmp / f"{pool}.log") / makespan_s for pool in "pe"},
        }
        if setup == "bolt_steal":
            figures["steal"] = steal_statistics(redis.Redis.from_url(server.url))
        return figures
    finally:
        stop_processes(roles, grace_s=5.0)
        app.close()
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-s", type=float, default=12.0, help="single-core seconds of work")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--logs", metavar="DIR", help="keep each set-up's logs in DIR/SETUP")
    args = parser.parse_args()
    p_cores, e_cores = split_cores()
    cores = len(set(p_cores) | set(e_cores))

    with tempfile.TemporaryDirectory(prefix="bolt-steal-") as folder:
        logs = Path(args.logs) if args.logs else Path(folder)
        jobs = make_mix(Path(folder), args.work_s, args.seed)
        print(
            f"{len(jobs)} tasks, {sum(j.seconds for j in jobs):.1f} s of work by calibration; "
            f"P cores {format_cpulist(p_cores)}, E cores {format_cpulist(e_cores)}"
        )
        runs = {}
        for setup in ("celery_default", "bolt_nosteal", "bolt_steal"):
            runs[setup] = run(setup, jobs, p_cores, e_cores, logs)
            print(
                f"{setup:15} {runs[setup]['makespan_s']:7.2f} s  ({runs[setup]['cpu_s']:.1f} CPU s)"
            )
    out = results(runs, cores, len(jobs), args)
    report(out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def results(runs: dict[str, dict], cores: int, count: int, args: argparse.Namespace) -> dict:
    steal = runs["bolt_steal"]["steal"]
    ideal_s = min(r["cpu_s"] for r in runs.values()) / cores
    out = {
        "ideal_s": round(ideal_s, 3),
        "ideal_steal_run_s": round(runs["bolt_steal"]["cpu_s"] / cores, 3),
        "celery_default_s": round(runs["celery_default"]["makespan_s"], 3),
        "bolt_nosteal_s": round(runs["bolt_nosteal"]["makespan_s"], 3),
        "bolt_steal_s": round(runs["bolt_steal"]["makespan_s"], 3),
        "activation_rate": round(steal.activation_rate, 3),
        "episodes": steal.episodes,
        "fast_activations": steal.fast_activations,
        "mean_activation_s": steal.mean_activation_s,
        "stolen_tasks": steal.stolen_tasks,
        "cpu_s": {name: round(r["cpu_s"], 2) for name, r in runs.items()},
        "busy_share": {
            name: {pool: round(share, 3) for pool, share in r["busy_share"].items()}
            for name, r in runs.items()
        },
        "tasks": count,
        "work_s": args.work_s,
        "seed": args.seed,
        "cores": cores,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    out["steal_vs_ideal"] = round(out["bolt_steal_s"] / out["ideal_s"], 3)
    out["celery_vs_steal"] = round(out["celery_default_s"] / out["bolt_steal_s"], 3)
    out["goals_met"] = {
        "bolt_steal_at_most_1.1x_ideal": out["steal_vs_ideal"] <= 1.1,
        "at_least_1.5x_faster_than_celery_default": out["celery_vs_steal"] >= 1.5,
        "activation_rate_at_least_0.95": out["activation_rate"] >= 0.95,
    }
    return out


def report(out: dict[str, Any]) -> None:
    print(f"\nideal (least pool CPU / {out['cores']} cores)  {out['ideal_s']:7.2f} s")
    print(f"ideal by the steal run's own CPU        {out['ideal_steal_run_s']:7.2f} s")
    print(f"bolt_steal / ideal           {out['steal_vs_ideal']:.2f}  (goal at most 1.10)")
    print(f"celery_default / bolt_steal  {out['celery_vs_steal']:.2f}  (goal at least 1.50)")
    print(
        f"activation rate              {out['activation_rate']:.2f}  (goal at least 0.95; "
        f"{out['fast_activations']} of {out['episodes']} episodes within 200 ms)"
    )
    print(f"stolen tasks                 {out['stolen_tasks']}")
    for name, shares in out["busy_share"].items():
        busy = ", ".join(f"{pool.upper()} {share:.0%}" for pool, share in shares.items())
        print(f"{name:15} busy running tasks: {busy} of its makespan")


if __name__ == "__main__":
    sys.exit(main())
