"""`refnet directory import | export`: what an operator runs to load or take out the
directory, and the seeding the local stack does with the demo package; and `refnet agency
add`: one agency added to (or replaced in) the directory, from an HSDS package or from a
few fields."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import asyncpg
from pydantic import ValidationError

from services.matching.directory import owner
from services.matching.directory.package import (
    MAX_RADIUS_KM,
    DirectoryPackage,
    PackageInvalid,
    profiles,
    read_package,
    write_package,
)
from shared.clock import SystemClock
from shared.db import create_pool
from shared.events import Insurance, NeedCategory
from shared.hsds import (
    AGENCY_ID_PATTERN,
    CATEGORY_TAXONOMY,
    PROFILE_FIELDS,
    Attribute,
    EligibilityTerm,
    ExtentType,
    Language,
    Location,
    Organization,
    Row,
    Service,
    ServiceArea,
    ServiceAtLocation,
    TaxonomyTerm,
    is_postal_code,
)
from shared.kafka import ensure_topics, kafka_security, make_producer
from shared.outbox import OutboxRelay, backlog, last_row_id
from shared.settings import BaseServiceSettings
from shared.topics import agency_offers

log = logging.getLogger(__name__)
SCHEMA = "matching"
DEMO_PACKAGE = Path(__file__).parent / "demo"
# How long the directory commands wait for matching's running relay to publish what they
# queued before saying it is still queued.
PUBLISH_WAIT_S = 30.0
_WAIT_POLL_S = 0.2


class Connection(BaseServiceSettings):
    """Only what the directory commands need: where Postgres and Kafka are."""


async def import_directory(settings: BaseServiceSettings, path: Path) -> owner.ImportResult:
    """Check the package (PackageInvalid lists every problem), store it and queue the
    changed profiles, then create the agencies' offer topics and publish."""
    package = read_package(path)
    pool = await create_pool(settings.database_url, SCHEMA, max_size=2)
    try:
        async with pool.acquire() as conn, conn.transaction():
            result = await owner.import_package(conn, package, SystemClock())
        _, queued = await publish_now(settings, pool)
    finally:
        await pool.close()
    return dataclasses.replace(result, still_queued=queued)


async def export_directory(
    settings: BaseServiceSettings, path: Path, fmt: Literal["csv", "json"]
) -> int:
    """Write the directory as imported (with capacity updates since); return its agencies."""
    pool = await create_pool(settings.database_url, SCHEMA, max_size=1)
    try:
        async with pool.acquire() as conn:
            package = await owner.export_package(conn)
    finally:
        await pool.close()
    write_package(package, path, fmt)
    return len(package.rows["organization"])


async def seed_if_empty(settings: BaseServiceSettings, path: Path = DEMO_PACKAGE) -> bool:
    pool = await create_pool(settings.database_url, SCHEMA, max_size=1)
    try:
        async with pool.acquire() as conn:
            empty = not await owner.agency_ids(conn)
    finally:
        await pool.close()
    if empty:
        result = await import_directory(settings, path)
        log.info("directory seeded from %s: %d agencies", path, len(result.published))
    return empty


async def publish_now(
    settings: BaseServiceSettings, pool: asyncpg.Pool, agencies: Sequence[str] | None = None
) -> tuple[list[str], int]:
    """Create the offer topic of every agency (or of ``agencies``), then see the outbox
    published: an operator wants to see the import land. This process publishes it, unless
    the running matching service's relay holds the outbox lock; then that relay does, and
    this waits for it (up to PUBLISH_WAIT_S, then says what is still queued). Return the
    topics created and how many events are still queued."""
    if agencies is None:
        async with pool.acquire() as conn:
            agencies = await owner.agency_ids(conn)
    names = [agency_offers(agency).name for agency in agencies]
    created = await ensure_topics(
        settings.kafka_bootstrap_servers,
        names,
        settings.kafka_partitions,
        security=kafka_security(settings),
    )
    producer = make_producer(settings, "refnet-directory")
    await producer.start()
    try:
        relay = OutboxRelay(
            pool, producer, settings.database_url, SCHEMA, settings.outbox_poll_interval_s
        )
        queued = await _publish_or_wait(relay, pool)
    finally:
        await producer.stop()
    if queued:
        log.warning(
            "%d event(s) are still queued in matching's outbox after %g s, this command's "
            "among them: the running matching service's relay will publish them (its log "
            "says why it has not yet)",
            queued,
            PUBLISH_WAIT_S,
        )
    return created, queued


