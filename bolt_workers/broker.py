"""The Redis that BOLT_BROKER_URL names, run in the foreground for a Procfile deployment."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from bolt_tasks.errors import DeploymentError, UsageError
from bolt_tasks.settings import Settings, mask_url
from bolt_workers.redis_server import RedisServer
from bolt_workers.supervisor import tail

# The hosts `bolt redis` may serve: it binds loopback only, so a URL naming another host
# belongs to a Redis run some other way.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
# How often the foreground loop looks whether redis-server is still running.
WATCH_INTERVAL_S = 0.5


def server_for(settings: Settings, folder: Path) -> RedisServer:
    """A RedisServer on the port and with the password of BOLT_BROKER_URL, its files in folder."""
    url = settings.broker_url
    if not url:
        raise UsageError("BOLT_BROKER_URL is not set: `bolt redis` serves the Redis it names")
    parts = urlsplit(url)
    if parts.scheme != "redis" or parts.hostname not in LOOPBACK_HOSTS:
        raise UsageError(
            f"BOLT_BROKER_URL={mask_url(url)} is not a redis:// URL on 127.0.0.1: "
            "`bolt redis` serves loopback only; run Redis some other way for other hosts"
        )
    if not parts.password:
        raise UsageError(
            f"BOLT_BROKER_URL={mask_url(url)} names no password: bolt never runs an open Redis"
        )
    return RedisServer(
        # Absolute: redis-server moves into its data folder before it opens its log there.
        folder.resolve(),
        binary=settings.redis_server,
        port=parts.port or 6379,
        password=unquote(parts.password),
    )


def serve(
    settings: Settings, folder: Path, on_ready: Callable[[RedisServer], None] | None = None
) -> None:
    """Run the broker's redis-server until SIGTERM or Ctrl-C; its data stays in folder."""
    server = server_for(settings, folder)
    server.start()
    try:
        if on_ready is not None:
            on_ready(server)
        while server.process is not None and server.process.poll() is None:
            time.sleep(WATCH_INTERVAL_S)
        raise DeploymentError(f"redis-server exited: {tail(folder / 'redis.log')}")
    finally:
        server.stop()
