"""docker-compose.yml against the Compose Specification and against the code: the settings
each service requires, the Kafka topics and ACLs (deploy/kafka/init.sh, run through a real
bash with stand-ins for the Kafka tools), the broker's start script, the image.

No Docker engine runs here, so none of this starts a container."""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
import subprocess
import sys
from base64 import urlsafe_b64decode
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from cryptography.fernet import Fernet

from services import kafka_init
from services.intake.settings import IntakeSettings
from services.kafka_init import (
    ADMIN_USER,
    DLQ_OPERATOR,
    DLQ_RETENTION_MS,
    EVENT_RETENTION_MS,
    SEGMENT_MS,
    SERVICES,
    TOMBSTONE_RETENTION_MS,
    password_variable,
    principal,
    render_init_script,
    service_grants,
    username,
)
from services.matching.settings import MatchingSettings
from services.notifications.settings import NotificationsSettings
from shared import kafka_acls
from shared.kafka_acls import Grant, Operation, PatternType, ResourceType
from shared.settings import BaseServiceSettings
from shared.topics import (
    AFTERCARE,
    AGENCIES,
    CAPACITY_UPDATES,
    CONSENT_EVENTS,
    NEEDS,
    OFFER_RESPONSES,
    PLATFORM_TOPICS,
    REFERRAL_EVENTS,
    agency_offers,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "deploy" / ".env.example"
INIT_SCRIPT = ROOT / "deploy" / "kafka" / "init.sh"
START_SCRIPT = ROOT / "deploy" / "kafka" / "start.sh"
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"

SETTINGS: dict[str, type[BaseServiceSettings]] = {
    "intake": IntakeSettings,
    "matching": MatchingSettings,
    "notifications": NotificationsSettings,
}
JOBS = ("kafka-init", "migrate")
KAFKA_PASSWORDS = ("KAFKA_ADMIN_PASSWORD", *(password_variable(s) for s in SERVICES))


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def _env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value
    return values


def _filled_env() -> dict[str, str]:
    """.env as an operator fills it in: every change-me replaced, the two empty keys set.
    Nothing else is invented: any other empty value would be a setting left for nobody."""
    values = _env_example()
    empty = {name for name, value in values.items() if value == ""}
    assert empty == {"PII_ENCRYPTION_KEY", "PII_INDEX_KEY"}
    values["PII_ENCRYPTION_KEY"] = Fernet.generate_key().decode()
    values["PII_INDEX_KEY"] = Fernet.generate_key().decode()
    filled = {}
    for name, value in values.items():
        while "change-me" in value:
            value = value.replace("change-me", secrets.token_urlsafe(32), 1)
        filled[name] = value
    return filled


_INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:[?-])(?P<arg>[^}]*))?\}")


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} against .env; $$ is a dollar."""

    def one(match: re.Match[str]) -> str:
        name, op = match["name"], match["op"]
        if env.get(name):
            return env[name]
        if op == ":-":
            return match["arg"]
        raise AssertionError(f"${{{name}}} is not set in .env ({match['arg']})")

    return _INTERPOLATION.sub(one, value.replace("$$", "\0")).replace("\0", "$")


def _container_env(service: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """A container's environment as compose builds it: env_file, then environment."""
    env = env if env is not None else _filled_env()
    spec = _compose()["services"][service]
    result: dict[str, str] = {}
    if spec.get("env_file"):
        assert spec["env_file"] == ".env"
        result.update(env)
    for name, value in (spec.get("environment") or {}).items():
        result[name] = _interpolate(str(value), env)
    return result


# --- the file itself -----------------------------------------------------------------------


def test_compose_file_follows_the_compose_specification() -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft201909Validator.check_schema(schema)
    validator = jsonschema.Draft201909Validator(schema)

    errors = [f"{list(e.path)}: {e.message[:200]}" for e in validator.iter_errors(_compose())]

    assert errors == []


