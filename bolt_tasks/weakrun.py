"""The weak-link analyzer's run: a standard mix of tasks through a deployment, measured as it goes.

The mix runs for the duration asked, each stream closed-loop (a round is submitted when the last
one has finished, so no queue grows by itself):

- cpu: matrix_checksum (computation), one call per P slot a round;
- analysis: measure_source of bolt's own modules (analysis), one per P slot a round;
- embed: embed_texts of chunks of those modules (computation), into the workers' buffer pools;
- io: plan_chunks of bolt's own modules (io), reading and fingerprinting files, one per E slot;
- micro: plan_job of a ten-file listing (coordination) through submit_many, 25 to a message:
  calls of microseconds, where messaging is all the cost;
- burst: once, at a third of the duration, enough matrix_checksum calls at once on the
  computation queue to hold BURST_WAITS times BOLT_STEAL_THRESHOLD_S of work for the P pool:
  the skew that work stealing is for.

Meanwhile the usable cores' CPU use is sampled (psutil), and the queue depths. Everything the
report holds comes from this run, or from what the workers published (start-up, handshake,
stealing counters), read before and after it.
"""

from __future__ import annotations

import logging
import math
import socket
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bolt_tasks import handshake
from bolt_tasks.app import celery_config
from bolt_tasks.batching import CallError, Publisher, Submission
from bolt_tasks.einstein.chunks import chunk_text
from bolt_tasks.errors import DeploymentError, JobFailed
from bolt_tasks.names import Pool
from bolt_tasks.producer import ping_pools
from bolt_tasks.settings import Settings
from bolt_tasks.tasks.analysis import measure_source
from bolt_tasks.tasks.computation import echo, embed_texts, matrix_checksum
from bolt_tasks.tasks.coordination import plan_job
from bolt_tasks.tasks.io import plan_chunks
from bolt_tasks.tls import redis_client_options
from bolt_workers.cpu import CpuSampler, Sample
from bolt_workers.figures import FigureReader, Snapshot, make_reader
from bolt_workers.topology import detect

log = logging.getLogger("bolt.weaklinks")

# A 50 x 50 product in pure Python: 10 to 20 ms on one core, long enough that messaging is a
# small share of it and short enough that a burst of hundreds drains in seconds.
MATRIX_SIZE = 50
# The micro stream's round: 250 calls, 25 to a message (submit_many's own default), each
# planning a listing of MICRO_FILES files into batches.
MICRO_CALLS, MICRO_BATCH, MICRO_FILES = 250, 25, 10
# Files one plan_chunks call reads.
IO_FILES_PER_CALL = 4
# Chunks one embed_texts call embeds: about a file of bolt's own, a few milliseconds of numpy.
EMBED_CHUNKS_PER_CALL = 32
# The burst comes after a third of the run, when the streams have measured the P pool's pace.
BURST_AT = 1 / 3
# The burst's work in multiples of the steal threshold: clearly past it even when the
# controller's mean run time of the queue is pulled down by shorter tasks, gone in seconds.
BURST_WAITS = 4.0
# Bounds of the burst's size, whatever the measured pace (the upper one: half a queue's limit).
MIN_BURST = 8
# Until a matrix_checksum has come back, its run time is taken as this (the middle of its range).
ASSUMED_MATRIX_S = 0.015
# Queue depths are read ten times a second: a burst's peak is not missed.
DEPTH_INTERVAL_S = 0.1
# One round of a stream finishes within this, or the deployment is not working.
ROUND_TIMEOUT_S = 60.0
# How long the run waits for a worker of each pool to answer and publish its record.
READY_TIMEOUT_S = 30.0
# The run checks the deployment's health this often while the streams work.
WATCH_INTERVAL_S = 0.1
THREAD_PREFIX = "bolt-weak-"
STREAMS = ("cpu", "analysis", "embed", "io", "micro", "burst")
DEPTHS_THREAD = THREAD_PREFIX + "depths"

SOURCE_ROOT = Path(__file__).resolve().parent


def own_sources() -> list[str]:
    """bolt_tasks' own modules, relative to the package: the mix's source text and its files."""
    return sorted(str(p.relative_to(SOURCE_ROOT)) for p in SOURCE_ROOT.rglob("*.py"))


