"""Shared test set-up: every test sees settings built from a clean BOLT_* environment."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _clean_bolt_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    # A developer's own BOLT_* variables must not leak into what the tests prove.
    for name in list(os.environ):
        if name.startswith("BOLT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("BOLT_CACHE_DIR", str(tmp_path_factory.mktemp("bolt-cache")))
