"""bolt's built-in tasks, one module per kind; importing this package registers them all."""

from bolt_tasks.tasks import analysis, batch, computation, coordination, io

__all__ = ["analysis", "batch", "computation", "coordination", "io"]
