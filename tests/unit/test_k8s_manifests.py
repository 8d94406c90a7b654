"""deploy/k8s/ against the Kubernetes JSON schemas (strict: an unknown or misspelt field
fails) and against the code: the settings each service requires, probes on the ports the
services listen on, secrets only by reference. No cluster runs here."""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cryptography.fernet import Fernet

from services.intake.settings import IntakeSettings
from services.kafka_init import SERVICES, password_variable, username
from services.matching.settings import MatchingSettings
from services.notifications.settings import NotificationsSettings
from shared.settings import BaseServiceSettings

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
# The oldest Kubernetes release still in common support, and the newest the package knows.
VERSIONS = ("1.29.0", kubernetes_validate.latest_version() + ".0")
SETTINGS: dict[str, type[BaseServiceSettings]] = {
    "intake": IntakeSettings,
    "matching": MatchingSettings,
    "notifications": NotificationsSettings,
}
PORT_SETTING = {
    "intake": "HTTP_PORT",
    "notifications": "HTTP_PORT",
    "matching": "MATCHING_HTTP_PORT",
}
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|DATABASE_URL")


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def _kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in _manifests() if doc["kind"] == kind}


def _deployment(service: str) -> dict[str, Any]:
    return _kind("Deployment")[f"refnet-{service}"]


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def _config() -> dict[str, str]:
    data: dict[str, str] = _kind("ConfigMap")["refnet-config"]["data"]
    return data


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_kubernetes(version: str) -> None:
    problems = []
    for name, doc in _manifests():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{name} {doc['kind']}: {exc.message}")
    assert problems == []


def test_the_schemas_catch_mistakes() -> None:
    deployment = _deployment("intake")
    _container(deployment)["livenesProbe"] = _container(deployment).pop("livenessProbe")

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}

    assert sorted(kustomization["resources"]) == sorted(files)
    (image,) = kustomization["images"]
    assert image["newTag"] != "latest" and re.search(r"\d", image["newTag"])


def test_images_are_pinned() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for _, doc in _manifests():
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        image = _container(doc)["image"]
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest", image
        if name == "refnet":
            assert kustomization["images"][0]["name"] == "refnet"


@pytest.mark.parametrize("service", SERVICES)
def test_each_deployment_probes_the_port_its_service_listens_on(service: str) -> None:
    container = _container(_deployment(service))
    (port,) = container["ports"]
    env = {item["name"]: item.get("value") for item in container["env"]}

    assert port["name"] == "http"
    assert str(port["containerPort"]) == env[PORT_SETTING[service]]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["port"] == "http"
    assert container["args"] == [service]


@pytest.mark.parametrize("service", SERVICES)
def test_each_deployment_has_a_service_on_its_pods(service: str) -> None:
    """intake and notifications for their users; matching's for the operator dashboard,
    which asks its /readyz (MATCHING_URL)."""
    deployment = _deployment(service)
    svc = _kind("Service")[f"refnet-{service}"]
    port = _container(deployment)["ports"][0]

    assert svc["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert deployment["spec"]["template"]["metadata"]["labels"] == svc["spec"]["selector"]
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": port["containerPort"], "targetPort": "http"}
    ]
    dashboard = {"matching": "MATCHING_URL", "notifications": "NOTIFICATIONS_URL"}
    if service in dashboard:
        assert (
            _config()[dashboard[service]]
            == f"http://{svc['metadata']['name']}:{port['containerPort']}"
        )


def test_every_workload_has_resources_and_runs_locked_down() -> None:
    for _, doc in _manifests():
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        pod = doc["spec"]["template"]["spec"]
        container = _container(doc)
        for bound in ("requests", "limits"):
            assert set(container["resources"][bound]) == {"cpu", "memory"}, doc["metadata"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        # the one writable place: an emptyDir
        assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])  # noqa: S108


