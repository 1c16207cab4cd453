"""The `bolt` command: analyse a code base, run a deployment, start a pool's worker."""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from bolt_tasks.errors import BoltError, UsageError
from bolt_tasks.files import write_json
from bolt_tasks.settings import Settings, get_settings, mask_url, url_with_password
from bolt_workers.processes import STOPPING_SIGNALS, defer_while_held

if TYPE_CHECKING:
    from rich.progress import Progress

    from bolt_workers.redis_server import RedisServer
    from bolt_workers.supervisor import Deployment

# Exit status for every error the user can fix: bad input, bad settings, an unreachable broker.
EXIT_USAGE = 2
# Exit status after Ctrl-C, as shells report a command ended by SIGINT.
EXIT_INTERRUPTED = 130

err_console = Console(stderr=True)
out_console = Console()


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line with exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


class Interrupted(KeyboardInterrupt):
    """What a SIGINT or SIGTERM raises in the CLI.

    A subclass, not KeyboardInterrupt itself: CPython remembers a bare KeyboardInterrupt that
    leaves an ``exec`` of a string (as a lazy import's dataclass or namedtuple does) and then ends
    the process by SIGINT at exit, whatever status the command returned.
    """


class _Interrupts:
    """Turns the first SIGINT or SIGTERM into one Interrupted and ignores the rest.

    An interrupt raised inside a finaliser (a client's ``__del__``) is swallowed by the
    interpreter, so the signal is also remembered: `check` raises again at the points where the
    command commits to a result, and a command that ran on after Ctrl-C still ends as interrupted.
    Later signals are ignored: the first one already unwinds every context manager, and a second
    must not cut the stopping of the deployment short.
    """

    def __init__(self) -> None:
        self.received: int | None = None

    def install(self) -> None:
        # SIGTERM unwinds like Ctrl-C, so every context manager stops what it started.
        self.received = None
        for signum in STOPPING_SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is None:
            self.received = signum
            # While a child starts or a deployment stops, the interrupt waits for it to finish.
            if not defer_while_held(self.check):
                raise Interrupted

    def check(self) -> None:
        if self.received is not None:
            raise Interrupted

    def ignore_from_now(self) -> None:
        # The interpreter puts the default handlers back while it shuts down; a late signal
        # would then kill the process and hide the exit status.
        for signum in STOPPING_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


_interrupts = _Interrupts()


def _write_report(target: Path, data: Any) -> None:
    # No report is written for a command that was interrupted, even one that ran to its end.
    _interrupts.check()
    write_json(target, data)


def _setup_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _code_base(path: str) -> str:
    if not path.strip():
        raise UsageError("PATH is empty: name the folder to analyse")
    root = Path(path)
    if not root.exists():
        raise UsageError(f"{path}: no such directory")
    if not root.is_dir():
        raise UsageError(f"{path}: not a directory")
    if not os.access(root, os.R_OK | os.X_OK):
        raise UsageError(f"{path}: not readable")
    return str(root.resolve())


def _json_target(path: str | None, option: str = "--json") -> Path | None:
    """Check before any work starts that a report can be written where the user asked."""
    if path is None:
        return None
    if not path.strip():
        raise UsageError(f"{option} needs a file name, not an empty one")
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{option} {path}: is a directory")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{option} {path}: folder {parent} is not writable")
    return target


def _broker_settings(settings: Settings, broker: str | None) -> Settings:
    if broker is None:
        return settings
    if not broker.strip():
        raise UsageError("--broker needs a URL, not an empty one (leave it out to run embedded)")
    return settings.replace(
        broker_url=url_with_password(_checked_url(broker), settings.redis_password)
    )


def _checked_url(url: str) -> str:
    try:
        return Settings.from_env({"BOLT_BROKER_URL": url}).broker_url or url
    except BoltError as exc:
        raise UsageError(str(exc).replace("BOLT_BROKER_URL", "--broker")) from None


