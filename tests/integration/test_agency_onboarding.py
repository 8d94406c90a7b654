"""Onboarding a partner agency on real Postgres and the embedded broker: `refnet agency add`
adds one agency to the directory without touching the others, creates its offers topic and
publishes its profile; its API key works until rotated or revoked.

The embedded broker enforces no ACLs, so the Kafka grants are checked as data and as the
commands they render (tests/unit/test_kafka_acls.py), not against a broker."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer

from services import cli
from services.matching.directory import admin, owner
from services.matching.directory.package import (
    DirectoryPackage,
    PackageInvalid,
    profiles,
    read_package,
    write_package,
)
from services.matching.profiles import service_facts
from services.notifications import agency_keys
from services.notifications.agency_keys import KeyProblem, fingerprint
from services.notifications.handlers import agency_for_key
from shared import cloudevents, db, outbox
from shared.clock import ManualClock
from shared.cloudevents import PoisonMessage, decode
from shared.events import CapacityStatus, CapacityUpdated, NeedCategory
from shared.hsds import AgencyProfile, Attribute, Organization, Row, TaxonomyTerm
from shared.infra import Infrastructure
from shared.topics import AGENCIES, agency_offers
from tests.kafka_reader import eventually, list_topics, read_topic

pytestmark = pytest.mark.integration

CLOCK = ManualClock(datetime(2026, 11, 23, 18, tzinfo=UTC))
# Far from the demo directory's Portland ZIP codes, so that a stack sharing this broker never
# matches a need to the agencies made here.
ZIP = "99950"


def new_agency_id() -> str:
    return f"ag-t{uuid4().hex[:8]}"


def fields(agency_id: str, **overrides: Any) -> admin.AgencyFields:
    values: dict[str, Any] = {
        "agency_id": agency_id,
        "name": "Harbor Light Recovery",
        "categories": ["housing", "peer-support"],
        "postal_codes": [ZIP],
        "languages": ["en", "es"],
        "mat_friendly": True,
        **overrides,
    }
    return admin.AgencyFields(**values)


@pytest_asyncio.fixture(loop_scope="session")
async def schemas(
    matching_pool: asyncpg.Pool,
    notifications_pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[dict[str, str]]:
    """Point every pool the commands open at this test's own schemas."""
    names = {}
    for service, pool in (("matching", matching_pool), ("notifications", notifications_pool)):
        async with pool.acquire() as conn:
            names[service] = await conn.fetchval("SELECT current_schema()")
    real_create_pool = db.create_pool

    async def create_pool_in_test_schema(url: str, schema: str, **kw: Any) -> asyncpg.Pool:
        return await real_create_pool(url, names.get(schema, schema), **kw)

    monkeypatch.setattr(db, "create_pool", create_pool_in_test_schema)
    monkeypatch.setattr(admin, "create_pool", create_pool_in_test_schema)
    yield names


@pytest.fixture
def settings(infra: Infrastructure) -> admin.Connection:
    return admin.Connection(
        database_url=infra.database_url,
        kafka_bootstrap_servers=infra.kafka_bootstrap_servers,
        kafka_partitions=2,
    )


async def given_the_demo_directory(pool: asyncpg.Pool) -> DirectoryPackage:
    async with pool.acquire() as conn, conn.transaction():
        await owner.import_package(conn, read_package(admin.DEMO_PACKAGE), CLOCK)
        return await owner.export_package(conn)


async def directory(pool: asyncpg.Pool) -> DirectoryPackage:
    async with pool.acquire() as conn:
        return await owner.export_package(conn)


async def published_profiles(bootstrap: str, agency_id: str) -> list[AgencyProfile]:
    """Every profile of the agency on refnet.agencies.v1, oldest first."""
    found = []
    for record in await read_topic(bootstrap, AGENCIES.name):
        if record.key == agency_id.encode() and record.value is not None:
            event = decode(AGENCIES, record.key, record.value, record.headers).event
            assert isinstance(event, AgencyProfile)
            found.append(event)
    return sorted(found, key=lambda profile: profile.revision)


