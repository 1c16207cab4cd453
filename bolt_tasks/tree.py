"""Walking a code base: which files belong to it, and reading one as text."""

from __future__ import annotations

import fnmatch
import io
import os
import tokenize
from collections.abc import Iterable
from pathlib import Path

# Folders nobody counts as part of a code base: version control, caches, installed packages.
SKIPPED_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        ".bzr",
        "_darcs",
        "CVS",
        "__pycache__",
        "site-packages",
        "dist-packages",
        "node_modules",
        ".tox",
        ".nox",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
    }
)
# A folder holding this file is a virtual environment.
VENV_MARKER = "pyvenv.cfg"


class SourceError(ValueError):
    """Raised when a file is not text bolt can analyse (binary, badly encoded)."""


def _excluded(rel_path: str, name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(name, pat) or fnmatch.fnmatch(rel_path, pat) for pat in patterns)


def list_sources(
    root: str | os.PathLike[str], suffixes: Iterable[str], excludes: Iterable[str] = ()
) -> list[tuple[str, int]]:
    """(path relative to root, size in bytes) of every source file under root, sorted by path.

    Skips SKIPPED_DIRS, virtual environments and whatever matches an exclude pattern (matched
    against the entry's name and against its path relative to root).
    """
    root = Path(root)
    suffixes, excludes = tuple(suffixes), tuple(excludes)
    found: list[tuple[str, int]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir + os.sep
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in SKIPPED_DIRS
            and not os.path.exists(os.path.join(dirpath, d, VENV_MARKER))
            and not _excluded(rel_dir + d, d, excludes)
        )
        for name in filenames:
            rel_path = rel_dir + name
            if not name.endswith(suffixes) or _excluded(rel_path, name, excludes):
                continue
            try:
                found.append((rel_path, os.stat(os.path.join(dirpath, name)).st_size))
            except OSError:
                continue  # vanished or unreadable between listing and stat: not part of the tree
    found.sort()
    return found


def decode_source(data: bytes) -> str:
    """Python source bytes as text, honouring a coding declaration; SourceError if impossible."""
    if b"\0" in data:
        raise SourceError("binary file (it holds NUL bytes)")
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        return data.decode(encoding)
    except (SyntaxError, LookupError, UnicodeDecodeError) as exc:
        raise SourceError(f"not valid text in its declared encoding: {exc}") from None


def read_source(path: str | os.PathLike[str]) -> str:
    """Read one source file as text; SourceError (or OSError) when it cannot be read."""
    with open(path, "rb") as handle:
        return decode_source(handle.read())
