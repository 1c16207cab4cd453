"""The routing table is exact and follows each task's declared kind."""

import pytest

from bolt_tasks import tasks  # noqa: F401 - registers the built-in tasks
from bolt_tasks.app import KIND_OF_TASK, app, route_by_kind, routing_table
from bolt_tasks.errors import ConfigError
from bolt_tasks.names import POOL_OF_KIND, QUEUE_OF_KIND, Kind, Pool, pool_queues


def test_every_registered_bolt_task_has_an_exact_route_to_its_kinds_queue():
    registered = {name for name in app.tasks if name.startswith("bolt.")}
    table = routing_table()
    assert set(table) == registered
    for name, route in table.items():
        kind = Kind(name.split(".")[1])
        assert KIND_OF_TASK[name] is kind
        assert route == {"queue": QUEUE_OF_KIND[kind]}
        assert "*" not in name


def test_the_router_answers_from_the_table_and_nothing_else():
    for name, route in routing_table().items():
        assert route_by_kind(name, (), {}, {}) == route
    assert route_by_kind("celery.chord_unlock", (), {}, {}) is None
    for unknown in ("bolt.analysis.no_such_task", "bolt.analysis.*"):
        with pytest.raises(ConfigError, match="no bolt task"):
            route_by_kind(unknown, (), {}, {})


def test_the_app_routes_a_published_task_to_its_queue():
    router = app.amqp.router
    for name, route in routing_table().items():
        assert router.route({}, name)["queue"].name == route["queue"]


def test_p_pool_owns_analysis_and_computation_and_e_pool_io_and_coordination():
    assert pool_queues(Pool.P) == ("analysis", "computation")
    assert pool_queues(Pool.E) == ("io", "coordination")
    assert set(POOL_OF_KIND) == set(Kind)


def test_the_app_accepts_json_only_and_acks_late():
    conf = app.conf
    assert conf.accept_content == ["json"]
    assert conf.result_accept_content == ["json"]
    assert conf.task_serializer == "json"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.result_expires == 3600


def test_a_process_that_never_imported_the_tasks_still_routes_them_by_kind():
    import subprocess
    import sys

    code = (
        "from bolt_tasks.app import app, KIND_OF_TASK\n"
        "assert not KIND_OF_TASK\n"
        "print(app.amqp.router.route({}, 'bolt.analysis.analyze_files')['queue'].name)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "analysis"
