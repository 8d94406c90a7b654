"""What an agency does with its referrals, the same through the HTTP API and the web inbox:
see its offers and, only once it has taken the person on, their contact details.

The contact details are asked of intake at each view (intake checks acceptance and consent,
releases the minimum and writes the disclosure to its ledger); nothing here stores them.
Each view is also logged here, shown or refused, with who at the agency asked.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import asyncpg

from services.notifications import repository as repo
from services.notifications.contacts import ContactRefused
from services.notifications.scheduler import Deps

# Stages in which the agency has taken the person on: the only ones with contact details.
TAKEN_ON = ("accepted", "in_progress", "on_hold")


class NotYours(LookupError):
    """No such offer for this agency. Another agency's offer is indistinguishable from none."""


class NotTakenOn(PermissionError):
    """The agency has not (or not yet, or no longer) taken the person on."""


class NotReleasedYet(Exception):
    """Intake has not yet heard of the acceptance: asking again shortly will do."""


async def offer_of(pool: asyncpg.Pool, agency_id: str, offer_id: UUID) -> asyncpg.Record:
    async with pool.acquire() as conn:
        offer = await repo.agency_offer(conn, agency_id, offer_id)
    if offer is None:
        raise NotYours(f"No offer {offer_id} for agency {agency_id}.")
    return offer


async def view_contact(deps: Deps, agency_id: str, offer_id: UUID, viewer: str) -> dict[str, Any]:
    offer = await offer_of(deps.pool, agency_id, offer_id)
    if offer["stage"] not in TAKEN_ON:
        refusal = _before_acceptance(offer)
        await _log_view(deps, offer, viewer, refused=str(refusal))
        raise refusal
    try:
        released = await deps.contacts.release(offer["need_id"], agency_id, viewer)
    except ContactRefused as refused:
        await _log_view(deps, offer, viewer, refused=str(refused))
        if refused.permanent:
            raise NotTakenOn(str(refused)) from None
        raise NotReleasedYet(str(refused)) from None
    await _log_view(deps, offer, viewer, refused=None)
    return released


def _before_acceptance(offer: asyncpg.Record) -> NotTakenOn | NotReleasedYet:
    if offer["status"] == "answered" and offer["stage"] == "offered":
        return NotReleasedYet("Your answer is being confirmed; try again in a moment.")
    return NotTakenOn(
        "Contact details are shown only for a referral your agency has accepted "
        f"(this one is {offer['stage'].replace('_', ' ')})."
    )


async def _log_view(deps: Deps, offer: asyncpg.Record, viewer: str, refused: str | None) -> None:
    async with deps.pool.acquire() as conn:
        await repo.log_contact_view(
            conn,
            {
                "view_id": uuid4(),
                "agency_id": offer["agency_id"],
                "viewer": viewer,
                "offer_id": offer["offer_id"],
                "need_id": offer["need_id"],
                "shown": refused is None,
                "reason": refused,
                "viewed_at": deps.clock.now(),
            },
        )
