"""The main job from the producer's side: analyse a code base through both pools."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from celery import chain, group

from bolt_tasks import job
from bolt_tasks.names import QUEUE_OF_KIND, Kind
from bolt_tasks.producer import collect, forget, wait_one
from bolt_tasks.settings import Settings
from bolt_tasks.tasks import analysis, computation, coordination, io

# progress(done, total): called as the job's batches finish.
Progress = Callable[[int, int], None]


def run_analysis(
    root: str,
    settings: Settings,
    excludes: Sequence[str] = (),
    progress: Progress | None = None,
    on_wait: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Analyse the code base at root on the workers the app points at; returns the report.

    The steps: list the tree (io), plan batches (coordination), then per batch an analysis task
    and a read-and-chunk (io) task chained to an embedding (computation) task; finally the
    partial reports are merged (coordination).
    """
    started = time.perf_counter()
    timeout_s = settings.job_timeout_s
    root = os.path.abspath(root)
    tasks: Counter[str] = Counter()

    planning = chain(
        io.list_tree.s(root, list(settings.source_suffixes), list(excludes)),
        coordination.plan_job.s(job.batch_bytes_for(settings)),
    ).apply_async()
    tasks.update({QUEUE_OF_KIND[Kind.IO]: 1, QUEUE_OF_KIND[Kind.COORDINATION]: 1})
    batches = wait_one(planning.id, timeout_s, on_wait)

    analyses, embeddings = _run_batches(root, batches, settings, progress, on_wait)
    per_batch = len(batches)
    tasks.update(
        {
            QUEUE_OF_KIND[Kind.ANALYSIS]: per_batch,
            QUEUE_OF_KIND[Kind.IO]: per_batch,
            QUEUE_OF_KIND[Kind.COMPUTATION]: per_batch,
        }
    )

    merging = coordination.merge_report.delay(analyses, embeddings, job.TOP_COMPLEX)
    tasks[QUEUE_OF_KIND[Kind.COORDINATION]] += 1
    report = wait_one(merging.id, timeout_s, on_wait)

    elapsed_s = time.perf_counter() - started
    total = sum(tasks.values())
    report.update(
        {
            "root": root,
            "batches": len(batches),
            "tasks": {queue: tasks[queue] for queue in sorted(tasks)},
            "elapsed_s": round(elapsed_s, 3),
            "tasks_per_s": round(total / elapsed_s, 1) if elapsed_s > 0 else 0.0,
            "files_per_s": round(report["files"] / elapsed_s, 1) if elapsed_s > 0 else 0.0,
        }
    )
    return report


def embed_chain(root: str, paths: list[str], settings: Settings, for_index: bool = False) -> Any:
    """One batch's read-and-plan (io) task chained to its embedding (computation) task."""
    return chain(
        # The plan travels to the embedding task in its message; no need to store it.
        io.plan_chunks.s(root, paths, settings.chunk_lines).set(ignore_result=True),
        computation.embed_chunks.s(root, settings.embed_dim, for_index),
    )


def _run_batches(
    root: str,
    batches: list[list[str]],
    settings: Settings,
    progress: Progress | None,
    on_wait: Callable[[], None] | None,
) -> tuple[list[job.Partial], list[job.Partial]]:
    if not batches:
        return [], []
    signatures = []
    for paths in batches:
        signatures.append(analysis.analyze_files.s(root, paths, job.TOP_COMPLEX))
        signatures.append(embed_chain(root, paths, settings))
    result = group(signatures).apply_async()
    analysis_ids = {child.id for child in result.results[0::2]}
    analyses: list[job.Partial] = []
    embeddings: list[job.Partial] = []
    total = len(signatures)

    def on_result(task_id: str, value: Any) -> None:
        (analyses if task_id in analysis_ids else embeddings).append(value)
        if progress is not None:
            progress(len(analyses) + len(embeddings), total)

    if progress is not None:
        progress(0, total)
    collect([child.id for child in result.results], settings.job_timeout_s, on_result, on_wait)
    forget([child.id for child in result.results])
    return analyses, embeddings
