"""Delivery guarantees without a server: schedules, claims, the ledger, outages, results, TLS."""

import datetime as dt
import ssl

import fakeredis
import numpy as np
import pytest
import redis
from kombu.utils.json import dumps, loads

from bolt_tasks import claims, delivery, ledger, outage
from bolt_tasks.app import app, celery_config
from bolt_tasks.cli import main
from bolt_tasks.errors import (
    BrokerUnavailable,
    ConfigError,
    ResultNotJson,
    ResultTooLarge,
    ScheduleTooFar,
)
from bolt_tasks.guards import check_schedule, schedule_delay_s
from bolt_tasks.serialization import check_result
from bolt_tasks.settings import Settings
from bolt_tasks.tasks import computation


def test_a_countdown_or_eta_past_the_visibility_timeout_is_refused_before_publishing():
    timeout_s = app.conf.broker_transport_options["visibility_timeout"]
    late = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=timeout_s + 60)
    # The default broker of the tests answers nowhere: a refusal must come before connecting.
    with pytest.raises(ScheduleTooFar, match="BOLT_VISIBILITY_TIMEOUT_S"):
        computation.echo.apply_async((1,), countdown=timeout_s)
    with pytest.raises(ScheduleTooFar, match=r"scheduled 6\d\d s ahead"):
        computation.echo.s(1).apply_async(eta=late)
    check_schedule("t", {"countdown": timeout_s - 1}, timeout_s)
    check_schedule("t", {}, timeout_s)


def test_schedule_delays_read_countdowns_and_naive_aware_and_text_etas():
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    assert schedule_delay_s({"countdown": 5}, now) == 5
    assert schedule_delay_s({"eta": dt.datetime(2030, 1, 1, 0, 1)}, now) == 60
    assert schedule_delay_s({"eta": "2030-01-01T00:00:30+00:00"}, now) == 30
    assert schedule_delay_s({}, now) is None


def test_numpy_values_in_results_become_json_numbers_and_lists():
    value = {"n": np.int64(3), "x": np.float32(0.5), "ok": np.bool_(True), "a": np.arange(3)}
    assert loads(dumps(value)) == {"n": 3, "x": 0.5, "ok": True, "a": [0, 1, 2]}
    assert loads(app.backend.encode({"result": np.ones((2, 2))}))["result"] == [[1.0, 1.0]] * 2
    with pytest.raises(ResultNotJson, match=r"t: .*complex128 has no JSON form"):
        check_result("t", np.array([1j]), 1000)


def test_a_result_over_the_limit_is_refused_with_its_size_and_the_setting():
    check_result("t", "x" * 98, 100)  # 100 bytes of JSON with its quotes: at the limit
    with pytest.raises(
        ResultTooLarge,
        match=r"t returned 101 bytes of JSON, over the limit of 100 \(BOLT_RESULT_MAX_BYTES\)",
    ):
        check_result("t", "x" * 99, 100)
    assert Settings.from_env({}).result_max_bytes == 16 * 2**20


def test_the_first_claim_of_a_task_wins_and_a_retried_claim_stays_its_own():
    client = fakeredis.FakeRedis()
    assert claims.claim(client, "t1", 0, 60)
    assert not claims.claim(client, "t1", 0, 60)  # a copy of the message
    assert claims.claim(client, "t1", 1, 60)  # a retry of the task is another attempt
    assert 0 < client.ttl("bolt:claim:t1:0") <= 60
    claims.take_over(client, "t1", 0, 60)  # a redelivery replaces a lost delivery
    assert client.exists("bolt:claim:t1:0")

    class LostReply(fakeredis.FakeRedis):
        lost = False

        def set(self, *args, **kwargs):
            done = super().set(*args, **kwargs)
            if not self.lost:  # Redis ran the first SET, but its answer never arrived
                self.lost = True
                raise redis.ConnectionError("reset")
            return done

    assert claims.claim(LostReply(), "t2", 0, 60)


