"""Turning a pool name into a plan (children, cores, pinning) and the celery worker command line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from bolt_tasks.cpulist import format_cpulist
from bolt_tasks.names import Pool, pool_queues, worker_name
from bolt_tasks.settings import Settings
from bolt_workers.topology import Topology

if TYPE_CHECKING:
    from celery import Celery


@dataclass(frozen=True)
class PoolPlan:
    """How one pool's worker will run, and why."""

    pool: Pool
    kind: str
    children: int
    autoscale: tuple[int, int] | None
    cores: tuple[int, ...]
    pinned: bool
    reasons: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        """The plan as plain data, for `bolt cores --json`."""
        return {
            "pool": self.pool.value,
            "kind": self.kind,
            "children": self.children,
            "autoscale": None if self.autoscale is None else list(self.autoscale),
            "cores": list(self.cores),
            "pinned": self.pinned,
            "queues": list(pool_queues(self.pool)),
            "reasons": list(self.reasons),
        }


def pin_p_children(settings: Settings, topology: Topology) -> tuple[bool, str]:
    """Whether each P child is pinned to one core, and why."""
    if not topology.can_pin:
        return False, "not pinned: this platform lets no process choose its cores"
    if settings.p_pin != "auto":
        return settings.p_pin == "always", f"BOLT_P_PIN={settings.p_pin}"
    if topology.e_cores or topology.source == "override":
        return True, "each child pinned to one P core: the P cores are a chosen set"
    return False, (
        "not pinned: every usable core is alike, and an unpinned child can leave a core that "
        "Redis, the E worker or a producer keeps busy"
    )


def plan_pool(
    pool: Pool, settings: Settings, topology: Topology, concurrency: int | None = None
) -> PoolPlan:
    """The plan of a pool's worker; concurrency (from --concurrency) beats every setting."""
    if pool is Pool.E:
        return _plan_e(settings, topology, concurrency)
    children, autoscale, why = _p_children(settings, topology, concurrency)
    pinned, pin_why = pin_p_children(settings, topology)
    return PoolPlan(
        Pool.P, "prefork", children, autoscale, topology.p_cores, pinned, (why, pin_why)
    )


def _p_children(
    settings: Settings, topology: Topology, concurrency: int | None
) -> tuple[int, tuple[int, int] | None, str]:
    if concurrency:
        return concurrency, None, f"{_children(concurrency)}: --concurrency"
    if settings.p_concurrency:
        return (
            settings.p_concurrency,
            None,
            f"{_children(settings.p_concurrency)}: BOLT_P_CONCURRENCY",
        )
    if settings.p_autoscale_max is not None:
        low, high = settings.p_autoscale_min, settings.p_autoscale_max
        return low, (low, high), f"autoscaled between {low} and {high} children"
    children = topology.p_children
    if children < len(topology.p_cores):
        return children, None, f"{_children(children)}: the CPU quota of {topology.quota_cpus:g}"
    return children, None, f"{_children(children)}: one per P core"


def _children(n: int) -> str:
    return f"{n} child" if n == 1 else f"{n} children"


def _plan_e(settings: Settings, topology: Topology, concurrency: int | None) -> PoolPlan:
    threads = concurrency or settings.e_concurrency
    why = f"{threads} threads: " + ("--concurrency" if concurrency else "BOLT_E_CONCURRENCY")
    if not topology.e_cores:
        return PoolPlan(
            Pool.E,
            "threads",
            threads,
            None,
            topology.usable,
            False,
            (why, "not pinned: no E cores"),
        )
    if not topology.can_pin:
        pin_why = "not pinned: this platform lets no process choose its cores"
        return PoolPlan(Pool.E, "threads", threads, None, topology.e_cores, False, (why, pin_why))
    pin_why = f"the process pinned to the E cores {format_cpulist(topology.e_cores)}"
    return PoolPlan(Pool.E, "threads", threads, None, topology.e_cores, True, (why, pin_why))


def pool_concurrency(pool: Pool, settings: Settings, topology: Topology) -> int:
    """Children of the P pool (one per P core by default) or threads of the E pool."""
    return plan_pool(pool, settings, topology).children


def worker_argv(
    pool: Pool,
    settings: Settings,
    topology: Topology,
    name: str | None = None,
    concurrency: int | None = None,
    events: bool = False,
) -> list[str]:
    """Arguments for Celery's worker_main that start one worker of the pool."""
    plan = plan_pool(pool, settings, topology, concurrency)
    argv = [
        "worker",
        "--pool",
        plan.kind,
        "--concurrency",
        str(plan.children),
        "--queues",
        ",".join(pool_queues(pool)),
        "--hostname",
        name or worker_name(pool),
        "--loglevel",
        settings.log_level,
        # Mingle waits a second for replies from other workers, and gossip keeps chattering;
        # bolt's controller reads what it needs from Redis instead.
        "--without-mingle",
        "--without-gossip",
        "--optimization",
        "fair",
    ]
    if plan.autoscale is not None:
        argv += ["--autoscale", f"{plan.autoscale[1]},{plan.autoscale[0]}"]
    if events:
        argv.append("--task-events")
    return argv


def run_worker(celery_app: Celery, argv: list[str]) -> int:
    """Run Celery's worker command with argv (from worker_argv) in this process.

    It calls Celery's `worker` command itself rather than app.worker_main, which goes through
    the umbrella `celery` command: that one imports every other subcommand and plug-in (Flower,
    the amqp shell's prompt_toolkit), about 0.45 s of a worker's start spent on nothing it uses.
    """
    from celery.bin.base import CLIContext
    from celery.bin.worker import worker
    from click.exceptions import Exit

    context = CLIContext(app=celery_app, no_color=None, workdir=None)
    args = argv[1:] if argv[:1] == ["worker"] else argv
    try:
        worker.main(args=args, prog_name="celery worker", obj=context, standalone_mode=False)
    except Exit as exc:
        return exc.exit_code
    return 0
