"""From what the weak-link run saw to its readings and its report: measures, series, streams."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from bolt_tasks.names import QUEUES
from bolt_tasks.settings import Settings, mask_url
from bolt_tasks.weaklinks import Reading, ranking, score
from bolt_tasks.weakrun import Observations
from bolt_workers.cpu import average, maximum, per_core_average
from bolt_workers.figures import NodeFigures, Snapshot
from bolt_workers.steal_stats import ACTIVATION_WINDOW_S

# The throughput chart's bars: this many over the run.
THROUGHPUT_BARS = 20


def throughput(obs: Observations) -> Reading:
    """Tasks finished per second, from the run's start to its last result."""
    tasks = sum(tally.tasks for tally in obs.tallies.values())
    if not tasks or obs.elapsed_s <= 0:
        return Reading.absent("no task of the mix finished")
    calls = sum(tally.calls for tally in obs.tallies.values())
    return Reading.of(
        tasks / obs.elapsed_s,
        tasks=tasks,
        calls=calls,
        calls_per_s=round(calls / obs.elapsed_s, 1),
        elapsed_s=round(obs.elapsed_s, 3),
    )


def cpu_readings(obs: Observations) -> dict[str, Reading]:
    """The usable cores' mean and peak CPU use over the run's samples."""
    if not obs.cpu:
        why = obs.cpu_missing or "no CPU sample was taken"
        return {"cpu_average": Reading.absent(why), "cpu_peak": Reading.absent(why)}
    per_core = {str(cpu): round(pct, 1) for cpu, pct in per_core_average(obs.cpu).items()}
    details = {"cores": list(obs.cores), "samples": len(obs.cpu), "per_core_average": per_core}
    return {
        "cpu_average": Reading.of(average(obs.cpu), **details),
        "cpu_peak": Reading.of(maximum(obs.cpu), samples=len(obs.cpu)),
    }


def _node_startup(figures: NodeFigures) -> dict[str, Any]:
    return {
        "startup_ms": figures.startup_ms,
        "processes": [
            {"pid": w.pid, "pool": w.pool, "total_ms": w.total_ms, "steps_ms": w.steps_ms}
            | ({"errors": w.errors} if w.errors else {})
            for w in figures.current_warmups()
        ],
    }


def startup(obs: Observations) -> Reading:
    """The slowest warm start among the live workers' processes, as they published it."""
    after = _after(obs)
    nodes = {node: _node_startup(f) for node, f in after.nodes.items()}
    timed = [n["startup_ms"] for n in nodes.values() if n["startup_ms"] is not None]
    if not timed:
        return Reading.absent("no live worker has published its warm-up timings", nodes=nodes)
    ages = [obs.started_at - f.ready_at for f in after.nodes.values() if f.ready_at is not None]
    started_before_s = round(max(ages), 1) if ages else None
    return Reading.of(max(timed) / 1000, nodes=nodes, started_before_run_s=started_before_s)


def handshake(obs: Observations) -> Reading:
    """The slowest handshake (ready to first result at a producer) of the workers that became
    ready while the run's first tasks waited for them.

    A worker ready before the run had nothing to do until the run began: its time from ready
    to first result holds that idle spell, not the handshake, and is left out.
    """
    nodes = {node: _node_handshake(obs, f) for node, f in _after(obs).nodes.items()}
    timed = [n["handshake_ms"] for n in nodes.values() if n["counted"]]
    if not timed:
        return Reading.absent(
            "no worker became ready while the run's first tasks waited for it (a worker ready "
            "before the run idles until it, and its first result says nothing of a handshake)",
            nodes=nodes,
        )
    return Reading.of(max(timed), nodes=nodes)


def _node_handshake(obs: Observations, figures: NodeFigures) -> dict[str, Any]:
    waited = figures.ready_at is not None and figures.ready_at >= obs.probed_at
    first_here = figures.first_task_id in obs.arrivals
    counted = waited and first_here and figures.handshake_ms is not None
    return {"handshake_ms": figures.handshake_ms, "ready_during_run": waited, "counted": counted}


def activation(obs: Observations, settings: Settings) -> Reading:
    """Steal episodes of the run whose stealer came within the activation window, in percent."""
    before, after = obs.before.steal if obs.before else None, _after(obs).steal
    if before is None:
        return Reading.absent("the stealing counters were not read before the run")
    episodes = after.episodes - before.episodes
    fast = after.fast_activations - before.fast_activations
    activations = after.activations - before.activations
    stolen = {
        queue: after.stolen_tasks.get(queue, 0) - before.stolen_tasks.get(queue, 0)
        for queue in QUEUES
    }
    details = {
        "episodes": episodes,
        "activations": activations,
        "fast_activations": fast,
        "window_s": ACTIVATION_WINDOW_S,
        "stolen_tasks": stolen,
        "burst": obs.burst,
        "recent": [_episode(e) for e in after.recent if e.get("start", 0) >= obs.started_at],
    }
    if episodes <= 0:
        return Reading.absent(
            f"no queue's estimated wait passed BOLT_STEAL_THRESHOLD_S "
            f"({settings.steal_threshold_s:g} s) during the run, so no steal episode began "
            "(is the controller running?)",
            **details,
        )
    return Reading.of(100 * min(fast, episodes) / episodes, **details)


