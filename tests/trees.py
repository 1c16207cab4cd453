"""Small code bases the tests write, with metrics worked out by hand."""

from __future__ import annotations

from pathlib import Path

GOOD = '''"""A module."""
import os
from collections import OrderedDict


def simple(x):
    return x + 1


def branchy(items, flag):
    total = 0
    for item in items:
        if item > 0 and flag:
            total += item
        elif item < 0:
            total -= item
    return total


class Box:
    def method(self, value):
        try:
            return int(value)
        except ValueError:
            return 0
        except TypeError:
            return -1
'''
# simple: 1. branchy: 1 + for + if + and + elif = 5. Box.method: 1 + 2 excepts = 3.
GOOD_COMPLEXITY = {"simple": 1, "branchy": 5, "Box.method": 3}

BROKEN = "def broken(:\n    pass\n"


def write_tree(root: Path, copies: int = 3) -> Path:
    """A tree of good files, a broken one, a binary one, and folders that must be skipped."""
    for index in range(copies):
        package = root / f"pkg{index}"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "mod.py").write_text(GOOD)
    (root / "broken.py").write_text(BROKEN)
    (root / "binary.py").write_bytes(b"\x00\x01\x02 not text")
    (root / "latin.py").write_bytes(b"x = '\xe9'\n")
    for skipped in (".git", "__pycache__", "node_modules", "site-packages"):
        (root / skipped).mkdir()
        (root / skipped / "skip.py").write_text(GOOD)
    venv = root / "venv"
    venv.mkdir()
    (venv / "pyvenv.cfg").write_text("home = /usr\n")
    (venv / "skip.py").write_text(GOOD)
    return root
