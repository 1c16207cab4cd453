"""`bolt weak-links` on an embedded deployment, its HTML page in headless Chromium, the exporter."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from bolt_tasks.backpressure import QueueLayout, queue_depth
from bolt_tasks.batching import Publisher
from bolt_tasks.settings import Settings
from bolt_tasks.tasks.io import plan_chunks
from bolt_tasks.weaklinks import DEFINITIONS, impact, met

pytestmark = pytest.mark.integration

# On an embedded deployment (workers on this host, a controller, a burst in the mix) these are
# always measurable; buffer misses depend on the workers' once-a-second publishing.
MEASURED_WHEN_EMBEDDED = {
    "throughput",
    "cpu_average",
    "cpu_peak",
    "startup",
    "handshake",
    "activation",
    "queue_peak",
}
BOLT = [sys.executable, "-m", "bolt_tasks.cli"]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--enable-logging=stderr",
    "--v=0",
]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOLT_")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def weak_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, str]:
    """One short run of `bolt weak-links` on an embedded deployment: its JSON, page and output."""
    out = tmp_path_factory.mktemp("weak-links")
    report, page = out / "report.json", out / "report.html"
    done = subprocess.run(
        [*BOLT, "weak-links", "--duration", "3", "--json", str(report), "--html", str(page)],
        env=clean_env(BOLT_CACHE_DIR=str(out / "cache")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(report.read_text()), page, done.stdout


def test_the_report_holds_every_measure_with_its_target_and_impact(weak_run):
    report, _, stdout = weak_run
    defaults = Settings.from_env({})
    measures = {m["key"]: m for m in report["measures"]}
    assert set(measures) == {d.key for d in DEFINITIONS}
    for d in DEFINITIONS:
        m = measures[d.key]
        assert m["target"] == getattr(defaults, d.setting)
        if m["value"] is None:
            assert m["impact"] is None and m["missing"], m
            continue
        assert m["impact"] == pytest.approx(
            impact(m["value"], m["target"], d.better, d.weight), abs=1e-3
        )
        assert m["met"] is met(m["value"], m["target"], d.better)
        assert (m["impact"] == 0) is m["met"], m
    assert {k for k, m in measures.items() if m["value"] is not None} >= MEASURED_WHEN_EMBEDDED
    assert all(s["tasks"] > 0 and s["failed_calls"] == 0 for s in report["streams"].values())
    assert "overall impact" in stdout


def test_the_ranking_follows_the_impacts_and_sums_to_the_overall_impact(weak_run):
    report = weak_run[0]
    impacts = [m["impact"] for m in report["measures"]]
    measured = [i for i in impacts if i is not None]
    assert impacts[: len(measured)] == measured, "missing measures rank after measured ones"
    assert measured == sorted(measured, reverse=True)
    assert report["overall_impact"] == pytest.approx(sum(measured), abs=1e-3)


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium, installed with apt-get when it is missing and this process is root."""
    found = shutil.which("chromium")
    if found is None and os.geteuid() == 0:
        apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([*apt, "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(
            [*apt, "install", "-y", "-qq", "chromium"], env=env, capture_output=True, timeout=900
        )
        found = shutil.which("chromium")
    if found is None:
        pytest.fail("chromium is not installed and could not be: `apt-get install -y chromium`")
    return found


def screenshot(chromium: str, page: Path, shot: Path, profile: Path) -> str:
    """Open page in headless Chromium, save a screenshot, and return its console lines."""
    done = subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={shot}",
            "--window-size=1000,2600",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.exists(), done.stderr[-3000:]
    # Chromium logs every console message (errors, blocked loads, uncaught exceptions) so.
    return "\n".join(line for line in done.stderr.splitlines() if ":CONSOLE" in line)


def coloured_pixels(shot: Path) -> int:
    """Pixels of a clear colour: chart lines and bars (the page's text is black and grey)."""
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    return int((pixels.max(axis=2) - pixels.min(axis=2) > 80).sum())


def test_the_html_report_renders_its_charts_in_chromium_without_errors(
    weak_run, chromium, tmp_path
):
    console = screenshot(chromium, weak_run[1], tmp_path / "report.png", tmp_path / "profile")
    assert console == ""
    assert coloured_pixels(tmp_path / "report.png") > 20_000

    # The same check sees a page that tries the network: the console check can fail.
    bad = tmp_path / "bad.html"
    bad.write_text(
        weak_run[1].read_text().replace("</body>", "<img src='http://x.invalid/a.png'></body>")
    )
    assert ":CONSOLE" in screenshot(chromium, bad, tmp_path / "bad.png", tmp_path / "profile2")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(url: str, process: subprocess.Popen[bytes]) -> dict[tuple[str, tuple], float]:
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, "the exporter exited"
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                text = reply.read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_exporters_queue_length_is_the_depth_of_a_filled_queue(redis_server, tmp_path):
    settings = Settings.from_env({"BOLT_BROKER_URL": redis_server.url})
    publisher = Publisher.from_settings(settings)
    calls = [("/nowhere", [f"f{i}.py"], 40) for i in range(30)]
    publisher.submit_many(plan_chunks, calls[:20], batch_size=1)
    publisher.submit_many(plan_chunks, calls[20:], batch_size=1, priority=9)
    client = redis.Redis.from_url(redis_server.url)
    layout = QueueLayout({"priority_steps": list(settings.broker_priority_steps)})
    assert queue_depth(client, layout, "io") == 30

    port = free_port()
    exporter = subprocess.Popen(
        [*BOLT, "exporter", "--port", str(port)],
        env=clean_env(BOLT_BROKER_URL=redis_server.url),
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        first = scrape(url, exporter)
        assert first[("bolt_up", ())] == 1
        assert first[("bolt_queue_length", (("queue", "io"),))] == 30
        assert first[("bolt_queue_priority_length", (("priority", "9"), ("queue", "io")))] == 10
        client.rpop(layout.key("io", 0), 5)
        assert scrape(url, exporter)[("bolt_queue_length", (("queue", "io"),))] == 25
    finally:
        exporter.terminate()
        exporter.wait(timeout=10)
        client.close()