def with_deployment(
    settings: Settings, work: Callable[[Settings, Callable[[], None] | None], Any]
) -> Any:
    """Run work(settings, health_check) on the broker given, or on an embedded deployment."""
    from bolt_tasks.app import configure
    from bolt_tasks.producer import check_broker, require_pools

    if settings.broker_url:
        configure(settings)
        check_broker(settings.broker_url)
        require_pools(settings.broker_url)
        return work(settings, _interrupts.check)

    from bolt_workers.supervisor import Deployment

    with Deployment(settings) as deployment:
        configure(deployment.settings)

        def health() -> None:
            # Called between polls: an interrupt a finaliser swallowed stops the job here.
            _interrupts.check()
            deployment.check()

        try:
            return work(deployment.settings, health)
        except BaseException as exc:
            # The job's pending results live on in the traceback's frames; let them go while
            # Redis still answers, or each one retries its unsubscribe for 20 s after it stops.
            traceback.clear_frames(exc.__traceback__)
            raise


def cmd_analyze(args: argparse.Namespace) -> int:
    from bolt_tasks.analyze import run_analysis
    from bolt_tasks.summary import print_report

    root = _code_base(args.path)
    target = _json_target(args.json)
    settings = _broker_settings(get_settings(), args.broker)
    started = time.perf_counter()

    def work(active: Settings, health: Callable[[], None] | None) -> dict[str, Any]:
        with _progress_bar() as bar:
            task = bar.add_task("analysing", total=None)
            report = run_analysis(
                root,
                active,
                args.exclude,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                on_wait=health,
            )
        return report

    report = with_deployment(settings, work)
    elapsed_s = time.perf_counter() - started
    # The rates are over the whole command, deployment start-up included, like elapsed_s.
    report["elapsed_s"] = round(elapsed_s, 3)
    report["tasks_per_s"] = round(sum(report["tasks"].values()) / elapsed_s, 1)
    report["files_per_s"] = round(report["files"] / elapsed_s, 1)
    report["embedded"] = settings.broker_url is None
    if target is not None:
        _write_report(target, report)
    print_report(report, out_console)
    return 0


def _progress_bar() -> Progress:
    # Imported here: `bolt worker` never shows one, and rich.progress is 15 ms of its start-up.
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )


# What `bolt up` runs: both pools, the work-stealing controller and Flower watching them.
UP_ROLES = ("worker-p", "worker-e", "controller", "flower")
# Exit status of `bolt health` for an unhealthy role: Docker reads 1 as unhealthy and
# reserves 2, so this is not the usage error's 2.
EXIT_UNHEALTHY = 1


