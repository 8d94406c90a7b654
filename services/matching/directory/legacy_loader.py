"""Load the agency directory from an Open Referral HSDS 3.x tabular data package (CSV).

An agency is an HSDS organization; what it offers are its services, each bound to one
refnet category through a taxonomy_term attribute, with the ZIP codes of its service
areas and its languages.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from shared.events import NeedCategory


class DirectoryError(ValueError):
    """Says which file, row and field of the data package is wrong."""


@dataclass(frozen=True)
class Agency:
    agency_id: str
    name: str
    email: str | None


@dataclass(frozen=True)
class AgencyService:
    service_id: str
    agency_id: str
    name: str
    category: NeedCategory
    postal_codes: frozenset[str]
    languages: frozenset[str]


def _rows(package: Path, name: str) -> list[dict[str, str]]:
    path = package / f"{name}.csv"
    if not path.exists():
        raise DirectoryError(f"{path}: missing")
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def load_directory(package: Path) -> tuple[list[Agency], list[AgencyService]]:
    agencies = [
        Agency(r["id"], r["name"], r.get("email") or None) for r in _rows(package, "organization")
    ]
    known_agencies = {a.agency_id for a in agencies}
    categories: dict[str, NeedCategory] = {}
    for line, row in enumerate(_rows(package, "attribute"), start=2):
        if row["link_type"] != "service":
            continue
        try:
            categories[row["link_id"]] = NeedCategory(row["taxonomy_term_id"])
        except ValueError:
            raise DirectoryError(
                f"{package / 'attribute.csv'} row {line} taxonomy_term_id: "
                f"{row['taxonomy_term_id']!r} is not a refnet category"
            ) from None
    areas: dict[str, set[str]] = defaultdict(set)
    for row in _rows(package, "service_area"):
        if row["extent_type"] == "postal_code":
            areas[row["service_id"]].add(row["extent"])
    languages: dict[str, set[str]] = defaultdict(set)
    for row in _rows(package, "language"):
        languages[row["service_id"]].add(row["code"])
    services = []
    for line, row in enumerate(_rows(package, "service"), start=2):
        if row.get("status", "active") != "active":
            continue
        where = f"{package / 'service.csv'} row {line}"
        if row["organization_id"] not in known_agencies:
            raise DirectoryError(
                f"{where} organization_id: no organization {row['organization_id']!r}"
            )
        if row["id"] not in categories:
            raise DirectoryError(f"{where} id: service {row['id']!r} has no category attribute")
        services.append(
            AgencyService(
                service_id=row["id"],
                agency_id=row["organization_id"],
                name=row["name"],
                category=categories[row["id"]],
                postal_codes=frozenset(areas[row["id"]]),
                languages=frozenset(languages[row["id"]]),
            )
        )
    return agencies, services
