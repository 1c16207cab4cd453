"""Settings come from BOLT_* variables and refuse bad values by naming the variable."""

from pathlib import Path

import pytest

from bolt_tasks.errors import ConfigError
from bolt_tasks.settings import Settings, env_var_docs, mask_url


def test_defaults_without_any_variable():
    settings = Settings.from_env({})
    assert settings.broker_url is None
    assert settings.results is None
    assert settings.result_expires_s == 3600
    assert settings.task_time_limit_s < settings.visibility_timeout_s
    assert settings.source_suffixes == (".py", ".pyw")


def test_variables_are_parsed_into_their_types():
    settings = Settings.from_env(
        {
            "BOLT_BROKER_URL": "redis://:pw@host:6380/1",
            "BOLT_CACHE_DIR": "/tmp/bolt-x",
            "BOLT_CHUNK_LINES": "12",
            "BOLT_BATCH_COST_S": "0.5",
            "BOLT_SOURCE_SUFFIXES": ".py, .pyi",
            "BOLT_LOG_LEVEL": "info",
        }
    )
    assert settings.broker_url == "redis://:pw@host:6380/1"
    assert settings.results == settings.broker_url
    assert settings.cache_dir == Path("/tmp/bolt-x")
    assert settings.chunk_lines == 12
    assert settings.batch_cost_s == 0.5
    assert settings.source_suffixes == (".py", ".pyi")
    assert settings.log_level == "INFO"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BOLT_CHUNK_LINES", "zero"),
        ("BOLT_CHUNK_LINES", "0"),
        ("BOLT_BATCH_COST_S", "-1"),
        ("BOLT_BROKER_URL", "http://example"),
        ("BOLT_BROKER_URL", "redis://"),
        ("BOLT_LOG_LEVEL", "LOUD"),
        ("BOLT_SOURCE_SUFFIXES", "py"),
        ("BOLT_E_CONCURRENCY", "1.5"),
    ],
)
def test_a_bad_value_is_refused_naming_its_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_a_time_limit_at_or_above_the_visibility_timeout_is_refused():
    with pytest.raises(ConfigError, match="BOLT_TASK_TIME_LIMIT_S"):
        Settings.from_env({"BOLT_TASK_TIME_LIMIT_S": "600", "BOLT_VISIBILITY_TIMEOUT_S": "600"})


def test_an_empty_broker_url_means_unset():
    assert Settings.from_env({"BOLT_BROKER_URL": ""}).broker_url is None


def test_settings_are_frozen():
    settings = Settings.from_env({})
    with pytest.raises(AttributeError):
        settings.chunk_lines = 3  # type: ignore[misc]


def test_every_setting_is_documented():
    rows = env_var_docs()
    assert len(rows) == len(Settings.__dataclass_fields__)
    assert all(name.startswith("BOLT_") and doc for name, _, doc in rows)


def test_passwords_are_masked():
    assert mask_url("redis://:secret@host:6379/0") == "redis://:***@host:6379/0"
    assert mask_url("rediss://user:secret@host/0") == "rediss://user:***@host/0"
    assert mask_url("redis://host:6379/0") == "redis://host:6379/0"
    assert "secret" not in mask_url("redis://:secret@127.0.0.1:1/0")
