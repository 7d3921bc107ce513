"""The deployment files' structure: docker-compose.yml, .env.example, the Dockerfile and the
Kubernetes manifests, whose commands must be the compose file's (which
tests/integration/test_deploy.py starts)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from quorum.shared.settings import Settings
from tests.deployfiles import (
    K8S_DIR,
    ROOT,
    as_list,
    compose,
    healthcheck_argv,
    manifests,
    normalized,
    referenced_variables,
)

SERVICES = {"redis", "worker", "flower", "api", "llm-sim"}
# Kubernetes workload → the compose service whose command it runs.
WORKLOADS = {name: name for name in SERVICES}


def seconds(duration: str) -> float:
    """A compose duration such as `90s` or `1m30s`."""
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([hms])", duration))


def test_compose_has_every_service_each_with_a_healthcheck():
    services = compose()["services"]
    assert set(services) == SERVICES | {"llm"}
    assert services["llm"]["profiles"] == ["local-llm"]  # the real model stays opt-in
    for name in SERVICES:
        assert services[name]["healthcheck"]["test"], name


def test_redis_keeps_an_append_only_file_behind_a_password_on_a_volume():
    redis = compose()["services"]["redis"]
    command = as_list(redis["command"])
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"
    assert command[command.index("--requirepass") + 1].startswith("${REDIS_PASSWORD:?")
    assert any(volume.endswith(":/data") for volume in redis["volumes"])
    assert "redis-data" in compose()["volumes"]


def test_worker_scales_and_stops_gracefully():
    worker = compose()["services"]["worker"]
    assert "ports" not in worker and "container_name" not in worker  # --scale worker=N works
    assert worker["environment"]["REMAP_SIGTERM"] == "SIGQUIT"
    soft_shutdown = Settings().llm_timeout_s + 5  # shared/broker.py
    assert seconds(worker["stop_grace_period"]) > soft_shutdown
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"


def test_flower_has_basic_auth_persistent_state_and_never_an_unauthenticated_api():
    flower = compose()["services"]["flower"]
    command = as_list(flower["command"])
    assert "--persistent=True" in command and "--port=5555" in command
    db = next(word.split("=", 1)[1] for word in command if word.startswith("--db="))
    assert any(db.startswith(volume.split(":")[1] + "/") for volume in flower["volumes"])
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    for path in [ROOT / "docker-compose.yml", ROOT / ".env.example", *K8S_DIR.glob("*.yaml")]:
        assert "FLOWER_UNAUTHENTICATED_API" not in path.read_text(), path


def test_api_requires_a_token_and_the_simulator_is_the_default_llm():
    services = compose()["services"]
    assert services["api"]["environment"]["QUORUM_API_TOKEN"].startswith("${QUORUM_API_TOKEN:?")
    for name in ("worker", "flower", "api"):
        env = services[name]["environment"]
        assert env["OPENAI_BASE_URL"] == "${OPENAI_BASE_URL:-http://llm-sim:8000/v1}"
        assert env["QUORUM_REDIS_URL"].startswith("redis://:${REDIS_PASSWORD")


def test_env_example_documents_every_variable_the_compose_file_reads():
    documented = set(re.findall(r"^(\w+)=", (ROOT / ".env.example").read_text(), re.MULTILINE))
    assert referenced_variables() <= documented
    assert documented <= referenced_variables()


def test_dockerfile_is_slim_non_root_and_pinned():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.MULTILINE)
    assert re.search(r"^USER quorum$", dockerfile, re.MULTILINE)
    assert "pip install -c constraints.txt '.[api,flower]'" in dockerfile
    pins = [
        line
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert pins and all(re.fullmatch(r"[\w.\-\[\]]+==[\w.+\-]+", pin) for pin in pins), pins
    names = {pin.split("==")[0].lower().replace("_", "-") for pin in pins}
    expected = {"celery", "redis", "hiredis", "fastapi", "uvicorn", "flower", "prometheus-client"}
    assert expected <= names


# -- Kubernetes -----------------------------------------------------------------------------


def kinds() -> dict[tuple[str, str], dict[str, Any]]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in manifests() if "metadata" in doc}


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return only


def test_kustomization_lists_every_manifest():
    kustomization = next(doc for doc in manifests() if doc["kind"] == "Kustomization")
    files = {path.name for path in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_workloads_run_the_compose_files_commands(name: str):
    objects = kinds()
    workload = objects.get(("Deployment", name)) or objects[("StatefulSet", name)]
    spec = workload["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    service = compose()["services"][WORKLOADS[name]]
    assert normalized(container(workload)["command"]) == normalized(as_list(service["command"]))
    assert spec["template"]["spec"].get("enableServiceLinks") is False


def test_worker_pods_stop_gracefully_and_check_themselves_like_compose():
    worker = kinds()[("Deployment", "worker")]
    service = compose()["services"]["worker"]
    pod = worker["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == seconds(service["stop_grace_period"])
    env = {item["name"]: item for item in container(worker)["env"]}
    assert env["REMAP_SIGTERM"]["value"] == "SIGQUIT"
    probe = container(worker)["livenessProbe"]["exec"]["command"]
    assert normalized(probe) == normalized(healthcheck_argv(service["healthcheck"]["test"]))


def test_keda_scales_the_worker_deployment_on_every_default_queue():
    objects = kinds()
    scaled = objects[("ScaledObject", "worker")]
    assert ("Deployment", scaled["spec"]["scaleTargetRef"]["name"]) in objects
    triggers = scaled["spec"]["triggers"]
    assert {t["metadata"]["listName"] for t in triggers} == set(Settings().queues)
    for trigger in triggers:
        assert trigger["type"] == "redis"
        assert trigger["metadata"]["address"] == "redis:6379"
        assert ("TriggerAuthentication", trigger["authenticationRef"]["name"]) in objects


def test_every_secret_and_config_reference_resolves():
    objects = kinds()
    secret = objects[("Secret", "quorum-secrets")]["stringData"]
    for doc in manifests():
        text = repr(doc)
        for name, key in re.findall(r"'secretKeyRef': \{'name': '([\w-]+)', 'key': '(\w+)'", text):
            assert name == "quorum-secrets" and key in secret, (doc["metadata"]["name"], key)
        for name in re.findall(r"'configMapRef': \{'name': '([\w-]+)'", text):
            assert ("ConfigMap", name) in objects
