"""The Celery app every bolt process shares, and the decorator that declares a task's kind."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from celery import Celery
from kombu import Queue

from bolt_tasks import delivery
from bolt_tasks.errors import ConfigError
from bolt_tasks.names import QUEUE_OF_KIND, QUEUES, Kind
from bolt_tasks.settings import Settings, get_settings

# Filled by @bolt_task as modules are imported: task name -> its kind. The routing table is
# derived from it, so a task's queue is decided in exactly one place.
KIND_OF_TASK: dict[str, Kind] = {}

TASK_MODULES = (
    "bolt_tasks.tasks.io",
    "bolt_tasks.tasks.analysis",
    "bolt_tasks.tasks.computation",
    "bolt_tasks.tasks.coordination",
    "bolt_tasks.tasks.batch",
)


def routing_table() -> dict[str, dict[str, str]]:
    """The exact route of every registered task: its name -> {"queue": its kind's queue}."""
    return {name: {"queue": QUEUE_OF_KIND[kind]} for name, kind in sorted(KIND_OF_TASK.items())}


def route_by_kind(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any):
    """Celery router: an exact lookup of the task's declared kind, never a pattern.

    A process that sends a bolt task by name without having imported the task modules gets
    them imported on the first miss, so the task still reaches its kind's queue; a bolt task
    name that no module declares is refused rather than sent to a queue nobody serves it on.
    """
    kind = KIND_OF_TASK.get(name)
    if kind is None and name.startswith("bolt."):
        for module in TASK_MODULES:
            importlib.import_module(module)
        kind = KIND_OF_TASK.get(name)
        if kind is None:
            raise ConfigError(f"no bolt task is named {name!r}")
    return None if kind is None else {"queue": QUEUE_OF_KIND[kind]}


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration bolt runs with, derived from its settings."""
    transport = {"visibility_timeout": settings.visibility_timeout_s}
    broker_transport = {
        **transport,
        "global_keyprefix": settings.broker_key_prefix,
        "priority_steps": list(settings.broker_priority_steps),
        **delivery.broker_transport_options(settings),
    }
    return {
        "broker_url": settings.broker_url or "redis://127.0.0.1:6379/0",
        "result_backend": settings.results or "redis://127.0.0.1:6379/0",
        "broker_transport_options": broker_transport,
        "result_backend_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_time_limit": settings.task_time_limit_s,
        "result_expires": settings.result_expires_s,
        "worker_prefetch_multiplier": 1,
        # Only the P pool has children to replace; the E pool's threads ignore it.
        "worker_max_tasks_per_child": settings.p_max_tasks_per_child,
        # Used by a P worker started with --autoscale (BOLT_P_AUTOSCALE_MAX); a string, so only
        # workers import it.
        "worker_autoscaler": "bolt_workers.autoscale:PressureAutoscaler",
        "task_queues": [Queue(name, routing_key=name) for name in QUEUES],
        "task_default_queue": QUEUE_OF_KIND[Kind.COORDINATION],
        "task_create_missing_queues": False,
        "task_routes": (route_by_kind,),
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "broker_pool_limit": 16,
        **delivery.celery_options(settings),
    }


def make_app(settings: Settings) -> Celery:
    """A Celery app configured from settings, with bolt's task modules included."""
    # Every task's base refuses schedules past the visibility timeout and checks its result.
    celery = Celery("bolt", include=list(TASK_MODULES), task_cls="bolt_tasks.guards:BoltTask")
    celery.conf.update(celery_config(settings))
    return celery


def configure(settings: Settings) -> None:
    """Point the shared app at other settings (a producer given --broker) before it connects."""
    app.conf.update(celery_config(settings))


app = make_app(get_settings())


def bolt_task(kind: Kind, **options: Any) -> Callable[[Callable[..., Any]], Any]:
    """Declare a task of a kind: named bolt.<kind>.<function>, routed to the kind's queue."""

    def register(fn: Callable[..., Any]) -> Any:
        name = f"bolt.{kind.value}.{fn.__name__}"
        KIND_OF_TASK[name] = kind
        return app.task(name=name, **options)(fn)

    return register
