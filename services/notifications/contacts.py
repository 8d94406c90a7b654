"""The person's address, asked of intake (which owns it) at the moment of sending.

Notifications keeps the person's choice of channel and hours but never their address: each
send asks intake, which checks the need is accepted and the consent stands, and audits the
lookup. A refusal says whether asking again later can help.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

import httpx

LOOKUP_PATH = "/internal/v1/contact-lookups"
RELEASE_PATH = "/internal/v1/contact-releases"


@dataclass(frozen=True)
class Contact:
    channel: str  # email | sms
    address: str
    name: str


class ContactRefused(Exception):
    """Intake will not give the address: for good (revoked consent, no automated contact)
    or not yet (intake has not seen the acceptance)."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.permanent = permanent


class ContactBook(Protocol):
    async def contact_for(self, need_id: UUID, purpose: str) -> Contact: ...

    async def release(self, need_id: UUID, agency_id: str, viewer: str) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class IntakeContactBook:
    """Intake's internal lookup over HTTP, authenticated with the shared service token."""

    def __init__(self, base_url: str, token: str, timeout_s: float = 10.0) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
        )

    async def contact_for(self, need_id: UUID, purpose: str) -> Contact:
        try:
            response = await self._client.post(
                LOOKUP_PATH, json={"need_id": str(need_id), "purpose": purpose}
            )
        except httpx.HTTPError as exc:
            raise ContactRefused(f"intake unreachable: {exc!r}", permanent=False) from exc
        if response.status_code == 200:
            body = response.json()
            return Contact(body["channel"], body["address"], body["name"])
        detail = _detail(response)
        # 403: consent revoked or expired, or the person chose no automated contact.
        # 404 and 409: intake has not (yet) seen the need or its acceptance.
        permanent = response.status_code in (401, 403)
        raise ContactRefused(f"intake {response.status_code}: {detail}", permanent=permanent)

    async def release(self, need_id: UUID, agency_id: str, viewer: str) -> dict[str, Any]:
        """The person's contact details for the agency that accepted them, as intake
        releases them (with the Part 2 notice and consent scope) and records the disclosure.
        Nothing here keeps them: every view asks again, and is recorded again."""
        body = {"need_id": str(need_id), "agency_id": agency_id, "viewer": viewer}
        try:
            response = await self._client.post(RELEASE_PATH, json=body)
        except httpx.HTTPError as exc:
            raise ContactRefused(f"intake unreachable: {exc!r}", permanent=False) from exc
        if response.status_code == 200:
            released: dict[str, Any] = response.json()
            return released
        # 409: intake has not yet applied the acceptance; anything else is a refusal.
        permanent = response.status_code != 409
        raise ContactRefused(_detail(response), permanent=permanent)

    async def close(self) -> None:
        await self._client.aclose()


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except ValueError:
        return response.text[:200]
