"""A stand-in for intake's contact lookup in tests of notifications alone.

Intake owns the person's address and answers notifications over HTTP (tested against the
real intake in tests/integration/test_intake_contact_and_checkins.py and end to end); here,
the addresses notifications would be given sit in a dict, and every lookup is counted.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from services.notifications.contacts import Contact, ContactRefused


class StaticContactBook:
    def __init__(self) -> None:
        self.contacts: dict[UUID, Contact] = {}
        self.refusals: dict[UUID, ContactRefused] = {}
        self.lookups: list[tuple[UUID, str]] = []

    def add(self, need_id: UUID, channel: str, address: str, name: str = "Mari") -> None:
        self.contacts[need_id] = Contact(channel, address, name)

    def refuse(self, need_id: UUID, reason: str, *, permanent: bool) -> None:
        self.refusals[need_id] = ContactRefused(reason, permanent=permanent)

    async def contact_for(self, need_id: UUID, purpose: str) -> Contact:
        self.lookups.append((need_id, purpose))
        if need_id in self.refusals:
            raise self.refusals[need_id]
        if need_id not in self.contacts:
            raise ContactRefused("intake 404: unknown need", permanent=False)
        return self.contacts[need_id]

    async def release(self, need_id: UUID, agency_id: str, viewer: str) -> dict[str, Any]:
        self.lookups.append((need_id, f"release to {agency_id} for {viewer}"))
        if need_id in self.refusals:
            raise self.refusals[need_id]
        contact = self.contacts[need_id]
        return {"name": contact.name, "preferred_channel": contact.channel}

    async def close(self) -> None:
        return None
