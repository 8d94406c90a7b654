"""Settings read from the environment, one pydantic-settings class per service over this base.

A missing or unsafe setting stops the service at start-up with the variable's name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Environment = Literal["local", "production"]


class BaseServiceSettings(BaseSettings):
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
    consumer_max_attempts: int = 3
    outbox_poll_interval_s: float = 1.0
    # Local mode only: a file holding a clock offset in seconds, so tests can move time.
    clock_offset_file: Path | None = None
    log_level: str = "INFO"
    # Where "today" and opening hours are: consent dates, ages, schedules (an IANA zone).
    local_timezone: str = "UTC"

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
