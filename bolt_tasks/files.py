"""Writing files so that a reader sees the old file or the whole new one, never a part."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json(target: Path, data: Any) -> None:
    """Write data as JSON to target atomically: a temporary file beside it, then a rename."""
    handle, tmp = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(data, out, indent=2)
            out.write("\n")
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
