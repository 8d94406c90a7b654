"""Matching's data access: its view of the directory, capacity, agencies' record, and the
referral and offers per need."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any
from uuid import UUID

import asyncpg

from services.matching.geo import Point, cell_of, cells_within
from services.matching.profiles import ServiceFacts, service_facts
from services.matching.ranking import (
    PRIOR_ACCEPTANCE_RATE,
    PRIOR_RESPONSE_HOURS,
    AgencyStats,
    OpeningHours,
    ServiceView,
)
from shared import outbox
from shared.events import CapacityStatus, ConsentRevoked, Gender, NeedCategory, NeedSubmitted
from shared.hsds import AgencyProfile

# --- the directory as matching sees it (materialised from refnet.agencies.v1) -------------


async def apply_profile(conn: asyncpg.Connection, profile: AgencyProfile) -> bool:
    """Replace the agency's services with the profile's; False if a newer one is held."""
    stored = await conn.fetchval(
        "SELECT revision FROM agency_profiles WHERE agency_id = $1 FOR UPDATE", profile.agency_id
    )
    if stored is not None and stored >= profile.revision:
        return False
    await conn.execute(
        "INSERT INTO agency_profiles (agency_id, revision, name, profile) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (agency_id) DO UPDATE SET revision = EXCLUDED.revision, "
        "name = EXCLUDED.name, profile = EXCLUDED.profile",
        profile.agency_id,
        profile.revision,
        profile.organization.name,
        profile.model_dump(mode="json"),
    )
    await conn.execute("DELETE FROM match_services WHERE agency_id = $1", profile.agency_id)
    facts = service_facts(profile)
    name = profile.organization.name
    await conn.executemany(_INSERT_SERVICE, [_service_row(f, name) for f in facts])
    await conn.executemany(
        "INSERT INTO service_coverage (kind, area, category, service_id) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        [row for f in facts for row in _coverage_rows(f)],
    )
    await conn.executemany(
        "INSERT INTO service_reach (cell, category, service_id, location, latitude, longitude, "
        "radius_km) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        [row for f in facts for row in _reach_rows(f)],
    )
    await _rebase_capacity(conn, facts)
    return True


_INSERT_SERVICE = (
    "INSERT INTO match_services (service_id, agency_id, agency_name, name, category, "
    "minimum_age, maximum_age, gender, mat_friendly, insurance, languages, capacity_status, "
    "available, capacity_as_of, postal_codes, counties, radius_km, locations, schedule) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, "
    "$19)"
)


def _service_row(f: ServiceFacts, agency_name: str) -> tuple[Any, ...]:
    return (
        f.service_id,
        f.agency_id,
        agency_name,
        f.name,
        f.category.value,
        f.minimum_age,
        f.maximum_age,
        f.gender.value if f.gender else None,
        f.mat_friendly,
        sorted(f.insurance),
        sorted(f.languages),
        f.capacity_status.value,
        f.available,
        f.capacity_as_of,
        sorted(f.postal_codes),
        sorted(f.counties),
        f.radius_km,
        [list(point) for point in f.locations],
        [[sorted(h.weekdays), h.opens_at.isoformat(), h.closes_at.isoformat()] for h in f.schedule],
    )


def _coverage_rows(f: ServiceFacts) -> list[tuple[str, str, str, str]]:
    areas = [("postal_code", code) for code in f.postal_codes]
    areas += [("county", county) for county in f.counties]
    return [(kind, area, f.category.value, f.service_id) for kind, area in areas]


def _reach_rows(f: ServiceFacts) -> list[tuple[Any, ...]]:
    """One row per location and grid cell its circle touches: the lookup by the need's
    cell then decides the distance without fetching the service."""
    if f.radius_km is None:
        return []
    return [
        (cell, f.category.value, f.service_id, i, lat, lon, f.radius_km)
        for i, (lat, lon) in enumerate(f.locations)
        for cell in sorted(cells_within((lat, lon), f.radius_km))
    ]


async def _rebase_capacity(conn: asyncpg.Connection, facts: list[ServiceFacts]) -> None:
    """A capacity count newer than the last one already includes the acceptances before
    it, so those stop counting; places held by open offers still do."""
    await conn.executemany(
        "INSERT INTO capacity_counters (service_id, baseline_at) VALUES ($1, $2) "
        "ON CONFLICT (service_id) DO UPDATE SET consumed = 0, baseline_at = EXCLUDED.baseline_at "
        "WHERE EXCLUDED.baseline_at IS NOT NULL AND (capacity_counters.baseline_at IS NULL "
        "OR EXCLUDED.baseline_at > capacity_counters.baseline_at)",
        [(f.service_id, f.capacity_as_of) for f in facts],
    )


async def directory_view_current(conn: asyncpg.Connection) -> bool:
    """Whether this view holds every profile the directory's owner (in this same schema)
    has published, and no agency it removed. Trivially true when the directory is
    published by someone else."""
    behind: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM directory_published d LEFT JOIN agency_profiles a "
        "USING (agency_id) WHERE a.revision IS NULL OR a.revision < d.revision) "
        "OR EXISTS (SELECT 1 FROM agency_profiles a WHERE EXISTS (SELECT 1 FROM "
        "directory_published) AND NOT EXISTS (SELECT 1 FROM directory_published d "
        "WHERE d.agency_id = a.agency_id))"
    )
    return not behind


async def remove_agency(conn: asyncpg.Connection, agency_id: str) -> None:
    await conn.execute("DELETE FROM agency_profiles WHERE agency_id = $1", agency_id)


@dataclass(frozen=True)
class Area:
    """Where a need's services must reach: what the candidate query looks up."""

    category: NeedCategory
    postal_code: str
    county: str | None
    point: Point | None


