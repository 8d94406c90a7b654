from __future__ import annotations

from pydantic import Field, SecretStr

from shared.settings import BaseServiceSettings


class IntakeSettings(BaseServiceSettings):
    # Signs session cookies; 32+ characters, never a default.
    secret_key: SecretStr = Field(min_length=32)
    # A Fernet key (urlsafe base64 of 32 bytes) encrypting the person's identifiers at rest.
    pii_encryption_key: SecretStr
    session_max_age_s: int = 8 * 3600
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    # Local mode: this worker is created at start-up so a newcomer can log in at once.
    demo_worker_email: str = "demo.worker@refnet.local"
    demo_worker_password: SecretStr | None = None
