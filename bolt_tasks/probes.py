"""Probes: work whose result anyone can check, and a job that proves each call ran exactly once.

The probe job sends hash chains (computation, P pool) and, given a folder, report writes (io,
E pool), each counted in a ledger (bolt_tasks.ledger), collects every result and checks it:
a digest against one computed here, a file against the report sent. Run against a deployment
(`bolt probe`), it shows that delivery lost nothing and doubled nothing.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bolt_tasks.names import ledger_key
from bolt_tasks.settings import Settings


def hash_chain(seed: str, rounds: int) -> str:
    """SHA-256 applied rounds times, starting from seed's bytes; the last digest in hex.

    Each round needs the one before, so the work cannot be split or skipped, and its cost
    grows with rounds alone: about a microsecond each.
    """
    digest = seed.encode()
    sha256 = hashlib.sha256
    for _ in range(rounds):
        digest = sha256(digest).digest()
    return digest.hex()


def probe_report(seed: str) -> dict[str, Any]:
    """The report a probe's write task writes for one seed."""
    return {"probe": seed}


def report_name(seed: str) -> str:
    """The file name (and ledger key) of the report a probe writes for one seed."""
    return f"report-{seed}"


def run_probe(
    settings: Settings,
    calls: int,
    rounds: int,
    folder: str | None = None,
    on_wait: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run calls hash chains (and as many report writes into folder) and check each ran once.

    Returns the figures: tasks sent and finished, and the calls lost, doubled, delivered again
    or with a wrong result; `ok` is true when every call finished exactly once, right.
    """
    from bolt_tasks import ledger
    from bolt_tasks.app import app
    from bolt_tasks.producer import collect, forget
    from bolt_tasks.tasks import computation, io

    started = time.perf_counter()
    name = uuid.uuid4().hex
    seeds = [f"{name}-{index}" for index in range(calls)]
    calls_of = {seed: computation.hash_chain.s(seed, rounds, name) for seed in seeds}
    if folder is not None:
        for seed in seeds:
            report = report_name(seed)
            calls_of[report] = io.write_report.s(folder, probe_report(seed), report, name)
    with app.producer_or_acquire() as producer:
        ids = {key: sig.apply_async(producer=producer).id for key, sig in calls_of.items()}
    results: dict[str, Any] = {}
    collect(ids.values(), settings.job_timeout_s, results.__setitem__, on_wait)
    forget(ids.values())
    counted = ledger.read(app.backend.client, name)
    app.backend.client.delete(ledger_key(name))
    wrong = [
        key for key, task_id in ids.items() if not _right(key, results[task_id], rounds, folder)
    ]
    return _figures(len(ids), len(results), list(ids), counted, wrong, started)


def _right(key: str, result: Any, rounds: int, folder: str | None) -> bool:
    if not key.startswith("report-"):
        return result == hash_chain(key, rounds)
    path = Path(folder or ".") / f"{key}.json"
    return result == str(path) and _written(path) == probe_report(key.removeprefix("report-"))


def _written(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _figures(
    sent: int, finished: int, keys: list[str], counted: Any, wrong: list[str], started: float
) -> dict[str, Any]:
    lost = sorted(counted.lost(set(keys)))
    doubled = sorted(counted.doubled())
    return {
        "tasks": sent,
        "finished": finished,
        "lost": lost,
        "doubled": doubled,
        "delivered_again": sorted(counted.begun_again()),
        "wrong": sorted(wrong),
        "ok": finished == sent and not (lost or doubled or wrong),
        "elapsed_s": round(time.perf_counter() - started, 3),
    }
