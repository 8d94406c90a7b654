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

from services.matching.directory.package import DirectoryPackage, profiles
from shared import outbox
from shared.clock import Clock
from shared.cloudevents import PoisonMessage
from shared.events import CapacityUpdated
from shared.hsds import (
    TABLES,
    AgencyProfile,
    Attribute,
    EligibilityTerm,
    Row,
    Service,
    ServiceCapacity,
    TaxonomyTerm,
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
    await _publish(conn, [profile], revision, clock, removals=False)
    return profile


async def _publish(
    conn: asyncpg.Connection,
    new: list[AgencyProfile],
    revision: int,
    clock: Clock,
    *,
    removals: bool,
) -> ImportResult:
    known = {
        r["agency_id"]: r["digest"] for r in await conn.fetch("SELECT * FROM directory_published")
    }
    changed = [p for p in new if known.get(p.agency_id) != _digest(p)]
    for profile in changed:
        await outbox.enqueue(conn, AGENCIES, profile, source=SOURCE, clock=clock)
    await conn.executemany(
        "INSERT INTO directory_published (agency_id, revision, digest) VALUES ($1, $2, $3) "
        "ON CONFLICT (agency_id) DO UPDATE SET revision = $2, digest = $3",
        [(p.agency_id, revision, _digest(p)) for p in changed],
    )
    gone = sorted(set(known) - {p.agency_id for p in new}) if removals else []
    for agency_id in gone:
        await outbox.enqueue_tombstone(conn, AGENCIES, agency_id)
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
