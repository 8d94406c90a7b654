from __future__ import annotations

from typing import ClassVar

from pydantic import Field, SecretStr, field_validator, model_validator

from services.intake.security import decode_key
from shared.settings import BaseServiceSettings
from shared.throttle import ApiKeyThrottleSettings

# Values from deploy/.env.example and docs that must never reach production.
_PLACEHOLDERS = ("change-me", "changeme", "secret", "example")


class IntakeSettings(BaseServiceSettings, ApiKeyThrottleSettings):
    # Signs session cookies; 32+ characters, never a default.
    secret_key: SecretStr = Field(min_length=32)
    # 32 random bytes in urlsafe base64 (Fernet.generate_key() prints one). Seals new data.
    pii_encryption_key: SecretStr
    # Comma-separated keys that sealed older data and may still open it (rotation).
    pii_retired_keys: SecretStr = SecretStr("")
    # Keys the digest that finds a returning person by name and date of birth. Never rotate
    # it without re-indexing: see docs/operations.md.
    pii_index_key: SecretStr
    # The notifications service sends it to look up a person's address (audited); the same
    # value as its INTERNAL_API_TOKEN, 32+ characters.
    internal_api_token: SecretStr = Field(min_length=32)
    session_max_age_s: int = 8 * 3600
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    # Proxies whose X-Forwarded-For is trusted for the client address (the login and API
    # token throttles).
    forwarded_allow_ips: str = "127.0.0.1"
    # Failed logins allowed in the window, per account and per client address.
    login_window_s: int = 15 * 60
    login_max_failures_per_account: int = 5
    login_max_failures_per_address: int = 20
    # Worker API tokens are throttled per client address by API_KEY_WINDOW_S and
    # API_KEY_MAX_FAILURES_PER_ADDRESS (ApiKeyThrottleSettings), as agency API keys are.
    api_key_failures_table: ClassVar[str] = "api_token_failures"
    # Where the operator dashboard (/admin/dashboard) asks the other services' /readyz.
    matching_url: str = Field(default="http://127.0.0.1:8002", pattern=r"^https?://")
    notifications_url: str = Field(default="http://127.0.0.1:8001", pattern=r"^https?://")
    # Local mode: this worker is created at start-up so a newcomer can log in at once.
    demo_worker_email: str = "demo.worker@refnet.local"
    demo_worker_password: SecretStr | None = None

    @field_validator("pii_encryption_key", "pii_index_key")
    @classmethod
    def _a_key(cls, value: SecretStr) -> SecretStr:
        decode_key(value.get_secret_value())
        return value

    @property
    def pii_keys(self) -> list[str]:
        retired = self.pii_retired_keys.get_secret_value().split(",")
        return [self.pii_encryption_key.get_secret_value(), *filter(None, map(str.strip, retired))]

    @model_validator(mode="after")
    def _no_placeholder_secret_outside_local(self) -> IntakeSettings:
        key = self.secret_key.get_secret_value().lower()
        if not self.is_local and (any(word in key for word in _PLACEHOLDERS) or len(set(key)) < 12):
            raise ValueError(
                "SECRET_KEY looks like a placeholder; generate one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        token = self.internal_api_token.get_secret_value().lower()
        if not self.is_local and any(word in token for word in _PLACEHOLDERS):
            raise ValueError(
                "INTERNAL_API_TOKEN looks like a placeholder; generate one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        if self.pii_encryption_key.get_secret_value() == self.pii_index_key.get_secret_value():
            raise ValueError("PII_INDEX_KEY must differ from PII_ENCRYPTION_KEY")
        return self

    @model_validator(mode="after")
    def _peers_named_outside_local(self) -> IntakeSettings:
        # The defaults are the local stack's ports: elsewhere they would silently point the
        # operator dashboard at nothing.
        missing = {"matching_url", "notifications_url"} - self.model_fields_set
        if not self.is_local and missing:
            names = ", ".join(sorted(name.upper() for name in missing))
            raise ValueError(f"set {names}: where the dashboard asks those services' /readyz")
        return self
