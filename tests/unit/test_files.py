"""Reports are written whole or not at all, with the mode the umask gives."""

import json
import os

import pytest

from bolt_tasks.files import write_json


def test_a_report_gets_the_umask_mode_and_no_temporary_file_is_left(tmp_path):
    old = os.umask(0o027)
    try:
        write_json(tmp_path / "r.json", {"files": 3})
    finally:
        os.umask(old)
    assert json.loads((tmp_path / "r.json").read_text()) == {"files": 3}
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_a_value_json_cannot_hold_leaves_the_old_report_and_nothing_else(tmp_path):
    target = tmp_path / "r.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        write_json(target, {"bad": object()})
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
