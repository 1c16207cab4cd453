"""The shipped deployments (compose, Procfile, Kubernetes, Dockerfile) hold together with bolt."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import subprocess
import sys
import tomllib
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kombu.transport.redis import Channel

from bolt_tasks.cli import build_parser
from bolt_tasks.names import Pool, pool_queues
from bolt_tasks.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).parents[2]
K8S = ROOT / "deploy" / "k8s"
# The oldest Kubernetes the manifests are checked against.
K8S_VERSION = "1.29.0"
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
# Roles that run until stopped, in every kind of deployment.
ROLES = {"worker-p", "worker-e", "controller", "flower", "exporter"}

SETTING_NAMES = {ENV_PREFIX + item.name.upper() for item in dataclasses.fields(Settings)}


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def services(profile: str | None = None) -> dict[str, dict[str, Any]]:
    """The compose services that run with this profile active (None: the default set)."""
    return {
        name: service
        for name, service in compose()["services"].items()
        if not service.get("profiles") or profile in service["profiles"]
    }


def bolt_services() -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose()["services"].items()
        if service.get("image", "").startswith("bolt:")
    }


@cache
def k8s_documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def k8s_of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in k8s_documents() if doc["kind"] == kind}


def containers() -> list[dict[str, Any]]:
    return [
        container
        for deployment in k8s_of_kind("Deployment").values()
        for container in deployment["spec"]["template"]["spec"]["containers"]
    ]


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if line.strip() and not line.startswith("#"))


def procfile_argvs(command: str) -> list[list[str]]:
    """The command lines of a Procfile entry: `a && exec b` runs a, then b."""
    found = []
    for part in command.split("&&"):
        words = shlex.split(part)
        found.append(words[1:] if words[0] == "exec" else words)
    return found


def procfile_argv(command: str) -> list[str]:
    """The command line a Procfile entry ends by running (the role itself)."""
    return procfile_argvs(command)[-1]


def health_argv(test: list[str]) -> list[str]:
    assert test[0] in ("CMD", "CMD-SHELL"), test
    return test[1:] if test[0] == "CMD" else shlex.split(test[1])


def bolt_commands() -> list[list[str]]:
    """Every bolt command line a shipped deployment runs, healthchecks and probes included."""
    found = [argv for command in procfile().values() for argv in procfile_argvs(command)]
    for service in bolt_services().values():
        found.append(service["command"])
        if "healthcheck" in service:
            found.append(health_argv(service["healthcheck"]["test"]))
    for container in containers():
        found.append(container["command"])
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if "exec" in container.get(probe, {}):
                found.append(container[probe]["exec"]["command"])
    return found


def version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "deploy" / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        tuple(line.split(None, 1))  # type: ignore[misc]
        for line in lines
        if line and not line.startswith("#")
    ]


# --- compose ------------------------------------------------------------------------------


def test_the_compose_file_is_valid_against_the_compose_specification():
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    jsonschema.validators.validator_for(schema)(schema).validate(compose())


def test_every_long_running_compose_service_has_a_healthcheck():
    for name, service in compose()["services"].items():
        if service.get("restart") == "no":
            continue
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), name


def test_compose_workers_are_checked_by_bolt_health_of_their_own_pool():
    for pool in Pool:
        service = compose()["services"][f"worker-{pool.value}"]
        assert service["command"][:4] == ["bolt", "worker", "--pool", pool.value]
        assert "--events" in service["command"]
        test = health_argv(service["healthcheck"]["test"])
        assert test[:4] == ["bolt", "health", "--pool", pool.value]


def test_compose_redis_requires_a_password_keeps_an_aof_and_is_not_published():
    redis = compose()["services"]["redis"]
    assert redis["image"].split(":")[0] == "redis"
    assert "ports" not in redis and "network_mode" not in redis
    assert redis["environment"]["REDIS_PASSWORD"].startswith("${BOLT_REDIS_PASSWORD:?")
    command = " ".join(redis["command"])
    assert "requirepass" in command and "--appendonly yes" in command
    assert "$$REDIS_PASSWORD" in command and "--requirepass" not in command  # not in ps
    assert "REDISCLI_AUTH" in redis["healthcheck"]["test"][1]
    for service in bolt_services().values():
        assert service["environment"]["BOLT_REDIS_PASSWORD"].startswith("${BOLT_REDIS_PASSWORD:?")


def published(service: dict[str, Any]) -> list[str]:
    ports = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports.append(f"{port.get('host_ip', '')}:{port.get('published')}:{port['target']}")
        else:
            ports.append(str(port))
    return ports


def test_only_flower_is_published_and_only_on_loopback():
    ports = {name: published(service) for name, service in services().items()}
    assert {name for name, found in ports.items() if found} == {"flower"}
    assert ports["flower"] == ["127.0.0.1:5555:5555"]
    flower_env = compose()["services"]["flower"]["environment"]
    assert flower_env["BOLT_FLOWER_PASSWORD"].startswith("${BOLT_FLOWER_PASSWORD:?")
    # The monitoring profile adds Grafana, on loopback too; Prometheus stays unpublished.
    monitoring = {name: published(service) for name, service in services("monitoring").items()}
    assert {name for name, found in monitoring.items() if found} == {"flower", "grafana"}
    assert all(port.startswith("127.0.0.1:") for port in monitoring["grafana"])


def test_nothing_in_compose_breaks_scaling():
    for name, service in compose()["services"].items():
        assert "container_name" not in service, name
        assert "hostname" not in service, name
    for name in ("worker-p", "worker-e"):
        assert not published(compose()["services"][name])


def test_every_bolt_service_runs_the_one_image_built_from_deploy_dockerfile():
    for name, service in bolt_services().items():
        assert service["image"] == f"bolt:{version()}", name
        assert service["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}, name
    assert set(bolt_services()) == ROLES | {"analyze"}
    analyze = compose()["services"]["analyze"]
    assert analyze["profiles"] and analyze["restart"] == "no"


def mount_target(volume: str) -> str:
    """The container path of a short-syntax volume, whose source may hold ${VAR:-default}."""
    return re.sub(r"\$\{[^}]*\}", "source", volume).split(":")[1]


def test_workers_and_producer_see_the_code_base_and_cache_at_the_same_paths():
    cache_dir = compose()["services"]["worker-p"]["environment"]["BOLT_CACHE_DIR"]
    mounts = {
        name: {mount_target(volume) for volume in compose()["services"][name]["volumes"]}
        for name in ("worker-p", "worker-e", "analyze")
    }
    assert mounts["worker-p"] == mounts["worker-e"] == mounts["analyze"] == {"/code", cache_dir}
    assert compose()["services"]["analyze"]["command"] == ["bolt", "analyze", "/code"]


def test_every_bolt_variable_in_compose_is_a_setting():
    for name, service in bolt_services().items():
        unknown = {key for key in service["environment"] if key not in SETTING_NAMES}
        assert not unknown, name
    example = (ROOT / ".env.example").read_text()
    names = set(re.findall(r"^#?\s*(\w+)=", example, flags=re.MULTILINE))
    assert {name for name in names if name.startswith(ENV_PREFIX)} <= SETTING_NAMES
    assert {"BOLT_REDIS_PASSWORD", "BOLT_FLOWER_PASSWORD", "GRAFANA_PASSWORD"} <= names


def test_prometheus_scrapes_the_exporter_and_flower_where_compose_runs_them():
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for group in job["static_configs"]
        for target in group["targets"]
    }
    exporter = compose()["services"]["exporter"]["command"]
    exporter_port = exporter[exporter.index("--port") + 1]
    flower_port = compose()["services"]["flower"]["environment"]["BOLT_FLOWER_PORT"]
    assert targets == {f"exporter:{exporter_port}", f"flower:{flower_port}"}
    # Both listen on every interface of their container, so Prometheus's container reaches them.
    assert compose()["services"]["exporter"]["environment"]["BOLT_EXPORTER_ADDRESS"] == "0.0.0.0"
    assert compose()["services"]["flower"]["environment"]["BOLT_FLOWER_ADDRESS"] == "0.0.0.0"


def test_grafana_loads_the_dashboards_folder_compose_mounts():
    grafana = compose()["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    provider_file = ROOT / "deploy/grafana/provisioning/dashboards/bolt.yml"
    provider = yaml.safe_load(provider_file.read_text())["providers"][0]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    source_file = ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml"
    source = yaml.safe_load(source_file.read_text())["datasources"][0]
    assert source["url"] == "http://prometheus:9090" and "prometheus" in compose()["services"]
    # Every dashboard dropped there reads from the data source provisioned beside it.
    for dashboard in (ROOT / "deploy/grafana/dashboards").glob("*.json"):
        used = set(re.findall(r'"datasource":\s*\{[^}]*"uid":\s*"([^"]+)"', dashboard.read_text()))
        assert used <= {source["uid"]}, dashboard.name


# --- every command is a bolt command ------------------------------------------------------


def test_every_deployed_command_is_a_bolt_command_line_that_parses():
    for argv in bolt_commands():
        assert argv[0] == "bolt", argv
        # Parsing checks the subcommand, its options and their values without running it.
        args = build_parser().parse_args(argv[1:])
        assert callable(args.handler), argv


@pytest.mark.parametrize(
    "subcommand", sorted({argv[1] for argv in bolt_commands()}), ids=lambda name: name
)
def test_every_deployed_subcommand_answers_help_through_the_console_script(subcommand):
    bolt = Path(sys.executable).parent / "bolt"
    done = subprocess.run(
        [str(bolt), subcommand, "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert f"usage: bolt {subcommand}" in done.stdout


# --- Procfile -----------------------------------------------------------------------------


def test_the_procfile_runs_redis_and_every_role_but_the_exporter():
    roles = procfile()
    assert set(roles) == {"redis"} | ROLES - {"exporter"}
    assert procfile_argv(roles["redis"])[:2] == ["bolt", "redis"]
    assert procfile_argv(roles["controller"]) == ["bolt", "controller"]
    assert procfile_argv(roles["flower"]) == ["bolt", "flower"]
    for pool in Pool:
        worker = procfile_argv(roles[f"worker-{pool.value}"])
        assert worker == ["bolt", "worker", "--pool", pool.value, "--events"]


# --- Kubernetes ---------------------------------------------------------------------------


def test_k8s_manifests_are_valid_kubernetes_objects():
    for doc in k8s_documents():
        if doc["kind"] in KEDA_KINDS:
            assert doc["apiVersion"] == "keda.sh/v1alpha1"
        elif doc["kind"] == "Kustomization":
            assert doc["apiVersion"].startswith("kustomize.config.k8s.io/")
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_kustomization_lists_every_manifest_and_generates_the_secret_from_its_example():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    generator = kustomization["secretGenerator"][0]
    assert generator["name"] == "bolt-secrets"
    assert generator["options"]["disableNameSuffixHash"] is True
    example = (K8S / (generator["envs"][0] + ".example")).read_text()
    assert set(re.findall(r"^(\w+)=", example, flags=re.MULTILINE)) == secret_keys()


def secret_keys() -> set[str]:
    return {"BOLT_REDIS_PASSWORD", "BOLT_FLOWER_PASSWORD"}


def test_k8s_has_a_deployment_per_role_and_every_container_runs_the_bolt_image():
    assert set(k8s_of_kind("Deployment")) == ROLES
    uid = next(args for op, args in dockerfile() if op == "USER").split(":")[0]
    for name, deployment in k8s_of_kind("Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert str(pod["securityContext"]["runAsUser"]) == uid, name
        for container in pod["containers"]:
            assert container["image"] == f"bolt:{version()}", name
            assert container["command"][:2] == ["bolt", name.split("-")[0]], name


def test_every_variable_k8s_names_is_a_setting_from_the_configmap_or_the_secret():
    configmaps = k8s_of_kind("ConfigMap")
    assert set(configmaps["bolt-settings"]["data"]) <= SETTING_NAMES
    for container in containers():
        for source in container.get("envFrom", []):
            assert source["configMapRef"]["name"] in configmaps
        for variable in container.get("env", []):
            assert variable["name"] in SETTING_NAMES, variable
            secret = variable.get("valueFrom", {}).get("secretKeyRef")
            if secret:
                assert secret["name"] == "bolt-secrets" and secret["key"] in secret_keys()


def test_redis_is_an_external_service_that_the_settings_and_keda_both_name():
    redis = k8s_of_kind("Service")["redis"]
    assert redis["spec"]["type"] == "ExternalName"
    port = redis["spec"]["ports"][0]["port"]
    url = k8s_of_kind("ConfigMap")["bolt-settings"]["data"]["BOLT_BROKER_URL"]
    assert url == f"redis://redis:{port}/0"
    for scaled in k8s_of_kind("ScaledObject").values():
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["metadata"]["address"] == f"redis.bolt.svc.cluster.local:{port}"


def redis_lists(pool: Pool) -> set[str]:
    """The Redis lists kombu keeps the pool's queues in: one per queue and priority step."""
    steps = Settings().broker_priority_steps
    return {
        queue if step == 0 else f"{queue}{Channel.sep}{step}"
        for queue in pool_queues(pool)
        for step in steps
    }