async def _publish_or_wait(relay: OutboxRelay, pool: asyncpg.Pool) -> int:
    """Publish the outbox up to its newest row now, ourselves when no relay is active for the
    schema, else by waiting for that relay; return how many of those rows are still queued
    when PUBLISH_WAIT_S runs out (0 when all were published)."""
    async with pool.acquire() as conn:
        newest = await last_row_id(conn)
    deadline = asyncio.get_running_loop().time() + PUBLISH_WAIT_S
    while True:
        # publish_pending is 0 while another relay holds the lock; trying again each time
        # covers that relay stopping midway.
        while await relay.publish_pending():
            pass
        async with pool.acquire() as conn:
            queued = await backlog(conn, through=newest)
        if not queued or asyncio.get_running_loop().time() >= deadline:
            return queued
        await asyncio.sleep(_WAIT_POLL_S)


# --- one agency ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgencyFields:
    """An agency described on the command line: one service per category, each serving the
    same areas, in the same languages, for the same ages."""

    agency_id: str
    name: str
    categories: Sequence[str]
    postal_codes: Sequence[str] = ()
    counties: Sequence[str] = ()
    languages: Sequence[str] = ("en",)
    email: str | None = None
    website: str | None = None
    description: str | None = None
    minimum_age: int | None = None
    maximum_age: int | None = None
    mat_friendly: bool | None = None
    insurance: Sequence[str] = ()
    latitude: float | None = None
    longitude: float | None = None
    radius_km: float | None = None


@dataclass(frozen=True)
class AddResult:
    added: owner.AgencyAdded
    topic: str
    topic_created: bool
    still_queued: int = 0  # events the running matching service's relay has yet to publish

    @property
    def agency_id(self) -> str:
        return self.added.agency_id

    @property
    def published(self) -> bool:
        return bool(self.added.result.published)


async def add_agency(settings: BaseServiceSettings, agency: DirectoryPackage) -> AddResult:
    """Add the one organization in ``agency`` to the directory (or replace it there),
    keeping every other agency; then create its offers topic and publish its profile.
    PackageInvalid lists every problem, and then nothing changed."""
    pool = await create_pool(settings.database_url, SCHEMA, max_size=2)
    try:
        async with pool.acquire() as conn, conn.transaction():
            added = await owner.add_agency(conn, agency, SystemClock())
        created, queued = await publish_now(settings, pool, [added.agency_id])
    finally:
        await pool.close()
    topic = agency_offers(added.agency_id).name
    return AddResult(added, topic, topic in created, queued)


async def agency_exists(database_url: str, agency_id: str) -> bool:
    pool = await create_pool(database_url, SCHEMA, max_size=1)
    try:
        async with pool.acquire() as conn:
            return agency_id in await owner.agency_ids(conn)
    finally:
        await pool.close()


def organization_from_package(path: Path, organization_id: str | None) -> DirectoryPackage:
    """One organization of an HSDS package (CSV directory or .json), with its services,
    locations and everything else that hangs off them, and the terms and units they use.
    The whole package is checked first. Without ``organization_id`` the package must hold
    exactly one organization."""
    package = read_package(path)
    found = sorted(organization.id for organization in package.of(Organization))
    if organization_id is None:
        if len(found) != 1:
            raise PackageInvalid(
                [
                    f"{path}: holds {len(found)} organizations ({', '.join(found) or 'none'}); "
                    "name the one to add with --organization"
                ]
            )
        organization_id = found[0]
    if organization_id not in found:
        raise PackageInvalid(
            [f"{path}: no organization {organization_id!r} (it has: {', '.join(found)})"]
        )
    (profile,) = [p for p in profiles(package, 0) if p.agency_id == organization_id]
    rows: dict[str, tuple[Row, ...]] = {"organization": (profile.organization,)}
    for table, name in PROFILE_FIELDS.items():
        rows[table] = tuple(getattr(profile, name))
    return DirectoryPackage(rows=rows, metadata={})


