"""bolt's JSON: numpy values travel as JSON numbers and lists, and a result has a size limit."""

from __future__ import annotations

from typing import Any

import numpy as np
from kombu.utils.json import dumps, register_type

from bolt_tasks.errors import ResultNotJson, ResultTooLarge

# numpy dtype kinds with no JSON form: complex numbers and raw records.
_NO_JSON_KINDS = frozenset("cV")


def _array_to_list(array: np.ndarray) -> list[Any]:
    if array.dtype.kind in _NO_JSON_KINDS:
        raise TypeError(f"a numpy array of dtype {array.dtype} has no JSON form")
    return array.tolist()


def _scalar_to_python(value: np.generic) -> Any:
    if value.dtype.kind in _NO_JSON_KINDS:
        raise TypeError(f"a numpy {value.dtype} value has no JSON form")
    return value.item()


def register_numpy() -> None:
    """Teach kombu's JSON encoder numpy arrays (as lists) and scalars (as numbers).

    They decode as plain lists and numbers: a consumer gets JSON types, never numpy ones, so
    producers and workers need not agree on numpy being installed or on its version.
    """
    register_type(np.ndarray, None, _array_to_list)
    register_type(np.generic, None, _scalar_to_python)


def encoded_size(value: Any) -> int:
    """Bytes of value in bolt's JSON; raises ResultNotJson if it has no JSON form."""
    try:
        # kombu's encoder escapes every non-ASCII character, so characters are bytes.
        return len(dumps(value))
    except (TypeError, ValueError) as exc:
        raise ResultNotJson(f"the result has no JSON form: {exc}") from None


def check_result(task_name: str, value: Any, limit_bytes: int) -> None:
    """Refuse a result that has no JSON form or is larger than limit_bytes, naming the task."""
    try:
        size = encoded_size(value)
    except ResultNotJson as exc:
        raise ResultNotJson(f"{task_name}: {exc}") from None
    if size > limit_bytes:
        raise ResultTooLarge(
            f"{task_name} returned {size:,} bytes of JSON, over the limit of {limit_bytes:,} "
            "(BOLT_RESULT_MAX_BYTES): write large data to a file and return its path"
        )


register_numpy()
