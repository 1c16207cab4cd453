"""The errors bolt raises; every one is a BoltError and reads as one sentence for the user."""

from __future__ import annotations


class BoltError(Exception):
    """Root of every error bolt raises on purpose; the CLI turns it into exit status 2."""


class ConfigError(BoltError):
    """Raised when a BOLT_* variable or a command-line option holds a value bolt cannot use."""


class UsageError(BoltError):
    """Raised when a command is given input it cannot work on (a missing path, say)."""


class BrokerUnavailable(BoltError):
    """Raised when the broker does not answer; the message names its URL, password masked."""


class NoWorkers(BoltError):
    """Raised when no worker of a pool answers on the broker a producer was pointed at."""


class DeploymentError(BoltError):
    """Raised when the embedded deployment (redis-server, workers) cannot be started."""


class JobFailed(BoltError):
    """Raised when a job's task fails in a way the job cannot absorb, or the job times out."""


class QueueFull(BoltError):
    """Raised when a queue stays at its depth limit for longer than a producer may wait."""

    def __init__(self, queue: str, depth: int, limit: int, waited_s: float) -> None:
        self.queue, self.depth, self.limit, self.waited_s = queue, depth, limit, waited_s
        super().__init__(
            f"queue {queue!r} is full: {depth} messages at a limit of {limit} "
            f"after waiting {waited_s:.1f} s; add workers or raise its limit"
        )


class IndexMissing(BoltError):
    """Raised when a search finds no Einstein index: none was built, or it cannot be read."""


class UnserializableArgument(BoltError):
    """Raised at submit when a call's arguments cannot travel as JSON; nothing was published."""


class CallsFailed(BoltError):
    """Raised by a submission's get() when calls raised; it carries every result and error."""

    def __init__(self, errors: list, results: list) -> None:
        self.errors, self.results = errors, results
        super().__init__(f"{len(errors)} of {len(results)} calls failed; the first: {errors[0]}")


class ScheduleTooFar(BoltError):
    """Raised at publish when a countdown or ETA lies beyond the broker's visibility timeout."""


class ResultTooLarge(BoltError):
    """Raised in a task whose result, JSON-encoded, is over BOLT_RESULT_MAX_BYTES."""


class ResultNotJson(BoltError):
    """Raised in a task whose result has no JSON form (a complex number, an object)."""
