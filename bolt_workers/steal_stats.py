"""Work-stealing statistics kept in Redis, and the function that reads them for analysis.

An *episode* is a spell in which a queue's estimated wait passed ``BOLT_STEAL_THRESHOLD_S``; it
ends when the wait falls under half of it again. An *activation* is a stealer starting to
consume the queue during an episode; it counts as fast when it comes within
``ACTIVATION_WINDOW_S`` of the episode's start.

API, for the weak-link analyzer and a metrics exporter::

    steal_statistics(client) -> StealStatistics
        .episodes           episodes since the counters began
        .activations        episodes in which a stealer started consuming
        .fast_activations   activations within ACTIVATION_WINDOW_S of the episode's start
        .activation_rate    fast_activations / episodes (1.0 before any episode)
        .mean_activation_s  mean time from an episode's start to its activation (None if none)
        .steals, .withdrawals   steal orders and withdrawals the controller sent
        .stolen_tasks       {queue: tasks a worker of another pool ran from it}
        .recent             the last episodes, newest first, as dicts with keys queue, start
                            and end (epoch seconds), activation_s, peak_wait_s, stealers, stolen
        .as_metrics()       the same as flat {name: number}, names prefixed bolt_steal_

Storage: the counters are fields of the hash ``STEAL_TOTALS_KEY`` (the workers add their stolen
tasks to it too) and the last ``MAX_EPISODES`` episodes are JSON in the list
``STEAL_EPISODES_KEY``; both expire ``TOTALS_TTL_S`` after their last write.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import redis

from bolt_tasks.names import STEAL_EPISODES_KEY, STEAL_TOTALS_KEY

# An activation this soon after an episode's start counts as fast: two looks of the controller.
ACTIVATION_WINDOW_S = 0.2
# Enough episodes to study a day of bursts, at about 200 bytes each.
MAX_EPISODES = 1000
# A week: statistics outlive a weekend without a job, and go away with a deployment left idle.
TOTALS_TTL_S = 7 * 86400.0

STOLEN_PREFIX = "stolen:"


def stolen_field(queue: str) -> str:
    """The counter of tasks stealers ran from a queue."""
    return STOLEN_PREFIX + queue


@dataclass
class Episode:
    """One spell of a queue's wait above the threshold, as the controller follows it."""

    queue: str
    start: float
    peak_wait_s: float
    stolen_before: int
    activation_s: float | None = None
    end: float | None = None
    stealers: tuple[str, ...] = ()
    stolen: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The episode as the JSON kept among the recent ones."""
        return {
            "queue": self.queue,
            "start": round(self.start, 3),
            "end": None if self.end is None else round(self.end, 3),
            "activation_s": None if self.activation_s is None else round(self.activation_s, 4),
            "peak_wait_s": round(self.peak_wait_s, 3),
            "stealers": list(self.stealers),
            "stolen": self.stolen,
        }


class StealLedger:
    """Writes the controller's episodes and switches to Redis, each in one round trip."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def _add(self, counts: dict[str, float], episode: Episode | None = None) -> None:
        pipe = self.client.pipeline(transaction=False)
        for name, amount in counts.items():
            if isinstance(amount, int):
                pipe.hincrby(STEAL_TOTALS_KEY, name, amount)
            else:
                pipe.hincrbyfloat(STEAL_TOTALS_KEY, name, amount)
        pipe.expire(STEAL_TOTALS_KEY, int(TOTALS_TTL_S))
        if episode is not None:
            pipe.lpush(STEAL_EPISODES_KEY, json.dumps(episode.as_dict()))
            pipe.ltrim(STEAL_EPISODES_KEY, 0, MAX_EPISODES - 1)
            pipe.expire(STEAL_EPISODES_KEY, int(TOTALS_TTL_S))
        pipe.execute()

    def episode_started(self) -> None:
        """Count a new episode."""
        self._add({"episodes": 1})

    def activated(self, latency_s: float) -> None:
        """Count an episode's activation, latency_s after its start."""
        fast = int(latency_s <= ACTIVATION_WINDOW_S)
        self._add({"activations": 1, "fast_activations": fast, "activation_s_total": latency_s})

    def switched(self, steal: bool) -> None:
        """Count a steal order or a withdrawal."""
        self._add({"steals" if steal else "withdrawals": 1})

    def episode_ended(self, episode: Episode) -> None:
        """Keep a finished episode among the recent ones."""
        self._add({}, episode)


@dataclass(frozen=True)
class StealStatistics:
    """Work stealing as Redis has counted it (see the module docstring for each field)."""

    episodes: int = 0
    activations: int = 0
    fast_activations: int = 0
    activation_s_total: float = 0.0
    steals: int = 0
    withdrawals: int = 0
    stolen_tasks: dict[str, int] = field(default_factory=dict)
    recent: list[dict[str, Any]] = field(default_factory=list)

    @property
    def activation_rate(self) -> float:
        """Fast activations per episode; 1.0 before any episode."""
        return self.fast_activations / self.episodes if self.episodes else 1.0

    @property
    def mean_activation_s(self) -> float | None:
        """Mean time from an episode's start to its activation."""
        return self.activation_s_total / self.activations if self.activations else None

    def as_metrics(self) -> dict[str, float]:
        """Flat figures for an exporter: counters, the rate, and stolen tasks per queue."""
        metrics: dict[str, float] = {
            "bolt_steal_episodes": self.episodes,
            "bolt_steal_activations": self.activations,
            "bolt_steal_fast_activations": self.fast_activations,
            "bolt_steal_activation_rate": self.activation_rate,
            "bolt_steal_activation_seconds_total": self.activation_s_total,
            "bolt_steal_steals": self.steals,
            "bolt_steal_withdrawals": self.withdrawals,
        }
        for queue, count in sorted(self.stolen_tasks.items()):
            metrics[f"bolt_steal_stolen_tasks_{queue}"] = count
        return metrics


def steal_statistics(client: redis.Redis, recent: int = 50) -> StealStatistics:
    """Read the stealing statistics (and the last `recent` episodes) in one round trip."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(STEAL_TOTALS_KEY)
    pipe.lrange(STEAL_EPISODES_KEY, 0, max(0, recent - 1))
    totals, episodes = pipe.execute()
    return statistics_from(totals, episodes if recent > 0 else [])


def statistics_from(totals: dict[bytes, bytes], episodes: list[bytes]) -> StealStatistics:
    """StealStatistics from the raw hash and list, as Redis returns them."""
    counts = {name.decode(): value.decode() for name, value in totals.items()}

    def whole(name: str) -> int:
        return int(float(counts.get(name, 0)))

    stolen = {
        name[len(STOLEN_PREFIX) :]: int(value)
        for name, value in counts.items()
        if name.startswith(STOLEN_PREFIX)
    }
    return StealStatistics(
        episodes=whole("episodes"),
        activations=whole("activations"),
        fast_activations=whole("fast_activations"),
        activation_s_total=float(counts.get("activation_s_total", 0.0)),
        steals=whole("steals"),
        withdrawals=whole("withdrawals"),
        stolen_tasks=stolen,
        recent=[json.loads(raw) for raw in episodes],
    )
