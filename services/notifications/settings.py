from __future__ import annotations

from pydantic import SecretStr

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
    scheduler_poll_interval_s: float = 1.0
    scheduler_batch_size: int = 50
    # A claimed job not finished within its lease is taken again (its sender died).
    scheduler_lease_s: float = 60.0
