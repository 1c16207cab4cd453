"""Listing a code base and chunking its files keep paths and line ranges right."""

import pytest

from bolt_tasks.einstein.chunks import chunk_text
from bolt_tasks.tree import SourceError, decode_source, list_sources
from tests.trees import write_tree


def test_listing_skips_vcs_caches_installed_packages_and_virtual_environments(tmp_path):
    write_tree(tmp_path)
    paths = [path for path, _ in list_sources(tmp_path, (".py",))]
    assert paths == sorted(paths)
    assert "broken.py" in paths and "pkg0/mod.py" in paths
    assert not any(
        p.startswith((".git", "__pycache__", "node_modules", "site-packages", "venv"))
        for p in paths
    )
    assert len(paths) == 3 + 3 * 2


def test_exclude_patterns_match_names_and_relative_paths(tmp_path):
    write_tree(tmp_path)
    paths = [p for p, _ in list_sources(tmp_path, (".py",), ["pkg1", "pkg2/mod.py", "bin*"])]
    assert not any(p.startswith("pkg1/") for p in paths)
    assert "pkg2/mod.py" not in paths and "pkg2/__init__.py" in paths
    assert "binary.py" not in paths


def test_sizes_are_reported(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    assert list_sources(tmp_path, (".py",)) == [("a.py", 6)]


def test_chunks_cover_every_line_with_one_based_inclusive_ranges():
    text = "\n".join(f"line {n}" for n in range(1, 11))
    chunks = chunk_text(text, "f.py", 4)
    assert [(c.start, c.end) for c in chunks] == [(1, 4), (5, 8), (9, 10)]
    assert chunks[0].text.splitlines()[0] == "line 1"
    assert chunks[2].text == "line 9\nline 10"


def test_blank_chunks_are_dropped_but_ranges_stay_true():
    text = "a\n\n\n\n\n\nb\n"
    chunks = chunk_text(text, "f.py", 3)
    assert [(c.start, c.end, c.text) for c in chunks] == [(1, 3, "a\n\n"), (7, 7, "b")]


def test_an_empty_file_has_no_chunks():
    assert chunk_text("", "f.py", 40) == []


def test_decoding_honours_a_coding_declaration_and_refuses_binary_and_bad_bytes():
    assert decode_source(b"# -*- coding: latin-1 -*-\nx = '\xe9'\n").endswith("'\u00e9'\n")
    with pytest.raises(SourceError, match="binary"):
        decode_source(b"\x00abc")
    with pytest.raises(SourceError, match="encoding"):
        decode_source(b"x = '\xe9'\n")
