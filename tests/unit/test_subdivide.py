"""Cutting work into subtasks: how many pieces, where a file is cut, and that spans add up."""

from __future__ import annotations

import hashlib

import pytest

from bolt_tasks import job, subdivide
from tests.trees import GOOD
from tests.workload import module_text


def test_work_is_cut_only_well_above_the_minimum_and_into_pieces_of_about_it():
    assert subdivide.parts_for(0.25, 0.2) == 1
    assert subdivide.parts_for(0.35, 0.2) == 2
    assert subdivide.parts_for(2.0, 0.2) == 10


def test_the_rate_is_the_default_until_measured_then_a_moving_average():
    book = subdivide.RateBook()
    assert book.seconds_per_unit("x", 1e-6) == 1e-6
    book.note("x", 1000, 0.002)
    book.note("x", 1000, 0.004)
    assert book.seconds_per_unit("x", 1e-6) == pytest.approx(2e-6 + 0.2 * 2e-6)
    book.note("y", 0, 5.0)
    assert "y" not in book.rates


def test_measured_folds_the_block_into_the_process_rates():
    with subdivide.measured("test-op", 1000):
        sum(range(1000))
    assert subdivide.RATES.seconds_per_unit("test-op", -1.0) > 0


def test_cuts_fall_on_top_level_definitions_and_keep_decorators_with_their_def():
    text = "import os\n\n@a\n@b\ndef f():\n    pass\n\nclass C:\n    def m(self):\n        pass\n"
    starts = job.top_level_starts(text)
    assert [text[s : s + 5] for s in starts] == ["@a\n@b", "class"]
    spans = job.file_spans(text, 3)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(text[start - 1] == "\n" for start, _ in spans[1:])


def write(tmp_path, name: str, text: str):
    (tmp_path / name).write_text(text)
    return hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()


def spans_report(tmp_path, name: str, parts: int):
    text = (tmp_path / name).read_text()
    digest = hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
    spans = job.file_spans(text, parts)
    return spans, job.merge_spans(
        job.analyze_span(str(tmp_path), name, digest, start, end) for start, end in spans
    )


def test_the_spans_of_a_file_add_up_to_the_file_analysed_whole(tmp_path):
    write(tmp_path, "big.py", module_text(60) + GOOD + "\n\n" + module_text(30))
    spans, merged = spans_report(tmp_path, "big.py", parts=7)
    assert len(spans) == 7
    assert merged == job.analyze_batch(str(tmp_path), ["big.py"])


def test_a_cut_inside_a_string_fails_so_the_file_is_analysed_whole(tmp_path):
    inside = "def looks_like_code():\n    pass\n" * 50
    write(tmp_path, "doc.py", module_text(5) + f'TEXT = """\n{inside}"""\n' + module_text(5))
    spans, merged = spans_report(tmp_path, "doc.py", parts=4)
    assert len(spans) == 4 and merged is None


def test_a_file_changed_after_its_cut_is_not_analysed_in_spans(tmp_path):
    digest = write(tmp_path, "m.py", module_text(10))
    (tmp_path / "m.py").write_text(module_text(11))
    assert job.analyze_span(str(tmp_path), "m.py", digest, 0, 10)["failed"] is True


def test_a_task_replaced_by_its_subtasks_claims_a_new_attempt_not_a_copys():
    from types import SimpleNamespace

    from bolt_tasks.guards import claim_attempt

    def attempt(retries: int, nesting: int) -> int:
        return claim_attempt(SimpleNamespace(retries=retries, replaced_task_nesting=nesting))

    attempts = {attempt(r, n) for r in range(3) for n in range(3)}
    assert len(attempts) == 9  # a retry and a replacement each claim their own
    assert attempt(0, 0) == 0 and attempt(2, 0) == 2
