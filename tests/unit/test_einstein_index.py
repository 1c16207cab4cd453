"""The Einstein index: built through the vector cache, searched, and repaired when damaged."""

from __future__ import annotations

import json
import logging
import mmap
import threading
from pathlib import Path

import numpy as np
import pytest

from bolt_tasks.buffers import BufferPool, specs_from
from bolt_tasks.einstein import search as searching
from bolt_tasks.einstein.build import build_in_process, index_base
from bolt_tasks.einstein.embed import embed_texts
from bolt_tasks.einstein.index import META, Index, IndexCorrupt, index_dir, vectors_dir
from bolt_tasks.einstein.vectors import VectorCache
from bolt_tasks.errors import IndexMissing
from bolt_tasks.settings import Settings
from tests.einstein_tree import FILES, documented_functions, write_functions_tree


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({"BOLT_CACHE_DIR": str(tmp_path / "cache")})


@pytest.fixture
def pools(settings: Settings) -> BufferPool:
    return BufferPool(specs_from(settings))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_functions_tree(tmp_path / "tree")


def build(tree: Path, settings: Settings, pools: BufferPool, chunk_lines: int = 40) -> dict:
    base = index_base(str(tree), settings.embed_dim, chunk_lines, [".py"], [])
    cache = VectorCache(vectors_dir(settings.cache_dir))
    return build_in_process(index_dir(settings.cache_dir), cache, base, pools)


def answers(settings: Settings, pools: BufferPool, queries: list[str]) -> list[list[dict]]:
    """What the worker-side search gives for each query."""
    return [searching.search(q, 5, settings, pools)["hits"] for q in queries]


def mapping_of(array: np.ndarray) -> object:
    """What an array's memory finally belongs to."""
    while getattr(array, "base", None) is not None:
        array = array.base
    return array


QUERIES = ["polygon area shoelace", "retry with backoff flaky", "levenshtein edits"]


def test_a_built_index_is_found_again_and_its_hits_name_the_right_lines(tree, settings, pools):
    summary = build(tree, settings, pools)
    assert summary["written"] and summary["files"] == len(FILES)
    assert summary["embedded"] == summary["chunks"] > 0 and summary["reused"] == 0
    index = Index.open(index_dir(settings.cache_dir))
    assert index.chunks == summary["chunks"] and index.matrix.flags.f_contiguous
    assert isinstance(mapping_of(index.matrix), mmap.mmap)  # mapped, not read
    hits = index.search("rotate a point about the origin by an angle", 3, pools)
    assert hits[0].path == "geometry/rotate_point.py"
    assert hits[0].start <= 4 <= hits[0].end  # the def line lies in the hit's range
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(0 < h.score <= 1 for h in hits)


def test_a_function_is_found_by_its_name_and_docstring_in_the_top_five(tree, settings, pools):
    build(tree, settings, pools, chunk_lines=20)
    index = Index.open(index_dir(settings.cache_dir))
    functions = documented_functions()
    assert len(functions) >= 30 and len(FILES) >= 30
    found = [
        path in {hit.path for hit in index.search(f"{name} {doc}", 5, pools)}
        for path, name, doc, _ in functions
    ]
    assert sum(found) / len(found) >= 0.9


def test_a_second_build_of_an_unchanged_tree_embeds_nothing(tree, settings, pools):
    first = build(tree, settings, pools)
    matrix = Index.open(index_dir(settings.cache_dir)).meta["matrix"]["name"]
    second = build(tree, settings, pools)
    assert second["embedded"] == 0 and second["reused"] == first["chunks"]
    assert not second["written"]
    assert Index.open(index_dir(settings.cache_dir)).meta["matrix"]["name"] == matrix


