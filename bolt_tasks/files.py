"""Writing files so that a reader sees the old file or the whole new one, never a part."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    # Linux shows the umask in /proc, so no thread sees it changed; os.umask is the fallback.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def write_json(target: Path, data: Any) -> None:
    """Write data as JSON to target atomically: a temporary file beside it, then a rename.

    The file gets the mode a plain open() would give it (0666 less the umask), not the 0600 of
    the temporary file it starts as.
    """
    handle, tmp = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.")
    try:
        os.fchmod(handle, 0o666 & ~_umask())
        with os.fdopen(handle, "w") as out:
            json.dump(data, out, indent=2)
            out.write("\n")
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
