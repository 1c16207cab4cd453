"""bolt: a Celery + Redis task platform whose P pool runs heavy work and E pool light work."""

from __future__ import annotations

import importlib
from typing import Any

# The producer API, imported on first use so that `import bolt_tasks` stays cheap.
_LAZY = {
    "submit": "bolt_tasks.batching",
    "submit_many": "bolt_tasks.batching",
    "Submission": "bolt_tasks.batching",
    "CallError": "bolt_tasks.batching",
    "Publisher": "bolt_tasks.batching",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bolt_tasks' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
