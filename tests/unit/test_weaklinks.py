"""Weak-link scoring on fixed readings, the figures bolt reads from Redis, and the report page."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fakeredis import FakeRedis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from bolt_tasks.backpressure import QueueLayout
from bolt_tasks.batching import CallError
from bolt_tasks.cli import EXIT_USAGE, main
from bolt_tasks.names import STEAL_TOTALS_KEY, buffers_key, warmup_key
from bolt_tasks.settings import Settings
from bolt_tasks.weaklinks import DEFINITIONS, HIGHER, LOWER, Reading, impact, ranking, score
from bolt_tasks.weakreport import render_html
from bolt_tasks.weakrun import IO_FILES_PER_CALL, call_failure
from bolt_workers.exporter import BoltCollector
from bolt_workers.figures import FigureReader, buffers_from, warmup_from

SETTINGS = Settings.from_env({})
ROOT = Path(__file__).parents[2]


def test_a_shortfall_is_its_share_of_the_target_times_the_weight():
    assert impact(60.0, 80.0, HIGHER, 1.0) == pytest.approx(0.25)
    assert impact(1.5, 1.0, LOWER, 1.0) == pytest.approx(0.5)
    assert impact(750.0, 500.0, LOWER, 0.5) == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("value", "target", "better"),
    [(80.0, 80.0, HIGHER), (95.0, 80.0, HIGHER), (1.0, 1.0, LOWER), (0.2, 1.0, LOWER)],
)
def test_a_met_target_has_impact_zero(value, target, better):
    assert impact(value, target, better, 1.0) == 0.0


def fixed_readings() -> dict[str, Reading]:
    return {
        "throughput": Reading.of(50.0),  # half the 100/s target: 0.5 x 1.0
        "cpu_average": Reading.of(90.0),  # met
        "cpu_peak": Reading.of(76.0),  # (95 - 76) / 95 x 0.5 = 0.1
        "startup": Reading.of(1.25),  # 0.25 x 1.0
        "handshake": Reading.of(100.0),  # met
        "buffer_misses": Reading.absent("no request"),
        "queue_peak": Reading.of(80.0),  # (80 - 50) / 50 x 0.5 = 0.3
    }


def test_the_ranking_follows_the_impacts_and_the_missing_come_last_with_their_reason():
    scored = score(fixed_readings(), SETTINGS)
    report = ranking(scored)
    keys = [m["key"] for m in report["measures"]]
    assert keys[:4] == ["throughput", "queue_peak", "startup", "cpu_peak"]
    assert set(keys) == {d.key for d in DEFINITIONS}
    by_key = {m["key"]: m for m in report["measures"]}
    assert by_key["throughput"]["impact"] == pytest.approx(0.5)
    assert by_key["cpu_peak"]["impact"] == pytest.approx(0.1)
    assert by_key["cpu_average"]["impact"] == 0 and by_key["cpu_average"]["met"] is True
    assert report["overall_impact"] == pytest.approx(0.5 + 0.3 + 0.25 + 0.1)
    # activation was not in the readings at all: missing, like buffer_misses, never assumed
    assert report["missing"] == ["activation", "buffer_misses"]
    assert by_key["buffer_misses"]["impact"] is None and by_key["buffer_misses"]["value"] is None
    assert by_key["buffer_misses"]["missing"] == "no request"
    assert [m["rank"] for m in report["measures"]] == list(range(1, len(DEFINITIONS) + 1))


def test_targets_come_from_settings():
    settings = Settings.from_env({"BOLT_WEAK_STARTUP_TARGET_S": "2.5"})
    by_key = {s.definition.key: s for s in score({"startup": Reading.of(2.0)}, settings)}
    assert by_key["startup"].target == 2.5 and by_key["startup"].impact == 0


def test_the_published_warmup_and_buffer_records_are_decoded():
    warm = warmup_from(
        {
            b"node": b"p@h",
            b"pid": b"12",
            b"started_at": b"100.5",
            b"total_ms": b"130.0",
            b"index_ms": b"1.5",
            b"buffers_ms": b"20.0",
            b"index_error": b"IndexMissing: none",
        }
    )
    assert warm is not None and warm.total_ms == 130.0 and warm.pid == 12
    assert warm.steps_ms == {"index": 1.5, "buffers": 20.0}
    assert warm.errors == {"index": "IndexMissing: none"}
    stats = buffers_from(
        {
            b"node": b"p@h",
            b"pid": b"12",
            b"embedding_matrix_hits": b"7",
            b"embedding_matrix_misses": b"2",
            b"search_results_in_use": b"1",
            b"temporary_hits": b"3",
        }
    )
    assert stats is not None
    assert stats.types["embedding_matrix"] == {"hits": 7, "misses": 2}
    assert stats.types["search_results"] == {"in_use": 1}
    assert stats.total("hits") == 10 and stats.total("misses") == 2


def test_the_collector_counts_every_priority_list_of_a_queue():
    client = FakeRedis()
    layout = QueueLayout({"priority_steps": [0, 3, 6, 9]})
    client.lpush(layout.key("io", 0), *[b"m"] * 4)
    client.lpush(layout.key("io", 9), *[b"m"] * 3)
    client.hset(
        warmup_key("e@h", 5), mapping={"node": "e@h", "pid": 5, "started_at": 1.0, "total_ms": 90.0}
    )
    client.hset(buffers_key("e@h", 5), mapping={"node": "e@h", "pid": 5, "temporary_hits": 3})
    collector = BoltCollector(FigureReader(client, layout), SETTINGS, "redis://h/0")
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("bolt_queue_length", (("queue", "io"),))] == 7
    assert samples[("bolt_queue_priority_length", (("priority", "9"), ("queue", "io")))] == 3
    assert samples[("bolt_up", ())] == 1
    hits = (
        "bolt_buffer_requests_total",
        (("node", "e@h"), ("outcome", "hit"), ("type", "temporary")),
    )
    assert samples[hits] == 3


def test_the_report_page_is_self_contained_with_four_charts():
    report = {
        "embedded": True,
        "broker": "redis://127.0.0.1:1/0",
        "elapsed_s": 3.0,
        **ranking(score(fixed_readings(), SETTINGS)),
        "streams": {"cpu": {"tasks": 3, "calls": 3, "failed_calls": 0}},
        "burst": {"at_s": 1.0},
        "series": {
            "cpu": {"t_s": [0.25, 0.5], "per_core": {"0": [50.0, 70.0]}, "missing": None},
            "depths": {"t_s": [0.1, 0.2], "queues": {"io": [1, 4]}},
            "throughput": {"bar_s": 1.5, "t_s": [0.0, 1.5], "tasks_per_s": [2.0, 4.0]},
        },
    }
    page = render_html(report)
    assert page.count("<svg") == 4
    assert "Content-Security-Policy" in page
    assert "src=" not in page and "<link" not in page and "<script" not in page


def test_an_html_report_into_a_missing_folder_is_refused_before_any_work(tmp_path, capsys):
    assert main(["weak-links", "--html", str(tmp_path / "no" / "r.html")]) == EXIT_USAGE
    assert "--html" in capsys.readouterr().err


def test_the_exporter_refuses_a_bad_port_and_a_missing_broker_with_status_2(capsys):
    assert main(["exporter", "--port", "70000"]) == EXIT_USAGE
    assert "70000" in capsys.readouterr().err
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOLT_")}
    done = subprocess.run(
        [sys.executable, "-m", "bolt_tasks.cli", "exporter"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == EXIT_USAGE
    assert done.stderr.strip().count("\n") == 0 and "BOLT_BROKER_URL" in done.stderr


def test_every_bolt_metric_the_grafana_dashboard_draws_is_one_the_exporter_serves():
    client = FakeRedis()
    client.hset(STEAL_TOTALS_KEY, mapping={"episodes": 1, "fast_activations": 1})
    layout = QueueLayout({"priority_steps": [0, 3, 6, 9]})
    collector = BoltCollector(FigureReader(client, layout), SETTINGS, "redis://h/0")
    served = {family.name for family in collector.collect()}
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/bolt.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    drawn = {re.sub("_total$", "", name) for e in exprs for name in re.findall(r"bolt_\w+", e)}
    assert drawn and drawn <= served, drawn - served
    assert all(p["datasource"]["uid"] == "prometheus" for p in dashboard["panels"])


def test_a_mix_call_fails_when_it_raised_or_its_workers_could_not_read_the_files():
    assert call_failure("io", [["cli.py", "ab", [[1, 40]]]]) is not None
    assert call_failure("io", [["f.py", "ab", []]] * IO_FILES_PER_CALL) is None
    assert call_failure("cpu", {"checksum": 1}) is None
    assert "ZeroDivisionError" in call_failure("cpu", CallError(3, "ZeroDivisionError", "x"))
