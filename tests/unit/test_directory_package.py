"""The HSDS data package: reading CSV and JSON, the cross-row rules, writing, profiles."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any

import pytest

from services.matching.directory.admin import DEMO_PACKAGE
from services.matching.directory.package import (
    DirectoryPackage,
    PackageInvalid,
    profiles,
    read_package,
    validate,
    write_package,
)
from shared.hsds import (
    CATEGORY_TAXONOMY,
    Attribute,
    ExtentType,
    Language,
    Location,
    Organization,
    Row,
    Schedule,
    Service,
    ServiceArea,
    ServiceAtLocation,
    ServiceCapacity,
    TaxonomyTerm,
    Unit,
)

DEMO_DIRECTORY = DEMO_PACKAGE
INTEGER_ERROR = "Input should be a valid integer, unable to parse string as an integer"


# --- helpers ---------------------------------------------------------------------------


def copy_demo(tmp_path: Path) -> Path:
    return Path(shutil.copytree(DEMO_DIRECTORY, tmp_path / "demo"))


def read_csv(file: Path) -> tuple[list[str], list[dict[str, str]]]:
    with file.open(newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        return list(reader.fieldnames or []), list(reader)


def write_csv(file: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    with file.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, header, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def edit_row(file: Path, row_id: str, **cells: str) -> int:
    """Change cells of the row with this id; returns its row number as a spreadsheet shows."""
    header, rows = read_csv(file)
    index = next(i for i, row in enumerate(rows) if row["id"] == row_id)
    rows[index].update(cells)
    write_csv(file, header, rows)
    return index + 2


def append_row(file: Path, **cells: str) -> int:
    header, rows = read_csv(file)
    rows.append({name: cells.get(name, "") for name in header})
    write_csv(file, header, rows)
    return len(rows) + 1


def problems_of(path: Path) -> list[str]:
    with pytest.raises(PackageInvalid) as caught:
        read_package(path)
    return caught.value.problems


def tree_bytes(directory: Path) -> dict[str, bytes]:
    return {file.name: file.read_bytes() for file in sorted(directory.iterdir())}


def small_package(**tables: tuple[Row, ...]) -> DirectoryPackage:
    """A valid package touching every table and field type; ``tables`` replaces tables."""
    rows: dict[str, tuple[Row, ...]] = {
        "organization": (
            Organization(id="ag-1", name="Riverbend", email="intake@riverbend.example.org"),
            Organization(id="ag-2", name="Cedar Hollow"),
        ),
        "service": (
            Service(id="svc-1", organization_id="ag-1", name="Peer group", minimum_age=18),
            Service(id="svc-2", organization_id="ag-2", name="Closet", status="inactive"),
        ),
        "location": (
            Location(id="loc-1", organization_id="ag-1", latitude=45.513286, longitude=-122.6),
            Location(id="loc-2", organization_id="ag-2", name="Shared hall"),
        ),
        "service_at_location": (
            ServiceAtLocation(id="sal-1", service_id="svc-1", location_id="loc-1"),
            ServiceAtLocation(id="sal-2", service_id="svc-1", location_id="loc-2"),
        ),
        "service_area": (
            ServiceArea(
                id="sa-1", service_id="svc-1", extent="97214", extent_type=ExtentType.POSTAL_CODE
            ),
            ServiceArea(
                id="sa-2", service_id="svc-1", extent="12.5", extent_type=ExtentType.RADIUS_KM
            ),
            ServiceArea(
                id="sa-3", service_id="svc-2", extent="Multnomah", extent_type=ExtentType.COUNTY
            ),
        ),
        "language": (Language(id="lang-1", service_id="svc-1", code="es", name="Spanish"),),
        "schedule": (
            Schedule(
                id="sch-1",
                service_id="svc-1",
                byday="MO,WE",
                opens_at=time(9, 0),
                closes_at=time(17, 30, 15),
            ),
        ),
        "taxonomy_term": (
            TaxonomyTerm(id="t-peer", code="peer-support", name="Peer", taxonomy=CATEGORY_TAXONOMY),
            TaxonomyTerm(
                id="t-mat", code="mat-friendly", name="MAT", taxonomy="refnet-eligibility"
            ),
            TaxonomyTerm(id="t-unused", code="unused", name="Never referenced"),
        ),
        "attribute": (
            Attribute(id="a-1", link_id="svc-1", link_type="service", taxonomy_term_id="t-peer"),
            Attribute(
                id="a-2",
                link_id="loc-2",
                link_type="location",
                taxonomy_term_id="t-mat",
                value="true",
            ),
        ),
        "unit": (Unit(id="unit-bed", name="bed"), Unit(id="unit-seat", name="seat")),
        "service_capacity": (
            ServiceCapacity(
                id="cap-1",
                service_id="svc-1",
                unit_id="unit-bed",
                available=3,
                maximum=10,
                updated=datetime(2026, 11, 20, 9, 30, 5, 120, tzinfo=UTC),
            ),
        ),
    }
    rows.update(tables)
    return DirectoryPackage(rows, {"name": "small", "licenses": [{"name": "CC0-1.0"}]})


def replaced(package: DirectoryPackage, table: str, index: int, **changes: Any) -> DirectoryPackage:
    rows = list(package.rows[table])
    rows[index] = rows[index].model_copy(update=changes)
    return DirectoryPackage({**package.rows, table: tuple(rows)}, package.metadata)


# --- reading the demo and round trips ------------------------------------------------------


def test_the_demo_package_reads_every_row_of_every_file() -> None:
    package = read_package(DEMO_DIRECTORY)

    for file in DEMO_DIRECTORY.glob("*.csv"):
        assert len(package.rows[file.stem]) == len(read_csv(file)[1]), file.name
    assert package.metadata["name"] == "refnet-portland-recovery-demo"
    assert "resources" not in package.metadata
    assert package.of(Service)[0].id == "svc-001"
    assert package.of(Service)[0].minimum_age == 18
    assert package.of(ServiceArea)[0].extent_type is ExtentType.POSTAL_CODE


def test_the_demo_round_trips_csv_to_json_to_csv_unchanged(tmp_path: Path) -> None:
    original = read_package(DEMO_DIRECTORY)

    write_package(original, tmp_path / "directory.json", "json")
    from_json = read_package(tmp_path / "directory.json")
    write_package(from_json, tmp_path / "csv", "csv")
    from_csv = read_package(tmp_path / "csv")

    assert from_json.rows == original.rows
    assert from_csv.rows == original.rows
    assert from_csv.metadata == original.metadata


def test_writing_is_byte_identical_every_time(tmp_path: Path) -> None:
    package = read_package(DEMO_DIRECTORY)
    write_package(package, tmp_path / "first", "csv")
    write_package(read_package(tmp_path / "first"), tmp_path / "second", "csv")
    write_package(package, tmp_path / "first.json", "json")
    write_package(read_package(tmp_path / "second"), tmp_path / "second.json", "json")

    assert tree_bytes(tmp_path / "first") == tree_bytes(tmp_path / "second")
    assert (tmp_path / "first.json").read_bytes() == (tmp_path / "second.json").read_bytes()


def test_every_field_type_survives_both_formats(tmp_path: Path) -> None:
    package = small_package()
    assert validate(package, "small") == []

    write_package(package, tmp_path / "small.json", "json")
    write_package(read_package(tmp_path / "small.json"), tmp_path / "small", "csv")

    assert read_package(tmp_path / "small").rows == package.rows
    schedule = (tmp_path / "small" / "schedule.csv").read_text(encoding="utf-8")
    assert schedule.splitlines()[1] == 'sch-1,svc-1,WEEKLY,"MO,WE",09:00,17:30:15,'
    capacity = json.loads((tmp_path / "small.json").read_text(encoding="utf-8"))
    assert capacity["service_capacity"][0]["updated"] == "2026-11-20T09:30:05.000120+00:00"
    assert capacity["service"][0]["minimum_age"] == 18
    assert capacity["service"][0]["maximum_age"] is None


def test_the_csv_descriptor_describes_each_file_with_typed_fields(tmp_path: Path) -> None:
    write_package(small_package(), tmp_path / "out", "csv")

    descriptor = json.loads((tmp_path / "out" / "datapackage.json").read_text(encoding="utf-8"))
    resources = {resource["name"]: resource for resource in descriptor["resources"]}
    assert descriptor["profile"] == "tabular-data-package"
    assert descriptor["licenses"] == [{"name": "CC0-1.0"}]
    assert {f"{name}.csv" for name in resources} == {
        file.name for file in (tmp_path / "out").glob("*.csv")
    }
    capacity = resources["service_capacity"]["schema"]
    assert capacity["primaryKey"] == "id"
    assert [(f["name"], f["type"]) for f in capacity["fields"]] == [
        ("id", "string"),
        ("service_id", "string"),
        ("unit_id", "string"),
        ("available", "integer"),
        ("maximum", "integer"),
        ("description", "string"),
        ("updated", "datetime"),
    ]
    location_types = {f["name"]: f["type"] for f in resources["location"]["schema"]["fields"]}
    assert location_types["latitude"] == "number"
    schedule_types = {f["name"]: f["type"] for f in resources["schedule"]["schema"]["fields"]}
    assert schedule_types["opens_at"] == "time"


def test_writing_csv_removes_a_stale_file_of_a_table_now_empty(tmp_path: Path) -> None:
    write_package(small_package(), tmp_path / "out", "csv")
    write_package(small_package(schedule=()), tmp_path / "out", "csv")

    assert not (tmp_path / "out" / "schedule.csv").exists()
    assert read_package(tmp_path / "out").rows["schedule"] == ()


def test_a_bom_blank_cells_and_unknown_columns_are_accepted(tmp_path: Path) -> None:
    package = copy_demo(tmp_path)
    edit_row(package / "service.csv", "svc-001", status="", maximum_age=" ")
    text = (package / "service.csv").read_text(encoding="utf-8")
    header, _, body = text.partition("\n")
    (package / "service.csv").write_text(f"\ufeff{header},notes\n{body}", encoding="utf-8")

    service = read_package(package).of(Service)[0]

    assert (service.id, service.status, service.maximum_age) == ("svc-001", "active", None)


# --- problems ---------------------------------------------------------------------------------


def test_every_planted_problem_is_reported_at_once_naming_file_row_and_field(
    tmp_path: Path,
) -> None:
    package = copy_demo(tmp_path)
    age_row = edit_row(package / "service.csv", "svc-002", minimum_age="eighteen")
    orphan_row = edit_row(package / "service.csv", "svc-003", organization_id="ag-999")
    twin_row = edit_row(package / "language.csv", "lang-0002", id="lang-0001")
    append_row(
        package / "taxonomy_term.csv",
        id="test-mat",
        code="mat-friendly",
        name="MAT-friendly",
        taxonomy="refnet-eligibility",
    )
    eligibility_row = append_row(
        package / "attribute.csv",
        id="attr-test-mat",
        link_id="svc-001",
        link_type="service",
        taxonomy_term_id="test-mat",
        value="sometimes",
    )
    zip_row = edit_row(package / "service_area.csv", "sa-0001", extent="9721")
    (package / "datapackage.json").write_text('{"name": "broken",\n', encoding="utf-8")

    problems = problems_of(package)

    assert sorted(problems) == sorted(
        [
            f"service.csv row {age_row} minimum_age: {INTEGER_ERROR}",
            f"service.csv row {orphan_row} organization_id: no organization with id 'ag-999'",
            f"language.csv row {twin_row} id: duplicate id 'lang-0001' "
            f"(first at language.csv row {twin_row - 1})",
            f"attribute.csv row {eligibility_row} value: 'sometimes' is not a mat-friendly "
            "value; use one of: false, true",
            f"service_area.csv row {zip_row} extent: '9721' is not a five-digit ZIP code",
            "datapackage.json: not valid JSON: Expecting property name enclosed in double "
            "quotes at line 2 column 1",
        ]
    )


def test_the_exception_text_is_the_problems_one_per_line(tmp_path: Path) -> None:
    package = copy_demo(tmp_path)
    edit_row(package / "service.csv", "svc-002", minimum_age="x", maximum_age="y")

    with pytest.raises(PackageInvalid) as caught:
        read_package(package)

    assert len(caught.value.problems) == 2
    assert str(caught.value) == "\n".join(caught.value.problems)
    assert isinstance(caught.value, ValueError)


def test_a_json_package_names_the_table_and_index(tmp_path: Path) -> None:
    write_package(read_package(DEMO_DIRECTORY), tmp_path / "directory.json", "json")
    document = json.loads((tmp_path / "directory.json").read_text(encoding="utf-8"))
    document["service"][2]["minimum_age"] = "x"
    document["service"][5]["organization_id"] = None
    del document["attribute"]
    (tmp_path / "directory.json").write_text(json.dumps(document), encoding="utf-8")

    problems = problems_of(tmp_path / "directory.json")

    assert problems == [
        "directory.json attribute: missing; a package needs the tables organization, "
        "service, taxonomy_term, attribute",
        f"directory.json service[2] minimum_age: {INTEGER_ERROR}",
        "directory.json service[5] organization_id: Field required",
    ]


def test_a_missing_table_or_column_is_named_once(tmp_path: Path) -> None:
    package = copy_demo(tmp_path)
    (package / "attribute.csv").unlink()
    header, rows = read_csv(package / "language.csv")
    write_csv(package / "language.csv", [h for h in header if h != "code"], rows)

    problems = problems_of(package)

    assert problems == [
        "language.csv row 1 code: required column is missing",
        "attribute.csv: missing; a package needs the tables organization, service, "
        "taxonomy_term, attribute",
    ]


def test_a_file_that_is_not_a_package_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "directory.json").write_text("[]", encoding="utf-8")

    assert problems_of(tmp_path / "directory.json") == [
        "directory.json: expected one JSON object with a key per table"
    ]
    assert problems_of(tmp_path / "nowhere.csv") == [
        f"{tmp_path / 'nowhere.csv'}: not a package directory or .json package file"
    ]


# --- cross-row rules on a package built in code --------------------------------------------

NO_CATEGORY = (
    "small service[0] id: active service 'svc-1' has no category attribute "
    f"(a service attribute whose taxonomy term is in {CATEGORY_TAXONOMY})"
)


@pytest.mark.parametrize(
    ("table", "index", "changes", "expected"),
    [
        (
            "schedule",
            0,
            {"opens_at": time(17), "closes_at": time(9)},
            ["small schedule[0] closes_at: 09:00 is not after opens_at 17:00"],
        ),
        (
            "service_capacity",
            0,
            {"available": 12},
            ["small service_capacity[0] available: 12 is more than maximum 10"],
        ),
        (
            "service_capacity",
            0,
            {"unit_id": "unit-cot"},
            ["small service_capacity[0] unit_id: no unit with id 'unit-cot'"],
        ),
        (
            "service",
            0,
            {"minimum_age": 30, "maximum_age": 20},
            ["small service[0] maximum_age: 20 is below minimum_age 30"],
        ),
        (
            "service_area",
            1,
            {"extent": "600"},
            [
                "small service_area[1] extent: '600' is not a radius in km; use a number "
                "above 0 and at most 500"
            ],
        ),
        (
            "service_area",
            2,
            {"extent": " "},
            ["small service_area[2] extent: a county service area needs the county's name"],
        ),
        (
            "location",
            0,
            {"longitude": None},
            [
                "small service_area[1] extent_type: a radius is measured from the service's "
                "locations, and service 'svc-1' is at no location with latitude and longitude"
            ],
        ),
        (
            "attribute",
            1,
            {"value": None},
            ["small attribute[1] value: mat-friendly needs a value, one of: false, true"],
        ),
        (
            "attribute",
            1,
            {"link_id": "loc-9"},
            ["small attribute[1] link_id: no location with id 'loc-9'"],
        ),
        (
            "taxonomy_term",
            0,
            {"code": "karaoke"},
            [
                "small taxonomy_term[0] code: 'karaoke' is in the refnet-recovery-support "
                "taxonomy but is not a refnet category; use one of: aftercare, "
                "case-management, child-care, clothing, counseling, employment, "
                "family-support, housing, interview-coaching, medical-care, mental-health, "
                "peer-support, recovery-coaching, transportation",
                NO_CATEGORY,
            ],
        ),
        (
            "attribute",
            0,
            {"link_id": "svc-2"},
            [NO_CATEGORY],
        ),
    ],
)
def test_each_cross_row_rule(
    table: str, index: int, changes: dict[str, Any], expected: list[str]
) -> None:
    package = replaced(small_package(), table, index, **changes)

    assert validate(package, "small") == expected


def test_a_service_with_two_categories_or_capacities_is_reported() -> None:
    base = small_package()
    package = small_package(
        attribute=(*base.rows["attribute"], base.of(Attribute)[0].model_copy(update={"id": "a-3"})),
        service_capacity=(
            *base.rows["service_capacity"],
            base.of(ServiceCapacity)[0].model_copy(update={"id": "cap-2"}),
        ),
    )

    assert validate(package, "small") == [
        "small service[0] id: active service 'svc-1' has 2 category attributes "
        "(small attribute[0], small attribute[2]); it needs exactly one",
        "small service_capacity[1] service_id: service 'svc-1' already has a capacity row "
        "(small service_capacity[0]); keep one per service",
    ]


def test_rows_replaced_in_code_are_named_by_position_not_by_stale_file_rows() -> None:
    package = read_package(DEMO_DIRECTORY)
    services = package.of(Service)
    renamed = dataclasses.replace(
        package, rows={**package.rows, "service": (*services, services[0])}
    )

    assert validate(renamed, "edited") == [
        f"edited service[{len(services)}] id: duplicate id 'svc-001' (first at edited service[0])"
    ]


# --- profiles ------------------------------------------------------------------------------


def test_every_demo_service_lands_in_exactly_one_profile_with_its_terms() -> None:
    package = read_package(DEMO_DIRECTORY)

    built = profiles(package, revision=7)

    assert [p.agency_id for p in built] == sorted(o.id for o in package.of(Organization))
    placed = [service.id for profile in built for service in profile.services]
    assert sorted(placed) == sorted(service.id for service in package.of(Service))
    for profile in built:
        assert profile.revision == 7
        terms = {term.id for term in profile.taxonomy_terms}
        assert terms == {attribute.taxonomy_term_id for attribute in profile.attributes}
        units = {unit.id for unit in profile.units}
        assert units == {c.unit_id for c in profile.service_capacities if c.unit_id}
        assert all(s.organization_id == profile.agency_id for s in profile.services)


def test_a_profile_holds_the_rows_hanging_off_its_services() -> None:
    first, second = profiles(small_package(), revision=3)

    assert first.agency_id == "ag-1"
    assert [s.id for s in first.services] == ["svc-1"]
    # loc-2 belongs to ag-2 but svc-1 is also offered there, so both profiles carry it.
    assert [loc.id for loc in first.locations] == ["loc-1", "loc-2"]
    assert [a.id for a in first.attributes] == ["a-1", "a-2"]
    assert [t.id for t in first.taxonomy_terms] == ["t-peer", "t-mat"]
    assert [u.id for u in first.units] == ["unit-bed"]
    assert [a.id for a in first.service_areas] == ["sa-1", "sa-2"]
    assert [s.id for s in first.schedules] == ["sch-1"]
    assert [c.id for c in first.service_capacities] == ["cap-1"]
    assert [s.id for s in second.services] == ["svc-2"]
    assert [loc.id for loc in second.locations] == ["loc-2"]
    assert [a.id for a in second.attributes] == ["a-2"]
    assert [t.id for t in second.taxonomy_terms] == ["t-mat"]
    assert second.units == ()