async def outbox_profiles(pool: asyncpg.Pool, agency_id: str | None = None) -> int:
    async with pool.acquire() as conn:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE topic = $1 AND ($2::text IS NULL OR key = $2)",
            AGENCIES.name,
            agency_id,
        )
    return count


# --- the directory ---------------------------------------------------------------------------


async def test_an_agency_added_by_fields_joins_the_directory_and_is_published(
    schemas: dict[str, str],
    settings: admin.Connection,
    matching_pool: asyncpg.Pool,
    infra: Infrastructure,
) -> None:
    before = await given_the_demo_directory(matching_pool)
    agency_id = new_agency_id()

    result = await admin.add_agency(settings, admin.package_from_fields(fields(agency_id)))

    assert (result.agency_id, result.added.replaced, result.published) == (agency_id, False, True)
    assert result.topic == agency_offers(agency_id).name and result.topic_created
    after = await directory(matching_pool)
    demo_ids = sorted(org.id for org in before.of(Organization))
    assert len(demo_ids) == 39
    assert sorted(org.id for org in after.of(Organization)) == sorted([*demo_ids, agency_id])
    for table, rows in before.rows.items():  # every demo row kept, in place; new rows follow
        assert after.rows[table][: len(rows)] == rows, table
    # Its category and eligibility terms are the directory's own: none was added.
    assert after.of(TaxonomyTerm) == before.of(TaxonomyTerm)
    assert agency_offers(agency_id).name in await list_topics(infra.kafka_bootstrap_servers)
    assert await outbox_profiles(matching_pool) == 39 + 1

    (profile,) = await eventually(
        lambda: published_profiles(infra.kafka_bootstrap_servers, agency_id),
        "the new agency's profile on refnet.agencies.v1",
    )
    facts = {f.category: f for f in service_facts(profile)}
    assert set(facts) == {NeedCategory.HOUSING, NeedCategory.PEER_SUPPORT}
    for fact in facts.values():
        assert fact.postal_codes == {ZIP}
        assert fact.languages == {"en", "es"}
        assert fact.mat_friendly is True
        assert fact.capacity_status == CapacityStatus.CAPACITY


async def test_re_adding_an_agency_updates_it_and_is_idempotent(
    schemas: dict[str, str],
    settings: admin.Connection,
    matching_pool: asyncpg.Pool,
    infra: Infrastructure,
) -> None:
    await given_the_demo_directory(matching_pool)
    agency_id = new_agency_id()
    await admin.add_agency(settings, admin.package_from_fields(fields(agency_id)))
    bootstrap = infra.kafka_bootstrap_servers

    again = await admin.add_agency(settings, admin.package_from_fields(fields(agency_id)))
    assert (again.added.replaced, again.published, again.topic_created) == (True, False, False)
    assert await outbox_profiles(matching_pool, agency_id) == 1

    changed = fields(agency_id, name="Harbor Light", categories=["housing"])
    updated = await admin.add_agency(settings, admin.package_from_fields(changed))
    assert (updated.added.replaced, updated.published) == (True, True)
    after = await directory(matching_pool)
    assert len(after.of(Organization)) == 40
    mine = [s for s in after.rows["service"] if getattr(s, "organization_id", None) == agency_id]
    assert [s.id for s in mine] == [f"{agency_id}-housing"]  # the peer-support service is gone
    found = await eventually(
        lambda: _at_least(published_profiles(bootstrap, agency_id), 2), "the updated profile"
    )
    latest = found[-1]
    assert latest.organization.name == "Harbor Light"
    assert [f.category for f in service_facts(latest)] == [NeedCategory.HOUSING]


async def _at_least(
    profiles: Awaitable[list[AgencyProfile]], count: int
) -> list[AgencyProfile] | None:
    found = await profiles
    return found if len(found) >= count else None


