"""The README documents every setting and keeps its two Quick start commands."""

from pathlib import Path

from bolt_tasks.settings import env_var_docs

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_every_bolt_variable_is_in_the_readme():
    missing = [name for name, _, _ in env_var_docs() if f"`{name}`" not in README]
    assert not missing


def test_quick_start_begins_with_the_main_job_then_the_tests():
    quick = README.split("## Quick start", 1)[1]
    commands = [
        line.split("#")[0].strip() for line in quick.splitlines() if line.startswith("bash ")
    ]
    assert commands[:2] == ["bash scripts/dev.sh analyze", "bash scripts/dev.sh test"]
