"""`bolt cores`: the topology and planned pools as a table or JSON, and bad overrides refused."""

import json
import os

from bolt_tasks.cli import EXIT_USAGE, main
from bolt_tasks.settings import get_settings


def run_cores(monkeypatch, capsys, *args: str, **env: str):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        status = main(["cores", *args])
    finally:
        get_settings.cache_clear()
    return status, capsys.readouterr()


def test_cores_json_shows_the_usable_cpus_and_both_pools_plans(monkeypatch, capsys):
    status, out = run_cores(monkeypatch, capsys, "--json")
    assert status == 0
    report = json.loads(out.out)
    usable = sorted(os.sched_getaffinity(0))
    topology = report["topology"]
    assert sorted(topology["p_cores"] + topology["e_cores"]) == usable
    assert topology["reasons"] and topology["reasons"][0].startswith("affinity mask allows")
    pools = {plan["pool"]: plan for plan in report["pools"]}
    assert pools["p"]["kind"] == "prefork" and pools["e"]["kind"] == "threads"
    assert pools["p"]["queues"] == ["analysis", "computation"]


def test_cores_with_an_override_pins_and_prints_what_it_rests_on(monkeypatch, capsys):
    cpu = str(min(os.sched_getaffinity(0)))
    status, out = run_cores(monkeypatch, capsys, BOLT_P_CORES=cpu, BOLT_P_AUTOSCALE_MAX="3")
    assert status == 0
    assert f"BOLT_P_CORES={cpu}" in out.out
    assert "each child pinned to one P core" in out.out
    assert "autoscaled between 1 and 3 children" in out.out


def test_an_override_naming_a_cpu_out_of_reach_is_one_line_and_status_2(monkeypatch, capsys):
    beyond = str(max(os.sched_getaffinity(0)) + 1)
    status, out = run_cores(monkeypatch, capsys, BOLT_P_CORES=beyond)
    assert status == EXIT_USAGE
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and "BOLT_P_CORES" in lines[0] and "may not use" in lines[0]