async def candidate_services(conn: asyncpg.Connection, area: Area) -> list[ServiceView]:
    """The services of the area's category whose area reaches it: found by ZIP, county or
    grid cell, each an index lookup, so the cost follows the services near the person, not
    the directory's size; a cell's radius services then by their distance."""
    reaches = _reaches("$1", "$2", "$3", "$4", "$5", "$6", "$7")
    rows = await conn.fetch(
        f"SELECT s.*, {_PLACES_HELD} FROM match_services s {_COUNTERS} WHERE {reaches}",
        *_area_params(area),
    )
    return [_service_view(r) for r in rows]


_COUNTERS = "LEFT JOIN capacity_counters c USING (service_id)"
_PLACES_HELD = "coalesce(c.reserved, 0) AS reserved, coalesce(c.consumed, 0) AS consumed"


async def candidate_services_by_area(
    conn: asyncpg.Connection, areas: Sequence[Area]
) -> list[list[ServiceView]]:
    """``candidate_services`` for each of several areas, in one query."""
    if len(areas) == 1:  # its own plan is cheaper than the general one's
        return [await candidate_services(conn, areas[0])]
    asked = (
        "unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::float8[], "
        "$7::bool[]) WITH ORDINALITY AS q(category, postal_code, county, cell, lat, lon, "
        "located, i)"
    )
    reaches = _reaches(
        "q.category", "q.postal_code", "q.county", "q.cell", "q.lat", "q.lon", "q.located"
    )
    rows = await conn.fetch(
        f"SELECT q.i, s.*, {_PLACES_HELD} FROM {asked} CROSS JOIN LATERAL "
        f"(SELECT * FROM match_services s WHERE {reaches}) s {_COUNTERS}",
        *(list(column) for column in zip(*(_area_params(a) for a in areas), strict=True)),
    )
    found: list[list[ServiceView]] = [[] for _ in areas]
    for r in rows:
        found[r["i"] - 1].append(_service_view(r))
    return found


def _area_params(area: Area) -> tuple[Any, ...]:
    lat, lon = area.point or (0.0, 0.0)
    cell = cell_of(area.point) if area.point else ""
    county = (area.county or "").lower()
    return (area.category.value, area.postal_code, county, cell, lat, lon, area.point is not None)


def _reaches(
    category: str, postal_code: str, county: str, cell: str, lat: str, lon: str, located: str
) -> str:
    """The SQL condition on service ``s`` for an area given as these SQL expressions: its
    ZIP code or county is among the service's, or the service's circle reaches the area's
    point (a lookup by the point's grid cell, then the distance to each location there)."""
    # Kilometres from (lat, lon) to (latitude, longitude): geo.haversine_km.
    haversine_km = (
        f"2 * 6371 * asin(sqrt(power(sin(radians(latitude - {lat}) / 2), 2) "
        f"+ cos(radians({lat})) * cos(radians(latitude)) "
        f"* power(sin(radians(longitude - {lon}) / 2), 2)))"
    )
    return (
        f"s.service_id IN (SELECT service_id FROM service_coverage WHERE kind = 'postal_code' "
        f"AND area = {postal_code} AND category = {category} "
        f"UNION ALL SELECT service_id FROM service_coverage WHERE kind = 'county' "
        f"AND area = {county} AND category = {category} "
        f"UNION ALL SELECT service_id FROM service_reach WHERE {located} AND cell = {cell} "
        f"AND category = {category} AND {haversine_km} <= radius_km)"
    )