def _episode(episode: dict[str, Any]) -> dict[str, Any]:
    # An episode with no owner slot has an unbounded wait, which JSON cannot hold.
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in episode.items()
    }


def buffer_misses(obs: Observations) -> Reading:
    """Buffer requests of the run that had to allocate afresh, in percent of all requests.

    Workers publish their counters at most once a second, after a task; each process's
    counters after the run less those before it (none before: it had none) are the run's.
    """
    before = {(b.node, b.pid): b for b in (obs.before.buffers if obs.before else ())}
    hits = misses = 0
    processes = {}
    for stats in _after(obs).buffers:
        earlier = before.get((stats.node, stats.pid))
        run_hits = stats.total("hits") - (earlier.total("hits") if earlier else 0)
        run_misses = stats.total("misses") - (earlier.total("misses") if earlier else 0)
        if run_hits or run_misses:
            processes[f"{stats.node}:{stats.pid}"] = {"hits": run_hits, "misses": run_misses}
        hits, misses = hits + run_hits, misses + run_misses
    if not hits + misses:
        why = "no worker published a buffer-pool request made during the run"
        return Reading.absent(why, records=len(_after(obs).buffers))
    share = 100 * misses / (hits + misses)
    return Reading.of(share, hits=hits, misses=misses, processes=processes)


def queue_peak(obs: Observations, settings: Settings) -> Reading:
    """The deepest any queue got during the run, as a share of its depth limit."""
    if not obs.depths:
        return Reading.absent("no queue depth was read during the run")
    peaks = {queue: max(depths.get(queue, 0) for _, depths in obs.depths) for queue in QUEUES}
    limits = {queue: settings.queue_limit(queue) for queue in QUEUES}
    shares = {queue: 100 * peaks[queue] / limits[queue] for queue in QUEUES}
    worst = max(shares, key=shares.__getitem__)
    return Reading.of(shares[worst], queue=worst, peaks=peaks, limits=limits)


def _after(obs: Observations) -> Snapshot:
    if obs.after is None:
        raise ValueError("the run has no snapshot after the mix")
    return obs.after


def readings(obs: Observations, settings: Settings) -> dict[str, Reading]:
    """Every measure's reading from one run."""
    found: dict[str, Callable[[], Reading]] = {
        "throughput": lambda: throughput(obs),
        "startup": lambda: startup(obs),
        "handshake": lambda: handshake(obs),
        "activation": lambda: activation(obs, settings),
        "buffer_misses": lambda: buffer_misses(obs),
        "queue_peak": lambda: queue_peak(obs, settings),
    }
    result = {key: reading() for key, reading in found.items()}
    result.update(cpu_readings(obs))
    return result


def series(obs: Observations) -> dict[str, Any]:
    """What the charts draw: CPU per core, queue depths and throughput over the run."""
    return {"cpu": _cpu_series(obs), "depths": _depth_series(obs), "throughput": _bars(obs)}


def _cpu_series(obs: Observations) -> dict[str, Any]:
    samples = obs.cpu or []
    cores = sorted({cpu for sample in samples for cpu in sample.per_core})
    return {
        "t_s": [round(s.at_s - obs.started, 3) for s in samples],
        "per_core": {str(c): [round(s.per_core.get(c, 0.0), 1) for s in samples] for c in cores},
        "missing": obs.cpu_missing,
    }


def _depth_series(obs: Observations) -> dict[str, Any]:
    return {
        "t_s": [round(at - obs.started, 3) for at, _ in obs.depths],
        "queues": {queue: [depths.get(queue, 0) for _, depths in obs.depths] for queue in QUEUES},
    }


def _bars(obs: Observations) -> dict[str, Any]:
    width_s = max(obs.elapsed_s, 1e-3) / THROUGHPUT_BARS
    counts = [0] * THROUGHPUT_BARS
    for at, tasks in obs.completions:
        counts[min(THROUGHPUT_BARS - 1, int((at - obs.started) / width_s))] += tasks
    return {
        "bar_s": round(width_s, 4),
        "t_s": [round(i * width_s, 3) for i in range(THROUGHPUT_BARS)],
        "tasks_per_s": [round(count / width_s, 1) for count in counts],
    }


def build_report(
    obs: Observations, settings: Settings, duration_s: float, embedded: bool
) -> dict[str, Any]:
    """The weak-link report of one run, as `--json` writes it and the HTML report draws it."""
    scored = score(readings(obs, settings), settings)
    return {
        "broker": mask_url(settings.broker_url),
        "embedded": embedded,
        "duration_s": duration_s,
        "elapsed_s": round(obs.elapsed_s, 3),
        "started_at": round(obs.started_at, 3),
        **ranking(scored),
        "streams": {name: tally.as_dict(obs.elapsed_s) for name, tally in obs.tallies.items()},
        "burst": obs.burst,
        "series": series(obs),
    }