@dataclass
class Tally:
    """What one stream did: tasks (messages) and calls finished, and calls that failed."""

    tasks: int = 0
    calls: int = 0
    failed: int = 0
    rounds: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self, elapsed_s: float) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "calls": self.calls,
            "failed_calls": self.failed,
            "rounds": self.rounds,
            "tasks_per_s": round(self.tasks / elapsed_s, 2) if elapsed_s else None,
            "errors": self.errors[:5],
        }


@dataclass
class Observations:
    """Everything the run saw."""

    started: float
    started_at: float
    ended: float = 0.0
    cores: tuple[int, ...] = ()
    cpu: list[Sample] | None = None
    cpu_missing: str | None = None
    depths: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    completions: list[tuple[float, int]] = field(default_factory=list)
    arrivals: dict[str, float] = field(default_factory=dict)
    probed_at: float = 0.0
    tallies: dict[str, Tally] = field(default_factory=dict)
    burst: dict[str, Any] = field(default_factory=dict)
    before: Snapshot | None = None
    after: Snapshot | None = None

    @property
    def elapsed_s(self) -> float:
        return self.ended - self.started


def slots(snapshot: Snapshot, pool: Pool) -> int:
    """Slots of the live workers of a pool."""
    return sum(f.record.slots for f in snapshot.nodes.values() if f.record.pool is pool)


def remote_nodes(snapshot: Snapshot) -> list[str]:
    """Live workers on another host than this one (psutil cannot see their cores)."""
    here = socket.gethostname()
    return sorted(node for node in snapshot.nodes if node.partition("@")[2] != here)