def _service_view(r: asyncpg.Record) -> ServiceView:
    return ServiceView(
        service_id=r["service_id"],
        agency_id=r["agency_id"],
        agency_name=r["agency_name"],
        name=r["name"],
        category=NeedCategory(r["category"]),
        postal_codes=frozenset(r["postal_codes"]),
        counties=frozenset(r["counties"]),
        radius_km=r["radius_km"],
        locations=tuple((lat, lon) for lat, lon in r["locations"]),
        languages=frozenset(r["languages"]),
        minimum_age=r["minimum_age"],
        maximum_age=r["maximum_age"],
        gender=Gender(r["gender"]) if r["gender"] else None,
        mat_friendly=r["mat_friendly"],
        insurance=frozenset(r["insurance"]),
        capacity_status=CapacityStatus(r["capacity_status"]),
        available=r["available"],
        reserved=r["reserved"],
        consumed=r["consumed"],
        schedule=tuple(
            OpeningHours(frozenset(days), time.fromisoformat(opens), time.fromisoformat(closes))
            for days, opens, closes in r["schedule"]
        ),
    )


async def agency_name(conn: asyncpg.Connection, agency_id: str | None) -> str | None:
    if agency_id is None:
        return None
    name = await conn.fetchval("SELECT name FROM agency_profiles WHERE agency_id = $1", agency_id)
    return str(name) if name is not None else None


# --- capacity: an open offer holds a place, an acceptance takes it ----------------------


@dataclass(frozen=True)
class PlaceChange:
    """A change to a service's counters: places held by open offers, places taken by
    acceptances."""

    reserved: int = 0
    consumed: int = 0

    def __add__(self, other: PlaceChange) -> PlaceChange:
        return PlaceChange(self.reserved + other.reserved, self.consumed + other.consumed)


# --- agencies' recent behaviour --------------------------------------------------------


async def agency_stats(conn: asyncpg.Connection, agency_ids: list[str]) -> dict[str, AgencyStats]:
    rows = await conn.fetch(
        "SELECT * FROM agency_stats WHERE agency_id = ANY($1::text[])", agency_ids
    )
    return {
        r["agency_id"]: AgencyStats(r["answered"], r["acceptance_rate"], r["response_hours"])
        for r in rows
    }


async def record_answer(
    conn: asyncpg.Connection, agency_id: str, accepted: bool, hours: float, weight: float
) -> None:
    """Moving averages: each answer moves the rate and the time ``weight`` of the way."""
    await conn.execute(
        "INSERT INTO agency_stats AS s (agency_id, answered, acceptance_rate, response_hours) "
        "VALUES ($1, 1, $5::float8 + $4::float8 * ($2::float8 - $5::float8), "
        "$6::float8 + $4::float8 * ($3::float8 - $6::float8)) "
        "ON CONFLICT (agency_id) DO UPDATE SET answered = s.answered + 1, "
        "acceptance_rate = s.acceptance_rate + $4::float8 * ($2::float8 - s.acceptance_rate), "
        "response_hours = s.response_hours + $4::float8 * ($3::float8 - s.response_hours)",
        agency_id,
        1.0 if accepted else 0.0,
        hours,
        weight,
        PRIOR_ACCEPTANCE_RATE,
        PRIOR_RESPONSE_HOURS,
    )


# --- offers ------------------------------------------------------------------------------


async def offer(conn: asyncpg.Connection, offer_id: UUID) -> dict[str, Any] | None:
    row = await conn.fetchrow("SELECT * FROM offers WHERE offer_id = $1", offer_id)
    return dict(row) if row else None


async def first_offered_at(conn: asyncpg.Connection, need_id: UUID) -> datetime | None:
    """When the need was first offered to any agency (acceptance latency starts there)."""
    at: datetime | None = await conn.fetchval(
        "SELECT min(offered_at) FROM offers WHERE need_id = $1", need_id
    )
    return at


async def open_offers(conn: asyncpg.Connection, need_id: UUID) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT * FROM offers WHERE need_id = $1 AND status = 'open' ORDER BY attempt", need_id
    )
    return [dict(r) for r in rows]


async def close_offer(conn: asyncpg.Connection, offer_id: UUID, status: str, at: datetime) -> None:
    await conn.execute(
        "UPDATE offers SET status = $2, answered_at = $3 WHERE offer_id = $1", offer_id, status, at
    )


