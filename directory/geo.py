"""Geographic values and the privacy rule that snaps a location before it is stored.

Snapping uses Uber's H3 grid: every point of the Earth falls into exactly one
hexagonal cell per resolution, so a location always snaps to the same cell centre
(stable across updates, no jitter to average out) and cells are nearly equal in
area from the equator to the poles, unlike a latitude/longitude grid.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

# The integer API: no conversion of each cell to a hex string and back.
import h3.api.basic_int as h3


class Privacy(enum.StrEnum):
    EXACT = "exact"
    APPROXIMATE = "approximate"  # about 1 km
    AREA = "area"  # about 10 km
    HIDDEN = "hidden"  # no location published, nor stored


# H3 resolution 7: cells ~5.2 km², centre at most ~1.5 km (typically ~0.9 km) from the point.
# H3 resolution 5: cells ~252 km², centre at most ~11 km (typically ~6 km) from the point.
# (Largest distances measured over 20,000 random points: 1.52 km and 10.73 km.)
SNAP_RESOLUTION = {Privacy.APPROXIMATE: 7, Privacy.AREA: 5}

# Six decimals are ~0.1 m: finer digits are noise from GPS or float arithmetic.
COORDINATE_DECIMALS = 6


@dataclass(frozen=True, slots=True)
class Point:
    lat: float
    lon: float

    def __post_init__(self) -> None:
        if not -90.0 <= self.lat <= 90.0:
            raise ValueError("lat must be between -90 and 90")
        if not -180.0 <= self.lon <= 180.0:
            raise ValueError("lon must be between -180 and 180")
        # One spelling of each place, so that sending an ad again with the other one
        # changes nothing. -0.0 (sent, or rounded from a tiny negative) is 0.0. On the
        # antimeridian it is also what makes searches work: PostGIS's nearest-first scan
        # fails ("index returned tuples in wrong order") when an ad at 180 is searched
        # for at -180, or the other way round.
        object.__setattr__(self, "lat", self.lat + 0.0)
        object.__setattr__(self, "lon", 180.0 if self.lon == -180.0 else self.lon + 0.0)

    def as_wkt(self) -> str:
        return f"SRID=4326;POINT({self.lon} {self.lat})"


def publishable_point(point: Point | None, privacy: Privacy) -> Point | None:
    """The only point that may be stored for an ad with this privacy level."""
    if point is None or privacy is Privacy.HIDDEN:
        return None
    if privacy is Privacy.EXACT:
        return Point(round(point.lat, COORDINATE_DECIMALS), round(point.lon, COORDINATE_DECIMALS))
    lat, lon = h3.cell_to_latlng(h3.latlng_to_cell(point.lat, point.lon, SNAP_RESOLUTION[privacy]))
    return Point(round(lat, COORDINATE_DECIMALS), round(lon, COORDINATE_DECIMALS))


# PostGIS measures geography "on the sphere" with this radius (WGS84's mean radius, R1);
# the same figure everywhere keeps our distances and the database's identical.
EARTH_RADIUS_M = 6_371_008.7714

# Distances shown in search results are rounded to a step no finer than the location
# they are measured from: an approximate ad is ~1 km off anyway, an area ad ~10 km.
DISTANCE_STEP_KM = {Privacy.EXACT: 0.1, Privacy.APPROXIMATE: 1.0, Privacy.AREA: 10.0}


def haversine_m(a: Point, b: Point) -> float:
    """Great-circle distance in metres on the PostGIS sphere."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a.lat, a.lon, b.lat, b.lon))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


_STEP_IN_TENTHS_KM = {privacy: round(step * 10) for privacy, step in DISTANCE_STEP_KM.items()}


def rounded_distance_km(distance_m: float, privacy: Privacy) -> float:
    step = DISTANCE_STEP_KM[privacy]
    # A whole number of tenths divided by ten is the float nearest to the decimal, free of
    # the noise of steps * step (2.9000000000000004). round(…, 1) gave the same through a
    # decimal conversion, at 0.5 µs a hit.
    return round(distance_m / 1000 / step) * _STEP_IN_TENTHS_KM[privacy] / 10


@dataclass(frozen=True, slots=True)
class BBox:
    """A latitude/longitude box. west > east means it crosses the antimeridian."""

    west: float
    south: float
    east: float
    north: float

    def __post_init__(self) -> None:
        for name in ("west", "east"):
            if not -180.0 <= getattr(self, name) <= 180.0:
                raise ValueError("longitudes must be between -180 and 180")
        for name in ("south", "north"):
            if not -90.0 <= getattr(self, name) <= 90.0:
                raise ValueError("latitudes must be between -90 and 90")
        if self.south > self.north:
            raise ValueError("min_lat must not be greater than max_lat")
        if self.west == self.east or (self.west, self.east) == (180.0, -180.0):
            # 180 and -180 are one meridian: as a crossing box, that has no width either.
            raise ValueError("min_lon must differ from max_lon")

    @property
    def crosses_antimeridian(self) -> bool:
        return self.west > self.east

    def lon_ranges(self) -> list[tuple[float, float]]:
        """The longitude ranges the box selects: one, or two when it crosses the
        antimeridian. 180 and -180 are one meridian, and a point on it is stored as 180
        (see Point): a box starting at -180 brings it along, as a range of no width."""
        if self.crosses_antimeridian:
            return [(self.west, 180.0), (-180.0, self.east)]
        ranges = [(self.west, self.east)]
        if self.west == -180.0 and self.east != 180.0:
            ranges.append((180.0, 180.0))
        return ranges
