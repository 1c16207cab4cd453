"""Tasks of the analysis kind (P pool): measuring Python source, and where a task runs."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from typing import Any

from celery import chord
from kombu.utils.uuid import uuid

from bolt_tasks import codemetrics, job, subdivide
from bolt_tasks.app import bolt_task
from bolt_tasks.names import Kind
from bolt_tasks.settings import get_settings
from bolt_tasks.tasks import coordination
from bolt_tasks.tree import SourceError, decode_source

log = logging.getLogger("bolt.analysis")

# The rate the subdivision estimates analysis costs by: seconds per byte of source.
ANALYSIS_OPERATION = "analysis"


@bolt_task(Kind.ANALYSIS, bind=True)
def analyze_files(
    self: Any, root: str, paths: list[str], top_n: int = job.TOP_COMPLEX, split: bool = True
) -> job.Partial:
    """Parse and measure a batch of files into a partial report.

    A batch of one file whose analysis this process estimates at well over
    BOLT_MIN_STEAL_TASK_S is cut at top-level definitions into spans, analysed as subtasks
    that any free slot can take; this task is replaced by them and by their merge, so its
    result is the same partial report.
    """
    if split and len(paths) == 1 and not self.request.called_directly:
        plan = _span_plan(root, paths[0])
        if plan is not None:
            return self.replace(_span_chord(root, paths[0], top_n, *plan))
    with subdivide.measured(ANALYSIS_OPERATION, _source_bytes(root, paths)):
        return job.analyze_batch(root, paths, top_n)


@bolt_task(Kind.ANALYSIS)
def analyze_span(
    root: str, path: str, digest: str, start: int, end: int, top_n: int = job.TOP_COMPLEX
) -> job.Partial:
    """Analyse one span of a file that analyze_files cut (see job.analyze_span)."""
    with subdivide.measured(ANALYSIS_OPERATION, end - start):
        return job.analyze_span(root, path, digest, start, end, top_n)


def _source_bytes(root: str, paths: list[str]) -> int:
    total = 0
    for rel_path in paths:
        try:
            total += os.path.getsize(job.safe_join(root, rel_path))
        except (OSError, SourceError):
            continue
    return total


def _span_plan(root: str, rel_path: str) -> tuple[str, list[tuple[int, int]]] | None:
    """(sha256, spans) to cut a file into, or None when it is cheap enough to analyse whole."""
    size = _source_bytes(root, [rel_path])
    cost_s = subdivide.estimate_s(ANALYSIS_OPERATION, size, 1 / job.ANALYSIS_BYTES_PER_S)
    parts = subdivide.parts_for(cost_s, get_settings().min_steal_task_s)
    if parts < 2:
        return None
    try:
        with open(job.safe_join(root, rel_path), "rb") as handle:
            data = handle.read()
        spans = job.file_spans(decode_source(data), parts)
    except (OSError, SourceError):
        return None  # analysed whole, which reports the error
    if len(spans) < 2:
        return None
    log.info(
        "cutting %s (%d bytes, about %.2f s of analysis) into %d spans",
        rel_path,
        size,
        cost_s,
        len(spans),
    )
    return hashlib.sha256(data).hexdigest(), spans


def _span_chord(
    root: str, rel_path: str, top_n: int, digest: str, spans: list[tuple[int, int]]
) -> Any:
    ids = [uuid() for _ in spans]
    header = [
        analyze_span.s(root, rel_path, digest, start, end, top_n).set(task_id=task_id)
        for task_id, (start, end) in zip(ids, spans, strict=True)
    ]
    return chord(header, coordination.merge_spans.s(root, rel_path, top_n, ids))


@bolt_task(Kind.ANALYSIS)
def whereami() -> dict[str, Any]:
    """Where this task ran: the child's pid, its parent's, the host and the CPUs it may use."""
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "hostname": socket.gethostname(),
        "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [],
    }


@bolt_task(Kind.ANALYSIS)
def measure_source(text: str, path: str = "<string>") -> dict[str, Any]:
    """Measure one piece of Python source; raises SyntaxError when it does not parse."""
    metrics = codemetrics.analyze_source(text, path)
    return {
        "path": metrics.path,
        "lines": metrics.lines,
        "code_lines": metrics.code_lines,
        "classes": metrics.classes,
        "imports": metrics.imports,
        "functions": [[f.name, f.line, f.complexity] for f in metrics.functions],
    }
