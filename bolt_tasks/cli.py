"""The `bolt` command: analyse a code base, run a deployment, start a pool's worker."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bolt_tasks.errors import BoltError, UsageError
from bolt_tasks.settings import Settings, get_settings, mask_url

# Exit status for every error the user can fix: bad input, bad settings, an unreachable broker.
EXIT_USAGE = 2
# Exit status after Ctrl-C, as shells report a command ended by SIGINT.
EXIT_INTERRUPTED = 130

err_console = Console(stderr=True)
out_console = Console()


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line with exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def _stop_on_sigterm() -> None:
    # SIGTERM unwinds like Ctrl-C, so every context manager stops what it started.
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _setup_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _code_base(path: str) -> str:
    root = Path(path)
    if not root.exists():
        raise UsageError(f"{path}: no such directory")
    if not root.is_dir():
        raise UsageError(f"{path}: not a directory")
    if not os.access(root, os.R_OK | os.X_OK):
        raise UsageError(f"{path}: not readable")
    return str(root.resolve())


def _json_target(path: str | None) -> Path | None:
    """Check before any work starts that a report can be written where the user asked."""
    if path is None:
        return None
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"--json {path}: is a directory")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"--json {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"--json {path}: folder {parent} is not writable")
    return target


def write_json(target: Path, data: Any) -> None:
    """Write JSON atomically: a reader sees the old file or the whole new one, never a part."""
    handle, tmp = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(data, out, indent=2)
            out.write("\n")
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


def _broker_settings(settings: Settings, broker: str | None) -> Settings:
    if broker is None:
        return settings
    return settings.replace(broker_url=_checked_url(broker))


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
        return work(settings, None)

    from bolt_workers.supervisor import Deployment

    with Deployment(settings) as deployment:
        configure(deployment.settings)
        return work(deployment.settings, deployment.check)


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
    report["elapsed_s"] = round(time.perf_counter() - started, 3)
    report["embedded"] = settings.broker_url is None
    if target is not None:
        write_json(target, report)
    print_report(report, out_console)
    return 0


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )


def cmd_up(args: argparse.Namespace) -> int:
    from bolt_tasks.app import configure
    from bolt_workers.supervisor import Deployment

    settings = get_settings()
    with Deployment(settings) as deployment:
        configure(deployment.settings)
        deployment.wait_ready()
        url = deployment.broker_url if args.show_password else mask_url(deployment.broker_url)
        out_console.print(f"bolt is up. Producers use BOLT_BROKER_URL={url}")
        out_console.print("Press Ctrl-C to stop.")
        while True:
            deployment.check()
            time.sleep(0.5)


def cmd_worker(args: argparse.Namespace) -> int:
    from bolt_tasks.app import app
    from bolt_tasks.names import Pool
    from bolt_workers import startup
    from bolt_workers.launcher import worker_argv
    from bolt_workers.topology import detect

    settings = get_settings()
    pool, topology = Pool(args.pool), detect()
    startup.install(pool, topology)
    argv = worker_argv(
        pool, settings, topology, name=args.name, concurrency=args.concurrency, events=args.events
    )
    app.worker_main(argv)
    return 0


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `bolt` console script."""
    try:
        args = build_parser().parse_args(argv)
        _setup_logging(get_settings())
        _stop_on_sigterm()
        return args.handler(args)
    except BoltError as exc:
        err_console.print(f"bolt: {exc}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        err_console.print("bolt: interrupted", highlight=False)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