def test_no_secret_values_anywhere() -> None:
    assert "Secret" not in {doc["kind"] for _, doc in _manifests()}
    assert not [key for key in _config() if SECRET_NAME.search(key)]
    for _, doc in _manifests():
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        for item in _container(doc).get("env", []):
            if SECRET_NAME.search(item["name"]):
                assert "secretKeyRef" in item["valueFrom"], item


def _secret_value(name: str) -> str:
    if name in ("PII_ENCRYPTION_KEY", "PII_INDEX_KEY"):
        return Fernet.generate_key().decode()
    if name == "DATABASE_URL":
        return "postgresql://refnet:pw@postgres.example.org:5432/refnet"
    return secrets.token_urlsafe(32)


def _pod_env(workload: dict[str, Any]) -> dict[str, str]:
    """The container's environment with every required secret filled in (optional secret
    keys left out, as an operator may)."""
    container = _container(workload)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert source["configMapRef"]["name"] == "refnet-config"
        env.update(_config())
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item["valueFrom"]:
            if not item["valueFrom"]["secretKeyRef"].get("optional"):
                env[item["name"]] = _secret_value(item["name"])
        else:
            ref = item["valueFrom"]["configMapKeyRef"]
            assert ref["name"] == "refnet-config"
            env[item["name"]] = _config()[ref["key"]]
    return env


@pytest.mark.parametrize("service", SERVICES)
def test_each_deployment_gets_every_setting_its_service_requires(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cls = SETTINGS[service]
    env = _pod_env(_deployment(service))
    for field in cls.model_fields:
        monkeypatch.delenv(field.upper(), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    settings = cls()

    assert settings.refnet_env == "production"
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.kafka_sasl_username == username(service)
    assert settings.kafka_enable_idempotence is True


def test_intake_and_notifications_share_the_internal_api_token() -> None:
    refs = {
        service: next(
            item["valueFrom"]["secretKeyRef"]
            for item in _container(_deployment(service))["env"]
            if item["name"] == "INTERNAL_API_TOKEN"
        )
        for service in ("intake", "notifications")
    }
    assert refs["intake"] == refs["notifications"]


def test_the_migrations_job_has_the_database() -> None:
    job = _kind("Job")["refnet-migrate"]
    env = _pod_env(job)

    assert _container(job)["args"] == ["migrate"]
    assert env["DATABASE_URL"].startswith("postgresql://")
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_kafka_init_gets_each_service_password_from_that_service_secret() -> None:
    job = _kind("Job")["refnet-kafka-init"]
    env = {item["name"]: item for item in _container(job)["env"]}

    for service in SERVICES:
        own = next(
            item["valueFrom"]["secretKeyRef"]
            for item in _container(_deployment(service))["env"]
            if item["name"] == "KAFKA_SASL_PASSWORD"
        )
        assert env[password_variable(service)]["valueFrom"]["secretKeyRef"] == own
    assert env["KAFKA_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "refnet-kafka-admin"
    config = {
        name: item["valueFrom"]["configMapKeyRef"]["key"]
        for name, item in env.items()
        if "configMapKeyRef" in item["valueFrom"]
    }
    assert config == {
        "KAFKA_INIT_BOOTSTRAP_SERVER": "KAFKA_BOOTSTRAP_SERVERS",
        "KAFKA_INIT_SECURITY_PROTOCOL": "KAFKA_SECURITY_PROTOCOL",
        "KAFKA_PARTITIONS": "KAFKA_PARTITIONS",
        "KAFKA_REPLICATION_FACTOR": "KAFKA_REPLICATION_FACTOR",
    }
    assert _container(job)["command"] == ["/bin/bash", "/refnet/kafka/init.sh"]


def test_matching_replicas_can_all_work() -> None:
    """Matching's replicas share its topics' partitions (one consumer group): more replicas
    than partitions would idle, and a divisor spreads them evenly."""
    replicas = _deployment("matching")["spec"]["replicas"]
    partitions = int(_config()["KAFKA_PARTITIONS"])

    assert 1 < replicas <= partitions
    assert partitions % replicas == 0
    for service in ("intake", "notifications"):
        assert _deployment(service)["spec"]["replicas"] >= 2
