"""Flower for bolt's app: basic auth from settings, loopback unless told otherwise."""

from __future__ import annotations

import logging
import os
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from bolt_tasks.errors import DeploymentError, UsageError
from bolt_tasks.settings import Settings, mask_url

log = logging.getLogger("bolt.flower")

# 18 random bytes: 24 URL-safe characters (never ',' nor ':', which Flower's option splits on).
PASSWORD_BYTES = 18
# Flower answers its health page within a second of starting; 30 s means it failed.
READY_TIMEOUT_S = 30.0
# Addresses that mean "every interface": a browser on this machine reaches them on loopback.
WILDCARD_ADDRESSES = ("", "0.0.0.0", "::")


def generate_password() -> str:
    """A fresh random password for Flower's basic auth."""
    return secrets.token_urlsafe(PASSWORD_BYTES)


def with_password(settings: Settings) -> tuple[Settings, bool]:
    """Settings whose Flower password is set, and whether it was generated just now."""
    if settings.flower_password:
        return settings, False
    return settings.replace(flower_password=generate_password()), True


def flower_url(settings: Settings) -> str:
    """The address a browser on this machine opens to reach Flower."""
    host = settings.flower_address
    if host in WILDCARD_ADDRESSES:
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.flower_port}"


def flower_argv(settings: Settings) -> list[str]:
    """The celery command line that serves Flower; it holds no secret (ps shows it)."""
    return [
        "flower",
        f"--address={settings.flower_address}",
        f"--port={settings.flower_port}",
        # Tornado would set the root logger to INFO otherwise, bolt's own loggers included.
        f"--logging={settings.log_level.lower()}",
        # bolt's settings are Flower's only configuration, not a flowerconfig.py that happens
        # to lie in the working folder (Flower would execute it).
        f"--conf={os.devnull}",
    ]


def serve(settings: Settings, on_generated: Callable[[Settings], None] | None = None) -> None:
    """Serve Flower in this process until SIGTERM or Ctrl-C.

    Without BOLT_FLOWER_PASSWORD a password is generated, and on_generated is given the
    settings that hold it (to tell the user), before Flower starts.
    """
    from bolt_tasks.app import app, configure

    if not settings.broker_url:
        raise UsageError("BOLT_BROKER_URL is not set: Flower watches the workers of a broker")
    settings, generated = with_password(settings)
    if generated and on_generated is not None:
        on_generated(settings)
    # Through the environment, which only this user can read, instead of the command line.
    os.environ["FLOWER_BASIC_AUTH"] = f"{settings.flower_user}:{settings.flower_password}"
    configure(settings)
    log.info(
        "Flower on %s for user %s, watching %s",
        flower_url(settings),
        settings.flower_user,
        mask_url(settings.broker_url),
    )
    app.start(flower_argv(settings))


def wait_ready(
    settings: Settings,
    timeout_s: float = READY_TIMEOUT_S,
    check: Callable[[], None] | None = None,
) -> None:
    """Wait until Flower's health page answers; check() runs between tries (a crashed child)."""
    url = flower_url(settings) + "/healthcheck"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check is not None:
            check()
        try:
            with urllib.request.urlopen(url, timeout=1.0) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise DeploymentError(f"Flower did not answer on {url} within {timeout_s:g} s")