def test_the_schema_catches_mistakes() -> None:
    """The check is not vacuous: a misspelt key or an unknown condition fails."""
    validator = jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text()))
    misspelt = _compose()
    misspelt["services"]["postgres"]["helthcheck"] = misspelt["services"]["postgres"].pop(
        "healthcheck"
    )
    condition = _compose()
    condition["services"]["migrate"]["depends_on"]["postgres"]["condition"] = "service_ready"

    assert not validator.is_valid(misspelt)
    assert not validator.is_valid(condition)


def test_images_are_pinned() -> None:
    for name, spec in _compose()["services"].items():
        image = spec["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image}"
        if "build" not in spec:
            assert re.search(r"\d", tag), f"{name}: {image} is not a version"
    base = re.search(r"^FROM (\S+)", (ROOT / "deploy/Dockerfile").read_text(), re.M)
    assert base and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base[1])


def test_every_long_running_service_has_a_healthcheck() -> None:
    services = _compose()["services"]
    for name, spec in services.items():
        if name in JOBS:
            assert spec["restart"] == "no", name
            continue
        check = spec.get("healthcheck")
        assert check and check["test"] and not check.get("disable"), name
        assert spec["restart"] == "unless-stopped", name


def test_services_start_only_once_what_they_need_is_ready() -> None:
    services = _compose()["services"]
    needs = {
        "postgres": "service_healthy",
        "kafka": "service_healthy",
        "kafka-init": "service_completed_successfully",
        "migrate": "service_completed_successfully",
    }
    for name in SERVICES:
        conditions = {dep: c["condition"] for dep, c in services[name]["depends_on"].items()}
        assert conditions == needs, name
    assert services["kafka-init"]["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name, spec in services.items():
        for dependency, condition in (spec.get("depends_on") or {}).items():
            expected = "service_completed_successfully" if dependency in JOBS else "service_healthy"
            assert condition["condition"] == expected, (name, dependency)
            assert "healthcheck" in services[dependency] or dependency in JOBS


def test_http_ports_are_published_on_loopback_only() -> None:
    for name, spec in _compose()["services"].items():
        for port in spec.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    assert "ports" not in _compose()["services"]["kafka"]
    assert "ports" not in _compose()["services"]["postgres"]


# --- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_gets_every_setting_it_requires(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's settings class, fed exactly the container's environment, loads: every
    field without a default is there (the SASL login too, as KAFKA_SECURITY_PROTOCOL is
    SASL_PLAINTEXT), and every value parses."""
    cls = SETTINGS[service]
    filled = _filled_env()
    env = _container_env(service, filled)
    for field in cls.model_fields:
        monkeypatch.delenv(field.upper(), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    settings = cls()

    required = {name.upper() for name, field in cls.model_fields.items() if field.is_required()}
    assert required <= {name for name, value in env.items() if value}
    assert settings.refnet_env == "production"
    assert settings.kafka_security_protocol == "SASL_PLAINTEXT"
    assert settings.kafka_sasl_mechanism == kafka_acls.SCRAM_MECHANISM
    assert settings.kafka_sasl_username == username(service)
    assert settings.kafka_sasl_password is not None
    assert settings.kafka_sasl_password.get_secret_value() == filled[password_variable(service)]


def test_each_container_sees_only_its_own_kafka_password() -> None:
    env = _filled_env()
    for service in (*SERVICES, "migrate"):
        container = _container_env(service, env)
        assert all(container[name] == "" for name in KAFKA_PASSWORDS), service
    assert _container_env("kafka", env)["KAFKA_ADMIN_PASSWORD"] == env["KAFKA_ADMIN_PASSWORD"]
    init = _container_env("kafka-init", env)
    assert {name: init[name] for name in KAFKA_PASSWORDS} == {
        name: env[name] for name in KAFKA_PASSWORDS
    }
    assert init["KAFKA_PARTITIONS"] == env["KAFKA_PARTITIONS"]


def test_the_services_find_each_other_on_the_compose_network() -> None:
    env = _filled_env()
    intake, matching = _container_env("intake", env), _container_env("matching", env)
    notifications = _container_env("notifications", env)

    assert notifications["INTAKE_INTERNAL_URL"] == f"http://intake:{intake['HTTP_PORT']}"
    # the operator dashboard asks the others' /readyz
    assert intake["MATCHING_URL"] == f"http://matching:{matching['MATCHING_HTTP_PORT']}"
    assert intake["NOTIFICATIONS_URL"] == f"http://notifications:{notifications['HTTP_PORT']}"
    for name, port in (("intake", "8000"), ("matching", "8002"), ("notifications", "8001")):
        test = " ".join(_compose()["services"][name]["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/healthz" in test


def test_the_migrations_job_has_the_database() -> None:
    assert _container_env("migrate")["DATABASE_URL"].startswith("postgresql://")
    assert _compose()["services"]["migrate"]["command"] == ["migrate"]


def test_the_database_url_matches_the_postgres_container() -> None:
    env = _env_example()
    assert env["DATABASE_URL"] == (
        f"postgresql://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}@postgres:5432/"
        f"{env['POSTGRES_DB']}"
    )


def test_the_broker_cluster_id_is_a_kraft_cluster_id() -> None:
    cluster_id = _compose()["services"]["kafka"]["environment"]["KAFKA_CLUSTER_ID"]
    assert len(urlsafe_b64decode(cluster_id + "==")) == 16


# --- deploy/kafka/init.sh --------------------------------------------------------------------


def test_the_init_script_is_the_one_the_code_generates() -> None:
    """Regenerate with `.venv/bin/refnet kafka-init-script > deploy/kafka/init.sh`."""
    assert INIT_SCRIPT.read_text() == render_init_script()
    assert os.access(INIT_SCRIPT, os.X_OK)


_STUB = """#!{python}
import json, os, sys
tool = os.path.basename(sys.argv[0])
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps([tool, *sys.argv[1:]]) + "\\n")
if "--command-config" in sys.argv and os.environ.get("STUB_ADMIN_CONFIG"):
    with open(sys.argv[sys.argv.index("--command-config") + 1]) as config:
        with open(os.environ["STUB_ADMIN_CONFIG"], "w") as copy:
            copy.write(config.read())
