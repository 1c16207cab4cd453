"""Deployment settings: Flower's credentials and address, a Redis password kept apart from URLs."""

from __future__ import annotations

import socket

import pytest

from bolt_tasks.cli import EXIT_USAGE, main
from bolt_tasks.errors import ConfigError
from bolt_tasks.settings import Settings, url_with_password
from bolt_workers import flower, health


def test_flower_listens_on_loopback_as_user_bolt_by_default():
    settings = Settings.from_env({})
    assert (settings.flower_address, settings.flower_port) == ("127.0.0.1", 5555)
    assert settings.flower_user == "bolt" and settings.flower_password is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BOLT_FLOWER_PORT", "0"),
        ("BOLT_FLOWER_PORT", "70000"),
        ("BOLT_FLOWER_USER", "a:b"),
        ("BOLT_FLOWER_USER", "a,b"),
        ("BOLT_FLOWER_PASSWORD", "x,y"),
    ],
)
def test_flower_settings_flower_cannot_use_are_refused(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_passwords_stay_out_of_the_settings_repr():
    settings = Settings.from_env(
        {"BOLT_FLOWER_PASSWORD": "flower-secret", "BOLT_REDIS_PASSWORD": "redis-secret"}
    )
    assert "flower-secret" not in repr(settings) and "redis-secret" not in repr(settings)


def test_the_redis_password_joins_urls_that_name_none():
    settings = Settings.from_env(
        {
            "BOLT_BROKER_URL": "redis://redis:6379/0",
            "BOLT_RESULT_URL": "redis://:own@results:6379/1",
            "BOLT_REDIS_PASSWORD": "p@ss/w:rd",
        }
    )
    assert settings.broker_url == "redis://:p%40ss%2Fw%3Ard@redis:6379/0"
    assert settings.result_url == "redis://:own@results:6379/1"  # its own password wins


def test_url_with_password_keeps_the_user_and_leaves_unix_sockets_alone():
    assert url_with_password("redis://app@h:1/0", "pw") == "redis://app:pw@h:1/0"
    assert url_with_password("unix:///run/redis.sock", "pw") == "unix:///run/redis.sock"
    assert url_with_password("redis://h/0", None) == "redis://h/0"


def test_a_generated_flower_password_is_fresh_and_flower_can_use_it():
    settings, generated = flower.with_password(Settings.from_env({}))
    again, _ = flower.with_password(Settings.from_env({}))
    assert generated and settings.flower_password != again.flower_password
    assert "," not in settings.flower_password and len(settings.flower_password) >= 20
    kept, generated = flower.with_password(Settings.from_env({"BOLT_FLOWER_PASSWORD": "mine"}))
    assert not generated and kept.flower_password == "mine"


def test_flower_url_is_what_a_browser_on_this_machine_opens():
    assert flower.flower_url(Settings.from_env({})) == "http://127.0.0.1:5555"
    wildcard = Settings.from_env({"BOLT_FLOWER_ADDRESS": "0.0.0.0", "BOLT_FLOWER_PORT": "80"})
    assert flower.flower_url(wildcard) == "http://127.0.0.1:80"
    assert flower.flower_url(Settings.from_env({"BOLT_FLOWER_ADDRESS": "::1"})).startswith(
        "http://[::1]:"
    )


def test_the_flower_command_line_holds_no_password():
    settings = Settings.from_env({"BOLT_FLOWER_PASSWORD": "hunter2hunter2"})
    assert "hunter2hunter2" not in " ".join(flower.flower_argv(settings))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_url_that_does_not_answer_is_a_health_problem():
    problem = health.http_problem(f"http://127.0.0.1:{closed_port()}/healthcheck", 1.0)
    assert problem and "does not answer" in problem


def test_a_waiting_health_check_tries_again_until_the_problem_is_gone():
    answers = iter(["down", "down", None])
    assert health.wait_healthy(lambda: next(answers), wait_s=5.0) is None
    assert health.wait_healthy(lambda: "down", wait_s=0.0) == "down"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis://127.0.0.1:6390/0", "names no password"),
        ("redis://:pw@redis.example:6379/0", "serves loopback only"),
        ("rediss://:pw@127.0.0.1:6390/0", "serves loopback only"),
    ],
)
def test_bolt_redis_refuses_urls_it_would_serve_openly_or_cannot_serve(
    url, reason, monkeypatch, tmp_path, capsys
):
    from bolt_tasks.settings import get_settings

    monkeypatch.setenv("BOLT_BROKER_URL", url)
    get_settings.cache_clear()
    try:
        assert main(["redis", "--dir", str(tmp_path / "r")]) == EXIT_USAGE
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert reason in err and ":pw@" not in err
    assert not (tmp_path / "r").exists()
