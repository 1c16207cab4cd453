"""The controller's estimate, hysteresis and repairs, and the records it reads, on fakeredis."""

from __future__ import annotations

import contextlib
import json
import math

import fakeredis
import pytest

from bolt_tasks.backpressure import QueueLayout
from bolt_tasks.names import (
    STEAL_COMMAND,
    STEAL_EPISODES_KEY,
    STEAL_TOTALS_KEY,
    WORKERS_INDEX_KEY,
    Pool,
    service_key,
    worker_record_key,
)
from bolt_tasks.settings import Settings
from bolt_workers import stats
from bolt_workers.controller import (
    STEAL,
    WITHDRAW,
    Controller,
    Estimate,
    Look,
    QueueState,
    decide,
    episode_start,
    estimate,
    read_look,
    wait_s,
)
from bolt_workers.steal_stats import MAX_EPISODES, StealLedger, steal_statistics

NOW = 1_800_000_000.0
LAYOUT = QueueLayout({"priority_steps": [0, 3, 6, 9]})


def record(node: str, pool: Pool, slots: int, busy: int = 0, stolen=None, boot="b1"):
    own = ("analysis", "computation") if pool is Pool.P else ("coordination", "io")
    return stats.WorkerRecord(node, pool, slots, busy, own, stolen or {}, boot, NOW)


def look(depth: int, mean_s: float | None, *workers: stats.WorkerRecord) -> Look:
    depths = {"analysis": depth, "computation": 0, "io": 0, "coordination": 0}
    means = {"analysis": mean_s, "computation": None, "io": None, "coordination": None}
    stolen = dict.fromkeys(depths, 0)
    return Look(NOW, depths, {w.node: w for w in workers}, means, stolen, ())


def est(wait: float, free: int = 4) -> Estimate:
    return Estimate("analysis", 10, 0.03, True, 2, wait, free, ("e@h",))


def test_the_wait_is_depth_times_mean_over_slots_and_unbounded_without_slots():
    assert wait_s(100, 0.03, 2) == pytest.approx(1.5)
    assert wait_s(0, 0.03, 0) == 0.0
    assert math.isinf(wait_s(5, 0.03, 0))


def test_the_estimate_counts_only_the_owner_pools_slots_and_the_others_free_ones():
    p1, p2 = record("p1", Pool.P, 2, busy=2), record("p2", Pool.P, 2, busy=1)
    e1 = record("e1", Pool.E, 4, busy=1, stolen={"analysis": NOW})
    found = estimate("analysis", look(40, 0.05, p1, p2, e1), fallback_mean_s=0.2)
    assert found.owner_slots == 4
    assert found.wait_s == pytest.approx(40 * 0.05 / 4)
    assert found.free_elsewhere == 3
    assert found.stealers == ("e1",)
    assert "40 waiting x 50.0 ms (measured) / 4 P slots" in found.explain()


def test_an_unmeasured_queue_is_assumed_to_cost_the_fallback():
    found = estimate("analysis", look(10, None, record("p1", Pool.P, 2)), fallback_mean_s=0.2)
    assert found.wait_s == pytest.approx(1.0) and not found.measured


def test_steal_needs_a_wait_over_the_threshold_and_a_free_slot_elsewhere():
    idle = QueueState()
    assert decide(idle, est(0.6), NOW, 0.5, 1.0) == STEAL
    assert decide(idle, est(0.4), NOW, 0.5, 1.0) is None
    assert decide(idle, est(5.0, free=0), NOW, 0.5, 1.0) is None


def test_withdraw_needs_half_the_threshold_and_the_hold_time():
    stealing = QueueState(stealing_since=NOW)
    assert decide(stealing, est(0.3), NOW + 5, 0.5, 1.0) is None
    assert decide(stealing, est(0.2), NOW + 0.5, 0.5, 1.0) is None
    assert decide(stealing, est(0.2), NOW + 1.0, 0.5, 1.0) == WITHDRAW


def test_a_wait_wobbling_around_the_threshold_switches_once_not_every_look():
    state, switches = QueueState(), 0
    for tick in range(100):
        wait = 0.5 + (0.08 if tick % 2 else -0.08)
        action = decide(state, est(wait), NOW + tick * 0.1, 0.5, 1.0)
        if action == STEAL:
            state.stealing_since, switches = NOW + tick * 0.1, switches + 1
        elif action == WITHDRAW:
            state.stealing_since, switches = None, switches + 1
    assert switches == 1


def test_a_wait_swinging_across_the_whole_band_switches_at_most_once_per_hold():
    state, switches = QueueState(), 0
    for tick in range(100):  # 10 s of looks, the wait jumping between 0.1 s and 2 s
        now = NOW + tick * 0.1
        action = decide(state, est(2.0 if tick % 2 else 0.1), now, 0.5, 1.0)
        if action is not None:
            state.stealing_since = now if action == STEAL else None
            switches += 1
    assert 2 <= switches <= 2 * 10 / 1.0 + 1


