from __future__ import annotations

from typing import ClassVar

from pydantic import Field, SecretStr, model_validator

from shared.events import NeedCategory, Urgency
from shared.settings import BaseServiceSettings
from shared.throttle import ApiKeyThrottleSettings

DEFAULT_AFTERCARE_DAYS = [1, 7, 30, 90]


class NotificationsSettings(BaseServiceSettings, ApiKeyThrottleSettings):
    http_host: str = "127.0.0.1"
    http_port: int = 8001
    # Where links in messages point (check-ins, agency outcomes): this service as the
    # person and the agency reach it.
    public_url: str = "http://127.0.0.1:8001"
    # Signs check-in and outcome links; 32+ characters.
    link_secret: SecretStr = Field(min_length=32)
    # How long a check-in or outcome link stays usable.
    link_max_age_days: int = 14

    # --- the agency web inbox ---
    # Signs the inbox's session cookies; 32+ characters, its own (not intake's SECRET_KEY).
    inbox_secret_key: SecretStr = Field(min_length=32)
    inbox_session_max_age_s: int = 8 * 3600
    login_window_s: int = 15 * 60
    login_max_failures_per_account: int = 5
    login_max_failures_per_address: int = 20
    # --- the agency HTTP API ---
    # Agency API keys are throttled per client address by API_KEY_WINDOW_S and
    # API_KEY_MAX_FAILURES_PER_ADDRESS (ApiKeyThrottleSettings).
    api_key_failures_table: ClassVar[str] = "api_key_failures"
    # Local runs only: a demo agency user for this agency, with this password.
    demo_agency_id: str = "ag-001"
    demo_agency_user_email: str = "demo.agency@refnet.local"
    demo_agency_user_password: SecretStr | None = None

    # --- email (SMTP) ---
    smtp_host: str
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_use_tls: bool = False  # implicit TLS (port 465); STARTTLS is smtp_starttls
    mail_from: str = "refnet@refnet.local"
    smtp_timeout_s: float = 15.0

    # --- SMS through a Twilio-compatible HTTP API; unset means SMS is unavailable ---
    sms_api_url: str | None = None  # e.g. https://api.twilio.com
    sms_account_sid: str | None = None
    sms_auth_token: SecretStr | None = None
    sms_from: str | None = None  # the sending number, E.164
    sms_timeout_s: float = 15.0

    # --- agency webhooks ---
    webhook_timeout_s: float = 10.0
    # Consecutive failed deliveries after which an endpoint is disabled until re-enabled.
    webhook_disable_after: int = 8

    # --- intake, for the person's address at the moment of sending (audited there) ---
    intake_internal_url: str = "http://127.0.0.1:8000"
    internal_api_token: SecretStr = Field(min_length=32)

    # --- who is told when ---
    # Days after acceptance for the person's aftercare check-ins, per need category;
    # categories not listed use the default plan.
    aftercare_days: list[int] = DEFAULT_AFTERCARE_DAYS
    aftercare_plans: dict[NeedCategory, list[int]] = {}
    # Days after acceptance at which the agency is asked for the outcome.
    outcome_request_after_days: float = 7.0
    # The agency is reminded when this share of an offer's time to answer is left.
    agency_reminder_at_share_left: float = 0.25
    # The intake worker is told a need has waited too long for an acceptance after this
    # many hours from its first offer, per urgency.
    stuck_after_h: dict[Urgency, float] = {
        Urgency.URGENT: 4.0,
        Urgency.SOON: 36.0,
        Urgency.ROUTINE: 96.0,
    }
    # When the person gave no hours: nothing is sent to them between these local hours.
    quiet_from_hour: int = Field(default=21, ge=0, le=23)
    quiet_until_hour: int = Field(default=9, ge=0, le=23)

    # --- the scheduler ---
    scheduler_poll_interval_s: float = 1.0
    scheduler_batch_size: int = 50
    # A claimed job not finished within its lease is taken again (its sender died), so the
    # lease must outlast a whole batch of worst-case sends, or a slow sender's jobs would be
    # sent a second time by another.
    scheduler_lease_s: float = 900.0
    # After this many failed attempts a job is marked failed instead of retried.
    scheduler_max_attempts: int = 10
    # Retries back off exponentially from the base, capped, with full jitter.
    retry_base_s: float = 10.0
    retry_cap_s: float = 3600.0

    def aftercare_plan(self, category: NeedCategory) -> list[int]:
        return sorted(self.aftercare_plans.get(category, self.aftercare_days))

    @property
    def sms_configured(self) -> bool:
        return bool(self.sms_api_url and self.sms_account_sid and self.sms_auth_token)

    @model_validator(mode="after")
    def _no_placeholder_secret_outside_local(self) -> NotificationsSettings:
        for name in ("link_secret", "internal_api_token", "inbox_secret_key"):
            value = getattr(self, name).get_secret_value().lower()
            if not self.is_local and "change-me" in value:
                raise ValueError(
                    f"{name.upper()} looks like a placeholder; generate one with "
                    "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
                )
        return self

    @model_validator(mode="after")
    def _lease_outlasts_a_batch(self) -> NotificationsSettings:
        slowest = max(self.smtp_timeout_s, self.sms_timeout_s, self.webhook_timeout_s)
        if self.scheduler_lease_s <= self.scheduler_batch_size * slowest:
            raise ValueError(
                "SCHEDULER_LEASE_S must exceed SCHEDULER_BATCH_SIZE x the slowest channel timeout"
            )
        return self
