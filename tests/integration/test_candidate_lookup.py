"""The candidate lookup finds exactly the services whose area reaches a need.

Matching asks Postgres for the services near a person before it checks anything else, so
a service the lookup misses is never considered, and the unmatched need's list of agencies
considered would silently leave it out. The oracle here is the rule as a worker states it:
the person's ZIP code or county is among the service's, or a location of the service lies
within its radius of the ZIP code's centre.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.matching import repository as repo
from services.matching.geo import cells_within, load_centroids
from shared.db import create_pool, migrate
from shared.events import NeedCategory
from shared.infra import Infrastructure
from tests.factories import ServiceSpec, agency_profile
from tests.integration.conftest import SERVICES

pytestmark = pytest.mark.integration
PLACES = load_centroids()
ZIPS = sorted(PLACES)
COUNTIES = sorted({p.county for p in PLACES.values()})
CATEGORIES = (NeedCategory.HOUSING, NeedCategory.COUNSELING)
COUNTER = itertools.count()

# Around the demo region and past it, so circles cross grid cells (0.2 degrees) every way.
points = st.tuples(
    st.floats(45.0, 46.0, allow_nan=False), st.floats(-123.4, -122.0, allow_nan=False)
)
services = st.builds(
    ServiceSpec,
    service_id=st.just(""),
    category=st.sampled_from(CATEGORIES),
    zips=st.lists(st.sampled_from(ZIPS), max_size=2, unique=True).map(tuple),
    counties=st.lists(st.sampled_from(COUNTIES), max_size=1).map(tuple),
    radius_km=st.sampled_from([None, 0.5, 3.0, 8.0, 20.0, 40.0]),
    location=st.one_of(st.none(), points),
    more_locations=st.lists(points, max_size=2).map(tuple),
)
areas = st.tuples(st.sampled_from(CATEGORIES), st.sampled_from(ZIPS))


def area(category: NeedCategory, postal_code: str) -> repo.Area:
    place = PLACES[postal_code]
    return repo.Area(category, postal_code, place.county, place.point)


async def given_the_services(pool: asyncpg.Pool, specs: list[ServiceSpec]) -> list[ServiceSpec]:
    run = next(COUNTER)
    named = [
        ServiceSpec(**{**vars(s), "service_id": f"svc-{run}-{n}"}) for n, s in enumerate(specs)
    ]
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM agency_profiles")
        # Two services to an agency, so a profile carries several.
        for a in range(0, len(named), 2):
            await repo.apply_profile(conn, agency_profile(f"ag-{run}-{a}", *named[a : a + 2]))
    return named


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    specs=st.lists(services, min_size=1, max_size=12), asked=st.lists(areas, min_size=1, max_size=4)
)
async def test_the_lookup_finds_every_service_that_reaches_the_need_and_no_other(
    matching_pool: asyncpg.Pool,
    specs: list[ServiceSpec],
    asked: list[tuple[NeedCategory, str]],
) -> None:
    named = await given_the_services(matching_pool, specs)
    expected = [
        sorted(s.service_id for s in named if s.reaches(category, code, PLACES[code]))
        for category, code in asked
    ]
    async with matching_pool.acquire() as conn:
        one_by_one = [await repo.candidate_services(conn, area(*a)) for a in asked]
        together = await repo.candidate_services_by_area(conn, [area(*a) for a in asked])
    assert [sorted(v.service_id for v in found) for found in one_by_one] == expected
    assert [sorted(v.service_id for v in found) for found in together] == expected


async def test_a_need_without_a_known_point_is_found_by_zip_and_county_only(
    matching_pool: asyncpg.Pool,
) -> None:
    by_zip, by_radius = await given_the_services(
        matching_pool,
        [
            ServiceSpec("", zips=("99999",)),
            ServiceSpec("", zips=(), radius_km=40.0, location=PLACES["97214"].point),
        ],
    )
    async with matching_pool.acquire() as conn:
        found = await repo.candidate_services(
            conn, repo.Area(NeedCategory.PEER_SUPPORT, "99999", None, None)
        )
    assert [s.service_id for s in found] == [by_zip.service_id]
    assert by_radius.service_id not in {s.service_id for s in found}


async def test_the_migration_keeps_every_radius_service_findable(
    infra: Infrastructure, tmp_path: Path
) -> None:
    """Services stored under the grid cells before 0004 are found after it, by distance."""
    migrations = SERVICES / "matching" / "migrations"
    before = tmp_path / "before"
    before.mkdir()
    for path in sorted(migrations.glob("000[1-3].*.sql")):
        shutil.copy(path, before)
    schema = f"matching_0004_{next(COUNTER)}"
    migrate(infra.database_url, schema, before)
    here, there = PLACES["97214"].point, PLACES["97030"].point
    pool = await create_pool(infra.database_url, schema)
    try:
        async with pool.acquire() as conn:
            await _store_as_0003_did(conn, "near", [(45.60, -122.60), here], 5.0)
            await _store_as_0003_did(conn, "far", [there], 2.0)
        migrate(infra.database_url, schema, migrations)
        async with pool.acquire() as conn:
            found = await repo.candidate_services(conn, area(NeedCategory.HOUSING, "97214"))
            cells = await conn.fetchval("SELECT count(*) FROM service_coverage WHERE kind = 'cell'")
    finally:
        await pool.close()
    assert [(s.service_id, s.agency_name) for s in found] == [("near", "Agency Ag")]
    assert cells == 0


async def _store_as_0003_did(
    conn: asyncpg.Connection, service_id: str, locations: list[tuple[float, float]], km: float
) -> None:
    await conn.execute(
        "INSERT INTO agency_profiles VALUES ('ag', 1, 'Agency Ag', '{}') ON CONFLICT DO NOTHING"
    )
    await conn.execute(
        "INSERT INTO match_services (service_id, agency_id, name, category, insurance, "
        "languages, capacity_status, postal_codes, counties, radius_km, locations, schedule) "
        "VALUES ($1, 'ag', $1, 'housing', '{}', '{en}', 'capacity', '{}', '{}', $2, $3, '[]')",
        service_id,
        km,
        [list(xy) for xy in locations],
    )
    cells = {c for xy in locations for c in cells_within(xy, km)}
    await conn.executemany(
        "INSERT INTO service_coverage VALUES ('cell', $1, 'housing', $2)",
        [(c, service_id) for c in sorted(cells)],
    )
