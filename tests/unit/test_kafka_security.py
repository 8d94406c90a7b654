"""How every refnet Kafka client logs in: the settings (a SASL protocol without credentials
stops the service and names the variable), the one helper every client goes through
(producers, consumers and so the DLQ writers, the admin client, Faust), and `refnet topics`."""

from __future__ import annotations

import ssl
from typing import Any

import pytest

from shared import kafka
from shared.kafka import kafka_security
from shared.settings import BaseServiceSettings, KafkaClientSettings, SettingsError, load_settings

PASSWORD = "p" * 24
BASE = {"database_url": "postgresql://x@db/refnet", "kafka_bootstrap_servers": "kafka:9092"}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in KafkaClientSettings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


def _sasl(**extra: Any) -> BaseServiceSettings:
    values: dict[str, Any] = {
        **BASE,
        "kafka_security_protocol": "SASL_PLAINTEXT",
        "kafka_sasl_username": "refnet-intake",
        "kafka_sasl_password": PASSWORD,
    }
    return BaseServiceSettings(**{**values, **extra})


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    settings = BaseServiceSettings(**BASE)

    assert settings.kafka_security_protocol == "PLAINTEXT"
    assert kafka_security(settings) == {}


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ({}, {"KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"}),
        ({"KAFKA_SASL_USERNAME": "refnet-intake"}, {"KAFKA_SASL_PASSWORD"}),
        ({"KAFKA_SASL_PASSWORD": PASSWORD}, {"KAFKA_SASL_USERNAME"}),
        (
            {"KAFKA_SASL_USERNAME": "", "KAFKA_SASL_PASSWORD": ""},
            {"KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"},
        ),
    ],
)
def test_sasl_without_credentials_stops_at_start_up_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, protocol: str, given: dict[str, str], missing: set[str]
) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", protocol)
    for name, value in given.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(SettingsError) as raised:
        load_settings(KafkaClientSettings)

    message = str(raised.value)
    for name in missing:
        assert f"  {name}: " in message
        assert f"required when KAFKA_SECURITY_PROTOCOL is {protocol}" in message
    for name in {"KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"} - missing:
        assert f"  {name}: " not in message


def test_an_unknown_protocol_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")

    with pytest.raises(SettingsError, match="KAFKA_SECURITY_PROTOCOL"):
        load_settings(KafkaClientSettings)


def test_sasl_plaintext_logs_in_with_scram_sha_512() -> None:
    assert kafka_security(_sasl()) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "refnet-intake",
        "sasl_plain_password": PASSWORD,
        "ssl_context": None,
    }


