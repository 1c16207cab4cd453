"""The main job's logic, free of Celery: plan batches, analyse and embed them, merge a report.

The tasks in bolt_tasks.tasks call these functions, and direct_analysis() runs the same steps in
one process, so a distributed run and a single-process run can be compared figure by figure.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import math
import os
import re
import time
from collections.abc import Iterable, Sequence
from itertools import pairwise
from typing import Any

import numpy as np

from bolt_tasks.codemetrics import analyze_source
from bolt_tasks.einstein.chunks import Chunk, chunk_text
from bolt_tasks.einstein.embed import embed_texts
from bolt_tasks.settings import Settings
from bolt_tasks.tree import SourceError, decode_source, list_sources, read_source

# Python source parses and is measured at about 2 MB/s per core on the machines bolt was tuned
# on (31 MB of the standard library in 15 s); the planner turns a batch's cost into bytes with it.
ANALYSIS_BYTES_PER_S = 2_000_000
# How many of the most complex functions a report lists.
TOP_COMPLEX = 20

Partial = dict[str, Any]


def safe_join(root: str, rel_path: str) -> str:
    """root/rel_path, refusing a path that would leave root."""
    if os.path.isabs(rel_path) or ".." in rel_path.split(os.sep):
        raise SourceError(f"path {rel_path!r} leaves the code base")
    return os.path.join(root, rel_path)


def plan_batches(listing: Sequence[Sequence[Any]], batch_bytes: int) -> list[list[str]]:
    """Group (path, size) pairs into batches of about batch_bytes, largest files first.

    Large batches go out first and small ones last, so the end of a job is made of short tasks
    that idle slots can share; a file larger than batch_bytes is a batch of its own.
    """
    batches: list[list[str]] = []
    current: list[str] = []
    filled = 0
    for path, size in sorted(listing, key=lambda item: (-item[1], item[0])):
        current.append(path)
        filled += max(int(size), 1)
        if filled >= batch_bytes:
            batches.append(current)
            current, filled = [], 0
    if current:
        batches.append(current)
    return batches


def batch_bytes_for(settings: Settings) -> int:
    """The bytes of source one batch should hold to run for about settings.batch_cost_s."""
    return max(1, int(settings.batch_cost_s * ANALYSIS_BYTES_PER_S))


def analyze_batch(root: str, paths: Iterable[str], top_n: int = TOP_COMPLEX) -> Partial:
    """Analyse a batch of files into a partial report (counts, top functions, parse errors)."""
    partial: Partial = {
        "files": 0,
        "functions": 0,
        "classes": 0,
        "lines": 0,
        "code_lines": 0,
        "imports": [],
        "parse_errors": [],
        "top_complex": [],
    }
    imports: set[str] = set()
    found: list[tuple[int, str, str]] = []
    for rel_path in paths:
        partial["files"] += 1
        try:
            metrics = analyze_source(read_source(safe_join(root, rel_path)), rel_path)
        # SystemError and RecursionError: CPython's parser gives up on some deeply nested code.
        except (SourceError, SyntaxError, ValueError, OSError, SystemError, RecursionError) as exc:
            partial["parse_errors"].append({"path": rel_path, "error": _describe(exc)})
            continue
        partial["functions"] += len(metrics.functions)
        partial["classes"] += metrics.classes
        partial["lines"] += metrics.lines
        partial["code_lines"] += metrics.code_lines
        imports.update(metrics.imports)
        found.extend((fn.complexity, rel_path, fn.name) for fn in metrics.functions)
    partial["imports"] = sorted(imports)
    partial["top_complex"] = _ranked(found, top_n)
    return partial


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return f"syntax error at line {exc.lineno}: {exc.msg}"
    if isinstance(exc, OSError):
        return f"unreadable: {exc.strerror or exc}"
    return str(exc)


def _ranked(entries: Iterable[tuple[int, str, str]], top_n: int) -> list[dict[str, Any]]:
    """The top_n most complex functions; ties go to the earlier path, then name."""
    ordered = heapq.nsmallest(top_n, entries, key=lambda e: (-e[0], e[1], e[2]))
    return [{"path": path, "name": name, "complexity": c} for c, path, name in ordered]


def chunk_plan(root: str, paths: Iterable[str], lines_per_chunk: int) -> list[list[Any]]:
    """Read a batch of files and plan their chunks: [path, sha256, [[start, end], ...]].

    The plan carries line ranges and the content's fingerprint, not the text: the embedding
    task reads the lines itself, so megabytes of source never cross the broker. Files that
    cannot be read as text get no plan; the analysis reports them.
    """
    plans: list[list[Any]] = []
    for rel_path in paths:
        try:
            with open(safe_join(root, rel_path), "rb") as handle:
                data = handle.read()
            text = decode_source(data)
        except (SourceError, OSError):
            continue
        ranges = [[c.start, c.end] for c in chunk_text(text, rel_path, lines_per_chunk)]
        plans.append([rel_path, hashlib.sha256(data).hexdigest(), ranges])
    return plans


def read_chunks(root: str, plans: Iterable[Sequence[Any]]) -> list[Chunk]:
    """The chunks a plan names, read from the files; a file that changed since it was planned
    (its sha256 differs) raises SourceError rather than give text for the wrong lines."""
    chunks: list[Chunk] = []
    for rel_path, digest, ranges in plans:
        with open(safe_join(root, rel_path), "rb") as handle:
            data = handle.read()
        if hashlib.sha256(data).hexdigest() != digest:
            raise SourceError(f"{rel_path} changed while the job ran")
        lines = decode_source(data).splitlines()
        chunks.extend(
            Chunk(rel_path, start, end, "\n".join(lines[start - 1 : end])) for start, end in ranges
        )
    return chunks


def probe_vector(dim: int) -> np.ndarray:
    """A fixed direction the report projects every embedding on, to checksum them all."""
    return np.cos(np.arange(dim, dtype=np.float64) * 0.7) / math.sqrt(dim)


def embedding_summary(vectors: np.ndarray) -> Partial:
    """Count and checksum of a block of embeddings: sums of projections, order-independent."""
    projected = vectors.astype(np.float64) @ probe_vector(vectors.shape[1])
    return {
        "chunks": int(vectors.shape[0]),
        "dim": int(vectors.shape[1]),
        "checksum": float(projected.sum()),
    }


def embed_batch(root: str, plans: Sequence[Sequence[Any]], dim: int) -> Partial:
    """Read and embed the chunks of a plan, and summarise the vectors."""
    chunks = read_chunks(root, plans)
    vectors = embed_texts([chunk.text for chunk in chunks], dim)
    return embedding_summary(vectors.reshape(len(chunks), dim))


def merge_partials(
    analyses: Iterable[Partial], embeddings: Iterable[Partial], top_n: int = TOP_COMPLEX
) -> Partial:
    """Fold the partial reports of every batch into the job's report."""
    report: Partial = {
        "files": 0,
        "functions": 0,
        "classes": 0,
        "lines": 0,
        "code_lines": 0,
        "imports": 0,
        "parse_errors": [],
        "top_complex": [],
        "chunks": 0,
        "embedding_checksum": 0.0,
    }
    imports: set[str] = set()
    top: list[tuple[int, str, str]] = []
    for part in analyses:
        for key in ("files", "functions", "classes", "lines", "code_lines"):
            report[key] += part[key]
        imports.update(part["imports"])
        report["parse_errors"].extend(part["parse_errors"])
        top.extend((e["complexity"], e["path"], e["name"]) for e in part["top_complex"])
    for part in embeddings:
        report["chunks"] += part["chunks"]
        report["embedding_checksum"] += part["checksum"]
    report["imports"] = len(imports)
    report["parse_errors"].sort(key=lambda e: e["path"])
    report["top_complex"] = _ranked(top, top_n)
    return report