async def insert_referrals(
    conn: asyncpg.Connection, needs: Sequence[NeedSubmitted], at: datetime
) -> dict[UUID, dict[str, Any]]:
    """The new referral rows by need id, in one statement; a need already known gets none.
    Row-wise arrays (languages) travel as JSON, since SQL arrays of arrays are flat."""
    rows = await conn.fetch(
        "INSERT INTO referrals (need_id, person_ref, category, urgency, postal_code, languages, "
        "consent, consent_id, county, age_years, recovery_stage, constraints, gender, status, "
        "sequence, updated_at) "
        "SELECT need_id, person_ref, category, urgency, postal_code, "
        "ARRAY(SELECT jsonb_array_elements_text(languages)), consent, consent_id, county, "
        "age_years, recovery_stage, constraints, gender, 'submitted', 1, $14 "
        "FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], "
        "$6::text[]::jsonb[], $7::text[]::jsonb[], $8::uuid[], $9::text[], $10::int[], "
        "$11::text[], $12::text[]::jsonb[], $13::text[]) WITH ORDINALITY AS n(need_id, "
        "person_ref, category, urgency, postal_code, languages, consent, consent_id, county, "
        "age_years, recovery_stage, constraints, gender, i) "
        "ORDER BY i ON CONFLICT DO NOTHING RETURNING *",
        [need.need_id for need in needs],
        [need.person_ref for need in needs],
        [need.category.value for need in needs],
        [need.urgency.value for need in needs],
        [need.postal_code for need in needs],
        [json.dumps(list(need.languages)) for need in needs],
        [need.consent.model_dump_json() for need in needs],
        [need.consent.consent_id for need in needs],
        [need.county for need in needs],
        [need.age_years for need in needs],
        [need.recovery_stage.value if need.recovery_stage else None for need in needs],
        [need.constraints.model_dump_json() for need in needs],
        [need.gender.value if need.gender else None for need in needs],
        at,
    )
    return {row["need_id"]: dict(row) for row in rows}


async def consents_revoked_at(
    conn: asyncpg.Connection, needs: Sequence[NeedSubmitted]
) -> dict[UUID, datetime | None]:
    """When each need's consent was revoked, if it was, by consent id. Holds a share lock on
    the consent rows until commit, so a revocation being processed elsewhere either
    committed before (and is seen here) or waits for these needs' referrals to commit (and
    then cancels them). Rows are inserted and locked in consent order, so two batches
    cannot deadlock on them."""
    people = sorted({(n.consent.consent_id, n.person_ref) for n in needs})
    await conn.execute(
        "INSERT INTO consents (consent_id, person_ref) "
        "SELECT * FROM unnest($1::uuid[], $2::uuid[]) ON CONFLICT DO NOTHING",
        [consent_id for consent_id, _ in people],
        [person_ref for _, person_ref in people],
    )
    rows = await conn.fetch(
        "SELECT consent_id, revoked_at FROM consents WHERE consent_id = ANY($1::uuid[]) "
        "ORDER BY consent_id FOR SHARE",
        sorted({consent_id for consent_id, _ in people}),
    )
    return {row["consent_id"]: row["revoked_at"] for row in rows}


async def revoke_consent(conn: asyncpg.Connection, revoked: ConsentRevoked) -> None:
    """Record the revocation (the first one wins) and hold the consent row's lock until
    commit: needs arriving under it meanwhile wait, then see it revoked."""
    await conn.execute(
        "INSERT INTO consents (consent_id, person_ref, revoked_at) VALUES ($1, $2, $3) "
        "ON CONFLICT (consent_id) DO UPDATE "
        "SET revoked_at = coalesce(consents.revoked_at, EXCLUDED.revoked_at)",
        revoked.consent_id,
        revoked.person_ref,
        revoked.revoked_at,
    )


async def referrals_for_update(
    conn: asyncpg.Connection, consent_id: UUID, statuses: list[str]
) -> list[dict[str, Any]]:
    """The consent's referrals in these statuses, locked; in need order, so two
    transactions locking several of them cannot deadlock."""
    rows = await conn.fetch(
        "SELECT * FROM referrals WHERE consent_id = $1 AND status = ANY($2::text[]) "
        "ORDER BY need_id FOR UPDATE",
        consent_id,
        statuses,
    )
    return [dict(r) for r in rows]


async def referral_for_update(conn: asyncpg.Connection, need_id: UUID) -> dict[str, Any] | None:
    row = await conn.fetchrow("SELECT * FROM referrals WHERE need_id = $1 FOR UPDATE", need_id)
    return dict(row) if row else None


# --- a step's writes ---------------------------------------------------------------------


