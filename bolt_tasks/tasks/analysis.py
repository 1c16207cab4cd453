"""Tasks of the analysis kind (P pool): parsing and measuring Python source."""

from __future__ import annotations

from bolt_tasks import job
from bolt_tasks.app import bolt_task
from bolt_tasks.names import Kind


@bolt_task(Kind.ANALYSIS)
def analyze_files(root: str, paths: list[str], top_n: int = job.TOP_COMPLEX) -> job.Partial:
    """Parse and measure a batch of files into a partial report."""
    return job.analyze_batch(root, paths, top_n)