def direct_analysis(root: str, settings: Settings, excludes: Sequence[str] = ()) -> Partial:
    """The whole job in this process, without Celery: the reference a distributed run must match."""
    started = time.perf_counter()
    root = os.path.abspath(root)
    listing = list_sources(root, settings.source_suffixes, excludes)
    paths = [path for path, _ in listing]
    analysis = analyze_batch(root, paths, TOP_COMPLEX)
    plans = chunk_plan(root, paths, settings.chunk_lines)
    embedding = embed_batch(root, plans, settings.embed_dim)
    report = merge_partials([analysis], [embedding])
    report["elapsed_s"] = time.perf_counter() - started
    return report


# A line that starts a top-level definition: a decorator, def, async def or class at column 0.
_TOP_LEVEL_START = re.compile(r"^(?:@|(?:async[ \t]+)?def[ \t]|class[ \t])", re.MULTILINE)


def top_level_starts(text: str) -> list[int]:
    """Offsets of the lines that may begin a top-level definition, the first line aside.

    A line right under a decorator line is not one (the first decorator starts it). A match
    inside a multi-line string is possible; a span cut there fails to parse, and the file is
    then analysed whole (see merge_spans).
    """
    starts = []
    for match in _TOP_LEVEL_START.finditer(text):
        offset = match.start()
        if offset == 0:
            continue
        previous = text.rfind("\n", 0, offset - 1) + 1
        if text.startswith("@", previous):
            continue
        starts.append(offset)
    return starts