async def test_re_adding_keeps_the_capacity_the_agency_reported(
    matching_pool: asyncpg.Pool,
) -> None:
    agency_id = new_agency_id()
    service_id = f"{agency_id}-housing"
    async with matching_pool.acquire() as conn, conn.transaction():
        await owner.add_agency(conn, admin.package_from_fields(fields(agency_id)), CLOCK)
        report = CapacityUpdated(
            agency_id=agency_id, service_id=service_id, status=CapacityStatus.WAITLIST,
            available=0, maximum=12, updated_at=CLOCK.now(),
        )  # fmt: skip
        await owner.update_capacity(conn, report, CLOCK)
        added = await owner.add_agency(
            conn, admin.package_from_fields(fields(agency_id, name="Harbor Light")), CLOCK
        )
        stored = await owner.export_package(conn)

    assert added.result.published == [agency_id]
    (profile,) = [p for p in profiles(stored, 1) if p.agency_id == agency_id]
    (housing,) = [f for f in service_facts(profile) if f.service_id == service_id]
    assert housing.capacity_status == CapacityStatus.WAITLIST
    assert (housing.available, housing.capacity_as_of) == (0, CLOCK.now())


async def test_one_organization_is_taken_from_an_hsds_package(
    matching_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    before = await given_the_demo_directory(matching_pool)
    first, second = new_agency_id(), new_agency_id()
    rows: dict[str, list[Row]] = {}
    for agency_id in (first, second):
        for table, found in admin.package_from_fields(fields(agency_id)).rows.items():
            for row in found:
                if row not in rows.setdefault(table, []):
                    rows[table].append(row)
    # The package's own term ids: one for a category the directory knows under another id,
    # and one that the directory uses for something else.
    rows["taxonomy_term"] = [
        t.model_copy(update={"id": f"cat-{t.id}"}) for t in rows["taxonomy_term"]
    ] + [TaxonomyTerm(id="housing", code="pets-allowed", name="Pets allowed", taxonomy="tags")]
    renamed: list[Row] = [
        a.model_copy(update={"taxonomy_term_id": f"cat-{a.taxonomy_term_id}"})
        for a in rows["attribute"]
        if isinstance(a, Attribute)
    ]
    pets = Attribute(
        id=f"{second}-pets", link_id=f"{second}-housing", link_type="service",
        taxonomy_term_id="housing", value="yes",
    )  # fmt: skip
    rows["attribute"] = [*renamed, pets]
    path = tmp_path / "two.json"
    write_package(DirectoryPackage({t: tuple(r) for t, r in rows.items()}), path, "json")

    with pytest.raises(PackageInvalid, match="--organization"):
        admin.organization_from_package(path, None)
    with pytest.raises(PackageInvalid, match="no organization 'ag-nope'"):
        admin.organization_from_package(path, "ag-nope")
    chosen = admin.organization_from_package(path, second)
    async with matching_pool.acquire() as conn, conn.transaction():
        await owner.add_agency(conn, chosen, CLOCK)
    after = await directory(matching_pool)

    assert {o.id for o in after.of(Organization)} - {o.id for o in before.of(Organization)} == {
        second
    }
    new_terms = [t for t in after.of(TaxonomyTerm) if t not in before.of(TaxonomyTerm)]
    assert [(t.id, t.code) for t in new_terms] == [(f"housing-{second}", "pets-allowed")]
    attributes = {a.id: a.taxonomy_term_id for a in after.of(Attribute) if second in a.id}
    assert attributes[f"{second}-housing-category"] == "housing"  # the directory's term
    assert attributes[f"{second}-pets"] == f"housing-{second}"
    assert attributes[f"{second}-housing-mat-friendly"] == "mat-friendly"


async def test_an_agency_that_would_clash_with_another_is_refused_whole(
    matching_pool: asyncpg.Pool,
) -> None:
    before = await given_the_demo_directory(matching_pool)
    agency_id = new_agency_id()
    package = admin.package_from_fields(fields(agency_id))
    service = package.rows["service"][0]
    clashing = DirectoryPackage(
        {
            **package.rows,
            "service": (service.model_copy(update={"id": "svc-001"}), *package.rows["service"]),
        }
    )

    with pytest.raises(PackageInvalid) as refused:
        async with matching_pool.acquire() as conn, conn.transaction():
            await owner.add_agency(conn, clashing, CLOCK)

    assert any("'svc-001'" in problem for problem in refused.value.problems)
    assert await directory(matching_pool) == before
    assert await outbox_profiles(matching_pool, agency_id) == 0


async def test_an_agency_whose_profile_no_reader_could_take_is_refused_saying_so(
    matching_pool: asyncpg.Pool,
) -> None:
    """A statewide organization listing every ZIP code it serves, in two categories, makes
    a profile over the size readers accept: matching's own consumer would dead-letter it and
    the agency would never be offered a need. It is refused when added instead, by name."""
    before = await given_the_demo_directory(matching_pool)
    agency_id = new_agency_id()
    statewide = [f"{90000 + i:05d}" for i in range(1_500)]
    package = admin.package_from_fields(fields(agency_id, postal_codes=statewide))

    with pytest.raises(PackageInvalid) as refused:
        async with matching_pool.acquire() as conn, conn.transaction():
            await owner.add_agency(conn, package, CLOCK)

    (problem,) = refused.value.problems
    assert problem.startswith(f"organization {agency_id!r}: AgencyProfile of ")
    assert "over the 262,144 bytes every reader accepts" in problem
    assert "split its services" in problem
    assert await directory(matching_pool) == before
    assert await outbox_profiles(matching_pool, agency_id) == 0


async def test_an_agency_published_over_the_size_limit_before_it_was_checked_is_named(
    matching_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agency whose profile went out over the size readers accept before sizes were
    checked is unchanged when the directory is imported again, yet the import names it
    instead of reporting success; a capacity update for it is dead-lettered at once, as
    nothing but the directory's operator can make it apply, with that reason."""
    await given_the_demo_directory(matching_pool)
    agency_id = new_agency_id()
    statewide = [f"{90000 + i:05d}" for i in range(1_500)]
    package = admin.package_from_fields(fields(agency_id, postal_codes=statewide))
    with monkeypatch.context() as unchecked:
        unchecked.setattr(cloudevents, "MAX_VALUE_BYTES", 8 * cloudevents.MAX_VALUE_BYTES)
        async with matching_pool.acquire() as conn, conn.transaction():
            await owner.add_agency(conn, package, CLOCK)
    stored = await directory(matching_pool)
    report = CapacityUpdated(
        agency_id=agency_id, service_id=f"{agency_id}-housing", status=CapacityStatus.WAITLIST,
        available=0, maximum=12, updated_at=CLOCK.now(),
    )  # fmt: skip

    with pytest.raises(PackageInvalid) as refused:
        async with matching_pool.acquire() as conn, conn.transaction():
            await owner.import_package(conn, stored, CLOCK)
    with pytest.raises(PoisonMessage) as dead_lettered:
        async with matching_pool.acquire() as conn, conn.transaction():
            await owner.update_capacity(conn, report, CLOCK)

    (problem,) = refused.value.problems
    assert problem.startswith(f"organization {agency_id!r}: AgencyProfile of ")
    reason = str(dead_lettered.value)
    assert f"service '{agency_id}-housing' not applied" in reason
    assert f"organization {agency_id!r}" in reason and "split its services" in reason
    assert await directory(matching_pool) == stored


async def test_an_import_publishes_anew_a_profile_the_relay_set_aside(
    matching_pool: asyncpg.Pool,
) -> None:
    """A profile the broker would not take (a producer limit set too low, say) is set aside
    by the relay, and `refnet outbox resend` refuses profiles: once the cause is fixed, the
    next import publishes that agency again although its profile did not change, in place
    of the set-aside row."""
    await given_the_demo_directory(matching_pool)
    agency_id = new_agency_id()
    async with matching_pool.acquire() as conn, conn.transaction():
        await owner.add_agency(conn, admin.package_from_fields(fields(agency_id)), CLOCK)
        await conn.execute(
            "UPDATE outbox SET rejected_at = now(), rejection = 'test' WHERE key = $1", agency_id
        )
    stored = await directory(matching_pool)

    async with matching_pool.acquire() as conn, conn.transaction():
        result = await owner.import_package(conn, stored, CLOCK)
        rows = await conn.fetch(
            "SELECT rejected_at FROM outbox WHERE topic = $1 AND key = $2",
            AGENCIES.name,
            agency_id,
        )

    assert result.published == [agency_id] and result.removed == []
    assert [row["rejected_at"] for row in rows] == [None]


def test_fields_that_cannot_make_a_matchable_agency_are_named() -> None:
    with pytest.raises(PackageInvalid) as refused:
        admin.package_from_fields(
            admin.AgencyFields(agency_id="Ag 1", name="", categories=["haircuts"])
        )
    problems = "\n".join(refused.value.problems)
    for option in ("--id", "--name", "--category", "--postal-code, --county or --radius-km"):
        assert option in problems


# --- publishing while matching runs ----------------------------------------------------------


async def outbox_lock_held(pool: asyncpg.Pool, schema: str) -> bool:
    """A relay of ``schema`` holds the outbox lock (shared/outbox.py)."""
    async with pool.acquire() as conn:
        return bool(
            await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                "WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = $1)",
                f"refnet-{schema}-outbox",
            )
        )


async def unpublished(pool: asyncpg.Pool) -> int:
    async with pool.acquire() as conn:
        return await outbox.backlog(conn)


async def test_adding_an_agency_while_matchings_relay_runs_returns_once_that_relay_published(
    schemas: dict[str, str],
    settings: admin.Connection,
    matching_pool: asyncpg.Pool,
    infra: Infrastructure,
    producer: AIOKafkaProducer,
) -> None:
    """The running service's relay holds the outbox lock, so the command cannot publish
    itself: it returns once that relay has, so that what it prints is true."""
    schema = schemas["matching"]
    relay = outbox.OutboxRelay(matching_pool, producer, infra.database_url, schema, 0.1)
    running = asyncio.create_task(relay.run())
    try:
        await eventually(lambda: outbox_lock_held(matching_pool, schema), "matching's relay")
        agency_id = new_agency_id()

        result = await admin.add_agency(settings, admin.package_from_fields(fields(agency_id)))

        assert result.published
        assert await unpublished(matching_pool) == 0
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    (profile,) = await eventually(
        lambda: published_profiles(infra.kafka_bootstrap_servers, agency_id), "the profile"
    )
    assert profile.agency_id == agency_id


async def test_an_import_says_what_is_still_queued_when_the_wait_runs_out(
    schemas: dict[str, str],
    settings: admin.Connection,
    matching_pool: asyncpg.Pool,
    infra: Infrastructure,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A relay that holds the lock but does not publish (its broker is unreachable, say):
    the command says what is still queued and who will publish it, rather than claiming
    it published."""
    schema = schemas["matching"]
    # Only bounds how long the command waits here; nothing is asserted about time.
    monkeypatch.setattr(admin, "PUBLISH_WAIT_S", 0.5)
    caplog.set_level(logging.WARNING, logger=admin.__name__)
    stuck_relay = await db.connect(infra.database_url, schema, f"refnet-{schema}-outbox")
    try:
        await stuck_relay.execute(
            "SELECT pg_advisory_lock(hashtext(current_schema() || '.outbox'))"
        )

        result = await admin.import_directory(settings, admin.DEMO_PACKAGE)

        assert len(result.published) == 39
        assert await unpublished(matching_pool) == result.still_queued == 39
    finally:
        await stuck_relay.close()
    (said,) = [r.getMessage() for r in caplog.records if r.name == admin.__name__]
    assert "39 event(s)" in said and "still queued" in said
    assert "the running matching service's relay will publish them" in said


# --- API keys ----------------------------------------------------------------------------------


async def test_keys_rotate_and_revoke(notifications_pool: asyncpg.Pool) -> None:
    pool = notifications_pool
    agency_id, other = new_agency_id(), new_agency_id()
    first = await agency_keys.issue(pool, agency_id)
    others_key = await agency_keys.issue(pool, other)
    assert await agency_for_key(pool, first) == agency_id

    second, revoked = await agency_keys.rotate(pool, agency_id)
    assert revoked == [fingerprint(first)]
    assert await agency_for_key(pool, first) is None
    assert await agency_for_key(pool, second) == agency_id

    third, none = await agency_keys.rotate(pool, agency_id, keep_old=True)
    assert none == []
    assert await agency_for_key(pool, second) == agency_id  # the grace period
    assert await agency_for_key(pool, third) == agency_id
    listed = await agency_keys.list_keys(pool, agency_id)
    assert {k.fingerprint for k in listed} == {fingerprint(k) for k in (first, second, third)}
    assert {k.fingerprint for k in listed if k.active} == {fingerprint(second), fingerprint(third)}
    assert all(re.fullmatch(r"[0-9a-f]{8}", k.fingerprint) for k in listed)

    assert await agency_keys.revoke(pool, agency_id, fingerprint(second).upper()) == fingerprint(
        second
    )
    assert await agency_for_key(pool, second) is None
    assert await agency_for_key(pool, third) == agency_id
    with pytest.raises(KeyProblem, match="already revoked"):
        await agency_keys.revoke(pool, agency_id, fingerprint(second))
    with pytest.raises(KeyProblem, match="no key"):
        await agency_keys.revoke(pool, agency_id, fingerprint(others_key))  # not its key
    with pytest.raises(KeyProblem, match="not a key fingerprint"):
        await agency_keys.revoke(pool, agency_id, "rn_%")

    assert await agency_keys.revoke_all(pool, agency_id) == [fingerprint(third)]
    for key in (first, second, third):
        assert await agency_for_key(pool, key) is None
    assert await agency_keys.active_count(pool, agency_id) == 0
    assert await agency_for_key(pool, others_key) == other  # another agency is untouched


# --- the command -----------------------------------------------------------------------------


def run(*argv: str) -> int:
    try:
        cli.main(list(argv))
    except SystemExit as exc:
        return 1 if exc.code else 0
    return 0


async def test_refnet_agency_add_onboards_an_agency(
    schemas: dict[str, str],
    infra: Infrastructure,
    notifications_pool: asyncpg.Pool,
    matching_pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", infra.database_url)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", infra.kafka_bootstrap_servers)
    agency_id = new_agency_id()
    add = ["agency", "add", "--id", agency_id, "--name", "Tidewater Peer Center",
           "--category", "peer-support", "--postal-code", ZIP, "--language", "en"]  # fmt: skip

    assert await asyncio.to_thread(run, *add) == 0
    out = capsys.readouterr().out
    (key,) = re.findall(r"^  (rn_\S+)$", out, re.MULTILINE)
    assert await agency_for_key(notifications_pool, key) == agency_id
    assert f"fingerprint {fingerprint(key)}" in out
    assert f"offers topic {agency_offers(agency_id).name} created" in out
    assert "docker compose exec -T kafka bash <<'REFNET_KAFKA_ACCESS'" in out
    assert len(re.findall(r"kafka-acls\.sh .* --add ", out)) == 5
    assert f"--entity-name agency-{agency_id}" in out
    async with matching_pool.acquire() as conn:
        assert await owner.agency_ids(conn) == [agency_id]

    # Again: the directory is unchanged, no second key, no new Kafka password.
    assert await asyncio.to_thread(run, *add) == 0
    out = capsys.readouterr().out
    assert "rn_" not in out and "kafka-acls" not in out
    assert "already has 1 active key" in out
    assert await agency_keys.active_count(notifications_pool, agency_id) == 1

    assert await asyncio.to_thread(run, "agency", "rotate-key", agency_id) == 0
    rotated = capsys.readouterr().out.strip()
    assert await agency_for_key(notifications_pool, key) is None
    assert await agency_for_key(notifications_pool, rotated) == agency_id

    assert await asyncio.to_thread(run, "agency", "keys", agency_id) == 0
    listing = capsys.readouterr().out
    assert fingerprint(key) in listing and fingerprint(rotated) in listing

    assert await asyncio.to_thread(run, "agency", "revoke-key", agency_id, "--all") == 0
    assert await agency_for_key(notifications_pool, rotated) is None
    assert await asyncio.to_thread(run, "agency", "revoke-key", agency_id, "0000000f") == 1

    bad = ["agency", "add", "--id", "Bad Id", "--name", "X", "--category", "housing"]
    assert await asyncio.to_thread(run, *bad) == 1
    assert "--postal-code, --county or --radius-km" in capsys.readouterr().err