def test_each_pool_scales_on_the_sum_of_its_own_queue_lists_with_the_secret_password():
    auth = k8s_of_kind("TriggerAuthentication")["bolt-redis"]
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "bolt-secrets", "key": "BOLT_REDIS_PASSWORD"}
    ]
    scaled = k8s_of_kind("ScaledObject")
    assert set(scaled) == {f"worker-{pool.value}" for pool in Pool}
    for pool in Pool:
        spec = scaled[f"worker-{pool.value}"]["spec"]
        deployment = k8s_of_kind("Deployment")[spec["scaleTargetRef"]["name"]]
        command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
        assert command[command.index("--pool") + 1] == pool.value
        triggers = spec["triggers"]
        assert {t["type"] for t in triggers} == {"redis"}
        assert {t["metadata"]["listName"] for t in triggers} == redis_lists(pool)
        assert all(t["authenticationRef"]["name"] == "bolt-redis" for t in triggers)
        formula = spec["advanced"]["scalingModifiers"]["formula"]
        assert sorted(formula.split(" + ")) == sorted(t["name"] for t in triggers)
        assert spec["minReplicaCount"] >= 1


# --- Dockerfile ---------------------------------------------------------------------------


def test_the_dockerfile_builds_one_non_root_image_with_the_cache_on_a_volume():
    steps = dockerfile()
    assert steps[0] == ("FROM", "python:3.11-slim")
    user = next(args for op, args in steps if op == "USER")
    assert user.split(":")[0] not in ("0", "root")
    env = " ".join(args for op, args in steps if op == "ENV")
    cache_dir = re.search(r"BOLT_CACHE_DIR=(\S+)", env).group(1)
    volumes = json.loads(next(args for op, args in steps if op == "VOLUME"))
    assert volumes == [cache_dir]
    assert compose()["services"]["worker-p"]["environment"]["BOLT_CACHE_DIR"] == cache_dir
    assert "redis-server" not in " ".join(args for op, args in steps if op == "RUN")


def test_the_dockerfile_copies_only_what_the_dockerignore_lets_through():
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copied = set()
    for op, args in dockerfile():
        if op == "COPY":
            copied.update(args.split()[:-1])
    assert copied == allowed
    assert all((ROOT / name).exists() for name in copied)
    # The package's metadata names its readme; without it the install step fails.
    assert "README.md" in copied and "requirements.txt" in copied


def test_the_files_that_hold_passwords_stay_out_of_git_and_out_of_the_image():
    ignored = set((ROOT / ".gitignore").read_text().splitlines())
    assert {".env", "/deploy/k8s/secrets.env"} <= ignored
    assert (ROOT / ".env.example").is_file() and (K8S / "secrets.env.example").is_file()
    # .dockerignore lets through only what the image copies, so neither reaches a build.
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*" and not any(".env" in rule for rule in rules)