def test_an_episode_starts_where_the_estimates_cross_the_threshold():
    state = QueueState(last_wait_s=0.0, last_at=NOW)
    assert episode_start(state, 1.0, NOW + 0.1, 0.5) == pytest.approx(NOW + 0.05)
    assert episode_start(QueueState(), 1.0, NOW, 0.5) == NOW
    assert episode_start(state, math.inf, NOW + 0.1, 0.5) == NOW


def test_a_process_writes_its_run_times_in_batches_and_the_mean_weighs_samples():
    client = fakeredis.FakeRedis()
    recorder = stats.ServiceRecorder(frozenset({"io"}), interval_s=60.0)
    assert recorder.note("analysis", 0.03, 0.03) is True  # a new queue: write at once
    recorder.flush(client, "e@h:0")
    assert recorder.note("analysis", 0.05, 0.04) is False  # within the interval: later
    recorder.flush(client, "e@h:0")
    figures = stats.decode_service(client.hgetall(service_key("analysis")))
    assert figures["e@h:0"].samples == 2
    assert figures["e@h:0"].mean_s == pytest.approx(0.03 + 0.2 * 0.02)
    assert figures["e@h:0"].cpu_s == pytest.approx(0.07)
    assert client.ttl(service_key("analysis")) > 0
    assert int(client.hget(STEAL_TOTALS_KEY, "stolen:analysis")) == 2
    old = stats.ServiceFigure(9.0, 5, NOW - 7200, 0.0)
    young = stats.ServiceFigure(0.1, 1, NOW, 0.0)
    assert stats.mean_service_s([old, young], NOW, 3600) == pytest.approx(0.1)
    assert stats.mean_service_s([old], NOW, 3600) is None


def test_a_worker_record_round_trips_expires_and_is_indexed():
    client = fakeredis.FakeRedis()
    rec = record("e@h", Pool.E, 4, busy=1, stolen={"analysis": NOW})
    stats.publish_record(client, rec, ttl_s=1.0)
    assert stats.WorkerRecord.decoded(client.get(worker_record_key("e@h"))) == rec
    assert 0 < client.pttl(worker_record_key("e@h")) <= 1000
    assert client.zrange(WORKERS_INDEX_KEY, 0, -1) == [b"e@h"]
    assert client.pttl(WORKERS_INDEX_KEY) > 0
    assert stats.WorkerRecord.decoded(b"not json") is None


def test_one_look_sums_every_priority_list_and_finds_new_workers():
    client = fakeredis.FakeRedis()
    client.lpush("analysis", "a", "b")
    client.lpush("analysis\x06\x163", "c")
    client.lpush("io\x06\x169", "d")
    stats.publish_record(client, record("p@h", Pool.P, 2), ttl_s=10)
    seen = read_look(client, LAYOUT, known=(), now=NOW)
    assert seen.depths == {"analysis": 3, "computation": 0, "io": 1, "coordination": 0}
    assert set(seen.workers) == {"p@h"} and seen.nodes == ("p@h",)


