"""The directory and matching as operators and agencies meet them, on the running stack:
`refnet directory import/export`, profiles travelling on the compacted topic, capacity
reported over the agency API, and a matching restart in the middle of a stream of needs.

The stack is shared with the other e2e tests, so each test leaves the demo directory and
every capacity as it found them."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer

from services.local_stack import LocalStack
from services.matching.directory.admin import DEMO_PACKAGE
from services.matching.directory.package import read_package
from shared.cloudevents import encode
from shared.events import Constraints, Insurance, NeedCategory, NeedSubmitted, ReferralStatus
from shared.topics import AGENCIES, CAPACITY_UPDATES, NEEDS, REFERRAL_EVENTS
from tests.e2e.cli import refnet_cli
from tests.factories import need_submitted
from tests.kafka_reader import decodable, eventually, header, read_topic

pytestmark = pytest.mark.e2e


def run_cli(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    assert stack.infra is not None
    env = {
        **os.environ,
        "DATABASE_URL": stack.infra.database_url,
        "KAFKA_BOOTSTRAP_SERVERS": stack.infra.kafka_bootstrap_servers,
    }
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


async def matching_db(stack: LocalStack) -> asyncpg.Connection:
    assert stack.infra is not None
    conn = await asyncpg.connect(stack.infra.database_url)
    await conn.execute("SET search_path TO matching")
    return conn


async def send_needs(stack: LocalStack, needs: list[NeedSubmitted]) -> None:
    assert stack.infra is not None
    producer = AIOKafkaProducer(bootstrap_servers=stack.infra.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        for need in needs:
            headers, value = encode(need, event_id=uuid4(), source="/tests", time=datetime.now(UTC))
            await producer.send_and_wait(
                NEEDS.name, key=str(need.need_id).encode(), value=value, headers=headers
            )
    finally:
        await producer.stop()


async def outcomes(stack: LocalStack, need_ids: set[UUID]) -> dict[UUID, list[Any]]:
    """Every status change published for these needs, in order, per need."""
    assert stack.infra is not None
    found: dict[UUID, list[Any]] = {}
    records = await read_topic(stack.infra.kafka_bootstrap_servers, REFERRAL_EVENTS.name)
    for change in decodable(REFERRAL_EVENTS, records):
        if change.need_id in need_ids:
            found.setdefault(change.need_id, []).append(change)
    return found


def a_need(**changes: Any) -> NeedSubmitted:
    changes.setdefault("constraints", Constraints(insurance=Insurance.MEDICAID))
    changes.setdefault("languages", ("en",))
    changes.setdefault("age_years", 34)
    return need_submitted(NeedCategory.PEER_SUPPORT, **changes)


async def test_the_directory_exports_as_it_was_imported_and_a_bad_package_is_refused(
    stack: LocalStack, tmp_path: Path
) -> None:
    # The stack imported the demo package at start: exporting gives it back, row for row
    refnet_cli(stack, "directory", "export", str(tmp_path / "out"))
    refnet_cli(stack, "directory", "export", str(tmp_path / "out.json"))
    demo = read_package(DEMO_PACKAGE)
    assert read_package(tmp_path / "out").rows == demo.rows
    assert read_package(tmp_path / "out.json").rows == demo.rows

    # A package with mistakes is refused whole, each named by file, row and field
    broken = tmp_path / "broken"
    broken.mkdir()
    for table in (DEMO_PACKAGE).glob("*.csv"):
        (broken / table.name).write_text(table.read_text())
    rows = list(csv.DictReader((broken / "service.csv").open()))
    rows[2]["minimum_age"] = "eighteen"
    rows[5]["organization_id"] = "ag-nobody"
    with (broken / "service.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    refused = run_cli(stack, "directory", "import", str(broken))

    assert refused.returncode == 2
    assert "service.csv row 4 minimum_age:" in refused.stderr
    assert "service.csv row 7 organization_id: no organization with id 'ag-nobody'" in (
        refused.stderr
    )
    refnet_cli(stack, "directory", "export", str(tmp_path / "after"))
    assert read_package(tmp_path / "after").rows == demo.rows, "nothing was half-imported"


async def test_an_imported_agency_reaches_matching_through_the_topic_and_leaves_by_tombstone(
    stack: LocalStack, tmp_path: Path
) -> None:
    """A new agency, the only one offering groups in Somali, gets a need in Somali; when the
    directory is imported again without it, matching hears its tombstone."""
    assert stack.infra is not None
    package = tmp_path / "with-new-agency"
    refnet_cli(stack, "directory", "export", str(package))
    _add_somali_peer_group(package)

    out = refnet_cli(stack, "directory", "import", str(package))
    assert "1 agency profile(s) published" in out
    # The directory reaches matching through the topic, a moment after the import.
    await eventually(lambda: _matching_knows(stack, "ag-e2e-somali", True), "the new agency")
    first = a_need(languages=("so",))
    await send_needs(stack, [first])
    offered = await eventually(
        lambda: _status_of(stack, first.need_id, ReferralStatus.OFFERED), "the Somali need offered"
    )
    assert offered.agency_id == "ag-e2e-somali"

    out = refnet_cli(stack, "directory", "import", str(DEMO_PACKAGE))
    assert "0 agency profile(s) published" in out and "1 removed" in out
    tombstones = [
        r
        for r in await read_topic(stack.infra.kafka_bootstrap_servers, AGENCIES.name)
        if r.key == b"ag-e2e-somali" and r.value is None
    ]
    assert tombstones
    await eventually(lambda: _matching_knows(stack, "ag-e2e-somali", False), "agency removed")
    second = a_need(languages=("so",))
    await send_needs(stack, [second])
    unmatched = await eventually(
        lambda: _status_of(stack, second.need_id, ReferralStatus.UNMATCHED), "unmatched"
    )
    assert unmatched.reason == "no eligible agency left"
    assert unmatched.excluded, "each agency considered is listed with why"
    assert all(e.reason == "offers no service in so" for e in unmatched.excluded)
    assert "ag-e2e-somali" not in {e.agency_id for e in unmatched.excluded}


async def _matching_knows(stack: LocalStack, agency_id: str, present: bool) -> bool:
    conn = await matching_db(stack)
    try:
        found = await conn.fetchval(
            "SELECT count(*) FROM match_services WHERE agency_id = $1", agency_id
        )
    finally:
        await conn.close()
    return (found > 0) == present


def _add_somali_peer_group(package: Path) -> None:
    def append(table: str, row: dict[str, str]) -> None:
        path = package / f"{table}.csv"
        with path.open(newline="") as f:
            header_row = next(csv.reader(f))
        with path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=header_row).writerow(row)

    append("organization", {"id": "ag-e2e-somali", "name": "Somali Recovery Circle"})
    append("service", {"id": "svc-e2e-somali", "organization_id": "ag-e2e-somali",
                       "name": "Peer group in Somali", "status": "active"})  # fmt: skip
    append("attribute", {"id": "attr-e2e-somali", "link_id": "svc-e2e-somali",
                         "link_type": "service", "link_entity": "service",
                         "taxonomy_term_id": "peer-support", "value": "peer-support"})  # fmt: skip
    append("service_area", {"id": "sa-e2e-somali", "service_id": "svc-e2e-somali",
                            "extent": "97214", "extent_type": "postal_code"})  # fmt: skip
    append("language", {"id": "lang-e2e-somali", "service_id": "svc-e2e-somali", "code": "so"})


async def _status_of(stack: LocalStack, need_id: UUID, status: ReferralStatus) -> Any:
    changes = (await outcomes(stack, {need_id})).get(need_id, [])
    return next((c for c in changes if c.status == status), None)


async def test_an_agency_reporting_no_capacity_over_the_api_gets_no_more_offers(
    stack: LocalStack,
) -> None:
    assert stack.infra is not None
    first = a_need()
    await send_needs(stack, [first])
    offered = await eventually(
        lambda: _status_of(stack, first.need_id, ReferralStatus.OFFERED), "the first need offered"
    )
    conn = await matching_db(stack)
    try:
        service = await conn.fetchval(
            "SELECT service_id FROM offers WHERE offer_id = $1", offered.offer_id
        )
        key = refnet_cli(stack, "agency", "key", offered.agency_id).strip()
        api = httpx.AsyncClient(
            base_url=stack.agency_api_url, headers={"Authorization": f"Bearer {key}"}
        )

        reported = await api.put(
            f"/agency/v1/services/{service}/capacity", json={"status": "no-capacity"}
        )
        assert reported.status_code == 202, reported.text
        await eventually(lambda: _capacity(conn, service, "no-capacity"), "the report applied")
        second = a_need()
        await send_needs(stack, [second])
        moved = await eventually(
            lambda: _status_of(stack, second.need_id, ReferralStatus.OFFERED), "offered elsewhere"
        )
        assert moved.agency_id != offered.agency_id

        # Another agency's service is not this agency's to report on: dead-lettered, with why
        others = await conn.fetchval(
            "SELECT service_id FROM match_services WHERE agency_id <> $1 LIMIT 1",
            offered.agency_id,
        )
        refused = await api.put(
            f"/agency/v1/services/{others}/capacity", json={"status": "no-capacity"}
        )
        assert refused.status_code == 202
        dead = await eventually(
            lambda: _dead_capacity_reports(stack, offered.agency_id), "the report dead-lettered"
        )
        assert f"agency {offered.agency_id} has no service {others}" in (
            header(dead[0], "dlq_reason") or ""
        )
    finally:
        await api.put(f"/agency/v1/services/{service}/capacity", json={"status": "capacity"})
        await eventually(lambda: _capacity(conn, service, "capacity"), "capacity restored")
        await conn.close()


async def _capacity(conn: asyncpg.Connection, service: str, status: str) -> bool:
    found = await conn.fetchval(
        "SELECT capacity_status FROM match_services WHERE service_id = $1", service
    )
    return bool(found == status)


async def _dead_capacity_reports(stack: LocalStack, agency: str) -> list[Any]:
    assert stack.infra is not None
    return [
        r
        for r in await read_topic(stack.infra.kafka_bootstrap_servers, CAPACITY_UPDATES.dlq)
        if r.key == agency.encode()
    ]


async def test_a_matching_crash_mid_stream_loses_no_need_and_offers_none_twice(
    stack: LocalStack,
) -> None:
    needs = [a_need() for _ in range(40)]
    ids = {n.need_id for n in needs}
    await send_needs(stack, needs[:20])
    conn = await matching_db(stack)
    try:
        await eventually(
            lambda: _referrals_started(conn, ids), "matching partway through the stream"
        )
    finally:
        await conn.close()

    stack.restart("matching", signal.SIGKILL)
    await send_needs(stack, needs[20:])

    async def all_settled() -> dict[UUID, list[Any]] | None:
        found = await outcomes(stack, ids)
        settled = all(
            any(c.status in (ReferralStatus.OFFERED, ReferralStatus.UNMATCHED) for c in changes)
            for changes in found.values()
        )
        return found if len(found) == len(ids) and settled else None

    found = await eventually(all_settled, "every need offered or unmatched", timeout_s=180)
    for changes in found.values():
        # A crash may publish an event twice (same sequence, same content), but a redelivered
        # need is recognised: one referral, one offer.
        by_sequence = {c.sequence: c for c in changes}
        assert {(c.sequence, c.status) for c in changes} == {
            (n, c.status) for n, c in by_sequence.items()
        }
        assert [c.status for c in by_sequence.values()].count(ReferralStatus.SUBMITTED) == 1
        assert len({c.offer_id for c in by_sequence.values() if c.offer_id}) <= 1


async def _referrals_started(conn: asyncpg.Connection, ids: set[UUID]) -> bool:
    count = await conn.fetchval(
        "SELECT count(*) FROM referrals WHERE need_id = ANY($1::uuid[])", list(ids)
    )
    return 0 < int(count) < len(ids)
