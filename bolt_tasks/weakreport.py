"""The weak-link report for people: a priority table in the terminal and a self-contained HTML page.

The page holds its charts as inline SVG drawn by matplotlib (no pyplot state, no backend to
choose), its styles inline, and a Content-Security-Policy that forbids loading anything, so it
opens the same without a network and cannot reach one.
"""

from __future__ import annotations

import html
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# Chart size in inches at matplotlib's 100 dpi: 900 x 300 pixels, one chart per row of the page.
CHART_SIZE = (9.0, 3.0)
# Nothing may be loaded from anywhere; inline styles only.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 960px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.missing td { color: #777; } tr.weak td.impact { color: #b00020; font-weight: bold; }
figure { margin: 1em 0; } figure svg { width: 100%; height: auto; }
"""


def format_value(value: float | None, unit: str) -> str:
    """A measure's value with its unit, or "missing"."""
    if value is None:
        return "missing"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit.startswith("%"):
        return f"{value:.1f} {unit}".replace(" %", "%")
    return f"{value:,.1f} {unit}"


def _target(measure: dict[str, Any]) -> str:
    sign = ">=" if measure["better"] == "higher" else "<="
    return f"{sign} {format_value(measure['target'], measure['unit'])}"


def _note(measure: dict[str, Any]) -> str:
    if measure["missing"]:
        return measure["missing"]
    return "met" if measure["met"] else "missed"


def print_ranking(report: dict[str, Any], console: Console) -> None:
    """The priority table: every measure, weakest link first, and the overall impact."""
    table = Table(title=f"bolt weak-links: overall impact {report['overall_impact']:.3f}")
    table.add_column("#", justify="right")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    table.add_column("impact", justify="right")
    table.add_column("", overflow="fold")
    for m in report["measures"]:
        impact = "-" if m["impact"] is None else f"{m['impact']:.3f}"
        style = "dim" if m["missing"] else ("bold red" if m["impact"] else None)
        value = format_value(m["value"], m["unit"])
        table.add_row(str(m["rank"]), m["label"], value, _target(m), impact, _note(m), style=style)
    console.print(table)
    streams = ", ".join(f"{name} {s['tasks']}" for name, s in report["streams"].items())
    console.print(
        f"{report['elapsed_s']:.2f} s of the standard mix; tasks finished: {streams}",
        highlight=False,
    )
    for name, stream in report["streams"].items():
        if stream["failed_calls"]:
            console.print(
                f"{name}: {stream['failed_calls']} calls failed; the first: {stream['errors'][0]}",
                style="red",
                markup=False,
                highlight=False,
            )


# -- the HTML page ------------------------------------------------------------------------------


