"""Splitting source text into chunks of whole lines, each with its 1-based line range."""

from __future__ import annotations

from typing import NamedTuple


class Chunk(NamedTuple):
    """Lines start..end (1-based, inclusive) of a file, and their text."""

    path: str
    start: int
    end: int
    text: str


def chunk_text(text: str, path: str, lines_per_chunk: int) -> list[Chunk]:
    """Split text into consecutive chunks of lines_per_chunk lines; the last may be shorter.

    Chunks that hold only whitespace are dropped: nothing could be found in them.
    """
    if lines_per_chunk < 1:
        raise ValueError("lines_per_chunk must be at least 1")
    lines = text.splitlines()
    chunks = []
    for first in range(0, len(lines), lines_per_chunk):
        body = "\n".join(lines[first : first + lines_per_chunk])
        if body.strip():
            last = min(first + lines_per_chunk, len(lines))
            chunks.append(Chunk(path, first + 1, last, body))
    return chunks
