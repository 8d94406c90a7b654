"""API tokens, and the person's identifiers encrypted at rest.

Identifiers are sealed with AES-256-GCM (an AEAD): each ciphertext names the key that made
it and is bound to its row (the associated data), so a sealed value copied onto another
person's row fails to open. Several keys can open; only the first seals (rotation: see
docs/operations.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import unicodedata
from datetime import date
from typing import Any
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_FORMAT = b"\x01"
_NONCE_BYTES = 12
_KEY_ID_BYTES = 4


def new_api_token() -> tuple[str, bytes]:
    """A worker's API token and the digest stored in its place (the token is shown once)."""
    token = "rnw_" + secrets.token_urlsafe(32)
    return token, token_digest(token)


def token_digest(token: str) -> bytes:
    # A plain digest is enough: the token is 256 random bits, not a guessable password.
    return hashlib.sha256(token.encode()).digest()


def decode_key(key: str) -> bytes:
    """A 32-byte key in urlsafe base64 (the format `Fernet.generate_key()` prints)."""
    raw = base64.urlsafe_b64decode(key.encode())
    if len(raw) != 32:
        raise ValueError("a key is 32 bytes in urlsafe base64")
    return raw


def generate_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


class PiiCipher:
    """Seals and opens the person's identifiers. ``keys[0]`` seals; every key opens."""

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ValueError("at least one PII key is needed")
        self._encoded = keys
        self._keys = {_key_id(raw): AESGCM(raw) for raw in map(decode_key, keys)}
        self._current_id = _key_id(decode_key(keys[0]))

    def seal(self, data: dict[str, Any], bound_to: UUID) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        plaintext = json.dumps(data, default=str).encode()
        sealed = self._keys[self._current_id].encrypt(nonce, plaintext, bound_to.bytes)
        return _FORMAT + self._current_id + nonce + sealed

    def open(self, token: bytes, bound_to: UUID) -> dict[str, Any]:
        token = bytes(token)
        if not token.startswith(_FORMAT):
            return self._open_legacy(token)
        key_id, rest = token[1 : 1 + _KEY_ID_BYTES], token[1 + _KEY_ID_BYTES :]
        aead = self._keys.get(key_id)
        if aead is None:
            raise InvalidTag(f"sealed with key {key_id.hex()}, which is not configured")
        result: dict[str, Any] = json.loads(
            aead.decrypt(rest[:_NONCE_BYTES], rest[_NONCE_BYTES:], bound_to.bytes)
        )
        return result

    def needs_reseal(self, token: bytes) -> bool:
        token = bytes(token)
        return not token.startswith(_FORMAT + self._current_id)

    def _open_legacy(self, token: bytes) -> dict[str, Any]:
        # Rows written before AES-GCM were Fernet tokens under the same key material.
        for key in self._encoded:
            try:
                result: dict[str, Any] = json.loads(Fernet(key.encode()).decrypt(token))
                return result
            except InvalidToken:
                continue
        raise InvalidTag("no configured key opens this value")


def _key_id(raw: bytes) -> bytes:
    return hashlib.sha256(b"refnet-key-id" + raw).digest()[:_KEY_ID_BYTES]


class PersonIndex:
    """A keyed digest of legal name and date of birth, so a returning person is found without
    decrypting every row; without the key the digest reveals nothing."""

    def __init__(self, key: str) -> None:
        self._key = decode_key(key)

    def match_key(self, given_name: str, family_name: str, dob: date) -> bytes:
        text = "|".join((_normalise(given_name), _normalise(family_name), dob.isoformat()))
        return hmac.new(self._key, text.encode(), hashlib.sha256).digest()


def _normalise(name: str) -> str:
    decomposed = unicodedata.normalize("NFKD", name.casefold())
    return "".join(ch for ch in decomposed if ch.isalnum())
