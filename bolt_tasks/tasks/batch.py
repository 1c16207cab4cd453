"""The batch runner of each kind: many calls of one task in one message, each error its own."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from kombu.utils.json import dumps

from bolt_tasks.app import KIND_OF_TASK, app, bolt_task
from bolt_tasks.errors import UsageError
from bolt_tasks.names import Kind

log = logging.getLogger("bolt.batch")

# What a batch returns: {"values": [one per call], "errors": [[index, type, message], ...]}; a
# call that raised holds None among the values and its index in the batch among the errors.
VALUES, ERRORS = "values", "errors"


def run_calls(fn: Callable[..., Any], calls: Sequence[Sequence[Any]]) -> dict[str, list[Any]]:
    """Run each [args, kwargs] call of fn in turn; a call that raises does not stop the others."""
    values: list[Any] = []
    errors: list[list[Any]] = []
    for index, (args, kwargs) in enumerate(calls):
        try:
            values.append(fn(*args, **kwargs))
        except Exception as exc:  # one call's failure is its result; its neighbours run on
            log.warning("call %d of a batch of %s raised %r", index, fn.__name__, exc)
            values.append(None)
            errors.append([index, type(exc).__name__, str(exc)])
    _drop_unencodable(values, errors)
    return {VALUES: values, ERRORS: errors}


def _drop_unencodable(values: list[Any], errors: list[list[Any]]) -> None:
    # A value the result backend cannot encode would fail the whole batch; make it that call's
    # error instead. One trial encoding of the batch is cheap beside storing it.
    try:
        dumps(values)
        return
    except (TypeError, ValueError):
        pass
    for index, value in enumerate(values):
        try:
            dumps(value)
        except (TypeError, ValueError) as exc:
            values[index] = None
            errors.append([index, type(exc).__name__, f"its result cannot be stored: {exc}"])
    errors.sort()


def target(task_name: str, kind: Kind) -> Callable[..., Any]:
    """The function of a registered task of this kind, called directly by the batch runner."""
    if KIND_OF_TASK.get(task_name) is not kind or task_name not in app.tasks:
        raise UsageError(f"{task_name!r} is not a registered task of kind {kind.value}")
    return app.tasks[task_name].run


def _runner(kind: Kind) -> Any:
    def run_batch(task_name: str, calls: list[list[Any]]) -> dict[str, list[Any]]:
        """Run a batch of [args, kwargs] calls of one task of this kind in one loop."""
        return run_calls(target(task_name, kind), calls)

    return bolt_task(kind)(run_batch)


# One runner per kind, so that a batch travels on the queue of the task it calls.
RUNNERS: dict[Kind, Any] = {kind: _runner(kind) for kind in Kind}
