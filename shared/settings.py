"""Settings read from the environment, one pydantic-settings class per service over this base.

A missing or unsafe setting stops the service at start-up with the variable's name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

Environment = Literal["local", "production"]
KafkaSecurityProtocol = Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL"]
KafkaSaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]


class KafkaClientSettings(BaseSettings):
    """How a client authenticates to Kafka: part of every service's settings, and read alone
    by commands that only talk to Kafka (`refnet topics`).

    PLAINTEXT suits the embedded broker (Tansu ignores SASL). On Apache Kafka each service
    logs in as its own SCRAM user (docker-compose.yml, docs/runbook.md)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    kafka_security_protocol: KafkaSecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: KafkaSaslMechanism = "SCRAM-SHA-512"
    # Required when the protocol is SASL_*; checked even when left out (validate_default).
    kafka_sasl_username: str | None = Field(default=None, validate_default=True)
    kafka_sasl_password: SecretStr | None = Field(default=None, validate_default=True)
    # SASL_SSL only: the CA that signed the broker's certificate, when not a public one.
    kafka_ssl_cafile: Path | None = None

    @property
    def kafka_uses_sasl(self) -> bool:
        return self.kafka_security_protocol.startswith("SASL_")

    @field_validator("kafka_sasl_username", "kafka_sasl_password")
    @classmethod
    def _sasl_needs_credentials(
        cls, value: str | SecretStr | None, info: ValidationInfo
    ) -> str | SecretStr | None:
        protocol = info.data.get("kafka_security_protocol", "PLAINTEXT")
        given = value.get_secret_value() if isinstance(value, SecretStr) else value
        if str(protocol).startswith("SASL_") and not given:
            raise ValueError(f"required when KAFKA_SECURITY_PROTOCOL is {protocol}")
        return value


class BaseServiceSettings(KafkaClientSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    refnet_env: Environment = "production"
    database_url: str
    kafka_bootstrap_servers: str
    # Tansu (the embedded broker) parks a joining member for half the session timeout, so a
    # short one keeps restarts quick; Apache Kafka is fine with it too.
    kafka_session_timeout_s: float = 10.0
    # Idempotent producers need broker support that Tansu lacks; on Apache Kafka turn it on.
    kafka_enable_idempotence: bool = False
    kafka_partitions: int = 3
    # How long a consumer's fetch waits at the broker when there is nothing new. Apache Kafka
    # answers as soon as a record arrives, so this only paces idle polling; Tansu (the
    # embedded broker) holds the fetch for the whole wait, so every record waits up to this
    # long: the local stack sets it short.
    kafka_fetch_max_wait_ms: int = Field(default=500, ge=1)
    # Intake's and notifications' consumers are not on a need's way to its offer, so their
    # fetches let records gather at the broker (up to this long, or until
    # shared.kafka.BATCH_FETCH_BYTES have come) and each batch then costs one transaction and
    # one offset commit for many records. 0: they answer as soon as anything is there.
    kafka_batch_wait_ms: int = Field(default=250, ge=0)
    consumer_max_attempts: int = 3
    outbox_poll_interval_s: float = 1.0
    # Published outbox rows are deleted this long after they went out: long enough to replay
    # what a broker lost (the topics keep records a week too), not so long that every event,
    # with what it discloses, is kept for ever in each producer's schema.
    outbox_retention_days: float = Field(default=7.0, ge=1)
    # Local mode only: a file holding a clock offset in seconds, so tests can move time.
    clock_offset_file: Path | None = None
    log_level: str = "INFO"
    # Where "today" and opening hours are: consent dates, ages, schedules (an IANA zone).
    local_timezone: str = "UTC"
    # GET /readyz answers 503 above these: unpublished outbox rows, and records behind on the
    # service's assigned partitions (all topics together).
    ready_max_outbox_backlog: int = Field(default=1000, ge=0)
    ready_max_consumer_lag: int = Field(default=10000, ge=0)

    @property
    def is_local(self) -> bool:
        return self.refnet_env == "local"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.local_timezone)

    @field_validator("local_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use one like America/Chicago") from None
        return value

    @model_validator(mode="after")
    def _clock_offset_only_locally(self) -> BaseServiceSettings:
        if self.clock_offset_file is not None and not self.is_local:
            raise ValueError("CLOCK_OFFSET_FILE may only be set when REFNET_ENV=local")
        return self


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


class SettingsError(SystemExit):
    """Raised at start-up; its message names every offending environment variable."""


def load_settings(cls: type[SettingsT]) -> SettingsT:
    try:
        return cls()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = "_".join(str(part) for part in err["loc"]).upper() or "settings"
            problems.append(f"  {name}: {err['msg']}")
        raise SettingsError(
            f"{cls.__name__}: invalid or missing settings:\n" + "\n".join(problems)
        ) from None