if tool == "kafka-topics.sh" and "--list" in sys.argv:
    print("\\n".join(os.environ.get("STUB_EXISTING", "").split(",")))
if tool == "kafka-topics.sh" and "--describe" in sys.argv:
    names = [n for n in os.environ.get("STUB_EXISTING", "").split(",") if n]
    for line in open(os.environ["STUB_LOG"]):
        argv = json.loads(line)
        if argv[0] == "kafka-topics.sh" and "--create" in argv:
            names.append(argv[argv.index("--topic") + 1])
            counts = json.loads(os.environ.get("STUB_COUNTS", "{{}}"))
            counts.setdefault(names[-1], argv[argv.index("--partitions") + 1])
            os.environ["STUB_COUNTS"] = json.dumps(counts)
    counts = json.loads(os.environ.get("STUB_COUNTS", "{{}}"))
    for name in names:
        print(f"Topic: {{name}}\\tTopicId: AAAA\\tPartitionCount: {{counts.get(name, 3)}}"
              "\\tReplicationFactor: 1\\tConfigs: ")
        print(f"\\tTopic: {{name}}\\tPartition: 0\\tLeader: 1\\tReplicas: 1\\tIsr: 1")
if tool == "kafka-server-start.sh":
    print("broker would start with", sys.argv[1])
