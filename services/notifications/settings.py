from __future__ import annotations

from pydantic import SecretStr, model_validator

from shared.settings import BaseServiceSettings


class NotificationsSettings(BaseServiceSettings):
    http_host: str = "127.0.0.1"
    http_port: int = 8001
    smtp_host: str
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    mail_from: str = "refnet@refnet.local"
    # Days after acceptance at which the intake worker is prompted to check in.
    aftercare_days: list[int] = [1, 7]
    smtp_timeout_s: float = 15.0
    scheduler_poll_interval_s: float = 1.0
    scheduler_batch_size: int = 10
    # A claimed job not finished within its lease is taken again (its sender died), so the
    # lease must outlast a whole batch of worst-case sends, or a slow sender's jobs would be
    # sent a second time by another.
    scheduler_lease_s: float = 600.0
    # After this many failed attempts a job is marked failed instead of retried.
    scheduler_max_attempts: int = 10

    @model_validator(mode="after")
    def _lease_outlasts_a_batch(self) -> NotificationsSettings:
        if self.scheduler_lease_s <= self.scheduler_batch_size * self.smtp_timeout_s:
            raise ValueError("SCHEDULER_LEASE_S must exceed SCHEDULER_BATCH_SIZE x SMTP_TIMEOUT_S")
        return self