class _Args:
    """The parameters of a statement being put together, numbered as they are added."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def add(self, values: list[Any], cast: str) -> str:
        self.values.append(values)
        return f"${len(self.values)}::{cast}"

    def unnest(
        self, rows: Sequence[Mapping[str, Any]], alias: str, columns: Sequence[tuple[str, str]]
    ) -> str:
        """The rows as a table ``alias`` of the named (column, SQL type) pairs, one array
        parameter per column; a jsonb column is sent as JSON text."""
        arrays = [
            f"{self.add([json.dumps(row[name]) for row in rows], 'text[]')}::jsonb[]"
            if kind == "jsonb"
            else self.add([row[name] for row in rows], f"{kind}[]")
            for name, kind in columns
        ]
        names = ", ".join(name for name, _ in columns)
        return f"unnest({', '.join(arrays)}) AS {alias}({names})"


async def write_step(
    conn: asyncpg.Connection,
    *,
    offers: Sequence[dict[str, Any]],
    places: Mapping[str, PlaceChange],
    referrals: Sequence[dict[str, Any]],
    events: Sequence[outbox.OutboxRow],
) -> None:
    """A step's writes in one statement, so one round trip: new offers, place counts,
    referral states, outbox events. Its parts see the same snapshot and change different
    tables; the check that an offer's referral exists runs as the statement ends."""
    args = _Args()
    parts = []
    if offers:
        parts.append(_offers_part(args, offers))
    if places:
        parts.append(_places_part(args, places))
    if referrals:
        parts.append(_referrals_part(args, referrals))
    if events:
        parts.append(outbox.insert_sql(*(args.add(*column) for column in outbox.columns(events))))
    if not parts:
        return
    *first, last = parts
    ctes = ", ".join(f"w{i} AS ({part})" for i, part in enumerate(first))
    await conn.execute(f"WITH {ctes} {last}" if ctes else last, *args.values)


def _offers_part(args: _Args, offers: Sequence[dict[str, Any]]) -> str:
    return (
        "INSERT INTO offers (offer_id, need_id, agency_id, service_id, attempt, status, "
        "respond_by, offered_at, explanation) "
        "SELECT offer_id, need_id, agency_id, service_id, attempt, 'open', respond_by, "
        "offered_at, explanation FROM " + args.unnest(offers, "o", _OFFER_COLUMNS)
    )


_OFFER_COLUMNS = (
    ("offer_id", "uuid"),
    ("need_id", "uuid"),
    ("agency_id", "text"),
    ("service_id", "text"),
    ("attempt", "int"),
    ("respond_by", "timestamptz"),
    ("offered_at", "timestamptz"),
    ("explanation", "jsonb"),
)


def _places_part(args: _Args, changes: Mapping[str, PlaceChange]) -> str:
    """Each service's change, in service order, so two steps take the counters' locks in
    the same order (a step that writes twice may still meet another in a deadlock, which is
    retried). A service without counters yet starts from zero and records no release below
    it; one with counters takes the change as it is."""
    ordered = sorted(changes.items())
    services = args.add([service_id for service_id, _ in ordered], "text[]")
    reserved = args.add([change.reserved for _, change in ordered], "int[]")
    consumed = args.add([change.consumed for _, change in ordered], "int[]")
    change = f"unnest({services}, {reserved}, {consumed}) AS d(service_id, reserved, consumed)"
    return (
        "INSERT INTO capacity_counters AS c (service_id, reserved, consumed) "
        f"SELECT service_id, greatest(reserved, 0), greatest(consumed, 0) FROM {change} "
        "ORDER BY service_id "
        "ON CONFLICT (service_id) DO UPDATE SET "
        f"reserved = c.reserved + (SELECT d.reserved FROM {change} "
        "WHERE d.service_id = EXCLUDED.service_id), "
        f"consumed = c.consumed + (SELECT d.consumed FROM {change} "
        "WHERE d.service_id = EXCLUDED.service_id)"
    )


def _referrals_part(args: _Args, refs: Sequence[dict[str, Any]]) -> str:
    return (
        "UPDATE referrals r SET status = u.status, sequence = u.sequence, attempt = u.attempt, "
        "agency_id = u.agency_id, offer_id = u.offer_id, respond_by = u.respond_by, "
        "tried = ARRAY(SELECT jsonb_array_elements_text(u.tried)), updated_at = u.updated_at, "
        "service_id = u.service_id FROM "
        + args.unnest(refs, "u", _REFERRAL_COLUMNS)
        + " WHERE r.need_id = u.need_id"
    )


_REFERRAL_COLUMNS = (
    ("need_id", "uuid"),
    ("status", "text"),
    ("sequence", "int"),
    ("attempt", "int"),
    ("agency_id", "text"),
    ("offer_id", "uuid"),
    ("respond_by", "timestamptz"),
    ("tried", "jsonb"),
    ("updated_at", "timestamptz"),
    ("service_id", "text"),
)
