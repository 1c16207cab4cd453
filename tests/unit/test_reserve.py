"""A worker holds its reserve of messages beyond its pool size once it is ready."""

from types import SimpleNamespace

from bolt_workers.startup import hold_reserve


class FakeQoS:
    def __init__(self) -> None:
        self.raised = 0

    def increment_eventually(self, n: int) -> None:
        self.raised += n


def test_the_reserve_raises_the_limit_and_the_recorded_initial_count_together():
    consumer = SimpleNamespace(qos=FakeQoS(), initial_prefetch_count=2)
    hold_reserve(1, sender=consumer)
    assert consumer.qos.raised == 1 and consumer.initial_prefetch_count == 3


def test_a_reserve_of_zero_leaves_the_limit_alone():
    consumer = SimpleNamespace(qos=FakeQoS(), initial_prefetch_count=2)
    hold_reserve(0, sender=consumer)
    assert consumer.qos.raised == 0 and consumer.initial_prefetch_count == 2