def test_the_ledger_counts_runs_that_began_and_finished_and_a_repeated_write_once():
    client = fakeredis.FakeRedis()
    with ledger.counting(client, "job", "a", 60):
        pass
    with pytest.raises(RuntimeError), ledger.counting(client, "job", "b", 60):
        raise RuntimeError("killed")
    with ledger.counting(client, "job", "b", 60):
        pass
    ledger.record(client, "job", ledger.FINISHED, "a", "token", 60)
    ledger.record(client, "job", ledger.FINISHED, "a", "token", 60)  # a retried write
    counted = ledger.read(client, "job")
    assert counted.began == {"a": 1, "b": 2}
    assert counted.finished == {"a": 2, "b": 1}
    assert counted.doubled() == {"a": 2} and counted.begun_again() == {"b": 2}
    assert counted.lost({"a", "b", "c"}) == {"c"}
    assert 0 < client.ttl("bolt:ledger:job") <= 60


def test_a_call_waits_through_a_short_outage_and_gives_up_on_a_long_one():
    failures = iter([redis.ConnectionError("down"), redis.BusyLoadingError("loading")])

    def flaky() -> str:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return "answered"

    assert outage.through_restart(flaky) == "answered"

    def dead() -> None:
        raise redis.ConnectionError("refused")

    with pytest.raises(BrokerUnavailable, match="has not answered"):
        outage.through_restart(dead, limit_s=0.05)


def test_redelivery_is_swept_a_few_times_per_visibility_timeout_within_bounds():
    assert delivery.sweep_interval_s(600) == 10
    assert delivery.sweep_interval_s(5) == 1
    assert delivery.sweep_interval_s(1) == 0.5
    conf = celery_config(Settings.from_env({}))
    transport = conf["broker_transport_options"]
    assert transport["unacked_restore_interval"] == 10
    assert transport["unacked_restore_throttle"] == 1
    assert conf["task_publish_retry_policy"]["max_retries"] >= 20
    assert conf["result_backend_always_retry"] is True
    assert conf["control_queue_expires"] > 0
    assert conf["worker_max_tasks_per_child"] is None
    recycled = Settings.from_env({"BOLT_P_MAX_TASKS_PER_CHILD": "100"})
    assert celery_config(recycled)["worker_max_tasks_per_child"] == 100


def test_pickle_is_accepted_nowhere():
    conf = celery_config(Settings.from_env({}))
    assert conf["accept_content"] == conf["result_accept_content"] == ["json"]
    assert conf["task_serializer"] == conf["result_serializer"] == "json"
    assert "pickle" not in repr(conf)


def test_rediss_urls_get_tls_options_checked_against_the_ca_file(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = Settings.from_env(
        {
            "BOLT_BROKER_URL": "rediss://:pw@redis.example:6380/0",
            "BOLT_RESULT_URL": "rediss://:pw@results.example:6380/1",
            "BOLT_REDIS_SSL_CA_FILE": str(ca),
        }
    )
    conf = celery_config(settings)
    expected = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(ca)}
    assert conf["broker_use_ssl"] == conf["redis_backend_use_ssl"] == expected

    loose = Settings.from_env(
        {"BOLT_BROKER_URL": "rediss://h:6380/0", "BOLT_REDIS_SSL_CERT_REQS": "NONE"}
    )
    assert celery_config(loose)["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_NONE}
    plain = celery_config(Settings.from_env({"BOLT_BROKER_URL": "redis://h:6379/0"}))
    assert "broker_use_ssl" not in plain and "redis_backend_use_ssl" not in plain


@pytest.mark.parametrize(
    ("name", "value"),
    [("BOLT_REDIS_SSL_CERT_REQS", "sometimes"), ("BOLT_REDIS_SSL_CA_FILE", "/no/such/ca.pem")],
)
def test_bad_tls_settings_are_refused_naming_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


@pytest.mark.parametrize(
    "argv",
    [
        ["probe", "--calls", "0"],
        ["probe", "--folder", "/no/such/folder"],
        ["probe", "--rounds", "x"],
    ],
)
def test_bolt_probe_refuses_bad_options_in_one_line_before_starting_anything(argv, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err.count("\n") == 1
