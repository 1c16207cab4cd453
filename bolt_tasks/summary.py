"""Rendering reports for the terminal with rich."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

# How many parse errors the terminal summary lists; the JSON report holds all of them.
SHOWN_PARSE_ERRORS = 10
SHOWN_COMPLEX = 10


def print_report(report: dict[str, Any], console: Console) -> None:
    """The summary of an analysis: counts, the most complex functions, errors, tasks, speed."""
    counts = Table(title=f"bolt analyze {report.get('root', '')}", show_header=False)
    counts.add_column("measure", style="bold")
    counts.add_column("value", justify="right")
    for label, key in (
        ("files", "files"),
        ("functions", "functions"),
        ("classes", "classes"),
        ("lines", "lines"),
        ("code lines", "code_lines"),
        ("distinct imports", "imports"),
        ("chunks embedded", "chunks"),
        ("parse errors", None),
    ):
        value = len(report["parse_errors"]) if key is None else report[key]
        counts.add_row(label, f"{value:,}")
    counts.add_row("tasks", ", ".join(f"{q} {n}" for q, n in report["tasks"].items()))
    counts.add_row("elapsed", f"{report['elapsed_s']:.2f} s")
    counts.add_row(
        "speed", f"{report['tasks_per_s']:.1f} tasks/s, {report['files_per_s']:.1f} files/s"
    )
    console.print(counts)

    top = Table(title="most complex functions")
    top.add_column("complexity", justify="right")
    top.add_column("function")
    top.add_column("file")
    for entry in report["top_complex"][:SHOWN_COMPLEX]:
        top.add_row(str(entry["complexity"]), entry["name"], entry["path"])
    console.print(top)

    errors = report["parse_errors"]
    if errors:
        table = Table(title=f"parse errors ({len(errors)})")
        table.add_column("file")
        table.add_column("error")
        for entry in errors[:SHOWN_PARSE_ERRORS]:
            table.add_row(entry["path"], entry["error"])
        if len(errors) > SHOWN_PARSE_ERRORS:
            table.add_row(f"... {len(errors) - SHOWN_PARSE_ERRORS} more in the JSON report", "")
        console.print(table)
