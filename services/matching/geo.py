"""Places: ZIP code centroids, distances, and the grid cells a service's radius covers.

The grid turns "within 8 km of a location" into a few index lookups: a service is stored
under every cell its circle touches, a need looks in the one cell its centroid is in, and
the exact distance then decides.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

Point = tuple[float, float]  # latitude, longitude
CELL_DEGREES = 0.2  # about 22 km north-south
EARTH_RADIUS_KM = 6371.0
DEMO_CENTROIDS = Path(__file__).parent / "directory" / "data" / "postal_centroids.csv"


@dataclass(frozen=True)
class PostalArea:
    county: str
    point: Point


def load_centroids(path: Path = DEMO_CENTROIDS) -> dict[str, PostalArea]:
    with path.open(newline="", encoding="utf-8") as f:
        return {
            row["postal_code"]: PostalArea(
                row["county"], (float(row["latitude"]), float(row["longitude"]))
            )
            for row in csv.DictReader(f)
        }


def haversine_km(a: Point, b: Point) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(h))


def cell_of(point: Point) -> str:
    lat, lon = point
    return f"{math.floor(lat / CELL_DEGREES)}:{math.floor(lon / CELL_DEGREES)}"


def cells_within(point: Point, radius_km: float) -> set[str]:
    """Every cell the circle touches (its bounding box's cells: a few too many is fine)."""
    lat, lon = point
    dlat = radius_km / 111.0
    dlon = radius_km / (111.0 * max(math.cos(math.radians(lat)), 0.01))
    rows = range(
        math.floor((lat - dlat) / CELL_DEGREES), math.floor((lat + dlat) / CELL_DEGREES) + 1
    )
    cols = range(
        math.floor((lon - dlon) / CELL_DEGREES), math.floor((lon + dlon) / CELL_DEGREES) + 1
    )
    return {f"{r}:{c}" for r in rows for c in cols}