def test_a_changed_file_re_embeds_only_its_own_chunks(tree, settings, pools):
    first = build(tree, settings, pools, chunk_lines=10)
    changed = tree / "numeric/moving_average.py"
    changed.write_text(
        changed.read_text() + "\n\ndef exponential_smoothing(values, alpha):\n"
        '    """Blend each value with the running estimate by a factor."""\n'
        "    return values\n"
    )
    chunks_of_changed = -(-len(changed.read_text().splitlines()) // 10)
    second = build(tree, settings, pools, chunk_lines=10)
    assert second["embedded"] == chunks_of_changed
    assert second["reused"] == first["chunks"] - (chunks_of_changed - 1)
    assert second["written"]
    hits = Index.open(index_dir(settings.cache_dir)).search("exponential smoothing", 1, pools)
    assert hits[0].path == "numeric/moving_average.py"


def test_a_truncated_matrix_is_rebuilt_and_the_answers_stay_right(tree, settings, pools, caplog):
    build(tree, settings, pools)
    before = answers(settings, pools, QUERIES)
    directory = index_dir(settings.cache_dir)
    matrix = directory / Index.open(directory).meta["matrix"]["name"]
    matrix.write_bytes(matrix.read_bytes()[:-4096])
    with pytest.raises(IndexCorrupt, match="bytes, expected"):
        Index.open(directory)
    with caplog.at_level(logging.WARNING, logger="bolt.einstein"):
        assert answers(settings, pools, QUERIES) == before
    assert "damaged" in caplog.text and "rebuilt" in caplog.text
    Index.open(directory).verify_all()  # whole and consistent again


def test_a_flipped_byte_fails_its_column_checksum_and_is_repaired(
    tree, settings, pools, caplog, monkeypatch
):
    build(tree, settings, pools)
    before = answers(settings, pools, QUERIES)
    directory = index_dir(settings.cache_dir)
    index = Index.open(directory)
    # Damage a column the first query reads, keeping the file's size.
    column = int(np.flatnonzero(embed_texts([QUERIES[0]], index.dim)[0])[0])
    matrix = directory / index.meta["matrix"]["name"]
    header = matrix.stat().st_size - index.matrix.nbytes  # the data ends the .npy file
    offset = header + (column * index.chunks + index.chunks // 2) * 4
    data = bytearray(matrix.read_bytes())
    data[offset] ^= 0xFF
    matrix.write_bytes(bytes(data))
    with pytest.raises(IndexCorrupt, match=f"column {column} "):
        Index.open(directory).verify_all()
    monkeypatch.setattr(searching, "SLOT", searching.IndexSlot())  # a worker starting now
    with caplog.at_level(logging.WARNING, logger="bolt.einstein"):
        assert answers(settings, pools, QUERIES) == before
    assert "rebuilt" in caplog.text


def test_a_damaged_vector_cache_entry_is_embedded_again(tree, settings, pools, caplog):
    first = build(tree, settings, pools)
    entries = sorted(vectors_dir(settings.cache_dir).rglob("*.vec"))
    entries[0].write_bytes(entries[0].read_bytes()[:-8])
    (index_dir(settings.cache_dir) / META).unlink()
    with caplog.at_level(logging.WARNING, logger="bolt.einstein"):
        second = build(tree, settings, pools)
    assert "damaged" in caplog.text
    assert 0 < second["embedded"] < first["chunks"]
    assert second["reused"] == first["chunks"] - second["embedded"]


def test_searching_without_an_index_says_how_to_build_one(settings, pools):
    with pytest.raises(IndexMissing, match="bolt index build"):
        searching.search("anything", 5, settings, pools)


def test_an_empty_tree_gives_an_empty_index_that_finds_nothing(tmp_path, settings, pools):
    (tmp_path / "empty").mkdir()
    summary = build(tmp_path / "empty", settings, pools)
    assert summary["chunks"] == 0 and summary["written"]
    assert searching.search("anything", 5, settings, pools)["hits"] == []


def test_a_search_waits_while_the_index_is_opening_then_answers(tree, settings, pools):
    build(tree, settings, pools)
    slot = searching.IndexSlot()
    slot.begin_opening()
    waited: list[float] = []
    thread = threading.Thread(target=lambda: waited.append(slot.wait_opened(30.0)))
    thread.start()
    thread.join(0.2)
    assert thread.is_alive()  # held back: the index is not open yet
    assert slot.open(index_dir(settings.cache_dir)) is not None
    thread.join(5.0)
    assert not thread.is_alive() and waited[0] > 0
    assert slot.wait_opened(30.0) == 0.0  # once open, nobody waits


def test_a_rebuilt_index_is_picked_up_by_an_open_slot(tree, settings, pools):
    build(tree, settings, pools)
    slot = searching.IndexSlot()
    directory = index_dir(settings.cache_dir)
    opened = slot.current(directory)
    (tree / "geometry/extra.py").write_text("def hexagon_tiling():\n    return 6\n")
    build(tree, settings, pools)
    assert slot.current(directory) is not opened
    assert json.loads((directory / META).read_text())["files"] == len(FILES) + 1
