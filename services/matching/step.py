"""One transaction of the state machine, whether it handles one event or a batch of needs.

A step reads as it goes what it decides on (referrals, offers, the directory) and keeps the
directory rows it read, with its own changes to their places applied, so a later need in the
same batch sees the place an earlier one took. The rows it only writes (referral states,
new offers, place counts, outbox events) are collected and sent in one statement when it
ends: that is what makes a batch of needs cost a handful of round trips rather than a dozen
per need. A read of offers goes through ``flushed()``, so it never misses one still pending.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import asyncpg

from services.matching import repository as repo
from services.matching.ranking import AgencyStats, ServiceView
from services.matching.repository import Area, PlaceChange
from shared import outbox
from shared.clock import Clock
from shared.events import Event
from shared.topics import TopicSpec

SOURCE = "/refnet/matching"


class Step:
    def __init__(self, conn: asyncpg.Connection, clock: Clock) -> None:
        self.conn = conn
        self.clock = clock
        self._events: list[outbox.OutboxRow] = []
        self._referrals: dict[UUID, dict[str, Any]] = {}
        self._offers: list[dict[str, Any]] = []
        self._places: dict[str, PlaceChange] = {}
        # What this step has read of the directory, kept current with its own changes.
        self._services: dict[str, ServiceView] = {}
        self._areas: dict[Area, list[str]] = {}
        self._stats: dict[str, AgencyStats] = {}
        self._names: dict[str, str | None] = {}

    # --- reads -----------------------------------------------------------------------

    async def candidates(self, areas: Sequence[Area]) -> list[list[ServiceView]]:
        """The services reaching each area, with this step's place changes applied; the
        areas not read yet in this step are read in one query."""
        unread = list(dict.fromkeys(a for a in areas if a not in self._areas))
        if unread:
            found = await repo.candidate_services_by_area(self.conn, unread)
            for area, services in zip(unread, found, strict=True):
                for service in services:
                    if service.service_id not in self._services:
                        self._services[service.service_id] = self._with_pending(service)
                self._areas[area] = [s.service_id for s in services]
        return [[self._services[sid] for sid in self._areas[area]] for area in areas]

    def _with_pending(self, service: ServiceView) -> ServiceView:
        """A service as read, plus this step's changes to its places not written yet."""
        change = self._places.get(service.service_id)
        if change is None:
            return service
        return dataclasses.replace(
            service,
            reserved=service.reserved + change.reserved,
            consumed=service.consumed + change.consumed,
        )

    async def stats(self, agency_ids: Sequence[str]) -> dict[str, AgencyStats]:
        unread = sorted({a for a in agency_ids if a not in self._stats})
        if unread:
            found = await repo.agency_stats(self.conn, unread)
            for agency_id in unread:
                self._stats[agency_id] = found.get(agency_id, AgencyStats())
        return {a: self._stats[a] for a in agency_ids}

    async def agency_name(self, agency_id: str | None) -> str | None:
        if agency_id is None:
            return None
        if agency_id not in self._names:
            self._names[agency_id] = await repo.agency_name(self.conn, agency_id)
        return self._names[agency_id]

    async def flushed(self) -> asyncpg.Connection:
        """The connection, once every pending write is on it: for reading back offers."""
        await self.flush()
        return self.conn

    # --- writes ----------------------------------------------------------------------

    def save_referral(self, ref: dict[str, Any]) -> None:
        self._referrals[ref["need_id"]] = dict(ref)

    def add_offer(self, offer: dict[str, Any], service: ServiceView) -> None:
        """A new open offer, which holds a place at its service."""
        self._offers.append(offer)
        self._names.setdefault(service.agency_id, service.agency_name)
        self.change_places(service.service_id, PlaceChange(reserved=1))

    def change_places(self, service_id: str, change: PlaceChange) -> None:
        self._places[service_id] = self._places.get(service_id, PlaceChange()) + change
        held = self._services.get(service_id)
        if held is not None:  # what was read, kept current
            self._services[service_id] = dataclasses.replace(
                held,
                reserved=held.reserved + change.reserved,
                consumed=held.consumed + change.consumed,
            )

    def forget_stats(self, agency_id: str) -> None:
        """The agency's record changed in this step: read it again when next needed."""
        self._stats.pop(agency_id, None)

    def enqueue(self, spec: TopicSpec, event: Event) -> None:
        self._events.append(outbox.outbox_row(spec, event, source=SOURCE, clock=self.clock))

    async def flush(self) -> None:
        await repo.write_step(
            self.conn,
            offers=self._offers,
            places=self._places,
            referrals=list(self._referrals.values()),
            events=self._events,
        )
        self._offers, self._places, self._referrals, self._events = [], {}, {}, []
