"""What the scheduler runs: job kinds and what a message is about. Job ids are derived from
what they are for, so a redelivered event schedules nothing twice."""

from __future__ import annotations

from enum import StrEnum
from uuid import NAMESPACE_URL, UUID, uuid5


class JobKind(StrEnum):
    OFFER_DEADLINE = "offer_deadline"  # emits OfferExpired if the offer is still open
    WORKER_EMAIL = "worker_email"  # to the intake worker who referred the person
    PERSON_MESSAGE = "person_message"  # to the person, on their channel, in their hours
    AGENCY_WEBHOOK = "agency_webhook"  # to an agency's webhook, if it has one


class About(StrEnum):
    ACCEPTED = "accepted"
    DECLINED = "declined"
    EXPIRED = "expired"
    UNMATCHED = "unmatched"
    CANCELLED = "cancelled"
    FAILED = "failed"
    STUCK = "stuck"  # offered too long without an acceptance
    CHECK_IN = "check-in"  # an aftercare check-in
    CALL_CHECK_IN = "call-check-in"  # the worker is to call: the person chose phone


def job_id(*parts: object) -> UUID:
    return uuid5(NAMESPACE_URL, "urn:refnet:job:" + ":".join(str(p) for p in parts))
