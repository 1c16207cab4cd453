"""TLS to Redis: the ssl options of a rediss:// URL, for kombu, Celery's backend and redis-py."""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit

from bolt_tasks.settings import Settings

_CERT_REQS = {
    "required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
}


def uses_tls(url: str | None) -> bool:
    """Whether the URL is a rediss:// one, reached over TLS."""
    return bool(url) and urlsplit(url).scheme == "rediss"


def ssl_options(settings: Settings) -> dict[str, Any]:
    """The certificate check and CA bundle of a rediss:// connection, for kombu and Celery."""
    options: dict[str, Any] = {"ssl_cert_reqs": _CERT_REQS[settings.redis_ssl_cert_reqs]}
    if settings.redis_ssl_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.redis_ssl_ca_file)
    return options


def celery_tls_options(settings: Settings) -> dict[str, Any]:
    """broker_use_ssl and redis_backend_use_ssl for whichever of the two URLs is rediss://."""
    options: dict[str, Any] = {}
    if uses_tls(settings.broker_url):
        options["broker_use_ssl"] = ssl_options(settings)
    if uses_tls(settings.results):
        options["redis_backend_use_ssl"] = ssl_options(settings)
    return options


def redis_client_options(settings: Settings, url: str) -> dict[str, Any]:
    """Keyword arguments for redis.Redis.from_url(url): the ssl options when url is rediss://."""
    return ssl_options(settings) if uses_tls(url) else {}
