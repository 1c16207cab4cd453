"""Bad input to `bolt search` and `bolt index build` is one line and exit status 2."""

from __future__ import annotations

import pytest

from bolt_tasks.cli import EXIT_USAGE, main


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["search", ""], "query is empty"),
        (["search", "   "], "query is empty"),
        (["search", "parse", "-k", "0"], "-k 0"),
        (["search", "parse", "-k", "ten"], "invalid int"),
        (["search", "parse"], "bolt index build PATH"),  # no index built in this cache yet
        (["index", "build"], "path"),
        (["index"], "index"),
    ],
)
def test_bad_input_is_one_line_and_status_2_before_anything_starts(args, says, capsys):
    assert main(args) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert says in err


def test_building_the_index_of_a_missing_folder_is_refused(tmp_path, capsys):
    assert main(["index", "build", str(tmp_path / "nowhere")]) == EXIT_USAGE
    assert "no such directory" in capsys.readouterr().err
