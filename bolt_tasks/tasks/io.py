"""Tasks of the io kind (E pool): listing a code base and reading it into chunks."""

from __future__ import annotations

from typing import Any

from bolt_tasks import job
from bolt_tasks.app import bolt_task
from bolt_tasks.names import Kind
from bolt_tasks.tree import list_sources


@bolt_task(Kind.IO)
def list_tree(root: str, suffixes: list[str], excludes: list[str]) -> list[list[Any]]:
    """[path, size] of every source file under root, paths relative to it."""
    return [list(entry) for entry in list_sources(root, suffixes, excludes)]


@bolt_task(Kind.IO)
def plan_chunks(root: str, paths: list[str], lines_per_chunk: int) -> list[list[Any]]:
    """Read and fingerprint files and plan their chunks: [path, sha256, [[start, end], ...]]."""
    return job.chunk_plan(root, paths, lines_per_chunk)
