"""The main job's planning, chunk plans and merging, without Celery."""

import numpy as np
import pytest

from bolt_tasks import job
from bolt_tasks.einstein.embed import embed_texts
from bolt_tasks.settings import Settings
from bolt_tasks.tree import SourceError
from tests.trees import GOOD_COMPLEXITY, write_tree


def test_batches_hold_every_file_once_largest_first():
    listing = [[f"f{i}.py", size] for i, size in enumerate([5, 50, 20, 20, 1, 70])]
    batches = job.plan_batches(listing, batch_bytes=60)
    assert sorted(p for batch in batches for p in batch) == sorted(p for p, _ in listing)
    assert batches[0] == ["f5.py"]
    assert batches == [["f5.py"], ["f1.py", "f2.py"], ["f3.py", "f0.py", "f4.py"]]


def test_no_files_means_no_batches():
    assert job.plan_batches([], 100) == []


def test_analysis_of_a_tree_counts_functions_and_reports_parse_errors(tmp_path):
    write_tree(tmp_path, copies=2)
    paths = ["pkg0/mod.py", "pkg1/mod.py", "broken.py", "binary.py", "latin.py", "missing.py"]
    partial = job.analyze_batch(str(tmp_path), paths, top_n=3)
    assert partial["files"] == 6
    assert partial["functions"] == 2 * len(GOOD_COMPLEXITY)
    errors = {e["path"]: e["error"] for e in partial["parse_errors"]}
    assert set(errors) == {"broken.py", "binary.py", "latin.py", "missing.py"}
    assert "syntax error at line 1" in errors["broken.py"]
    assert "binary" in errors["binary.py"]
    assert [e["complexity"] for e in partial["top_complex"]] == [5, 5, 3]


def test_paths_that_leave_the_code_base_are_refused(tmp_path):
    partial = job.analyze_batch(str(tmp_path), ["../etc/passwd", "/etc/passwd"])
    assert [e["path"] for e in partial["parse_errors"]] == ["../etc/passwd", "/etc/passwd"]


def test_a_chunk_plan_reads_back_to_the_same_chunks(tmp_path):
    write_tree(tmp_path, copies=1)
    plans = job.chunk_plan(str(tmp_path), ["pkg0/mod.py", "binary.py"], lines_per_chunk=10)
    assert [p[0] for p in plans] == ["pkg0/mod.py"]
    chunks = job.read_chunks(str(tmp_path), plans)
    text = (tmp_path / "pkg0/mod.py").read_text().splitlines()
    for chunk in chunks:
        assert chunk.text == "\n".join(text[chunk.start - 1 : chunk.end])


def test_a_file_changed_after_planning_is_refused(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    plans = job.chunk_plan(str(tmp_path), ["a.py"], 10)
    (tmp_path / "a.py").write_text("x = 2\n")
    with pytest.raises(SourceError, match="changed"):
        job.read_chunks(str(tmp_path), plans)


def test_merging_batch_partials_equals_analysing_everything_at_once(tmp_path):
    write_tree(tmp_path, copies=4)
    settings = Settings.from_env({})
    whole = job.direct_analysis(str(tmp_path), settings)
    paths = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("pkg*/*.py"))
    paths += ["broken.py", "binary.py", "latin.py"]
    halves = [paths[0::2], paths[1::2]]
    analyses = [job.analyze_batch(str(tmp_path), half, 5) for half in halves]
    plans = [job.chunk_plan(str(tmp_path), half, settings.chunk_lines) for half in halves]
    embeddings = [job.embed_batch(str(tmp_path), plan, settings.embed_dim) for plan in plans]
    merged = job.merge_partials(analyses, embeddings, top_n=5)
    for key in ("files", "functions", "classes", "lines", "code_lines", "imports", "chunks"):
        assert merged[key] == whole[key], key
    assert merged["parse_errors"] == whole["parse_errors"]
    assert merged["top_complex"] == whole["top_complex"][:5]
    assert merged["embedding_checksum"] == pytest.approx(whole["embedding_checksum"], rel=1e-9)


def test_embeddings_are_unit_length_and_stable():
    vectors = embed_texts(["def read_file(path): pass", "", "readFile path"], 64)
    assert vectors.shape == (3, 64) and vectors.dtype == np.float32
    assert np.linalg.norm(vectors[0]) == pytest.approx(1.0, abs=1e-6)
    assert not vectors[1].any()
    assert float(vectors[0] @ vectors[2]) > 0.5
    again = embed_texts(["def read_file(path): pass"], 64)
    assert np.array_equal(again[0], vectors[0])