"""


def _stub_tools(directory: Path) -> Path:
    directory.mkdir()
    for tool in (
        "kafka-configs.sh",
        "kafka-topics.sh",
        "kafka-acls.sh",
        "kafka-storage.sh",
        "kafka-server-start.sh",
    ):
        path = directory / tool
        path.write_text(_STUB.format(python=sys.executable))
        path.chmod(0o755)
    return directory


def _run(
    script: Path, tmp_path: Path, env: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    log = tmp_path / "calls.jsonl"
    log.unlink(missing_ok=True)
    tools = tmp_path / "bin"
    if not tools.exists():
        _stub_tools(tools)
    full = {"PATH": os.environ["PATH"], "KAFKA_TOOLS_DIR": str(tools), "STUB_LOG": str(log)}
    result = subprocess.run(
        ["bash", str(script)],
        env={**full, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return result, calls


def _init_env() -> dict[str, str]:
    return _container_env("kafka-init")


def _option(argv: list[str], name: str) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == name]


def _created_topics(calls: list[list[str]]) -> dict[str, tuple[int, dict[str, str]]]:
    created = {}
    for argv in calls:
        if argv[0] == "kafka-topics.sh" and "--create" in argv:
            configs = dict(pair.split("=", 1) for pair in _option(argv, "--config"))
            created[_option(argv, "--topic")[0]] = (int(_option(argv, "--partitions")[0]), configs)
    return created


def _granted(calls: list[list[str]]) -> set[Grant]:
    grants = set()
    for argv in calls:
        if argv[0] != "kafka-acls.sh":
            continue
        assert "--add" in argv and "--remove" not in argv
        (who,) = _option(argv, "--allow-principal")
        (pattern,) = _option(argv, "--resource-pattern-type")
        for rtype in ResourceType:
            for name in _option(argv, f"--{rtype.value}"):
                for op in _option(argv, "--operation"):
                    grants.add(Grant(who, Operation(op), rtype, name, PatternType(pattern)))
    return grants


def test_the_init_script_creates_every_topic_with_its_partitions_and_configuration(
    tmp_path: Path,
) -> None:
    env = _init_env()
    result, calls = _run(INIT_SCRIPT, tmp_path, env)

    assert result.returncode == 0, result.stderr
    partitions = int(env["KAFKA_PARTITIONS"])
    events = {
        "cleanup.policy": "delete",
        "retention.ms": str(EVENT_RETENTION_MS),
        "segment.ms": str(SEGMENT_MS),
    }
    dlq = {**events, "retention.ms": str(DLQ_RETENTION_MS)}
    expected = {}
    for spec in PLATFORM_TOPICS:
        expected[spec.name] = (partitions, events)
        expected[spec.dlq] = (partitions, dlq)
    expected[AGENCIES.name] = (
        partitions,
        {
            "cleanup.policy": "compact",
            "delete.retention.ms": str(TOMBSTONE_RETENTION_MS),
            "segment.ms": str(SEGMENT_MS),
        },
    )
    expected["refnet-matching-__assignor-__leader"] = (1, {})
    assert _created_topics(calls) == expected
    # a week for events, a month for dead letters; the directory is kept (compacted)
    assert EVENT_RETENTION_MS == 7 * 24 * 3600 * 1000
    assert DLQ_RETENTION_MS == 30 * 24 * 3600 * 1000
    for argv in calls:
        assert _option(argv, "--bootstrap-server") == ["kafka:9092"]
        assert len(_option(argv, "--command-config")) == 1
        if "--replication-factor" in argv:
            assert _option(argv, "--replication-factor") == [env["KAFKA_REPLICATION_FACTOR"]]


def test_the_init_script_makes_one_scram_user_per_service(tmp_path: Path) -> None:
    env = _init_env()
    result, calls = _run(INIT_SCRIPT, tmp_path, env)

    assert result.returncode == 0, result.stderr
    users = {
        _option(argv, "--entity-name")[0]: _option(argv, "--add-config")[0]
        for argv in calls
        if argv[0] == "kafka-configs.sh" and _option(argv, "--entity-type") == ["users"]
    }
    assert users == {
        username(service): f"SCRAM-SHA-512=[password={env[password_variable(service)]}]"
        for service in SERVICES
    }
    assert set(users) == {"refnet-intake", "refnet-matching", "refnet-notifications"}


def test_the_init_script_grants_exactly_the_services_acls(tmp_path: Path) -> None:
    result, calls = _run(INIT_SCRIPT, tmp_path, _init_env())

    assert result.returncode == 0, result.stderr
    assert _granted(calls) == {grant for s in SERVICES for grant in service_grants(s)}


def test_running_the_init_script_again_keeps_topics_and_restores_their_configuration(
    tmp_path: Path,
) -> None:
    existing = [plan.name for plan in kafka_init.topic_plan()]
    env = {**_init_env(), "STUB_EXISTING": ",".join(existing)}
    env["STUB_COUNTS"] = json.dumps({"refnet-matching-__assignor-__leader": 1})

    result, calls = _run(INIT_SCRIPT, tmp_path, env)

    assert result.returncode == 0, result.stderr
    assert _created_topics(calls) == {}
    altered = {
        _option(argv, "--entity-name")[0]
        for argv in calls
        if argv[0] == "kafka-configs.sh" and _option(argv, "--entity-type") == ["topics"]
    }
    assert altered == {plan.name for plan in kafka_init.topic_plan() if plan.config}


def test_the_init_script_stops_when_partitions_differ_from_kafka_partitions(
    tmp_path: Path,
) -> None:
    env = {
        **_init_env(),
        "STUB_EXISTING": NEEDS.name,
        "STUB_COUNTS": json.dumps({NEEDS.name: 6}),
    }

    result, _ = _run(INIT_SCRIPT, tmp_path, env)

    assert result.returncode != 0
    assert f"{NEEDS.name} has 6 partitions, not 3" in result.stderr


def test_the_init_script_logs_in_as_the_admin(tmp_path: Path) -> None:
    env = _init_env()
    copy = tmp_path / "admin.properties"

    result, _ = _run(INIT_SCRIPT, tmp_path, {**env, "STUB_ADMIN_CONFIG": str(copy)})

    assert result.returncode == 0, result.stderr
    config = _properties(copy)
    assert config["security.protocol"] == "SASL_PLAINTEXT"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert config["sasl.jaas.config"] == (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{ADMIN_USER}" password="{env["KAFKA_ADMIN_PASSWORD"]}";'
    )
    assert "ssl.truststore.location" not in config
    elsewhere = {
        **env,
        "STUB_ADMIN_CONFIG": str(copy),
        "KAFKA_INIT_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_INIT_CA_FILE": "/etc/refnet/ca.pem",
        "KAFKA_ADMIN_USER": "ops",
    }

    result, _ = _run(INIT_SCRIPT, tmp_path, elsewhere)

    assert result.returncode == 0, result.stderr
    config = _properties(copy)
    assert config["security.protocol"] == "SASL_SSL"
    assert config["ssl.truststore.type"] == "PEM"
    assert config["ssl.truststore.location"] == "/etc/refnet/ca.pem"
    assert 'username="ops"' in config["sasl.jaas.config"]


@pytest.mark.parametrize(
    "password", ["change-me", "change-me-change-me-1", "short", "with,comma-0123456789", ""]
)
def test_the_init_script_refuses_unusable_passwords(tmp_path: Path, password: str) -> None:
    env = {**_init_env(), "KAFKA_MATCHING_PASSWORD": password}

    result, calls = _run(INIT_SCRIPT, tmp_path, env)

    assert result.returncode != 0
    assert "KAFKA_MATCHING_PASSWORD" in result.stderr
    assert calls == []


# --- what each service may do on Kafka -----------------------------------------------------


def _topic_grants(who: str, ops: tuple[Operation, ...], *names: str) -> set[Grant]:
    return {Grant(who, op, ResourceType.TOPIC, name) for op in ops for name in names}


READS = (Operation.READ, Operation.DESCRIBE)
WRITES = (Operation.WRITE, Operation.DESCRIBE)


def test_intake_may_do_exactly_this() -> None:
    who = "User:refnet-intake"
    own = (
        _topic_grants(who, READS, REFERRAL_EVENTS.name, AFTERCARE.name)
        | _topic_grants(who, WRITES, REFERRAL_EVENTS.dlq, AFTERCARE.dlq)
        | _topic_grants(who, WRITES, NEEDS.name, CONSENT_EVENTS.name)
        | {Grant(who, Operation.READ, ResourceType.GROUP, "intake.referral-status")}
    )
    # the operator dashboard and `refnet dlq`: every DLQ read, every topic written (replay)
    dlq_tools = _topic_grants(who, READS, *(s.dlq for s in PLATFORM_TOPICS)) | _topic_grants(
        who, WRITES, *(s.name for s in PLATFORM_TOPICS)
    )
    assert DLQ_OPERATOR == "intake"
    assert set(service_grants("intake")) == own | dlq_tools


def test_matching_may_do_exactly_this() -> None:
    who = "User:refnet-matching"
    consumed = (NEEDS, OFFER_RESPONSES, CONSENT_EVENTS, AGENCIES, CAPACITY_UPDATES)
    leader = "refnet-matching-__assignor-__leader"
    expected = (
        _topic_grants(who, READS, *(s.name for s in consumed))
        | _topic_grants(who, WRITES, *(s.dlq for s in consumed))
        | _topic_grants(who, WRITES, REFERRAL_EVENTS.name, AGENCIES.name)
        | {
            Grant(who, op, ResourceType.TOPIC, "refnet.agency.", PatternType.PREFIXED)
            for op in (Operation.CREATE, Operation.WRITE, Operation.DESCRIBE)
        }
        | {Grant(who, Operation.READ, ResourceType.GROUP, "refnet-matching")}
        | _topic_grants(who, (*READS, Operation.CREATE), leader)
    )
    assert set(service_grants("matching")) == expected


def test_notifications_may_do_exactly_this() -> None:
    who = "User:refnet-notifications"
    consumed = (NEEDS, REFERRAL_EVENTS, CONSENT_EVENTS)
    expected = (
        _topic_grants(who, READS, *(s.name for s in consumed))
        | _topic_grants(who, WRITES, *(s.dlq for s in consumed))
        | _topic_grants(who, WRITES, OFFER_RESPONSES.name, CAPACITY_UPDATES.name, AFTERCARE.name)
        | {Grant(who, Operation.READ, ResourceType.GROUP, "notifications")}
    )
    assert set(service_grants("notifications")) == expected


def test_only_matching_has_a_prefix_and_it_covers_agencies_topics_only() -> None:
    prefixed = [g for s in SERVICES for g in service_grants(s) if g.pattern_type != "literal"]

    assert {g.principal for g in prefixed} == {principal("matching")}
    assert {g.resource_name for g in prefixed} == {"refnet.agency."}
    assert agency_offers("ag-001").name.startswith("refnet.agency.")
    assert not any(spec.name.startswith("refnet.agency.") for spec in PLATFORM_TOPICS)
    everything = [g for s in SERVICES for g in service_grants(s)]
    assert all("*" not in g.resource_name for g in everything)


def test_every_party_of_the_contract_but_agencies_sends_as_a_service_user() -> None:
    """A new party in shared/contract.py must say whose Kafka user it sends as."""
    from shared.contract import PARTIES

    assert set(PARTIES) - {"agency"} == set(kafka_init.PARTY_SERVICE)
    assert set(kafka_init.PARTY_SERVICE.values()) == set(SERVICES)


def test_the_grants_follow_what_matching_actually_consumes() -> None:
    """Matching's Faust agents, as built, read what its grants allow, in the group they
    name; the leader topic is the one Faust uses."""
    from services.matching.app import create_app

    settings = MatchingSettings(database_url="postgresql://x@y/z", kafka_bootstrap_servers="k:1")
    app = create_app(settings)

    read = {name for agent in app.agents.values() for name in agent.get_topic_names()}
    assert read == {spec.name for spec in kafka_init.reads("matching")}
    assert kafka_init.consumer_groups("matching") == (app.conf.id,)
    assert app._leader_assignor._leader_topic_name == kafka_init.faust_leader_topic()


def test_service_users_and_agency_users_never_meet() -> None:
    for service in SERVICES:
        assert not username(service).startswith(kafka_acls.USER_PREFIX)
    assert ADMIN_USER not in {username(s) for s in SERVICES}
    assert not ADMIN_USER.startswith((kafka_acls.USER_PREFIX, kafka_init.USER_PREFIX))


# --- deploy/kafka/start.sh -------------------------------------------------------------------


def _properties(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_the_broker_starts_with_sasl_and_the_authorizer(tmp_path: Path) -> None:
    password = secrets.token_urlsafe(32)
    env = {
        "KAFKA_CLUSTER_ID": _compose()["services"]["kafka"]["environment"]["KAFKA_CLUSTER_ID"],
        "KAFKA_ADMIN_PASSWORD": password,
        "KAFKA_CONFIG_DIR": str(tmp_path),
        "KAFKA_DATA_DIR": str(tmp_path / "data"),
        "KAFKA_ADMIN_CONFIG": str(tmp_path / "admin.properties"),
    }

    result, calls = _run(START_SCRIPT, tmp_path, env)

    assert result.returncode == 0, result.stderr
    config_path = tmp_path / "refnet-server.properties"
    config = _properties(config_path)
    assert config["authorizer.class.name"] == (
        "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    )
    assert config["allow.everyone.if.no.acl.found"] == "false"
    assert config["super.users"] == f"User:{ADMIN_USER}"
    assert config["process.roles"] == "broker,controller"
    assert config["listener.security.protocol.map"] == (
        "CLIENT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT"
    )
    assert config["listeners"] == "CLIENT://:9092,CONTROLLER://localhost:9093"
    assert config["advertised.listeners"] == "CLIENT://kafka:9092"
    assert config["listener.name.client.sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert config["auto.create.topics.enable"] == "false"
    # topics made without their own retention (agencies' offers topics) get the events'
    assert config["log.retention.ms"] == str(EVENT_RETENTION_MS)
    assert config["log.roll.ms"] == str(SEGMENT_MS)
    admin = _properties(tmp_path / "admin.properties")
    assert admin["security.protocol"] == "SASL_PLAINTEXT"
    assert admin["sasl.mechanism"] == "SCRAM-SHA-512"
    assert f'username="{ADMIN_USER}" password="{password}"' in admin["sasl.jaas.config"]
    for path in (config_path, tmp_path / "admin.properties"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    storage, server = calls
    assert storage[:2] == ["kafka-storage.sh", "format"]
    assert _option(storage, "--add-scram") == [f"SCRAM-SHA-512=[name=admin,password={password}]"]
    assert _option(storage, "--cluster-id") == [env["KAFKA_CLUSTER_ID"]]
    assert "--ignore-formatted" in storage
    assert server == ["kafka-server-start.sh", str(config_path)]


def test_the_admin_client_config_is_where_agency_onboarding_expects_it() -> None:
    text = START_SCRIPT.read_text()
    assert f'admin_config="${{KAFKA_ADMIN_CONFIG:-{kafka_acls.DEFAULT_ADMIN_CONFIG}}}"' in text
    assert kafka_acls.DEFAULT_ADMIN_BOOTSTRAP == "localhost:9092"
    assert kafka_acls.COMPOSE_SERVICE in _compose()["services"]


def test_the_broker_refuses_the_placeholder_password(tmp_path: Path) -> None:
    env = {"KAFKA_CLUSTER_ID": "ZhDr06d_S1OaXhnE_D0_7g", "KAFKA_ADMIN_PASSWORD": "change-me"}
    result, calls = _run(START_SCRIPT, tmp_path, env)

    assert result.returncode != 0
    assert "KAFKA_ADMIN_PASSWORD" in result.stderr
    assert calls == []


def test_the_kafka_scripts_are_mounted_where_compose_runs_them() -> None:
    services = _compose()["services"]
    for name, script in (("kafka", "start.sh"), ("kafka-init", "init.sh")):
        assert services[name]["command"] == ["/bin/bash", f"/refnet/kafka/{script}"]
        assert "./deploy/kafka:/refnet/kafka:ro" in services[name]["volumes"]
        assert services[name]["image"] == services["kafka"]["image"]


# --- the image -------------------------------------------------------------------------------


def test_the_image_runs_as_a_numeric_non_root_user_and_holds_no_secrets() -> None:
    dockerfile = (ROOT / "deploy/Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1])
    for line in re.findall(r"^(?:ENV|ARG) .*", dockerfile, re.M):
        assert not re.search(r"KEY|SECRET|TOKEN|PASSWORD", line), line
    assert not re.search(r"^COPY \.env|^COPY \. ", dockerfile, re.M)
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ".env" in ignored
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()
