"""Tasks of the io kind (E pool): listing a code base and reading it into chunks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bolt_tasks import job, ledger
from bolt_tasks.app import app, bolt_task
from bolt_tasks.einstein import build
from bolt_tasks.einstein.index import index_dir, vectors_dir
from bolt_tasks.einstein.vectors import VectorCache
from bolt_tasks.errors import UsageError
from bolt_tasks.files import write_json
from bolt_tasks.names import Kind
from bolt_tasks.settings import get_settings
from bolt_tasks.tree import list_sources


@bolt_task(Kind.IO)
def list_tree(root: str, suffixes: list[str], excludes: list[str]) -> list[list[Any]]:
    """[path, size] of every source file under root, paths relative to it."""
    return [list(entry) for entry in list_sources(root, suffixes, excludes)]


@bolt_task(Kind.IO)
def plan_chunks(root: str, paths: list[str], lines_per_chunk: int) -> list[list[Any]]:
    """Read and fingerprint files and plan their chunks: [path, sha256, [[start, end], ...]]."""
    return job.chunk_plan(root, paths, lines_per_chunk)


@bolt_task(Kind.IO)
def write_index(files: list[list[Any]], base: dict[str, Any]) -> dict[str, Any]:
    """Assemble the Einstein index from the vectors embed_chunks cached, unless it is current."""
    cache_dir = get_settings().cache_dir
    return build.assemble(index_dir(cache_dir), VectorCache(vectors_dir(cache_dir)), base, files)


@bolt_task(Kind.IO, bind=True)
def write_report(
    self: Any,
    folder: str,
    report: dict[str, Any],
    name: str | None = None,
    ledger_name: str | None = None,
) -> str:
    """Write report as JSON to folder/<name>.json atomically; returns the file's path.

    name defaults to the task's id (a call inside a batch has none and must give one). The file
    is replaced whole, so a task delivered twice writes the same file twice, never two files or
    half of one. Given a ledger name, it counts its writes there under the name.
    """
    name = name or self.request.id
    if not name:
        raise UsageError("write_report inside a batch has no task id: give it a name")
    target = Path(folder) / f"{name}.json"
    with ledger.counting(app.backend.client, ledger_name, name, app.conf.result_expires):
        write_json(target, report)
    return str(target)