def _svg(draw: Callable[[Any], None]) -> str:
    """One chart as an inline <svg> element."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=CHART_SIZE, layout="constrained")
    draw(figure.add_subplot())
    out = io.StringIO()
    figure.savefig(out, format="svg")
    text = out.getvalue()
    return text[text.index("<svg") :]


def _no_data(axes: Any, why: str) -> None:
    axes.text(0.5, 0.5, why, ha="center", va="center", wrap=True, transform=axes.transAxes)
    axes.set_xticks([])
    axes.set_yticks([])


def _cpu_chart(report: dict[str, Any]) -> Callable[[Any], None]:
    cpu = report["series"]["cpu"]

    def draw(axes: Any) -> None:
        if not cpu["t_s"]:
            _no_data(axes, "CPU not measured: " + (cpu["missing"] or "no sample was taken"))
            return
        for core, values in cpu["per_core"].items():
            axes.plot(cpu["t_s"], values, label=f"core {core}", linewidth=1.2)
        axes.set_ylim(0, 105)
        axes.set_ylabel("busy %")
        axes.set_xlabel("seconds into the run")
        axes.legend(loc="lower right", fontsize="small", ncols=4)

    return draw


def _depth_chart(report: dict[str, Any]) -> Callable[[Any], None]:
    depths = report["series"]["depths"]

    def draw(axes: Any) -> None:
        if not depths["t_s"]:
            _no_data(axes, "queue depths not read")
            return
        for queue, values in depths["queues"].items():
            axes.plot(depths["t_s"], values, label=queue, linewidth=1.2)
        burst = report.get("burst") or {}
        if "at_s" in burst:
            axes.axvline(burst["at_s"], color="grey", linestyle=":", label="burst")
        axes.set_ylabel("messages waiting")
        axes.set_xlabel("seconds into the run")
        axes.legend(loc="upper right", fontsize="small")

    return draw


def _throughput_chart(report: dict[str, Any]) -> Callable[[Any], None]:
    bars = report["series"]["throughput"]

    def draw(axes: Any) -> None:
        axes.bar(bars["t_s"], bars["tasks_per_s"], width=bars["bar_s"], align="edge")
        axes.set_ylabel("tasks/s")
        axes.set_xlabel("seconds into the run")

    return draw


def _ranking_chart(report: dict[str, Any]) -> Callable[[Any], None]:
    measured = [m for m in report["measures"] if m["impact"] is not None]

    def draw(axes: Any) -> None:
        if not measured:
            _no_data(axes, "no measure could be measured")
            return
        labels = [m["label"] for m in reversed(measured)]
        impacts = [m["impact"] for m in reversed(measured)]
        colors = ["#b00020" if i else "#2e7d32" for i in impacts]
        axes.barh(labels, impacts, color=colors)
        for y, value in enumerate(impacts):
            axes.text(value, y, f" {value:.3f}", va="center", fontsize="small")
        axes.set_xlabel("impact (0 = target met)")
        axes.set_xlim(0, max(max(impacts) * 1.25, 0.1))

    return draw


def _row(m: dict[str, Any]) -> str:
    impact = "-" if m["impact"] is None else f"{m['impact']:.3f}"
    kind = "missing" if m["missing"] else ("weak" if m["impact"] else "met")
    cells = [
        (str(m["rank"]), "num"),
        (m["label"], ""),
        (format_value(m["value"], m["unit"]), "num"),
        (_target(m), "num"),
        (impact, "num impact"),
        (_note(m), ""),
    ]
    tds = "".join(f'<td class="{cls}">{html.escape(text)}</td>' for text, cls in cells)
    return f'<tr class="{kind}">{tds}</tr>'


def _streams(report: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td class='num'>{s['tasks']}</td>"
        f"<td class='num'>{s['calls']}</td><td class='num'>{s['failed_calls']}</td></tr>"
        for name, s in report["streams"].items()
    )
    head = "<tr><th>stream</th><th>tasks</th><th>calls</th><th>failed calls</th></tr>"
    return f"<table>{head}{rows}</table>"


def render_html(report: dict[str, Any]) -> str:
    """The whole report as one HTML page that needs nothing else to open."""
    charts = [
        ("CPU use per core", _cpu_chart(report)),
        ("Queue depths", _depth_chart(report)),
        ("Throughput", _throughput_chart(report)),
        ("Weak links by impact", _ranking_chart(report)),
    ]
    figures = "".join(
        f"<h2>{html.escape(title)}</h2><figure>{_svg(draw)}</figure>" for title, draw in charts
    )
    head = (
        "<tr><th>#</th><th>measure</th><th>value</th><th>target</th><th>impact</th><th></th></tr>"
    )
    rows = "".join(_row(m) for m in report["measures"])
    where = "an embedded deployment" if report["embedded"] else html.escape(report["broker"])
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">"
        "<title>bolt weak links</title>"
        f"<style>{STYLE}</style></head><body>"
        "<h1>bolt weak links</h1>"
        f"<p>{report['elapsed_s']:.2f} s of the standard mix on {where}; overall impact "
        f"<strong>{report['overall_impact']:.3f}</strong>.</p>"
        f"<h2>Priorities</h2><table>{head}{rows}</table>"
        f"{figures}<h2>Streams</h2>{_streams(report)}</body></html>\n"
    )


def write_html(target: Path, page: str) -> None:
    """Write the page atomically: a temporary file beside target, then a rename."""
    handle, tmp = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(page)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
