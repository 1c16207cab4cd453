"""Tasks of the coordination kind (E pool): a job's fan-out plan and its fan-in report."""

from __future__ import annotations

import logging
from typing import Any

from bolt_tasks import job
from bolt_tasks.app import bolt_task
from bolt_tasks.names import Kind

log = logging.getLogger("bolt.coordination")


@bolt_task(Kind.COORDINATION)
def plan_job(listing: list[list[Any]], batch_bytes: int) -> list[list[str]]:
    """Split a listing into batches of about batch_bytes for the pools to share."""
    return job.plan_batches(listing, batch_bytes)


@bolt_task(Kind.COORDINATION)
def merge_report(
    analyses: list[job.Partial], embeddings: list[job.Partial], top_n: int = job.TOP_COMPLEX
) -> job.Partial:
    """Fold every batch's partial report into the job's report."""
    return job.merge_partials(analyses, embeddings, top_n)


@bolt_task(Kind.COORDINATION, bind=True)
def merge_spans(
    self: Any,
    partials: list[job.Partial],
    root: str,
    path: str,
    top_n: int,
    span_ids: list[str],
) -> job.Partial:
    """Merge the spans of a file that analyze_files cut; analyse it whole if one failed."""
    from bolt_tasks.producer import forget
    from bolt_tasks.tasks.analysis import analyze_files

    forget(span_ids)
    merged = job.merge_spans(partials, top_n)
    if merged is not None:
        return merged
    log.info("a span of %s did not parse alone; analysing the file whole", path)
    return self.replace(analyze_files.si(root, [path], top_n, split=False))
