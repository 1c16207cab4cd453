"""The autoscaler's rules, and the CPU sampler's figures, without a worker."""

from __future__ import annotations

import time

from bolt_workers.autoscale import Bounds, Figures, decide
from bolt_workers.cpu import CoreMeter, CpuSampler, Sample, average, maximum, per_core_average

BOUNDS = Bounds(low=1, high=4, cpu_target_pct=85.0, cores=4)


def seen(size=2, waiting=0, idle=0, idle_long=0, cpu_pct=50.0) -> Figures:
    return Figures(size, waiting, idle, idle_long, cpu_pct)


def test_waiting_work_below_the_cpu_target_grows_by_the_cores_left_free():
    # 4 cores at 25%: 60 points below the target is room for two more CPU-bound children.
    decision = decide(seen(size=1, waiting=50, cpu_pct=25.0), BOUNDS)
    assert (decision.change, decision.rule) == (2, "grow")
    assert decide(seen(size=3, waiting=50, cpu_pct=10.0), BOUNDS).change == 1  # up to max
    assert decide(seen(size=1, waiting=1, cpu_pct=0.0), BOUNDS).change == 1  # no more than waits
    assert decide(seen(size=2, waiting=9, cpu_pct=84.0), BOUNDS).change == 1  # at least one


def test_waiting_work_on_saturated_cores_holds_and_a_full_pool_never_grows():
    assert decide(seen(size=2, waiting=9, cpu_pct=85.0), BOUNDS).rule == "held"
    assert decide(seen(size=4, waiting=9, cpu_pct=10.0), BOUNDS).rule == "at-max"


def test_a_target_of_100_percent_turns_the_cpu_check_off():
    off = Bounds(low=1, high=4, cpu_target_pct=100.0, cores=2)
    assert decide(seen(size=1, waiting=50, cpu_pct=100.0), off).change == 3


def test_only_children_idle_past_the_keepalive_retire_and_never_below_min():
    assert decide(seen(size=3, idle=2, idle_long=0), BOUNDS).change == 0
    decision = decide(seen(size=3, idle=3, idle_long=3), BOUNDS)
    assert (decision.change, decision.rule) == (-2, "idle")
    assert decide(seen(size=1, idle=1, idle_long=1), BOUNDS).change == 0
    # Work still waiting: an idle moment between two tasks is no reason to retire.
    assert decide(seen(size=3, waiting=2, idle=1, idle_long=1, cpu_pct=99.0), BOUNDS).change == 0


def test_saturated_cores_retire_idle_children_beyond_one_per_core():
    two_cores = Bounds(low=1, high=6, cpu_target_pct=85.0, cores=2)
    decision = decide(seen(size=4, waiting=0, idle=3, cpu_pct=97.0), two_cores)
    assert (decision.change, decision.rule) == (-2, "saturated")
    assert decide(seen(size=2, idle=1, cpu_pct=97.0), two_cores).change == 0


def test_a_size_outside_the_bounds_is_brought_back_using_idle_children_only():
    assert decide(seen(size=0), BOUNDS).change == 1
    assert decide(seen(size=6, idle=1), BOUNDS).change == -1
    assert decide(seen(size=6, idle=0), BOUNDS).change == 0


def test_sample_figures_weigh_each_sample_by_its_length():
    samples = [
        Sample(at_s=1.0, interval_s=1.0, per_core={0: 100.0, 1: 0.0}),
        Sample(at_s=4.0, interval_s=3.0, per_core={0: 100.0, 1: 100.0}),
    ]
    assert average(samples) == (50.0 * 1 + 100.0 * 3) / 4
    assert maximum(samples) == 100.0
    assert per_core_average(samples) == {0: 100.0, 1: 75.0}
    assert average([]) == maximum([]) == 0.0


def test_the_sampler_records_each_chosen_core_between_start_and_stop():
    meter = CoreMeter([0])
    with CpuSampler(interval_s=0.05) as sampler:
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            sum(i * i for i in range(1000))
    samples = sampler.samples()
    assert len(samples) >= 3
    assert all(s.per_core and all(0.0 <= v <= 100.0 for v in s.per_core.values()) for s in samples)
    assert 0.0 < sampler.maximum() <= 100.0 and sampler.average() <= sampler.maximum()
    assert set(meter.read().per_core) == {0}


class FakeChild:
    """A pool child as billiard shows it to the autoscaler."""

    def __init__(self, pid: int) -> None:
        self.pid, self.inqW_fd = pid, 100 + pid
        self.exitcode, self._controlled_termination = None, False

    def terminate_controlled(self) -> None:
        self._controlled_termination = True


class FakeJob:
    def __init__(self, acked_by=None, scheduled_for=None, write_to=None) -> None:
        self._worker_pid, self._scheduled_for, self._write_to = acked_by, scheduled_for, write_to

    def ready(self) -> bool:
        return False

    def worker_pids(self) -> list[int]:
        return [self._worker_pid] if self._worker_pid else []


def fake_autoscaler(children, jobs, busy_fds=()):
    from types import SimpleNamespace

    from kombu.common import QoS

    from bolt_tasks.settings import Settings
    from bolt_workers.autoscale import PressureAutoscaler

    inner = SimpleNamespace(
        _pool=children,
        _cache=dict(enumerate(jobs)),
        _busy_workers=set(busy_fds),
        _all_inqueues={child.inqW_fd for child in children},
        _processes=len(children),
        _putlock=None,
        on_shrink=lambda n: None,
    )
    pool = type(
        "Pool", (), {"_pool": inner, "num_processes": property(lambda _: inner._processes)}
    )()
    qos = QoS(lambda prefetch_count: None, 4)
    consumer = SimpleNamespace(qos=qos, prefetch_multiplier=1, initial_prefetch_count=4)
    worker = SimpleNamespace(consumer=consumer)
    settings = Settings.from_env({"BOLT_P_AUTOSCALE_MAX": "4", "BOLT_WORKER_RESERVE": "0"})
    return PressureAutoscaler(pool, 4, 1, worker=worker, settings=settings), inner, qos


def test_only_a_child_with_no_job_acked_scheduled_or_written_is_retired():
    acked, scheduled, written, busy, idle = (FakeChild(pid) for pid in (1, 2, 3, 4, 5))
    jobs = [FakeJob(acked_by=1), FakeJob(scheduled_for=scheduled), FakeJob(write_to=written)]
    scaler, inner, qos = fake_autoscaler(
        [acked, scheduled, written, busy, idle], jobs, busy_fds=[busy.inqW_fd]
    )
    assert scaler.idle_children() == [idle]
    assert scaler._shrink(4) == 1
    assert idle._controlled_termination and inner._processes == 4
    assert not any(c._controlled_termination for c in (acked, scheduled, written, busy))
    # Celery started the limit at the maximum, 4; the pool's size is now 4 too.
    assert qos.value == 4


def test_the_reservation_limit_follows_the_pool_size_and_keeps_eta_raises():
    children = [FakeChild(pid) for pid in (1, 2, 3)]
    scaler, inner, qos = fake_autoscaler(children, [])
    qos.increment_eventually(1)  # Celery holding one task for a later ETA
    assert scaler._shrink(2) == 2 and inner._processes == 1
    assert qos.value == 1 + 1


def test_the_reserve_rides_on_top_of_the_pool_size():
    children = [FakeChild(pid) for pid in (1, 2, 3)]
    scaler, inner, qos = fake_autoscaler(children, [])
    scaler.reserve = 1
    assert scaler._shrink(2) == 2 and inner._processes == 1
    assert qos.value == 1 + 1