class RecordingControl:
    """Records the broadcasts a controller sends; answers inspections with `answers`."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict, list[str]]] = []
        self.answers: list[dict] = []

    def broadcast(self, command, arguments=None, destination=None, reply=False, **_):
        self.sent.append((command, dict(arguments or {}), list(destination or [])))
        return self.answers if reply else None


class AppWithControl:
    """What the controller uses of a Celery app: its control, its transport options and a
    connection to pass the control."""

    def __init__(self) -> None:
        self.control = RecordingControl()
        self.conf = type("Conf", (), {"broker_transport_options": {}})()
        self.connections = 0

    def connection_for_write(self):
        self.connections += 1
        return contextlib.nullcontext()


def steals(app: AppWithControl) -> list[tuple[list[str], list[str]]]:
    return [(args["queues"], dest) for cmd, args, dest in app.control.sent if cmd == STEAL_COMMAND]


def make(client) -> tuple[Controller, AppWithControl]:
    app = AppWithControl()
    settings = Settings.from_env({"BOLT_STEAL_REPAIR_INTERVAL_S": "2"})
    return Controller(settings, app, client), app


def publish(client, rec: stats.WorkerRecord) -> None:
    stats.publish_record(client, rec, ttl_s=60)


def test_a_backlog_is_stolen_then_given_back_and_the_episode_is_counted():
    client = fakeredis.FakeRedis()
    controller, app = make(client)
    controller.last_audit = math.inf  # no inspections in this test
    publish(client, record("p@h", Pool.P, 2))
    publish(client, record("e@h", Pool.E, 4))
    client.hset(service_key("analysis"), "p@h:0", f"0.030000 50 {NOW:.3f} 1.5")
    client.lpush("analysis", *range(100))
    controller.tick(NOW)
    assert steals(app) == [(["analysis"], ["e@h"])]
    publish(client, record("e@h", Pool.E, 4, stolen={"analysis": NOW + 0.05}))
    controller.tick(NOW + 0.1)
    client.delete("analysis")
    controller.tick(NOW + 0.5)  # drained, but within the hold time
    assert len(steals(app)) == 1
    controller.tick(NOW + 1.2)
    assert steals(app)[-1] == ([], ["e@h"])
    counted = steal_statistics(client)
    assert (counted.episodes, counted.activations, counted.fast_activations) == (1, 1, 1)
    assert counted.activation_rate == 1.0
    assert (counted.steals, counted.withdrawals) == (1, 1)
    assert counted.recent[0]["queue"] == "analysis" and counted.recent[0]["end"] is not None


def test_an_episode_without_a_free_slot_elsewhere_counts_against_the_rate():
    client = fakeredis.FakeRedis()
    controller, app = make(client)
    controller.last_audit = math.inf
    publish(client, record("p@h", Pool.P, 2))
    publish(client, record("e@h", Pool.E, 4, busy=4))
    client.lpush("analysis", *range(100))
    controller.tick(NOW)
    client.delete("analysis")
    controller.tick(NOW + 0.1)
    assert steals(app) == []
    counted = steal_statistics(client)
    assert (counted.episodes, counted.activations, counted.activation_rate) == (1, 0, 0.0)


def test_a_restarted_stealer_is_ordered_again_at_once():
    client = fakeredis.FakeRedis()
    controller, app = make(client)
    controller.last_audit = math.inf
    publish(client, record("p@h", Pool.P, 1))
    publish(client, record("e@h", Pool.E, 4))
    client.lpush("analysis", *range(100))
    controller.tick(NOW)
    publish(client, record("e@h", Pool.E, 4, stolen={"analysis": NOW}))
    controller.tick(NOW + 0.1)
    controller.tick(NOW + 0.2)
    assert len(steals(app)) == 1  # it steals as told: nothing more to say
    publish(client, record("e@h", Pool.E, 4, boot="b2"))  # back after a restart, stealing nothing
    controller.tick(NOW + 0.3)
    assert steals(app)[-1] == (["analysis"], ["e@h"])


def test_a_worker_that_answers_otherwise_than_ordered_is_repaired_by_the_audit():
    client = fakeredis.FakeRedis()
    controller, app = make(client)
    publish(client, record("p@h", Pool.P, 1))
    publish(client, record("e@h", Pool.E, 4))
    client.lpush("analysis", *range(100))
    controller.tick(NOW)  # orders e@h to steal; the audit runs too
    publish(client, record("e@h", Pool.E, 4, stolen={"analysis": NOW}))
    app.control.answers = [{"e@h": {"own": ["coordination", "io"], "stolen": []}}]
    controller.tick(NOW + 2.5)
    assert steals(app)[-1] == (["analysis"], ["e@h"])
    assert len(steals(app)) == 2


def test_the_ledger_keeps_a_bounded_expiring_list_of_episodes():
    from bolt_workers.steal_stats import Episode

    client = fakeredis.FakeRedis()
    ledger = StealLedger(client)
    for index in range(MAX_EPISODES + 5):
        ledger.episode_ended(Episode("io", NOW + index, 1.0, 0, end=NOW + index + 1))
    ledger.activated(0.5)
    assert client.llen(STEAL_EPISODES_KEY) == MAX_EPISODES
    assert client.ttl(STEAL_EPISODES_KEY) > 0 and client.ttl(STEAL_TOTALS_KEY) > 0
    counted = steal_statistics(client, recent=3)
    assert len(counted.recent) == 3 and json.dumps(counted.recent)
    assert counted.fast_activations == 0 and counted.mean_activation_s == pytest.approx(0.5)
    assert counted.as_metrics()["bolt_steal_activations"] == 1


def test_an_order_the_worker_never_applied_is_sent_again_after_half_a_second():
    client = fakeredis.FakeRedis()
    controller, app = make(client)
    controller.last_audit = math.inf
    publish(client, record("p@h", Pool.P, 1))
    publish(client, record("e@h", Pool.E, 4))
    client.lpush("analysis", *range(100))
    controller.tick(NOW)
    controller.tick(NOW + 0.3)
    assert len(steals(app)) == 1
    controller.tick(NOW + 0.6)  # its record still shows nothing stolen: the order was lost
    assert steals(app) == [(["analysis"], ["e@h"])] * 2


def test_the_controller_command_refuses_to_start_without_a_reachable_broker(capsys):
    from bolt_tasks.cli import main

    assert main(["controller"]) == 2
    assert "bolt controller needs a broker" in capsys.readouterr().err
    assert main(["controller", "--broker", "redis://127.0.0.1:1/0"]) == 2
    assert "does not answer" in capsys.readouterr().err