_LANGUAGE = re.compile(r"^[a-z]{2,3}$")
_ELIGIBILITY_TAXONOMY = "refnet-eligibility"
_ELIGIBILITY_NAMES = {
    EligibilityTerm.MAT_FRIENDLY: "MAT-friendly",
    EligibilityTerm.INSURANCE_ACCEPTED: "Insurance accepted",
}


def package_from_fields(fields: AgencyFields) -> DirectoryPackage:
    """The HSDS rows that make ``fields`` a matchable agency: its organization, one active
    service per category (with its category attribute, service areas, languages, ages and
    eligibility attributes) and, given coordinates, an office every service is at. Row ids
    start with the agency id, so they do not collide with other agencies'. PackageInvalid
    names the command-line option behind each problem."""
    problems = _field_problems(fields)
    if problems:
        raise PackageInvalid(problems)
    try:
        return _rows_from_fields(fields)
    except ValidationError as exc:  # the checks above should have caught it; say what did
        raise PackageInvalid(
            [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        ) from None


def _field_problems(f: AgencyFields) -> list[str]:
    problems = []
    if not re.match(AGENCY_ID_PATTERN, f.agency_id):
        problems.append(
            f"--id: {f.agency_id!r} is not an agency id: lowercase letters, digits and '-', "
            "starting with a letter or digit, at most 63 characters (it names a Kafka topic)"
        )
    if not f.name.strip():
        problems.append("--name: give the agency's name")
    if not f.categories:
        problems.append("--category: give at least one category the agency serves")
    known = {category.value for category in NeedCategory}
    problems += [
        f"--category: {c!r} is not a category; use one of: {', '.join(sorted(known))}"
        for c in f.categories
        if c not in known
    ]
    plans = {plan.value for plan in Insurance}
    problems += [
        f"--insurance: {p!r} is not an insurance type; use one of: {', '.join(sorted(plans))}"
        for p in f.insurance
        if p not in plans
    ]
    problems += [
        f"--postal-code: {code!r} is not a five-digit ZIP code"
        for code in f.postal_codes
        if not is_postal_code(code)
    ]
    problems += ["--county: give the county's name" for c in f.counties if not c.strip()]
    problems += [
        f"--language: {code!r} is not an ISO 639 code such as en or es"
        for code in f.languages
        if not _LANGUAGE.match(code)
    ]
    if not f.languages:
        problems.append("--language: give at least one language the services are offered in")
    if not (f.postal_codes or f.counties or f.radius_km is not None):
        problems.append(
            "--postal-code, --county or --radius-km: give the area the agency serves, or no "
            "need can ever be matched to it"
        )
    for option, age in (("--minimum-age", f.minimum_age), ("--maximum-age", f.maximum_age)):
        if age is not None and not 0 <= age <= 120:
            problems.append(f"{option}: {age} is not an age between 0 and 120")
    if f.minimum_age is not None and f.maximum_age is not None and f.minimum_age > f.maximum_age:
        problems.append(f"--maximum-age: {f.maximum_age} is below --minimum-age {f.minimum_age}")
    if (f.latitude is None) != (f.longitude is None):
        problems.append("--latitude and --longitude: give both or neither")
    if f.latitude is not None and not -90 <= f.latitude <= 90:
        problems.append(f"--latitude: {f.latitude} is not between -90 and 90")
    if f.longitude is not None and not -180 <= f.longitude <= 180:
        problems.append(f"--longitude: {f.longitude} is not between -180 and 180")
    if f.radius_km is not None:
        if not 0 < f.radius_km <= MAX_RADIUS_KM:
            problems.append(f"--radius-km: {f.radius_km} is not above 0 and at most 500")
        if f.latitude is None:
            problems.append(
                "--radius-km: a radius is measured from the agency's office; give --latitude "
                "and --longitude"
            )
    return problems


def _rows_from_fields(f: AgencyFields) -> DirectoryPackage:
    aid = f.agency_id
    rows: dict[str, list[Row]] = {
        "organization": [
            Organization(
                id=aid, name=f.name, description=f.description, email=f.email, website=f.website
            )
        ]
    }

    def add(*found: Row) -> None:
        for row in found:
            rows.setdefault(row.table, []).append(row)

    office = None
    if f.latitude is not None and f.longitude is not None:
        office = Location(
            id=f"{aid}-office",
            organization_id=aid,
            name=f"{f.name} - Main Office",
            latitude=f.latitude,
            longitude=f.longitude,
        )
        add(office)
    eligibility: set[EligibilityTerm] = set()
    for category in dict.fromkeys(NeedCategory(c) for c in f.categories):
        sid = f"{aid}-{category.value}"
        add(
            Service(
                id=sid,
                organization_id=aid,
                name=f"{category.label} - {f.name}",
                minimum_age=f.minimum_age,
                maximum_age=f.maximum_age,
            ),
            TaxonomyTerm(
                id=category.value,
                code=category.value,
                name=category.label,
                taxonomy=CATEGORY_TAXONOMY,
                version="1",
            ),
            _service_attribute(f"{sid}-category", sid, category.value, category.value),
        )
        add(*(_area(sid, ExtentType.POSTAL_CODE, code) for code in dict.fromkeys(f.postal_codes)))
        add(*(_area(sid, ExtentType.COUNTY, name.strip()) for name in dict.fromkeys(f.counties)))
        if f.radius_km is not None:
            add(_area(sid, ExtentType.RADIUS_KM, f"{f.radius_km:g}"))
        add(
            *(
                Language(id=f"{sid}-lang-{code}", service_id=sid, code=code)
                for code in dict.fromkeys(f.languages)
            )
        )
        if office is not None:
            add(ServiceAtLocation(id=f"{sid}-at-office", service_id=sid, location_id=office.id))
        if f.mat_friendly is not None:
            term = EligibilityTerm.MAT_FRIENDLY
            eligibility.add(term)
            value = "true" if f.mat_friendly else "false"
            add(_service_attribute(f"{sid}-{term.value}", sid, term.value, value))
        for plan in dict.fromkeys(f.insurance):
            term = EligibilityTerm.INSURANCE_ACCEPTED
            eligibility.add(term)
            add(_service_attribute(f"{sid}-insurance-{plan}", sid, term.value, plan))
    add(
        *(
            TaxonomyTerm(
                id=term.value,
                code=term.value,
                name=_ELIGIBILITY_NAMES[term],
                taxonomy=_ELIGIBILITY_TAXONOMY,
                version="1",
            )
            for term in sorted(eligibility)
        )
    )
    return DirectoryPackage(rows={table: tuple(found) for table, found in rows.items()})


def _service_attribute(row_id: str, service_id: str, term_id: str, value: str) -> Attribute:
    return Attribute(
        id=row_id,
        link_id=service_id,
        link_type="service",
        link_entity="service",
        taxonomy_term_id=term_id,
        value=value,
    )


def _area(service_id: str, kind: ExtentType, extent: str) -> ServiceArea:
    slug = re.sub(r"[^a-z0-9]+", "-", extent.lower()).strip("-") or "area"
    names = {
        ExtentType.POSTAL_CODE: f"ZIP {extent}",
        ExtentType.COUNTY: f"{extent} County",
        ExtentType.RADIUS_KM: f"Within {extent} km",
    }
    return ServiceArea(
        id=f"{service_id}-{kind.value.replace('_', '-')}-{slug}",
        service_id=service_id,
        name=names[kind],
        extent=extent,
        extent_type=kind,
    )