class MixRun:
    """One run of the standard mix against the broker settings name (see the module docstring)."""

    def __init__(
        self, settings: Settings, duration_s: float, on_wait: Callable[[], None] | None = None
    ) -> None:
        self.settings, self.duration_s, self.on_wait = settings, duration_s, on_wait
        conf = celery_config(settings)
        url = conf["broker_url"]
        self.client = redis.Redis.from_url(url, **redis_client_options(settings, url))
        self.reader: FigureReader = make_reader(self.client, conf["broker_transport_options"])
        self.sources = own_sources()
        self.texts = {path: (SOURCE_ROOT / path).read_text() for path in self.sources}
        self.chunks = [
            chunk.text
            for path, text in self.texts.items()
            for chunk in chunk_text(text, path, settings.chunk_lines)
        ]
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.failures: list[BaseException] = []
        self.matrix_s: list[float] = []

    def run(self) -> Observations:
        """Wait for both pools, run the mix, and read the workers' figures after it."""
        probed_at = time.time()
        arrivals = self._probe()
        self._wait_ready()
        # A fresh look for the workers' per-process records, so "before" holds every one.
        self.reader.rescan()
        before = self.reader.read()
        p_slots, e_slots = slots(before, Pool.P), slots(before, Pool.E)
        obs = Observations(time.monotonic(), time.time(), before=before, arrivals=arrivals)
        obs.probed_at = probed_at
        obs.tallies = {name: Tally() for name in STREAMS}
        self.obs, self.until = obs, obs.started + self.duration_s
        sampler = self._sampler(before, obs)
        streams = self._threads(p_slots, e_slots)
        log.info(
            "weak-link mix for %.1f s on %d P and %d E slots", self.duration_s, p_slots, e_slots
        )
        try:
            self._watch([t for t in streams if t.name != DEPTHS_THREAD])
        finally:
            self.stop.set()
            if sampler is not None:
                obs.cpu = sampler.stop().samples()
        obs.ended = max((t for t, _ in obs.completions), default=time.monotonic())
        obs.after = self._after(obs)
        return obs

    def _probe(self) -> dict[str, float]:
        """One task per pool, published at once: a worker still starting takes it as its first
        task, so the run sees its handshake; returns when each result arrived (epoch)."""
        publisher = Publisher.from_settings(self.settings, self.client)
        # Ordinary one-call messages, published at once (a single submit may linger).
        probes = [
            publisher.submit_many(echo, [(0,)], batch_size=1),
            publisher.submit_many(plan_chunks, [(str(SOURCE_ROOT), self.sources[:1], 1)], 1),
        ]
        arrivals: dict[str, float] = {}

        def wait(submission: Submission) -> None:
            submission.get(timeout=READY_TIMEOUT_S, propagate=False)
            arrivals.update(dict.fromkeys(submission.task_ids, time.time()))

        threads = [
            threading.Thread(target=self._guarded, args=(lambda s=sub: wait(s),), daemon=True)
            for sub in probes
        ]
        for thread in threads:
            thread.start()
        self._watch(threads)
        return arrivals

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        missing: set[str] = {pool.value for pool in Pool}
        while time.monotonic() < deadline:
            if self.on_wait is not None:
                self.on_wait()
            missing = ping_pools(timeout_s=0.25)
            snapshot = self.reader.read()
            missing |= {p.value for p in Pool if not slots(snapshot, p)}
            if not missing:
                return
        raise DeploymentError(
            f"no worker of pool(s) {', '.join(sorted(missing))} answered and published its "
            f"slots within {READY_TIMEOUT_S:g} s"
        )

    def _sampler(self, before: Snapshot, obs: Observations) -> CpuSampler | None:
        remote = remote_nodes(before)
        if remote:
            obs.cpu_missing = (
                f"workers {', '.join(remote)} run on other hosts than {socket.gethostname()}, "
                "whose cores psutil cannot see"
            )
            return None
        obs.cores = detect(self.settings).usable
        return CpuSampler(obs.cores).start()

    def _threads(self, p_slots: int, e_slots: int) -> list[threading.Thread]:
        streams: dict[str, Callable[[], None]] = {
            "cpu": lambda: self._loop("cpu", matrix_checksum, self._matrices(p_slots), 1),
            "analysis": lambda: self._loop("analysis", measure_source, self._texts(p_slots), 1),
            "embed": lambda: self._loop("embed", embed_texts, self._embeds(p_slots), 1),
            "io": lambda: self._loop("io", plan_chunks, self._plans(e_slots), 1),
            "micro": lambda: self._loop("micro", plan_job, self._micro(), MICRO_BATCH),
            "burst": lambda: self._burst(p_slots),
            "depths": self._depths,
        }
        threads = [
            threading.Thread(target=self._guarded, args=(step,), name=THREAD_PREFIX + name)
            for name, step in streams.items()
        ]
        for thread in threads:
            thread.daemon = True
            thread.start()
        return threads

    def _guarded(self, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception as exc:  # the thread's boundary: the main thread raises it
            with self.lock:
                self.failures.append(exc)
            self.stop.set()

    def _watch(self, streams: list[threading.Thread]) -> None:
        """Check the deployment's health until every stream has finished its last round."""
        while any(thread.is_alive() for thread in streams):
            if self.on_wait is not None:
                self.on_wait()
            if self.failures:
                raise self.failures[0]
            time.sleep(WATCH_INTERVAL_S)
        if self.failures:
            raise self.failures[0]

    # -- the streams ------------------------------------------------------------------------

    def _matrices(self, count: int) -> Callable[[int], list[tuple[Any, ...]]]:
        return lambda n: [(MATRIX_SIZE, n * count + i) for i in range(count)]

    def _texts(self, count: int) -> Callable[[int], list[tuple[Any, ...]]]:
        def items(n: int) -> list[tuple[Any, ...]]:
            paths = [self.sources[(n * count + i) % len(self.sources)] for i in range(count)]
            return [(self.texts[path], path) for path in paths]

        return items

    def _embeds(self, count: int) -> Callable[[int], list[tuple[Any, ...]]]:
        def items(n: int) -> list[tuple[Any, ...]]:
            calls = []
            for i in range(count):
                first = (n * count + i) * EMBED_CHUNKS_PER_CALL
                picked = range(first, first + EMBED_CHUNKS_PER_CALL)
                texts = [self.chunks[k % len(self.chunks)] for k in picked]
                calls.append((texts, self.settings.embed_dim))
            return calls

        return items

    def _plans(self, count: int) -> Callable[[int], list[tuple[Any, ...]]]:
        def items(n: int) -> list[tuple[Any, ...]]:
            calls = []
            for i in range(count):
                first = (n * count + i) * IO_FILES_PER_CALL
                paths = [
                    self.sources[(first + k) % len(self.sources)] for k in range(IO_FILES_PER_CALL)
                ]
                calls.append((str(SOURCE_ROOT), paths, self.settings.chunk_lines))
            return calls

        return items

    def _micro(self) -> Callable[[int], list[tuple[Any, ...]]]:
        def items(n: int) -> list[tuple[Any, ...]]:
            first = n * MICRO_CALLS
            return [
                ([[f"m{first + i}/{k}.py", 100 * (k + 1)] for k in range(MICRO_FILES)], 1000)
                for i in range(MICRO_CALLS)
            ]

        return items

    def _loop(
        self, name: str, task: Any, items: Callable[[int], list[Any]], batch_size: int
    ) -> None:
        publisher = Publisher.from_settings(self.settings, self.client)
        number = 0
        while not self.stop.is_set() and time.monotonic() < self.until:
            submission = publisher.submit_many(task, items(number), batch_size=batch_size)
            self._finish(name, submission)
            number += 1

    def _finish(self, name: str, submission: Submission) -> list[Any]:
        results = submission.get(timeout=ROUND_TIMEOUT_S, propagate=False)
        done, done_at = time.monotonic(), time.time()
        errors = [call_failure(name, result) for result in results]
        ok = sum(1 for piece in submission.pieces if _succeeded(piece, errors))
        errors = [error for error in errors if error is not None]
        with self.lock:
            tally = self.obs.tallies[name]
            tally.tasks += ok
            tally.calls += len(results)
            tally.failed += len(errors)
            tally.rounds += 1
            tally.errors.extend(errors[: 5 - len(tally.errors)])
            self.obs.completions.append((done, ok))
            self.obs.arrivals.update(dict.fromkeys(submission.task_ids, done_at))
            if name == "cpu":
                self.matrix_s.extend(r["wall_s"] for r in results if isinstance(r, dict))
        return results

    def _burst(self, p_slots: int) -> None:
        if self.stop.wait(self.duration_s * BURST_AT):
            return
        with self.lock:
            mean_s = statistics.median(self.matrix_s) if self.matrix_s else ASSUMED_MATRIX_S
        limit = self.settings.queue_limit("computation")
        wanted = math.ceil(BURST_WAITS * self.settings.steal_threshold_s * p_slots / mean_s)
        count = max(MIN_BURST, min(wanted, limit // 2))
        self.obs.burst = {
            "queue": "computation",
            "tasks": count,
            "at_s": round(time.monotonic() - self.obs.started, 3),
            "task_s": round(mean_s, 4),
        }
        log.info("weak-link burst: %d tasks of about %.1f ms on computation", count, mean_s * 1e3)
        publisher = Publisher.from_settings(self.settings, self.client)
        seeds = [(MATRIX_SIZE, -1 - i) for i in range(count)]
        self._finish("burst", publisher.submit_many(matrix_checksum, seeds, batch_size=1))

    def _depths(self) -> None:
        while not self.stop.wait(DEPTH_INTERVAL_S):
            depths = self.reader.depths()
            self.obs.depths.append((time.monotonic(), depths))

    # -- after the run ----------------------------------------------------------------------

    def _after(self, obs: Observations) -> Snapshot:
        """The workers' figures after the run, handshakes of the run's first tasks published."""
        self.reader.rescan()
        snapshot = self.reader.read()
        noted = False
        for node, figures in snapshot.nodes.items():
            arrived = obs.arrivals.get(figures.first_task_id or "")
            if arrived is not None and figures.first_task_id:
                handshake.note_result(
                    self.client, node, figures.first_task_id, arrived, self.settings.warmup_ttl_s
                )
                noted = True
        return self.reader.read() if noted else snapshot


def _succeeded(piece: Any, errors: list[str | None]) -> bool:
    return not any(errors[piece.first : piece.first + piece.count])


def call_failure(stream: str, result: Any) -> str | None:
    """Why a call of the mix failed, or None: it raised, or (plan_chunks, which skips files it
    cannot read) it planned fewer of bolt's own files than it was given."""
    if isinstance(result, CallError):
        return str(result)
    if stream == "io" and isinstance(result, list) and len(result) < IO_FILES_PER_CALL:
        return f"the workers could not read bolt's own files under {SOURCE_ROOT}"
    return None


def run_mix(
    settings: Settings, duration_s: float, on_wait: Callable[[], None] | None = None
) -> Observations:
    """Run the standard mix for duration_s and return what it saw; JobFailed if it stalls."""
    run = MixRun(settings, duration_s, on_wait)
    try:
        return run.run()
    except JobFailed as exc:
        raise JobFailed(f"the weak-link mix stalled: {exc}") from None
    finally:
        run.client.close()
