"""Read, check and write the agency directory as an Open Referral HSDS 3.x data package.

A package comes in one of two shapes that hold the same rows:

- CSV: a directory of ``<table>.csv`` files (one per shared.hsds table) with an optional
  Frictionless ``datapackage.json`` carrying the package metadata;
- JSON: one file, ``{"datapackage": {metadata}, "organization": [rows], ...}``, with typed
  values and null for a missing one.

Reading checks each row against its shared.hsds model, then the rules that span rows
(``validate``), and reports every problem at once, each naming the file, the row and the
field, so an agency can fix its spreadsheet in one pass. ``profiles`` cuts a checked
package into the per-agency AgencyProfile slices that matching publishes.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, time
from enum import Enum
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, get_args

from pydantic import ValidationError

from shared.events import NeedCategory
from shared.hsds import (
    CATEGORY_TAXONOMY,
    ELIGIBILITY_VALUES,
    TABLES,
    AgencyProfile,
    Attribute,
    EligibilityTerm,
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
    is_postal_code,
)

RowT = TypeVar("RowT", bound=Row)

REQUIRED_TABLES: tuple[str, ...] = ("organization", "service", "taxonomy_term", "attribute")
DESCRIPTOR = "datapackage.json"
MAX_RADIUS_KM = 500.0

# Descriptor keys that describe the CSV layout rather than the directory; the writer
# regenerates them, so keeping them would let a stale copy disagree with the files.
_LAYOUT_KEYS = frozenset({"resources", "profile"})
_CATEGORY_CODES = frozenset(category.value for category in NeedCategory)
_ELIGIBILITY_CODES = frozenset(term.value for term in EligibilityTerm)
_LINKABLE_TABLES = frozenset({"organization", "service", "location"})

# (model, field, table its value names): every single-target reference between tables.
_REFERENCES: tuple[tuple[type[Row], str, str], ...] = (
    (Service, "organization_id", "organization"),
    (Location, "organization_id", "organization"),
    (ServiceAtLocation, "service_id", "service"),
    (ServiceAtLocation, "location_id", "location"),
    (ServiceArea, "service_id", "service"),
    (Language, "service_id", "service"),
    (Schedule, "service_id", "service"),
    (ServiceCapacity, "service_id", "service"),
    (ServiceCapacity, "unit_id", "unit"),
    (Attribute, "taxonomy_term_id", "taxonomy_term"),
)

# Frictionless field types; bool before int because bool is an int.
_FIELD_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),
    (int, "integer"),
    (float, "number"),
    (datetime, "datetime"),
    (time, "time"),
)

Plain = str | int | float | None


class PackageInvalid(ValueError):
    """Everything wrong with a data package, one line per problem."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class _Provenance:
    """Where a read package's rows came from, and what could not be read at all, so that
    validate points at spreadsheet rows and keeps quiet about references into rows whose
    own problem is already reported."""

    rows: Mapping[str, tuple[Row, ...]]  # the rows as read, to tell when they were replaced
    places: Mapping[str, tuple[str, ...]]  # table -> one place per row, e.g. "service.csv row 4"
    unread_ids: Mapping[str, frozenset[str]]  # table -> ids of rows that failed their model
    unread_tables: frozenset[str]  # tables missing or unreadable as a whole


@dataclass(frozen=True)
class DirectoryPackage:
    """The rows of every shared.hsds table, in file order, plus the package metadata."""

    rows: dict[str, tuple[Row, ...]]
    metadata: dict[str, Any] = field(default_factory=dict)
    _provenance: _Provenance | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Every table is present, so callers can index rows without guarding.
        complete = {model.table: tuple(self.rows.get(model.table, ())) for model in TABLES}
        object.__setattr__(self, "rows", complete)

    def of(self, model: type[RowT]) -> tuple[RowT, ...]:
        return cast(tuple[RowT, ...], self.rows[model.table])


# --- reading -------------------------------------------------------------------------


_Record = tuple[str, dict[str, Any]]  # (place, the row's present values)