def file_spans(text: str, parts: int) -> list[tuple[int, int]]:
    """Cut source text at top-level definitions into about `parts` spans of similar size.

    Spans are (start, end) character offsets that cover the text end to end, each ending with
    a newline but the last; fewer than asked when the text has fewer places to cut.
    """
    starts = top_level_starts(text)
    cuts: list[int] = []
    for index in range(1, parts):
        at = bisect.bisect_left(starts, index * len(text) // parts)
        if at < len(starts) and (not cuts or starts[at] > cuts[-1]):
            cuts.append(starts[at])
    edges = [0, *cuts, len(text)]
    return list(pairwise(edges))


def analyze_span(
    root: str, rel_path: str, digest: str, start: int, end: int, top_n: int = TOP_COMPLEX
) -> Partial:
    """Analyse one span of a file as its own module; {"failed": True} if it does not parse or
    the file changed since it was cut (its sha256 differs)."""
    with open(safe_join(root, rel_path), "rb") as handle:
        data = handle.read()
    if hashlib.sha256(data).hexdigest() != digest:
        return {"failed": True}
    try:
        metrics = analyze_source(decode_source(data)[start:end], rel_path)
    except (SourceError, SyntaxError, ValueError):
        return {"failed": True}
    found = ((fn.complexity, rel_path, fn.name) for fn in metrics.functions)
    return {
        "failed": False,
        "files": 0,
        "functions": len(metrics.functions),
        "classes": metrics.classes,
        "lines": metrics.lines,
        "code_lines": metrics.code_lines,
        "imports": sorted(set(metrics.imports)),
        "parse_errors": [],
        "top_complex": _ranked(found, top_n),
    }


def merge_spans(partials: Iterable[Partial], top_n: int = TOP_COMPLEX) -> Partial | None:
    """The partial report of a whole file from its spans' reports; None if a span failed.

    Cut at top-level definitions, every span parses exactly when the whole file does, and the
    counts of the spans add up to the file's: so the merge equals analysing the file whole.
    """
    merged: Partial = {"files": 1, "functions": 0, "classes": 0, "lines": 0, "code_lines": 0}
    imports: set[str] = set()
    top: list[tuple[int, str, str]] = []
    for part in partials:
        if part.get("failed", True):
            return None
        for key in ("functions", "classes", "lines", "code_lines"):
            merged[key] += part[key]
        imports.update(part["imports"])
        top.extend((e["complexity"], e["path"], e["name"]) for e in part["top_complex"])
    merged.update(imports=sorted(imports), parse_errors=[], top_complex=_ranked(top, top_n))
    return merged
