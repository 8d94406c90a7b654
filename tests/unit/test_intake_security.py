"""Sealing identifiers, recognising returning people, and refusing unsafe settings."""

from __future__ import annotations

import json
import secrets
from datetime import date
from uuid import uuid4

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet
from pydantic import ValidationError

from services.intake.security import PersonIndex, PiiCipher, generate_key
from services.intake.settings import IntakeSettings
from shared.settings import SettingsError, load_settings


def test_a_sealed_value_opens_only_on_its_own_row() -> None:
    cipher = PiiCipher([generate_key()])
    row, other_row = uuid4(), uuid4()
    sealed = cipher.seal({"phone": "503-555-0100"}, row)

    assert b"503" not in sealed
    assert cipher.open(sealed, row) == {"phone": "503-555-0100"}
    with pytest.raises(InvalidTag):
        cipher.open(sealed, other_row)


def test_retired_keys_open_but_only_the_current_key_seals() -> None:
    old, new = generate_key(), generate_key()
    row = uuid4()
    sealed_before = PiiCipher([old]).seal({"n": 1}, row)
    rotated = PiiCipher([new, old])

    assert rotated.open(sealed_before, row) == {"n": 1}
    assert rotated.needs_reseal(sealed_before)
    assert not rotated.needs_reseal(rotated.seal({"n": 1}, row))
    with pytest.raises(InvalidTag, match="not configured"):
        PiiCipher([new]).open(sealed_before, row)


def test_values_sealed_with_fernet_before_aes_gcm_still_open() -> None:
    key = generate_key()
    legacy = Fernet(key.encode()).encrypt(json.dumps({"given_name": "Ana"}).encode())
    assert PiiCipher([key]).open(legacy, uuid4()) == {"given_name": "Ana"}


def test_the_person_index_ignores_case_accents_and_spacing() -> None:
    index = PersonIndex(generate_key())
    dob = date(1980, 2, 3)
    assert index.match_key("José ", "De la Cruz", dob) == index.match_key("jose", "delacruz", dob)
    assert index.match_key("Jose", "Cruz", dob) != index.match_key("Jose", "Cruz", date(1980, 2, 4))


@pytest.mark.parametrize(
    "secret", ["change-me" * 5, "a" * 40, "my-example-secret-key-0123456789xyz"]
)
def test_production_refuses_a_placeholder_secret_key(
    monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    for name, value in {
        "REFNET_ENV": "production",
        "DATABASE_URL": "postgresql://db/refnet",
        "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
        "SECRET_KEY": secret,
        "PII_ENCRYPTION_KEY": generate_key(),
        "PII_INDEX_KEY": generate_key(),
        "INTERNAL_API_TOKEN": secrets.token_urlsafe(32),
    }.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match="SECRET_KEY"):
        load_settings(IntakeSettings)

    monkeypatch.setenv("REFNET_ENV", "local")
    assert load_settings(IntakeSettings).is_local


def test_production_names_the_dashboards_peers_it_was_not_given() -> None:
    values = {
        "refnet_env": "production",
        "database_url": "postgresql://unused",
        "kafka_bootstrap_servers": "unused:9092",
        "secret_key": secrets.token_urlsafe(48),
        "pii_encryption_key": generate_key(),
        "pii_index_key": generate_key(),
        "internal_api_token": secrets.token_urlsafe(48),
    }
    with pytest.raises(ValidationError, match="MATCHING_URL, NOTIFICATIONS_URL"):
        IntakeSettings(**values)
    peers = {"matching_url": "http://matching:8002", "notifications_url": "http://n:8001"}
    assert IntakeSettings(**values, **peers).matching_url == "http://matching:8002"
