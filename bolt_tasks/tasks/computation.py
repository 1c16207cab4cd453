"""Tasks of the computation kind (P pool): embedding text chunks."""

from __future__ import annotations

from typing import Any

from bolt_tasks import job
from bolt_tasks.app import bolt_task
from bolt_tasks.names import Kind


@bolt_task(Kind.COMPUTATION)
def embed_chunks(plans: list[list[Any]], root: str, dim: int) -> job.Partial:
    """Read and embed the chunks that plan_chunks planned; returns their count and checksum."""
    return job.embed_batch(root, plans, dim)