@dataclass
class _Raw:
    """What a file format yielded before any model saw it."""

    metadata: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, list[_Record]] = field(default_factory=dict)
    unread: set[str] = field(default_factory=set)  # tables missing though required, or unreadable
    problems: list[str] = field(default_factory=list)

    def add(self, table: str, records: list[_Record] | None, problems: list[str]) -> None:
        self.problems += problems
        if records is None:
            self.unread.add(table)
        else:
            self.tables[table] = records


def read_package(path: Path) -> DirectoryPackage:
    """Read a CSV package directory or a JSON package file; raise PackageInvalid listing
    every problem found."""
    raw = _read_raw(path)
    package, problems = _build(raw)
    problems = raw.problems + problems + validate(package, path.name)
    if problems:
        raise PackageInvalid(problems)
    return package


def _read_raw(path: Path) -> _Raw:
    if path.is_dir():
        return _read_csv_directory(path)
    if path.name == DESCRIPTOR:
        return _read_csv_directory(path.parent)
    if path.suffix == ".json" and path.is_file():
        return _read_json_file(path)
    return _Raw(problems=[f"{path}: not a package directory or .json package file"])


def _read_csv_directory(directory: Path) -> _Raw:
    raw = _Raw()
    raw.metadata, raw.problems = _read_descriptor(directory / DESCRIPTOR)
    for model in TABLES:
        file = directory / f"{model.table}.csv"
        if file.is_file():
            raw.add(model.table, *_read_csv_table(file, model))
        elif model.table in REQUIRED_TABLES:
            raw.add(model.table, None, [_missing_table(file.name)])
    return raw


def _read_descriptor(file: Path) -> tuple[dict[str, Any], list[str]]:
    if not file.is_file():
        return {}, []
    document, problems = _load_json(file)
    if problems:
        return {}, problems
    if not isinstance(document, dict):
        return {}, [f"{file.name}: expected a JSON object"]
    return _metadata(document), []


def _read_csv_table(file: Path, model: type[Row]) -> tuple[list[_Record] | None, list[str]]:
    try:
        with file.open(newline="", encoding="utf-8-sig") as stream:
            lines = csv.reader(stream)
            header = next(lines, None)
            if header is None:
                return None, [f"{file.name}: empty file; expected a header row"]
            columns = [name.strip() for name in header]
            missing = [name for name in _required_fields(model) if name not in columns]
            if missing:
                return None, [
                    f"{file.name} row 1 {name}: required column is missing" for name in missing
                ]
            # Spreadsheet numbering: the header is row 1, and a multi-line cell is one row.
            return [
                (f"{file.name} row {number}", _present(dict(zip(columns, cells, strict=False))))
                for number, cells in enumerate(lines, start=2)
                if any(cell.strip() for cell in cells)
            ], []
    except UnicodeDecodeError as exc:
        return None, [f"{file.name}: not UTF-8 text ({exc.reason} at byte {exc.start})"]
    except csv.Error as exc:
        return None, [f"{file.name}: unreadable CSV ({exc})"]


def _read_json_file(file: Path) -> _Raw:
    document, problems = _load_json(file)
    if problems:
        return _Raw(problems=problems)
    if not isinstance(document, dict):
        return _Raw(problems=[f"{file.name}: expected one JSON object with a key per table"])
    raw = _Raw()
    descriptor = document.get("datapackage", {})
    if isinstance(descriptor, dict):
        raw.metadata = _metadata(descriptor)
    else:
        raw.problems.append(f"{file.name} datapackage: expected an object")
    for model in TABLES:
        if model.table in document:
            raw.add(model.table, *_json_table(f"{file.name} {model.table}", document[model.table]))
        elif model.table in REQUIRED_TABLES:
            raw.add(model.table, None, [_missing_table(f"{file.name} {model.table}")])
    return raw


def _json_table(name: str, rows: Any) -> tuple[list[_Record] | None, list[str]]:
    """``name`` is the file and table, e.g. "directory.json service"."""
    if not isinstance(rows, list):
        return None, [f"{name}: expected a list of row objects"]
    records: list[_Record] = []
    problems: list[str] = []
    for index, row in enumerate(rows):
        place = f"{name}[{index}]"
        if isinstance(row, dict):
            records.append((place, _present(row)))
        else:
            problems.append(f"{place}: expected an object")
    return records, problems