def test_sasl_ssl_adds_a_verifying_tls_context() -> None:
    settings = _sasl(kafka_security_protocol="SASL_SSL")

    security = kafka_security(settings)

    assert security["security_protocol"] == "SASL_SSL"
    context = security["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


def test_the_password_stays_secret_in_the_settings() -> None:
    assert PASSWORD not in repr(_sasl())


class _Recorder:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs


@pytest.mark.parametrize("factory", ["make_producer", "make_consumer"])
def test_producers_and_consumers_log_in(monkeypatch: pytest.MonkeyPatch, factory: str) -> None:
    monkeypatch.setattr(kafka, "AIOKafkaProducer", _Recorder)
    monkeypatch.setattr(kafka, "AIOKafkaConsumer", _Recorder)
    settings = _sasl()

    client = getattr(kafka, factory)(settings, "intake")

    assert isinstance(client, _Recorder)
    for name, value in kafka_security(settings).items():
        assert client.kwargs[name] == value
    plain = getattr(kafka, factory)(BaseServiceSettings(**BASE), "intake")
    assert "security_protocol" not in plain.kwargs


async def test_ensure_topics_and_read_to_end_take_the_login(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, dict[str, Any]] = {}

    class Admin:
        def __init__(self, **kwargs: Any) -> None:
            seen["admin"] = kwargs

        async def start(self) -> None: ...

        async def list_topics(self) -> list[str]:
            return ["refnet.needs.v1"]

        async def close(self) -> None: ...

    class Consumer:
        def __init__(self, **kwargs: Any) -> None:
            seen["consumer"] = kwargs

        async def start(self) -> None: ...

        async def topics(self) -> set[str]:
            return set()

        def partitions_for_topic(self, topic: str) -> None:
            return None

        async def stop(self) -> None: ...

    monkeypatch.setattr(kafka, "AIOKafkaAdminClient", Admin)
    monkeypatch.setattr(kafka, "AIOKafkaConsumer", Consumer)
    security = kafka_security(_sasl())

    created = await kafka.ensure_topics("kafka:9092", ["refnet.needs.v1"], 3, security=security)
    records = [r async for r in kafka.read_to_end("kafka:9092", "t", security=security)]

    assert created == [] and records == []
    for client in ("admin", "consumer"):
        assert seen[client]["sasl_plain_username"] == "refnet-intake"
        assert seen[client]["security_protocol"] == "SASL_PLAINTEXT"


async def test_ensure_topics_raises_what_the_broker_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aiokafka.errors import TopicAuthorizationFailedError

    class Response:
        topic_errors = [("refnet.agency.ag-001.offers", 29, "Authorization failed.")]

    class Admin:
        def __init__(self, **kwargs: Any) -> None: ...

        async def start(self) -> None: ...

        async def list_topics(self) -> list[str]:
            return []

        async def create_topics(self, topics: Any) -> Response:
            return Response()

        async def close(self) -> None: ...

    monkeypatch.setattr(kafka, "AIOKafkaAdminClient", Admin)

    with pytest.raises(TopicAuthorizationFailedError, match="refnet.agency.ag-001.offers"):
        await kafka.ensure_topics("kafka:9092", ["refnet.agency.ag-001.offers"], 3)


async def test_a_topic_created_meanwhile_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    class Response:
        topic_errors = [("a", 36, "exists"), ("b", 0, None)]

    class Admin:
        def __init__(self, **kwargs: Any) -> None: ...

        async def start(self) -> None: ...

        async def list_topics(self) -> list[str]:
            return []

        async def create_topics(self, topics: Any) -> Response:
            return Response()

        async def close(self) -> None: ...

    monkeypatch.setattr(kafka, "AIOKafkaAdminClient", Admin)

    assert await kafka.ensure_topics("kafka:9092", ["a", "b"], 3) == ["a", "b"]


def test_faust_logs_in_as_the_same_user() -> None:
    import faust

    from services.matching.app import broker_credentials, create_app
    from services.matching.settings import MatchingSettings

    settings = MatchingSettings(
        **BASE,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username="refnet-matching",
        kafka_sasl_password=PASSWORD,
    )

    credentials = broker_credentials(settings)
    app = create_app(settings)

    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.username == "refnet-matching"
    assert credentials.password == PASSWORD
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert credentials.protocol.value == "SASL_PLAINTEXT"
    assert isinstance(app.conf.broker_credentials, faust.SASLCredentials)
    tls = broker_credentials(settings.model_copy(update={"kafka_security_protocol": "SASL_SSL"}))
    assert tls is not None and tls.protocol.value == "SASL_SSL"
    assert broker_credentials(MatchingSettings(**BASE)) is None


def test_refnet_topics_reads_the_login_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services import cli

    seen: dict[str, Any] = {}

    async def ensure_topics(*args: Any, **kwargs: Any) -> list[str]:
        seen.update(kwargs)
        return []

    monkeypatch.setattr(kafka, "ensure_topics", ensure_topics)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "admin")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", PASSWORD)

    cli.main(["topics"])

    assert seen["security"]["sasl_plain_username"] == "admin"
    assert seen["security"]["sasl_plain_password"] == PASSWORD


def test_refnet_kafka_init_script_prints_the_script(capsys: pytest.CaptureFixture[str]) -> None:
    from services import cli
    from services.kafka_init import render_init_script

    cli.main(["kafka-init-script"])

    assert capsys.readouterr().out == render_init_script()
