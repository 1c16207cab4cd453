"""Tasks of the coordination kind (E pool): a job's fan-out plan and its fan-in report."""

from __future__ import annotations

from typing import Any

from bolt_tasks import job
from bolt_tasks.app import bolt_task
from bolt_tasks.names import Kind


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
