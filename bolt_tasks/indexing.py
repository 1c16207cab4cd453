"""Building and searching the Einstein index from the producer's side, through both pools."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from celery import chain, group
from celery.exceptions import TimeoutError as CeleryTimeout

from bolt_tasks import handshake, job
from bolt_tasks.analyze import embed_chain
from bolt_tasks.app import app
from bolt_tasks.einstein.build import index_base
from bolt_tasks.errors import BoltError, JobFailed
from bolt_tasks.producer import collect, forget, wait_one
from bolt_tasks.settings import Settings
from bolt_tasks.tasks import computation, coordination, io

# progress(done, total): called as the build's batches finish.
Progress = Callable[[int, int], None]
# How long one wait for a search's result lasts before the deployment's health is checked.
SEARCH_POLL_S = 0.25


def run_index_build(
    root: str,
    settings: Settings,
    excludes: Sequence[str] = (),
    progress: Progress | None = None,
    on_wait: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Build (or bring up to date) the Einstein index of root on the workers; a summary.

    The main job's steps without the analysis: list the tree (io), plan batches
    (coordination), read-and-chunk (io) then embed through the vector cache (computation) per
    batch, and assemble the index (io).
    """
    started = time.perf_counter()
    root = os.path.abspath(root)
    planning = chain(
        io.list_tree.s(root, list(settings.source_suffixes), list(excludes)),
        coordination.plan_job.s(job.batch_bytes_for(settings)),
    ).apply_async()
    batches = wait_one(planning.id, settings.job_timeout_s, on_wait)
    parts = _embed_batches(root, batches, settings, progress, on_wait)
    base = index_base(
        root, settings.embed_dim, settings.chunk_lines, settings.source_suffixes, excludes
    )
    files = [entry for part in parts for entry in part["files"]]
    writing = io.write_index.delay(files, base)
    summary = wait_one(writing.id, settings.job_timeout_s, on_wait)
    summary.update(
        root=root,
        batches=len(batches),
        embedded=sum(part["embedded"] for part in parts),
        reused=sum(part["reused"] for part in parts),
        elapsed_s=round(time.perf_counter() - started, 3),
    )
    return summary


def _embed_batches(
    root: str,
    batches: list[list[str]],
    settings: Settings,
    progress: Progress | None,
    on_wait: Callable[[], None] | None,
) -> list[job.Partial]:
    if not batches:
        return []
    signatures = [embed_chain(root, paths, settings, for_index=True) for paths in batches]
    result = group(signatures).apply_async()
    ids = [child.id for child in result.results]
    parts: list[job.Partial] = []

    def on_result(task_id: str, value: Any) -> None:
        parts.append(value)
        if progress is not None:
            progress(len(parts), len(ids))

    collect(ids, settings.job_timeout_s, on_result, on_wait)
    forget(ids)
    return parts


def run_search(
    query: str, k: int, settings: Settings, on_wait: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Search the workers' Einstein index: hits (path, start, end, score), best first.

    Raises IndexMissing (a BoltError) when the workers have no index to search.
    """
    result = computation.search_index.delay(query, k)
    try:
        found = _await(result, settings.job_timeout_s, on_wait)
    except BaseException:
        # Let the result go while Redis still answers (Ctrl-C stops an embedded Redis next):
        # a pending result left for its finaliser retries its unsubscribe for 20 s.
        with contextlib.suppress(Exception):
            app.backend.remove_pending_result(result)
        raise
    finally:
        forget([result.id])
    arrived_at = time.time()
    found["handshake_ms"] = handshake.note_result(
        app.backend.client, found["node"], result.id, arrived_at, settings.warmup_ttl_s
    )
    return found


def _await(result: Any, timeout_s: float, on_wait: Callable[[], None] | None) -> Any:
    """The task's value as soon as it is stored (the backend tells, no polling interval)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return result.get(timeout=SEARCH_POLL_S, propagate=True, disable_sync_subtasks=False)
        except CeleryTimeout:
            if time.monotonic() > deadline:
                raise JobFailed(f"the search had not finished after {timeout_s:g} s") from None
            if on_wait is not None:
                on_wait()
        except BoltError:
            raise
        except Exception as exc:
            raise JobFailed(f"the search failed: {type(exc).__name__}: {exc}") from None
