"""Queue depth as Redis holds it, and publishing that waits for room below a queue's limit."""

from __future__ import annotations

import logging
import time
from bisect import bisect
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from kombu.transport.redis import PRIORITY_STEPS, Channel

from bolt_tasks.errors import BrokerUnavailable, QueueFull, UsageError
from bolt_tasks.settings import Settings, mask_url

log = logging.getLogger("bolt.backpressure")

# The priorities kombu accepts; a message's own is clamped into this range before it is placed.
MIN_PRIORITY, MAX_PRIORITY = 0, 9
# A waiting producer looks again after this long, doubling up to the maximum while it waits.
FIRST_RETRY_S, MAX_RETRY_S = 0.005, 0.1
# Lua's stack takes a few thousand values at once: LPUSH the messages in slices of this many.
PUSH_SLICE = 500

# Counts the queue's messages in every priority list and pushes the new ones only if they all fit
# under the limit, in one step no other client can come between.
# KEYS[1]: the list the messages go to; KEYS[2..]: every list of the queue.
# ARGV[1]: the limit; ARGV[2..]: the messages. Returns {1 if pushed else 0, depth before}.
ADMIT_LUA = f"""
local depth = 0
for i = 2, #KEYS do depth = depth + redis.call('LLEN', KEYS[i]) end
if depth + #ARGV - 1 > tonumber(ARGV[1]) then return {{0, depth}} end
for i = 2, #ARGV, {PUSH_SLICE} do
    redis.call('LPUSH', KEYS[1], unpack(ARGV, i, math.min(i + {PUSH_SLICE - 1}, #ARGV)))
end
return {{1, depth}}
"""


class QueueLayout:
    """Where kombu's Redis transport keeps a queue: one list per priority step, keys prefixed."""

    def __init__(self, transport_options: Mapping[str, Any]) -> None:
        self.prefix: str = transport_options.get("global_keyprefix") or ""
        self.steps: tuple[int, ...] = tuple(
            transport_options.get("priority_steps") or PRIORITY_STEPS
        )
        self.sep: str = transport_options.get("sep") or Channel.sep

    def step(self, priority: int) -> int:
        """The priority step a message of this priority is stored under, as kombu chooses it."""
        clamped = max(min(int(priority), MAX_PRIORITY), MIN_PRIORITY)
        return self.steps[bisect(self.steps, clamped) - 1]

    def key(self, queue: str, priority: int) -> str:
        """The Redis list a message of this priority to this queue goes to."""
        step = self.step(priority)
        return self.prefix + (f"{queue}{self.sep}{step}" if step else queue)

    def keys(self, queue: str) -> list[str]:
        """Every Redis list of the queue, each once, in the order workers read them."""
        return list(dict.fromkeys(self.key(queue, step) for step in self.steps))


def queue_depth(client: redis.Redis, layout: QueueLayout, queue: str) -> int:
    """Messages waiting in a queue: the sum over all its priority lists, in one round trip.

    Messages a worker has taken but not yet acknowledged are not counted: they have left the
    queue, and prefetch is off, so there are at most as many as the pools have slots.
    """
    pipe = client.pipeline(transaction=False)
    for key in layout.keys(queue):
        pipe.llen(key)
    return sum(pipe.execute())


class Backpressure:
    """Publishes a submission's messages whole, or waits for room, or refuses them whole."""

    def __init__(
        self, client: redis.Redis, layout: QueueLayout, settings: Settings, url: str = ""
    ) -> None:
        self.client, self.layout, self.settings, self.url = client, layout, settings, url
        self._admit = client.register_script(ADMIT_LUA)

    def depth(self, queue: str) -> int:
        """The queue's depth as the limit counts it (see queue_depth)."""
        return self._call(queue_depth, self.client, self.layout, queue)

    def make_room(self, queue: str, count: int = 1) -> None:
        """Return once count more messages fit under the queue's limit; QueueFull if they don't.

        A check, not a reservation: publish() checks again as it pushes.
        """
        limit = self.settings.queue_limit(queue)
        depth = self.depth(queue)
        if depth + count > limit:
            self._log_wait(queue, depth, limit, count)
            self._wait_for_room(queue, limit, count, depth, time.monotonic())

    def publish(self, queue: str, priority: int, messages: Sequence[bytes]) -> int:
        """Push messages onto the queue in one round trip once all fit; returns the depth before.

        Raises QueueFull when the queue stays too full for BOLT_QUEUE_WAIT_S, and UsageError
        when the messages could never fit under the queue's limit at once.
        """
        limit = self.settings.queue_limit(queue)
        if len(messages) > limit:
            raise UsageError(
                f"{len(messages)} messages at once can never fit in queue {queue!r}, whose "
                f"limit is {limit}: submit fewer calls, larger batches, or raise BOLT_QUEUE_LIMITS"
            )
        keys = [self.layout.key(queue, priority), *self.layout.keys(queue)]
        started = time.monotonic()
        waiting = False
        while True:
            pushed, depth = self._call(self._admit, keys=keys, args=[limit, *messages])
            if pushed:
                return depth
            if not waiting:
                waiting = True
                self._log_wait(queue, depth, limit, len(messages))
            self._wait_for_room(queue, limit, len(messages), depth, started)

    def _log_wait(self, queue: str, depth: int, limit: int, count: int) -> None:
        log.info(
            "queue %s holds %d of %d messages; waiting up to %.1f s to add %d",
            queue,
            depth,
            limit,
            self.settings.queue_wait_s,
            count,
        )

    def _wait_for_room(
        self, queue: str, limit: int, count: int, depth: int, started: float
    ) -> None:
        wait_s = self.settings.queue_wait_s
        # Poll the depth alone, which is cheap, and send the messages again only once they fit.
        retry_s = FIRST_RETRY_S
        while depth + count > limit:
            waited_s = time.monotonic() - started
            if waited_s >= wait_s:
                raise QueueFull(queue, depth, limit, waited_s)
            time.sleep(min(retry_s, wait_s - waited_s))
            retry_s = min(retry_s * 2, MAX_RETRY_S)
            depth = self.depth(queue)

    def _call(self, command: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            reason = str(exc).split("\n")[0] or type(exc).__name__
            raise BrokerUnavailable(
                f"broker {mask_url(self.url)} does not answer: {reason}"
            ) from None
