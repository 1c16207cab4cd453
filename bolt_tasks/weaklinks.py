"""The weak-link analyzer's scoring: each measure against its target, an impact, and the ranking.

A measure better when higher (throughput, CPU use, activation rate) misses its target by
``(target - value) / target``; one better when lower (start-up, handshake, misses, queue
peaks) by ``(value - target) / target``. Its impact is that shortfall, never below 0, times its
weight: a met target has impact 0, and the overall impact is the sum over every measure that
was measured. A measure that could not be measured has no value and no impact, only a reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bolt_tasks.settings import Settings

HIGHER, LOWER = "higher", "lower"


@dataclass(frozen=True)
class Definition:
    """What a measure is, which way is better, how much it weighs and its target's setting."""

    key: str
    label: str
    unit: str
    better: str
    weight: float
    setting: str


# The weights say how much a shortfall is felt: throughput, CPU use, start-up and stealing are
# what a user of the deployment notices; the peak CPU sample, the handshake, buffer misses and
# queue peaks explain those four more than they hurt by themselves, so they count half.
DEFINITIONS: tuple[Definition, ...] = (
    Definition("throughput", "throughput", "tasks/s", HIGHER, 1.0, "weak_throughput_target_per_s"),
    Definition("cpu_average", "average CPU use", "%", HIGHER, 1.0, "weak_cpu_target_pct"),
    Definition("cpu_peak", "highest CPU use", "%", HIGHER, 0.5, "weak_cpu_peak_target_pct"),
    Definition("startup", "worker start-up", "s", LOWER, 1.0, "weak_startup_target_s"),
    Definition("handshake", "handshake", "ms", LOWER, 0.5, "weak_handshake_target_ms"),
    Definition(
        "activation", "steal activation rate", "%", HIGHER, 1.0, "weak_activation_target_pct"
    ),
    Definition(
        "buffer_misses", "buffer-pool misses", "%", LOWER, 0.5, "weak_buffer_miss_target_pct"
    ),
    Definition(
        "queue_peak", "queue depth peak", "% of limit", LOWER, 0.5, "weak_queue_peak_target_pct"
    ),
)


@dataclass(frozen=True)
class Reading:
    """What the run measured of one measure: a value, or the reason there is none."""

    value: float | None
    missing: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, value: float, **details: Any) -> Reading:
        """A measured value, with the figures behind it."""
        return cls(float(value), None, details)

    @classmethod
    def absent(cls, why: str, **details: Any) -> Reading:
        """No value: why the run could not measure it."""
        return cls(None, why, details)


def impact(value: float, target: float, better: str, weight: float) -> float:
    """The weighted share by which value misses target; 0 when the target is met."""
    shortfall = (target - value) if better == HIGHER else (value - target)
    return max(0.0, shortfall / target) * weight


def met(value: float, target: float, better: str) -> bool:
    """Whether value meets target: at least it when higher is better, at most it otherwise."""
    return value >= target if better == HIGHER else value <= target


@dataclass(frozen=True)
class Scored:
    """One measure of the run, against its target."""

    definition: Definition
    target: float
    reading: Reading
    impact: float | None

    @property
    def met(self) -> bool | None:
        """Whether the target is met; None when the measure is missing."""
        value = self.reading.value
        return None if value is None else met(value, self.target, self.definition.better)

    def as_dict(self, rank: int) -> dict[str, Any]:
        """The measure as the JSON report holds it."""
        d = self.definition
        return {
            "rank": rank,
            "key": d.key,
            "label": d.label,
            "unit": d.unit,
            "better": d.better,
            "weight": d.weight,
            "value": _rounded(self.reading.value),
            "target": self.target,
            "met": self.met,
            "impact": _rounded(self.impact),
            "missing": self.reading.missing,
            "details": self.reading.details,
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def score(readings: Mapping[str, Reading], settings: Settings) -> list[Scored]:
    """Every measure scored and ranked: measured ones by falling impact, then the missing ones.

    A measure absent from readings is missing too, so the report always holds all of them.
    """
    scored = []
    for d in DEFINITIONS:
        target = float(getattr(settings, d.setting))
        reading = readings.get(d.key) or Reading.absent("the run produced no reading of it")
        value = reading.value
        weight = None if value is None else impact(value, target, d.better, d.weight)
        scored.append(Scored(d, target, reading, weight))
    return sorted(scored, key=_rank_key)


def _rank_key(item: Scored) -> tuple[int, float, float, str]:
    missing = int(item.impact is None)
    return (missing, -(item.impact or 0.0), -item.definition.weight, item.definition.key)


def overall_impact(scored: list[Scored]) -> float:
    """The sum of the impacts of every measured measure."""
    return sum(item.impact for item in scored if item.impact is not None)


def ranking(scored: list[Scored]) -> dict[str, Any]:
    """The measures in rank order and the overall impact, as the JSON report holds them."""
    return {
        "measures": [item.as_dict(rank) for rank, item in enumerate(scored, start=1)],
        "overall_impact": round(overall_impact(scored), 4),
        "missing": [item.definition.key for item in scored if item.impact is None],
    }