def _load_json(file: Path) -> tuple[Any, list[str]]:
    try:
        return json.loads(file.read_text(encoding="utf-8-sig")), []
    except UnicodeDecodeError as exc:
        return None, [f"{file.name}: not UTF-8 text ({exc.reason} at byte {exc.start})"]
    except json.JSONDecodeError as exc:
        return None, [
            f"{file.name}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ]


def _metadata(descriptor: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in descriptor.items() if key not in _LAYOUT_KEYS}


def _missing_table(expected: str) -> str:
    return f"{expected}: missing; a package needs the tables {', '.join(REQUIRED_TABLES)}"


def _present(values: Mapping[str, Any]) -> dict[str, Any]:
    # CSV cannot tell an empty cell from a missing value, so JSON's null and "" mean the
    # same: absent, letting the model's default apply. That keeps the formats equivalent.
    return {
        key: value
        for key, value in values.items()
        if value is not None and not (isinstance(value, str) and not value.strip())
    }


def _required_fields(model: type[Row]) -> list[str]:
    return [name for name, info in model.model_fields.items() if info.is_required()]


def _build(raw: _Raw) -> tuple[DirectoryPackage, list[str]]:
    """Turn records into rows, keeping where each came from; a row that fails its model is
    reported and left out."""
    rows: dict[str, tuple[Row, ...]] = {}
    places: dict[str, tuple[str, ...]] = {}
    unread_ids: dict[str, frozenset[str]] = {}
    problems: list[str] = []
    for model in TABLES:
        kept: list[tuple[str, Row]] = []
        rejected: set[str] = set()
        for place, values in raw.tables.get(model.table, []):
            try:
                kept.append((place, model.model_validate(values)))
            except ValidationError as exc:
                problems += _field_problems(place, exc)
                rejected.add(str(values.get("id", "")).strip())
        rows[model.table] = tuple(row for _, row in kept)
        places[model.table] = tuple(place for place, _ in kept)
        unread_ids[model.table] = frozenset(rejected)
    provenance = _Provenance(rows, places, unread_ids, frozenset(raw.unread))
    return DirectoryPackage(rows, raw.metadata, provenance), problems


def _field_problems(place: str, error: ValidationError) -> list[str]:
    """One message per field, however many ways pydantic found it wrong."""
    by_field: dict[str, list[str]] = defaultdict(list)
    for entry in error.errors():
        by_field[".".join(str(part) for part in entry["loc"])].append(entry["msg"])
    return [
        f"{place} {name}: {'; '.join(messages)}" if name else f"{place}: {'; '.join(messages)}"
        for name, messages in by_field.items()
    ]


# --- cross-row rules ---------------------------------------------------------------------


class _Index:
    """A package's rows with their places, and lookups by id."""

    def __init__(self, package: DirectoryPackage, source: str) -> None:
        provenance = package._provenance
        self.package = package
        self._places = {
            table: _places(provenance, source, table, rows) for table, rows in package.rows.items()
        }
        # Built from the end so that the first row with an id is the one kept.
        self.first: dict[str, dict[str, Row]] = {
            table: {row.id: row for row in reversed(rows)} for table, rows in package.rows.items()
        }
        self._unread_ids = provenance.unread_ids if provenance else {}
        self.unread_tables = provenance.unread_tables if provenance else frozenset()

    def placed(self, model: type[RowT]) -> Iterator[tuple[str, RowT]]:
        return zip(self._places[model.table], self.package.of(model), strict=True)

    def dangling(self, table: str, row_id: str) -> bool:
        """True when no row has this id, and that is not because the row was unreadable."""
        return (
            row_id not in self.first[table]
            and row_id not in self._unread_ids.get(table, frozenset())
            and table not in self.unread_tables
        )


def _places(
    provenance: _Provenance | None, source: str, table: str, rows: tuple[Row, ...]
) -> tuple[str, ...]:
    if provenance and provenance.rows.get(table) is rows:
        return provenance.places[table]
    # Rows built or replaced in code have no file row; name them by position instead.
    return tuple(f"{source} {table}[{index}]" for index in range(len(rows)))


def validate(package: DirectoryPackage, source: str) -> list[str]:
    """Check the rules that span rows. ``source`` names the package in messages about rows
    that were not read from a file, e.g. ``"<source> service[3] organization_id: ..."``."""
    index = _Index(package, source)
    checks = (
        _unique_ids,
        _references_resolve,
        _category_terms_are_categories,
        _active_services_have_one_category,
        _eligibility_values_are_known,
        _age_ranges_are_ordered,
        _service_area_extents_fit_their_type,
        _schedules_open_before_they_close,
        _capacities_are_consistent,
    )
    return [problem for check in checks for problem in check(index)]


def _unique_ids(index: _Index) -> Iterator[str]:
    for model in TABLES:
        first_place: dict[str, str] = {}
        for place, row in index.placed(model):
            if row.id in first_place:
                yield f"{place} id: duplicate id {row.id!r} (first at {first_place[row.id]})"
            else:
                first_place[row.id] = place


def _references_resolve(index: _Index) -> Iterator[str]:
    for model, name, target in _REFERENCES:
        for place, row in index.placed(model):
            value = getattr(row, name)
            if value is not None and index.dangling(target, value):
                yield f"{place} {name}: no {target} with id {value!r}"
    for place, attribute in index.placed(Attribute):
        target = attribute.link_type
        if target in _LINKABLE_TABLES and index.dangling(target, attribute.link_id):
            yield f"{place} link_id: no {target} with id {attribute.link_id!r}"


def _category_terms_are_categories(index: _Index) -> Iterator[str]:
    for place, term in index.placed(TaxonomyTerm):
        if term.taxonomy == CATEGORY_TAXONOMY and term.code not in _CATEGORY_CODES:
            yield (
                f"{place} code: {term.code!r} is in the {CATEGORY_TAXONOMY} taxonomy but is "
                f"not a refnet category; use one of: {', '.join(sorted(_CATEGORY_CODES))}"
            )


def _active_services_have_one_category(index: _Index) -> Iterator[str]:
    if index.unread_tables & {"attribute", "taxonomy_term"}:
        return  # every service would be reported for a table already reported missing
    category_terms = {
        term.id
        for term in index.package.of(TaxonomyTerm)
        if term.taxonomy == CATEGORY_TAXONOMY and term.code in _CATEGORY_CODES
    }
    found: dict[str, list[str]] = defaultdict(list)
    for place, attribute in index.placed(Attribute):
        if attribute.link_type == "service" and attribute.taxonomy_term_id in category_terms:
            found[attribute.link_id].append(place)
    for place, service in index.placed(Service):
        if service.status != "active":
            continue
        places = found.get(service.id, [])
        if not places:
            yield (
                f"{place} id: active service {service.id!r} has no category attribute "
                f"(a service attribute whose taxonomy term is in {CATEGORY_TAXONOMY})"
            )
        elif len(places) > 1:
            yield (
                f"{place} id: active service {service.id!r} has {len(places)} category "
                f"attributes ({', '.join(places)}); it needs exactly one"
            )


def _eligibility_values_are_known(index: _Index) -> Iterator[str]:
    terms = index.first["taxonomy_term"]
    for place, attribute in index.placed(Attribute):
        term = cast(TaxonomyTerm | None, terms.get(attribute.taxonomy_term_id))
        if term is None or term.code not in _ELIGIBILITY_CODES:
            continue
        values = ELIGIBILITY_VALUES[EligibilityTerm(term.code)]
        allowed = ", ".join(sorted(values))
        if attribute.value is None:
            yield f"{place} value: {term.code} needs a value, one of: {allowed}"
        elif attribute.value not in values:
            wrong = f"{attribute.value!r} is not a {term.code} value"
            yield f"{place} value: {wrong}; use one of: {allowed}"


def _age_ranges_are_ordered(index: _Index) -> Iterator[str]:
    for place, service in index.placed(Service):
        low, high = service.minimum_age, service.maximum_age
        if low is not None and high is not None and low > high:
            yield f"{place} maximum_age: {high} is below minimum_age {low}"


def _service_area_extents_fit_their_type(index: _Index) -> Iterator[str]:
    mapped = _services_with_coordinates(index.package)
    for place, area in index.placed(ServiceArea):
        problem = _extent_problem(area.extent_type, area.extent)
        if problem:
            yield f"{place} extent: {problem}"
        if (
            area.extent_type == ExtentType.RADIUS_KM
            and area.service_id in index.first["service"]
            and area.service_id not in mapped
        ):
            yield (
                f"{place} extent_type: a radius is measured from the service's locations, and "
                f"service {area.service_id!r} is at no location with latitude and longitude"
            )


def _extent_problem(extent_type: ExtentType, extent: str) -> str | None:
    if extent_type == ExtentType.POSTAL_CODE and not is_postal_code(extent):
        return f"{extent!r} is not a five-digit ZIP code"
    if extent_type == ExtentType.RADIUS_KM and not 0 < _number(extent) <= MAX_RADIUS_KM:
        return f"{extent!r} is not a radius in km; use a number above 0 and at most 500"
    if extent_type == ExtentType.COUNTY and not extent.strip():
        return "a county service area needs the county's name"
    return None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan  # fails every comparison, so reads as out of range


def _services_with_coordinates(package: DirectoryPackage) -> set[str]:
    located = {
        location.id
        for location in package.of(Location)
        if location.latitude is not None and location.longitude is not None
    }
    return {
        link.service_id for link in package.of(ServiceAtLocation) if link.location_id in located
    }


def _schedules_open_before_they_close(index: _Index) -> Iterator[str]:
    for place, schedule in index.placed(Schedule):
        opens, closes = schedule.opens_at, schedule.closes_at
        if (opens.tzinfo is None) != (closes.tzinfo is None):
            # Python cannot order a time with a UTC offset against one without.
            yield f"{place} closes_at: give both times with a UTC offset or neither"
        elif opens >= closes:
            yield (
                f"{place} closes_at: {_format_time(closes)} is not after "
                f"opens_at {_format_time(opens)}"
            )


def _capacities_are_consistent(index: _Index) -> Iterator[str]:
    first_place: dict[str, str] = {}
    for place, capacity in index.placed(ServiceCapacity):
        if capacity.maximum is not None and capacity.available > capacity.maximum:
            yield f"{place} available: {capacity.available} is more than maximum {capacity.maximum}"
        if capacity.service_id in first_place:
            yield (
                f"{place} service_id: service {capacity.service_id!r} already has a capacity "
                f"row ({first_place[capacity.service_id]}); keep one per service"
            )
        else:
            first_place[capacity.service_id] = place


# --- profiles ------------------------------------------------------------------------------


def profiles(package: DirectoryPackage, revision: int) -> list[AgencyProfile]:
    """One AgencyProfile per organization, sorted by agency_id, each holding the rows that
    hang off that organization; rows keep package order."""
    organizations = sorted(package.of(Organization), key=lambda organization: organization.id)
    return [_profile(package, organization, revision) for organization in organizations]


def _profile(package: DirectoryPackage, organization: Organization, revision: int) -> AgencyProfile:
    services = tuple(s for s in package.of(Service) if s.organization_id == organization.id)
    service_ids = {service.id for service in services}
    links = tuple(s for s in package.of(ServiceAtLocation) if s.service_id in service_ids)
    linked_locations = {link.location_id for link in links}
    locations = tuple(
        location
        for location in package.of(Location)
        if location.organization_id == organization.id or location.id in linked_locations
    )
    linked = {
        "organization": {organization.id},
        "service": service_ids,
        "location": {location.id for location in locations},
    }
    attributes = tuple(
        a for a in package.of(Attribute) if a.link_id in linked.get(a.link_type, set())
    )
    term_ids = {attribute.taxonomy_term_id for attribute in attributes}
    capacities = tuple(c for c in package.of(ServiceCapacity) if c.service_id in service_ids)
    unit_ids = {capacity.unit_id for capacity in capacities}
    return AgencyProfile(
        agency_id=organization.id,
        revision=revision,
        organization=organization,
        services=services,
        locations=locations,
        service_at_locations=links,
        service_areas=tuple(a for a in package.of(ServiceArea) if a.service_id in service_ids),
        languages=tuple(lang for lang in package.of(Language) if lang.service_id in service_ids),
        schedules=tuple(s for s in package.of(Schedule) if s.service_id in service_ids),
        taxonomy_terms=tuple(t for t in package.of(TaxonomyTerm) if t.id in term_ids),
        attributes=attributes,
        units=tuple(unit for unit in package.of(Unit) if unit.id in unit_ids),
        service_capacities=capacities,
    )


# --- writing ---------------------------------------------------------------------------------


def write_package(package: DirectoryPackage, path: Path, fmt: Literal["csv", "json"]) -> None:
    """Write ``package`` as a CSV directory at ``path`` or as one JSON file at ``path``.
    The same package always gives byte-identical files."""
    if fmt == "csv":
        _write_csv_directory(package, path)
    elif fmt == "json":
        _write_json_file(package, path)
    else:
        raise ValueError(f"unknown package format {fmt!r}; use 'csv' or 'json'")


def _write_csv_directory(package: DirectoryPackage, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    resources: list[dict[str, Any]] = []
    for model in TABLES:
        file = directory / f"{model.table}.csv"
        rows = package.rows[model.table]
        if not rows:
            # A file left by an earlier write would be read back as part of this package.
            file.unlink(missing_ok=True)
            continue
        _write_csv_table(file, model, rows)
        resources.append(_resource(model))
    descriptor = {**package.metadata, "profile": "tabular-data-package", "resources": resources}
    _write_json(directory / DESCRIPTOR, descriptor)


def _write_csv_table(file: Path, model: type[Row], rows: Iterable[Row]) -> None:
    names = list(model.model_fields)
    with file.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(names)
        for row in rows:
            writer.writerow(_cell(getattr(row, name)) for name in names)


def _write_json_file(package: DirectoryPackage, file: Path) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {"datapackage": package.metadata}
    for model in TABLES:
        rows = package.rows[model.table]
        if rows:
            document[model.table] = [_plain_row(model, row) for row in rows]
    _write_json(file, document)


def _write_json(file: Path, document: Any) -> None:
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    file.write_text(text, encoding="utf-8", newline="\n")


def _resource(model: type[Row]) -> dict[str, Any]:
    """A Frictionless tabular-data-resource describing ``<table>.csv``."""
    return {
        "name": model.table,
        "path": f"{model.table}.csv",
        "profile": "tabular-data-resource",
        "format": "csv",
        "mediatype": "text/csv",
        "encoding": "utf-8",
        "schema": {"fields": _schema_fields(model), "primaryKey": "id"},
    }


def _schema_fields(model: type[Row]) -> list[dict[str, Any]]:
    fields: list[dict[str, Any]] = []
    for name, info in model.model_fields.items():
        kind = _field_type(info.annotation)
        described: dict[str, Any] = {"name": name, "type": kind}
        if kind in ("time", "datetime"):
            # Frictionless's default formats are HH:MM:SS and UTC-only; we write ISO 8601
            # as short as the value allows (09:00, or with an offset).
            described["format"] = "any"
        if info.is_required():
            described["constraints"] = {"required": True}
        fields.append(described)
    return fields


def _field_type(annotation: Any) -> str:
    for candidate in get_args(annotation) or (annotation,):
        for python_type, name in _FIELD_TYPES:
            if isinstance(candidate, type) and issubclass(candidate, python_type):
                return name
    return "string"


def _plain_row(model: type[Row], row: Row) -> dict[str, Plain]:
    return {name: _plain(getattr(row, name)) for name in model.model_fields}


def _cell(value: Any) -> str:
    plain = _plain(value)
    return "" if plain is None else str(plain)


def _plain(value: Any) -> Plain:
    """A field value as JSON and CSV carry it."""
    if isinstance(value, Enum):
        return cast(Plain, value.value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, time):
        return _format_time(value)
    if value is None or isinstance(value, str | int | float):
        return value
    raise TypeError(f"no plain form for {type(value).__name__} value {value!r}")


def _format_time(value: time) -> str:
    whole_minute = value.second == 0 and value.microsecond == 0
    return value.isoformat(timespec="minutes" if whole_minute else "auto")