def _print_flower(deployment: Deployment, show_password: bool) -> None:
    from bolt_workers.flower import flower_url

    settings = deployment.settings
    if show_password:
        password = settings.flower_password
    elif deployment.flower_password_generated:
        secret = deployment.workdir / "flower-password"
        secret.touch(mode=0o600)
        secret.write_text(settings.flower_password + "\n")
        password = f"*** (generated: in {secret}, or run with --show-password)"
    else:
        password = "*** (BOLT_FLOWER_PASSWORD)"
    out_console.print(
        f"Flower: {flower_url(settings)} user {settings.flower_user} password {password}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def cmd_up(args: argparse.Namespace) -> int:
    from bolt_tasks.app import configure
    from bolt_workers import flower
    from bolt_workers.supervisor import Deployment

    settings = get_settings()
    with Deployment(settings, roles=UP_ROLES) as deployment:
        configure(deployment.settings)
        deployment.wait_ready()
        flower.wait_ready(deployment.settings, check=deployment.check)
        url = deployment.broker_url if args.show_password else mask_url(deployment.broker_url)
        out_console.print(f"bolt is up. Producers use BOLT_BROKER_URL={url}")
        _print_flower(deployment, args.show_password)
        out_console.print("Press Ctrl-C to stop.")
        while True:
            deployment.check()
            time.sleep(0.5)


def cmd_worker(args: argparse.Namespace) -> int:
    from bolt_tasks.app import app
    from bolt_tasks.names import Pool
    from bolt_workers import startup
    from bolt_workers.launcher import run_worker, worker_argv
    from bolt_workers.topology import detect

    settings = get_settings()
    pool, topology = Pool(args.pool), detect()
    startup.install(pool, topology)
    argv = worker_argv(
        pool, settings, topology, name=args.name, concurrency=args.concurrency, events=args.events
    )
    return run_worker(app, argv)


def cmd_controller(args: argparse.Namespace) -> int:
    from bolt_tasks.app import app, configure
    from bolt_tasks.producer import check_broker
    from bolt_workers.controller import make_controller

    settings = _broker_settings(get_settings(), args.broker)
    if not settings.broker_url:
        raise UsageError("bolt controller needs a broker: set BOLT_BROKER_URL or give --broker")
    configure(settings)
    check_broker(settings.broker_url)
    make_controller(settings, app).run()
    return 0


def cmd_cores(args: argparse.Namespace) -> int:
    from bolt_workers.cores_report import cores_report, print_cores
    from bolt_workers.topology import detect

    settings = get_settings()
    report = cores_report(settings, detect(settings))
    if args.json:
        out_console.print_json(data=report)
    else:
        print_cores(report, out_console)
    return 0


def cmd_flower(args: argparse.Namespace) -> int:
    from bolt_workers import flower

    def announce(settings: Settings) -> None:
        out_console.print(
            f"Flower password for user {settings.flower_user} "
            f"(generated, shown this once): {settings.flower_password}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    flower.serve(get_settings(), on_generated=announce)
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    from bolt_workers import health

    check = health.Check(pool=args.pool, name=args.name, url=args.http, broker=args.broker)
    problem = health.wait_healthy(
        lambda: check.problem(get_settings(), args.timeout or health.DEFAULT_TIMEOUT_S),
        args.wait or 0.0,
    )
    if problem:
        err_console.print(f"bolt health: {problem}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_UNHEALTHY
    out_console.print(f"healthy: {check.target()}", markup=False, highlight=False)
    return 0


def cmd_redis(args: argparse.Namespace) -> int:
    from bolt_workers import broker

    def ready(server: RedisServer) -> None:
        out_console.print(
            f"redis-server on 127.0.0.1:{server.port}, files in {server.workdir}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    broker.serve(get_settings(), Path(args.dir), on_ready=ready)
    return 0


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def cmd_index_build(args: argparse.Namespace) -> int:
    from bolt_tasks.indexing import run_index_build

    root = _code_base(args.path)
    target = _json_target(args.json)
    settings = _broker_settings(get_settings(), args.broker)

    def work(active: Settings, health: Callable[[], None] | None) -> dict[str, Any]:
        with _progress_bar() as bar:
            task = bar.add_task("indexing", total=None)
            return run_index_build(
                root,
                active,
                args.exclude,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                on_wait=health,
            )

    summary = with_deployment(settings, work)
    if target is not None:
        _write_report(target, summary)
    state = "written" if summary["written"] else "already up to date"
    out_console.print(
        f"Einstein index of {summary['root']}: {summary['chunks']:,} chunks of "
        f"{summary['files']:,} files, {summary['embedded']:,} embedded and "
        f"{summary['reused']:,} reused; index {state} ({summary['elapsed_s']:.2f} s)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from bolt_tasks.einstein.index import index_dir, meta_stamp
    from bolt_tasks.errors import IndexMissing
    from bolt_tasks.indexing import run_search

    query = args.query.strip()
    if not query:
        raise UsageError("the query is empty: give the words or names to search for")
    if args.k < 1:
        raise UsageError(f"-k {args.k}: must be at least 1")
    settings = _broker_settings(get_settings(), args.broker)
    # An embedded deployment's workers share this process's cache folder: no index there means
    # none to search, and no reason to start anything.
    directory = index_dir(settings.cache_dir)
    if settings.broker_url is None and meta_stamp(directory) is None:
        raise IndexMissing(
            f"no Einstein index in {directory}: build one with `bolt index build PATH`"
        )
    found = with_deployment(
        settings, lambda active, health: run_search(query, args.k, active, health)
    )
    if args.json:
        out_console.print_json(data=found)
        return 0
    for hit in found["hits"]:
        out_console.print(
            f"{hit['score']:.3f}  {hit['path']}:{hit['start']}-{hit['end']}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    if not found["hits"]:
        err_console.print(f"no chunk of the {found['chunks']:,} indexed matches", highlight=False)
    return 0


# Exit status of `bolt probe` when a call was lost, doubled or wrong: the deployment is at fault.
EXIT_PROBE_FAILED = 1


def cmd_probe(args: argparse.Namespace) -> int:
    from bolt_tasks.probes import run_probe

    if args.calls < 1 or args.rounds < 1:
        raise UsageError("--calls and --rounds must be at least 1")
    folder = str(_probe_folder(args.folder)) if args.folder else None
    target = _json_target(args.json)
    settings = _broker_settings(get_settings(), args.broker)
    figures = with_deployment(
        settings,
        lambda active, health: run_probe(active, args.calls, args.rounds, folder, health),
    )
    if target is not None:
        _write_report(target, figures)
    out_console.print(
        f"probe: {figures['finished']} of {figures['tasks']} tasks finished; "
        f"{len(figures['lost'])} lost, {len(figures['doubled'])} doubled, "
        f"{len(figures['wrong'])} wrong, {len(figures['delivered_again'])} delivered again "
        f"({figures['elapsed_s']:.2f} s)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    return 0 if figures["ok"] else EXIT_PROBE_FAILED


def _probe_folder(path: str) -> Path:
    folder = Path(path)
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise UsageError(f"--folder {path}: not a writable folder")
    return folder.resolve()


def cmd_weak_links(args: argparse.Namespace) -> int:
    from bolt_tasks.weakmeasure import build_report
    from bolt_tasks.weakreport import print_ranking, render_html, write_html
    from bolt_tasks.weakrun import run_mix

    json_target = _json_target(args.json)
    html_target = _json_target(args.html, "--html")
    settings = _broker_settings(get_settings(), args.broker)
    duration_s = args.duration or settings.weak_duration_s

    def work(active: Settings, health: Callable[[], None] | None) -> dict[str, Any]:
        with _progress_bar() as bar:
            bar.add_task(f"weak-link mix, {duration_s:g} s", total=None)
            observed = run_mix(active, duration_s, health)
        return build_report(observed, active, duration_s, embedded=settings.broker_url is None)

    report = with_deployment(settings, work)
    if json_target is not None:
        _write_report(json_target, report)
    if html_target is not None:
        write_html(html_target, render_html(report))
    print_ranking(report, out_console)
    return 0


def cmd_exporter(args: argparse.Namespace) -> int:
    from bolt_workers.exporter import serve

    settings = get_settings()

    def ready(url: str) -> None:
        out_console.print(f"bolt exporter: metrics on {url}", markup=False, highlight=False)

    address, port = args.address or settings.exporter_address, args.port or settings.exporter_port
    serve(settings, address, port, on_ready=ready)
    return 0


def _tcp_port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port from 1 to 65535")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="bolt", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_ArgumentParser)

    analyze = commands.add_parser("analyze", help="analyse a code base through both pools")
    analyze.add_argument("path", help="the code base's folder")
    analyze.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    analyze.add_argument(
        "--broker",
        metavar="URL",
        help="use the workers of this Redis instead of starting a deployment",
    )
    analyze.add_argument(
        "--exclude",
        metavar="PATTERN",
        action="append",
        default=[],
        help="skip files and folders matching this glob (repeatable)",
    )
    analyze.set_defaults(handler=cmd_analyze)

    up = commands.add_parser("up", help="run an embedded deployment until Ctrl-C")
    up.add_argument(
        "--show-password", action="store_true", help="print the broker URL with its password"
    )
    up.set_defaults(handler=cmd_up)

    worker = commands.add_parser("worker", help="run one pool's celery worker")
    worker.add_argument("--pool", choices=["p", "e"], required=True)
    worker.add_argument("--concurrency", type=int, help="children (P) or threads (E)")
    worker.add_argument("--name", help="node name, default p@HOST or e@HOST")
    worker.add_argument("--events", action="store_true", help="send task events (Flower)")
    worker.set_defaults(handler=cmd_worker)

    controller = commands.add_parser(
        "controller", help="move idle pools onto busy queues (work stealing) until Ctrl-C"
    )
    controller.add_argument("--broker", metavar="URL", help="the Redis of the workers")
    controller.set_defaults(handler=cmd_controller)

    cores = commands.add_parser("cores", help="show P and E cores and the planned pools")
    cores.add_argument("--json", action="store_true", help="print the same as JSON")
    cores.set_defaults(handler=cmd_cores)

    flower = commands.add_parser("flower", help="serve Flower, with basic auth, for the broker")
    flower.set_defaults(handler=cmd_flower)

    health = commands.add_parser("health", help="exit 0 only if a role answers (a healthcheck)")
    target = health.add_mutually_exclusive_group(required=True)
    target.add_argument("--pool", choices=["p", "e"], help="this host's worker of the pool")
    target.add_argument("--http", metavar="URL", help="a URL that must answer 200")
    target.add_argument("--broker", action="store_true", help="the broker answers")
    health.add_argument("--name", help="the worker's node name, default p@HOST or e@HOST")
    health.add_argument(
        "--timeout", type=_positive_seconds, metavar="S", help="how long to wait for an answer"
    )
    health.add_argument(
        "--wait", type=_positive_seconds, metavar="S", help="keep trying for up to S seconds"
    )
    health.set_defaults(handler=cmd_health)

    redis = commands.add_parser("redis", help="serve the Redis BOLT_BROKER_URL names (Procfile)")
    redis.add_argument("--dir", default=".bolt/redis", help="folder of its data (AOF)")
    redis.set_defaults(handler=cmd_redis)

    index = commands.add_parser("index", help="the Einstein index of a code base")
    index_commands = index.add_subparsers(
        dest="index_command", required=True, parser_class=_ArgumentParser
    )
    index_build = index_commands.add_parser("build", help="build or bring up to date the index")
    index_build.add_argument("path", help="the code base's folder")
    index_build.add_argument("--json", metavar="FILE", help="also write the summary as JSON")
    index_build.add_argument("--broker", metavar="URL", help="use the workers of this Redis")
    index_build.add_argument(
        "--exclude", metavar="PATTERN", action="append", default=[], help="skip these (glob)"
    )
    index_build.set_defaults(handler=cmd_index_build)

    search = commands.add_parser("search", help="search the Einstein index")
    search.add_argument("query", help="words or names to look for")
    search.add_argument("-k", type=int, default=10, help="how many hits (default 10)")
    search.add_argument("--json", action="store_true", help="print the hits as JSON")
    search.add_argument("--broker", metavar="URL", help="use the workers of this Redis")
    search.set_defaults(handler=cmd_search)

    probe = commands.add_parser("probe", help="check that each task runs exactly once")
    probe.add_argument("--calls", type=int, default=100, help="hash chains to run (default 100)")
    probe.add_argument("--rounds", type=int, default=10_000, help="SHA-256 rounds of each")
    probe.add_argument("--folder", help="also write a report per call here (the E pool)")
    probe.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    probe.add_argument("--broker", metavar="URL", help="use the workers of this Redis")
    probe.set_defaults(handler=cmd_probe)

    weak = commands.add_parser("weak-links", help="run a standard mix and rank the weak links")
    weak.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    weak.add_argument("--html", metavar="FILE", help="also write the report as one HTML page")
    weak.add_argument(
        "--duration", type=_positive_seconds, metavar="S", help="seconds of the mix (default 10)"
    )
    weak.add_argument("--broker", metavar="URL", help="use the workers of this Redis")
    weak.set_defaults(handler=cmd_weak_links)

    exporter = commands.add_parser("exporter", help="serve Prometheus metrics read from Redis")
    exporter.add_argument("--port", type=_tcp_port, help="TCP port (default 9808)")
    exporter.add_argument("--address", help="address to listen on (default 127.0.0.1)")
    exporter.set_defaults(handler=cmd_exporter)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one bolt command in this process and return its exit status.

    The SIGINT and SIGTERM handlers the command installs are put back afterwards, so a caller
    in the same process (a test) keeps its own.
    """
    saved = {signum: signal.getsignal(signum) for signum in STOPPING_SIGNALS}
    try:
        return _main(argv)
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def run() -> None:
    """The `bolt` console script (and `python -m bolt_tasks.cli`): a command, then the exit."""
    status = _main(None)
    # Done: a signal while the interpreter shuts down must not turn the status into a death.
    _interrupts.ignore_from_now()
    sys.exit(status)


def _main(argv: Sequence[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
        _setup_logging(get_settings())
        _interrupts.install()
        status = args.handler(args)
        _interrupts.check()
        return status
    except BoltError as exc:
        err_console.print(f"bolt: {exc}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        _interrupts.ignore_from_now()
        err_console.print("bolt: interrupted", highlight=False)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    run()
