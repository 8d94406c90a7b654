"""The directory's owner: keeps the imported HSDS package and publishes each agency's
profile to the compacted refnet.agencies.v1, a tombstone when an agency leaves.

Publishing goes through matching's outbox in the same transaction as the change, so an
import is all or nothing and every consumer (matching's own view included) catches up from
the topic. An unchanged agency is not re-sent.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import asyncpg

from services.matching.directory.package import (
    DirectoryPackage,
    PackageInvalid,
    profiles,
    validate,
)
from shared import outbox
from shared.clock import Clock
from shared.cloudevents import EventTooLarge, PoisonMessage
from shared.events import CapacityUpdated
from shared.hsds import (
    TABLES,
    AgencyProfile,
    Attribute,
    EligibilityTerm,
    Location,
    Organization,
    Row,
    Service,
    ServiceAtLocation,
    ServiceCapacity,
    TaxonomyTerm,
    Unit,
)
from shared.topics import AGENCIES

SOURCE = "/refnet/directory"
_MODELS: dict[str, type[Row]] = {model.table: model for model in TABLES}


@dataclass(frozen=True)
class ImportResult:
    revision: int
    published: list[str]  # agencies whose profile is new or changed
    removed: list[str]  # agencies tombstoned
    unchanged: int
    # Events still in the outbox when the command stopped waiting for the running matching
    # service's relay to publish them (see admin.publish_now).
    still_queued: int = 0


async def import_package(
    conn: asyncpg.Connection, package: DirectoryPackage, clock: Clock
) -> ImportResult:
    """Replace the directory with ``package`` and publish what changed. Call in a
    transaction."""
    await _lock(conn)
    revision = await _next_revision(conn, package.metadata)
    await conn.execute("DELETE FROM directory_rows")
    await conn.executemany(
        "INSERT INTO directory_rows (table_name, row_id, position, data) VALUES ($1, $2, $3, $4)",
        [
            (table, row.id, position, row.model_dump(mode="json"))
            for table, rows in package.rows.items()
            for position, row in enumerate(rows)
        ],
    )
    return await _publish(conn, profiles(package, revision), revision, clock, removals=True)


@dataclass(frozen=True)
class AgencyAdded:
    agency_id: str
    replaced: bool  # the agency was in the directory already; its rows were replaced
    result: ImportResult  # published holds the agency when its profile changed


# Rows every agency shares, matched by what they mean rather than by id: a term or unit
# the directory already has is reused, so one agency's package cannot redefine another's.
_SHARED_TABLES = ("taxonomy_term", "unit")


async def add_agency(
    conn: asyncpg.Connection, agency: DirectoryPackage, clock: Clock
) -> AgencyAdded:
    """Add one organization, with its services, locations, areas, languages, schedules,
    capacities and attributes, to the directory, or replace the rows it had; every other
    agency stays as it is. ``agency`` holds exactly one organization (and may carry the
    taxonomy terms and units it uses). Checks the resulting directory (PackageInvalid lists
    every problem, and nothing changes) and publishes the agency's profile if it changed.
    Call in a transaction."""
    organizations = agency.of(Organization)
    if len(organizations) != 1:
        raise PackageInvalid(
            [f"expected exactly one organization to add, got {len(organizations)}"]
        )
    agency_id = organizations[0].id
    await _lock(conn)
    current = await export_package(conn)
    replaced = any(org.id == agency_id for org in current.of(Organization))
    old = _rows_of_agency(current, agency_id) - _live_capacity(current, agency)
    kept = {t: tuple(r for r in rows if (t, r.id) not in old) for t, rows in current.rows.items()}
    incoming = _reuse_shared_rows(kept, agency, agency_id)
    owners: list[tuple[str, str, str | None]] = [
        (r.table, r.id, r.organization_id) for r in agency.of(Service)
    ]
    owners += [(r.table, r.id, r.organization_id) for r in agency.of(Location)]
    problems = [
        f"{table} {row_id!r}: organization_id is {org!r}, not {agency_id!r}"
        for table, row_id, org in owners
        if org not in (None, agency_id)
    ]
    problems += _id_collisions(kept, incoming, agency_id)
    if problems:
        raise PackageInvalid(problems)
    merged = DirectoryPackage(
        rows={table: kept[table] + incoming[table] for table in kept},
        metadata=current.metadata,
    )
    problems = validate(merged, f"directory with {agency_id}")
    if problems:
        raise PackageInvalid(problems)
    await _replace_rows(conn, old, incoming)
    revision = await _next_revision(conn, None)
    (profile,) = profiles(await _agency_slice(conn, agency_id), revision)
    result = await _publish(conn, [profile], revision, clock, removals=False)
    return AgencyAdded(agency_id, replaced, result)


def _rows_of_agency(package: DirectoryPackage, agency_id: str) -> set[tuple[str, str]]:
    """(table, id) of every row that belongs to the agency alone: its organization, its
    services and what hangs off them, its locations (owned, or unowned and used only by its
    services) and attributes on any of those. Shared terms and units are never included."""
    services = {s.id for s in package.of(Service) if s.organization_id == agency_id}
    users_of: dict[str, set[str]] = {}
    for link in package.of(ServiceAtLocation):
        users_of.setdefault(link.location_id, set()).add(link.service_id)

    def ours(location: Location) -> bool:
        if location.organization_id is not None:
            return location.organization_id == agency_id
        users = users_of.get(location.id, set())
        return bool(users) and users <= services

    locations = {location.id for location in package.of(Location) if ours(location)}
    linked = {"organization": {agency_id}, "service": services, "location": locations}
    owned: set[tuple[str, str]] = {("organization", agency_id)}
    owned |= {("service", s) for s in services}
    owned |= {("location", loc) for loc in locations}
    for table, rows in package.rows.items():
        if table in ("organization", "service", "location", *_SHARED_TABLES):
            continue
        for row in rows:
            if table == "attribute":
                assert isinstance(row, Attribute)
                mine = row.link_id in linked.get(row.link_type, set())
            else:
                mine = getattr(row, "service_id", None) in services
            if mine:
                owned.add((table, row.id))
    return owned


def _live_capacity(current: DirectoryPackage, agency: DirectoryPackage) -> set[tuple[str, str]]:
    """The capacity an agency reported (service_capacity rows and capacity-status
    attributes) for services it keeps, where its new rows say nothing about them: re-adding
    an agency to change its details must not reset its live count."""
    staying = {service.id for service in agency.of(Service)}
    code = EligibilityTerm.CAPACITY_STATUS.value
    status_terms = {t.id for t in current.of(TaxonomyTerm) if t.code == code}
    new_status_terms = {t.id for t in agency.of(TaxonomyTerm) if t.code == code}
    counted = {capacity.service_id for capacity in agency.of(ServiceCapacity)}
    stated = {a.link_id for a in agency.of(Attribute) if a.taxonomy_term_id in new_status_terms}
    keep = {
        ("service_capacity", capacity.id)
        for capacity in current.of(ServiceCapacity)
        if capacity.service_id in staying - counted
    }
    keep |= {
        ("attribute", attribute.id)
        for attribute in current.of(Attribute)
        if attribute.link_type == "service"
        and attribute.taxonomy_term_id in status_terms
        and attribute.link_id in staying - stated
    }
    return keep


def _reuse_shared_rows(
    kept: dict[str, tuple[Row, ...]], agency: DirectoryPackage, agency_id: str
) -> dict[str, tuple[Row, ...]]:
    """The agency's rows as they will be stored, shared rows only where they are new to the
    directory. A taxonomy term with the same taxonomy and code as one in the directory (a unit
    with the same scheme and identifier) is the directory's: references are pointed at it.
    A new one whose id is taken by a different term (unit) gets a fresh id."""
    renamed: dict[str, dict[str, str]] = {table: {} for table in _SHARED_TABLES}
    rows: dict[str, list[Row]] = {table: [] for table in kept}
    for table in _SHARED_TABLES:
        taken = {row.id for row in kept[table]}
        by_meaning = {_meaning(row): row.id for row in reversed(kept[table])}
        for row in agency.rows[table]:
            existing = by_meaning.get(_meaning(row))
            if existing is not None:
                renamed[table][row.id] = existing
                continue
            new_id = row.id
            if new_id in taken:
                new_id = _fresh_id(f"{row.id}-{agency_id}", taken)
                renamed[table][row.id] = new_id
                row = row.model_copy(update={"id": new_id})
            taken.add(new_id)
            by_meaning[_meaning(row)] = new_id
            rows[table].append(row)
    terms, units = renamed["taxonomy_term"], renamed["unit"]
    for table, found in agency.rows.items():
        if table in _SHARED_TABLES:
            continue
        for row in found:
            if isinstance(row, Attribute) and row.taxonomy_term_id in terms:
                row = row.model_copy(update={"taxonomy_term_id": terms[row.taxonomy_term_id]})
            elif isinstance(row, ServiceCapacity) and row.unit_id in units:
                row = row.model_copy(update={"unit_id": units[row.unit_id]})
            rows[table].append(row)
    return {table: tuple(found) for table, found in rows.items()}


def _meaning(row: Row) -> tuple[str | None, ...]:
    if isinstance(row, TaxonomyTerm):
        return ("taxonomy_term", row.taxonomy, row.code)
    assert isinstance(row, Unit)
    return ("unit", row.scheme, row.identifier or row.name)


def _fresh_id(base: str, taken: set[str]) -> str:
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}-{n}", n + 1
    return candidate


def _id_collisions(
    kept: dict[str, tuple[Row, ...]], incoming: dict[str, tuple[Row, ...]], agency_id: str
) -> list[str]:
    """An id the agency's rows would take from another agency's row: ids are unique per
    table across the whole directory."""
    problems = []
    for table, rows in incoming.items():
        if table in _SHARED_TABLES:
            continue
        taken = {row.id for row in kept[table]}
        problems += [
            f"{table} {row.id!r}: that id is already used by another agency's {table} row; "
            f"give {agency_id}'s rows ids of their own"
            for row in rows
            if row.id in taken
        ]
    return problems


async def _replace_rows(
    conn: asyncpg.Connection,
    old: set[tuple[str, str]],
    incoming: dict[str, tuple[Row, ...]],
) -> None:
    """Delete the agency's old rows and store its new ones. A row coming back under the
    same id keeps its place in the export; others go at the end of their table."""
    tables, ids = [t for t, _ in sorted(old)], [i for _, i in sorted(old)]
    removed = await conn.fetch(
        "DELETE FROM directory_rows WHERE (table_name, row_id) IN "
        "(SELECT * FROM unnest($1::text[], $2::text[])) RETURNING table_name, row_id, position",
        tables,
        ids,
    )
    places = {(r["table_name"], r["row_id"]): r["position"] for r in removed}
    ends = {
        r["table_name"]: r["last"] + 1
        for r in await conn.fetch(
            "SELECT table_name, max(position) AS last FROM directory_rows GROUP BY table_name"
        )
    }
    values = []
    for table, rows in incoming.items():
        for row in rows:
            position = places.get((table, row.id))
            if position is None:
                position = ends.get(table, 0)
                ends[table] = position + 1
            values.append((table, row.id, position, row.model_dump(mode="json")))
    await conn.executemany(
        "INSERT INTO directory_rows (table_name, row_id, position, data) VALUES ($1, $2, $3, $4)",
        values,
    )


async def export_package(conn: asyncpg.Connection) -> DirectoryPackage:
    metadata = await conn.fetchval("SELECT metadata FROM directory_meta")
    records = await conn.fetch(
        "SELECT table_name, data FROM directory_rows ORDER BY table_name, position"
    )
    return _package(records, metadata or {})


async def _agency_slice(conn: asyncpg.Connection, agency_id: str) -> DirectoryPackage:
    """Only the rows one agency's profile is cut from (its organization, services and
    their locations, and the shared terms and units), not the whole directory."""
    records = await conn.fetch(
        "WITH services AS (SELECT row_id FROM directory_rows WHERE table_name = 'service' "
        "AND data ->> 'organization_id' = $1), "
        "locations AS (SELECT data ->> 'location_id' AS row_id FROM directory_rows "
        "WHERE table_name = 'service_at_location' "
        "AND data ->> 'service_id' IN (SELECT row_id FROM services)) "
        "SELECT table_name, data FROM directory_rows WHERE "
        "(table_name = 'organization' AND row_id = $1) "
        "OR table_name IN ('taxonomy_term', 'unit') "
        "OR data ->> 'organization_id' = $1 "
        "OR data ->> 'service_id' IN (SELECT row_id FROM services) "
        "OR (table_name = 'location' AND row_id IN (SELECT row_id FROM locations)) "
        "OR (table_name = 'attribute' AND (data ->> 'link_id' = $1 "
        "OR data ->> 'link_id' IN (SELECT row_id FROM services) "
        "OR data ->> 'link_id' IN (SELECT row_id FROM locations))) "
        "ORDER BY table_name, position",
        agency_id,
    )
    return _package(records, {})


def _package(records: list[asyncpg.Record], metadata: dict[str, Any]) -> DirectoryPackage:
    rows: dict[str, list[Row]] = {model.table: [] for model in TABLES}
    for record in records:
        model = _MODELS.get(record["table_name"])
        if model is not None:
            rows[model.table].append(model.model_validate(record["data"]))
    return DirectoryPackage(
        rows={table: tuple(found) for table, found in rows.items()}, metadata=metadata
    )


async def agency_ids(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT row_id FROM directory_rows WHERE table_name = 'organization' ORDER BY row_id"
    )
    return [r["row_id"] for r in rows]


async def update_capacity(
    conn: asyncpg.Connection, update: CapacityUpdated, clock: Clock
) -> AgencyProfile:
    """Record an agency's own count of a service's room and republish its profile. Call in
    a transaction."""
    await _lock(conn)
    service = await _row(conn, Service, update.service_id)
    if service is None or service.organization_id != update.agency_id:
        raise PoisonMessage(f"agency {update.agency_id} has no service {update.service_id}")
    await _put(conn, _capacity_row(await _capacity_of(conn, update.service_id), update))
    term_id = await _ensure_status_term(conn)
    await _put(conn, await _status_attribute(conn, update, term_id))
    revision = await _next_revision(conn, None)
    (profile,) = profiles(await _agency_slice(conn, update.agency_id), revision)
    try:
        await _publish(conn, [profile], revision, clock, removals=False)
    except PackageInvalid as exc:  # the same every time: retrying cannot help
        raise PoisonMessage(
            f"capacity update for service {update.service_id!r} not applied: the agency's "
            f"profile cannot be published until the directory's operator changes it ({exc})"
        ) from exc
    return profile


async def _publish(
    conn: asyncpg.Connection,
    new: list[AgencyProfile],
    revision: int,
    clock: Clock,
    *,
    removals: bool,
) -> ImportResult:
    # An agency whose last profile the relay set aside (too large for the broker) never got
    # it out: it counts as changed, and the row made now replaces the set-aside one.
    known = {
        r["agency_id"]: None if r["set_aside"] else r["digest"]
        for r in await conn.fetch(
            "SELECT agency_id, digest, EXISTS (SELECT FROM outbox o WHERE o.topic = $1 "
            "AND o.key = p.agency_id AND o.rejected_at IS NOT NULL) AS set_aside "
            "FROM directory_published p",
            AGENCIES.name,
        )
    }
    digests = {p.agency_id: _digest(p) for p in new}
    changed = [p for p in new if known.get(p.agency_id) != digests[p.agency_id]]
    rows, too_large = {}, []
    # Unchanged profiles are checked too: one published before sizes were checked would
    # otherwise leave its agency unmatchable while the import reported success.
    for profile in new:
        try:
            row = outbox.outbox_row(AGENCIES, profile, source=SOURCE, clock=clock)
        except EventTooLarge as exc:
            too_large.append(
                f"organization {profile.agency_id!r}: {exc}; split its services between "
                "several organizations, or list counties or a radius instead of many ZIP codes"
            )
        else:
            rows[profile.agency_id] = row
    if too_large:
        raise PackageInvalid(too_large)
    await outbox.write(conn, [rows[p.agency_id] for p in changed])
    await conn.executemany(
        "INSERT INTO directory_published (agency_id, revision, digest) VALUES ($1, $2, $3) "
        "ON CONFLICT (agency_id) DO UPDATE SET revision = $2, digest = $3",
        [(p.agency_id, revision, digests[p.agency_id]) for p in changed],
    )
    gone = sorted(set(known) - {p.agency_id for p in new}) if removals else []
    for agency_id in gone:
        await outbox.enqueue_tombstone(conn, AGENCIES, agency_id)
    await conn.execute(
        "DELETE FROM outbox WHERE topic = $1 AND key = ANY($2::text[]) AND rejected_at IS NOT NULL",
        AGENCIES.name,
        [p.agency_id for p in changed] + gone,
    )
    await conn.execute("DELETE FROM directory_published WHERE agency_id = ANY($1::text[])", gone)
    return ImportResult(revision, [p.agency_id for p in changed], gone, len(new) - len(changed))


def _digest(profile: AgencyProfile) -> str:
    content = profile.model_dump(mode="json", exclude={"revision"})
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


async def _lock(conn: asyncpg.Connection) -> None:
    # One writer at a time: an import and a capacity update must not interleave revisions.
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('matching.directory'))")


async def _next_revision(conn: asyncpg.Connection, metadata: dict[str, Any] | None) -> int:
    revision: int = await conn.fetchval(
        "INSERT INTO directory_meta (metadata, revision) VALUES (coalesce($1, '{}'::jsonb), 1) "
        "ON CONFLICT (singleton) DO UPDATE SET revision = directory_meta.revision + 1, "
        "metadata = coalesce($1, directory_meta.metadata) RETURNING revision",
        metadata,
    )
    return revision


async def _row(conn: asyncpg.Connection, model: type[Row], row_id: str) -> Any:
    data = await conn.fetchval(
        "SELECT data FROM directory_rows WHERE table_name = $1 AND row_id = $2",
        model.table,
        row_id,
    )
    return model.model_validate(data) if data is not None else None


async def _capacity_of(conn: asyncpg.Connection, service_id: str) -> ServiceCapacity | None:
    data = await conn.fetchval(
        "SELECT data FROM directory_rows WHERE table_name = 'service_capacity' "
        "AND data ->> 'service_id' = $1",
        service_id,
    )
    return ServiceCapacity.model_validate(data) if data is not None else None


async def _put(conn: asyncpg.Connection, row: Row) -> None:
    await conn.execute(
        "INSERT INTO directory_rows (table_name, row_id, position, data) VALUES ($1, $2, "
        "(SELECT coalesce(max(position) + 1, 0) FROM directory_rows WHERE table_name = $1), $3) "
        "ON CONFLICT (table_name, row_id) DO UPDATE SET data = EXCLUDED.data",
        row.table,
        row.id,
        row.model_dump(mode="json"),
    )


def _capacity_row(current: ServiceCapacity | None, update: CapacityUpdated) -> ServiceCapacity:
    base = current or ServiceCapacity(
        id=f"cap-{update.service_id}", service_id=update.service_id, available=0
    )
    available = update.available if update.available is not None else base.available
    if update.status == "no-capacity" and update.available is None:
        available = 0
    return base.model_copy(
        update={
            "available": available,
            "maximum": update.maximum if update.maximum is not None else base.maximum,
            "updated": update.updated_at.replace(microsecond=0),
        }
    )


async def _status_attribute(
    conn: asyncpg.Connection, update: CapacityUpdated, term_id: str
) -> Attribute:
    data = await conn.fetchval(
        "SELECT data FROM directory_rows WHERE table_name = 'attribute' "
        "AND data ->> 'link_id' = $1 AND data ->> 'taxonomy_term_id' = $2",
        update.service_id,
        term_id,
    )
    current = Attribute.model_validate(data) if data is not None else None
    return Attribute(
        id=current.id if current else f"{term_id}-{update.service_id}",
        link_id=update.service_id,
        link_type="service",
        link_entity="service",
        taxonomy_term_id=term_id,
        value=update.status.value,
    )


async def _ensure_status_term(conn: asyncpg.Connection) -> str:
    """The id of the capacity-status taxonomy term, added if the package had none."""
    code = EligibilityTerm.CAPACITY_STATUS.value
    found: str | None = await conn.fetchval(
        "SELECT row_id FROM directory_rows WHERE table_name = 'taxonomy_term' "
        "AND data ->> 'code' = $1",
        code,
    )
    if found is not None:
        return found
    term = TaxonomyTerm(id=code, code=code, name="Capacity status", taxonomy="refnet-eligibility")
    await _put(conn, term)
    return term.id
