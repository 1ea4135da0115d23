"""Location privacy under search, on every engine.

Hidden ads have no place: no area search or distance order finds them, and no hit
carries their location or a distance. Approximate and area ads publish a snapped cell
centre: an attacker who searches from many points (reading distance_km, or probing the
radius at which the ad appears) and solves for the location learns that centre and
nothing closer to the true point; the same attack finds an exact ad to within metres.

Run with -s to see the measured errors."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import h3.api.basic_int as h3
import pytest

from directory.geo import (
    DISTANCE_STEP_KM,
    SNAP_RESOLUTION,
    Point,
    Privacy,
    haversine_m,
    publishable_point,
    rounded_distance_km,
)
from tests.search.conftest import SearchWorld, destination

PORTAL = "privacy-lab"
# An exact ad is placed to within this by the same attacks (distances come in 0.1 km).
EXACT_ATTACK_BOUND_KM = 0.2
# Probing the radius at which an ad appears, down to this width.
PROBE_PRECISION_KM = 0.001
# How far from the published point the distance-reading attack may land: its readings
# are rounded to the level's step, which least squares over 50 readings mostly averages out.
READING_TOLERANCE_FRACTION_OF_STEP = 0.25
# The true points of the snapped ads sit this far from their cell's centre towards a
# corner, so that "no closer than the level allows" is a visible margin, not luck.
TOWARDS_CORNER = 0.85

SEARCH_WORD = "hideaway"
HIDDEN_PLACES = (
    Point(60.1699, 24.9384),
    Point(60.1710, 24.9400),
    Point(59.4370, 24.7536),
    Point(56.9496, 24.1052),
    Point(-16.80, 179.95),
)


def true_point_near_corner(near: Point, privacy: Privacy) -> Point:
    """A point of the cell containing `near`, most of the way to one of its corners."""
    cell = h3.latlng_to_cell(near.lat, near.lon, SNAP_RESOLUTION[privacy])
    centre_lat, centre_lon = h3.cell_to_latlng(cell)
    corner_lat, corner_lon = h3.cell_to_boundary(cell)[0]
    point = Point(
        round(centre_lat + TOWARDS_CORNER * (corner_lat - centre_lat), 6),
        round(centre_lon + TOWARDS_CORNER * (corner_lon - centre_lon), 6),
    )
    assert h3.latlng_to_cell(point.lat, point.lon, SNAP_RESOLUTION[privacy]) == cell
    return point


@dataclass(frozen=True)
class Target:
    privacy: Privacy
    true_point: Point
    id: str
    published: Point  # the location search shows: the cell centre for snapped levels
    # Ring of the attacker's query points around the ad, in km.
    nearest_km: float
    farthest_km: float

    @property
    def snap_error_km(self) -> float:
        return haversine_m(self.true_point, self.published) / 1000


@dataclass
class Dataset:
    targets: dict[Privacy, Target]
    hidden: set[str]
    visible: set[str]


TARGET_PLACES = {
    Privacy.EXACT: (Point(60.1699, 24.9384), 1.0, 30.0),  # Helsinki
    Privacy.APPROXIMATE: (Point(59.4370, 24.7536), 2.0, 40.0),  # Tallinn
    Privacy.AREA: (Point(56.9496, 24.1052), 15.0, 150.0),  # Riga
}


@pytest.fixture(scope="module")
def dataset(search_world: SearchWorld) -> Dataset:
    portal = search_world.make_portal(PORTAL)
    true_points = {
        Privacy.EXACT: TARGET_PLACES[Privacy.EXACT][0],
        Privacy.APPROXIMATE: true_point_near_corner(
            TARGET_PLACES[Privacy.APPROXIMATE][0], Privacy.APPROXIMATE
        ),
        Privacy.AREA: true_point_near_corner(TARGET_PLACES[Privacy.AREA][0], Privacy.AREA),
    }
    items = [
        {
            "external_id": f"target-{privacy}",
            "ad": {
                "kind": "offer",
                "title": f"Target {privacy}",
                "body": "Where am I?",
                "category": "home.repairs",
                "location": {"lat": point.lat, "lon": point.lon},
                "privacy": privacy.value,
                "currencies": ["HOUR"],
                "member": "m-target",
            },
        }
        for privacy, point in true_points.items()
    ]
    # Hidden ads are sent with a location (which must be dropped), next to visible ads
    # with the same word, so that the searches that must not find them find something.
    for number, place in enumerate(HIDDEN_PLACES):
        for privacy in ("hidden", "exact"):
            items.append(
                {
                    "external_id": f"{privacy}-{number}",
                    "ad": {
                        "kind": "want",
                        "title": f"Quiet {SEARCH_WORD} {number}",
                        "body": "Somewhere near.",
                        "category": "space.rooms",
                        "location": {"lat": place.lat, "lon": place.lon},
                        "privacy": privacy,
                        "currencies": ["EUR"],
                        "member": "m-hidden",
                    },
                }
            )
    results = {result["external_id"]: result["id"] for result in search_world.batch(portal, items)}
    published = {item["id"]: item["location"] for item in search_world.own_ads(portal)}
    targets = {}
    for privacy, point in true_points.items():
        ad_id = results[f"target-{privacy}"]
        location = published[ad_id]
        _, nearest, farthest = TARGET_PLACES[privacy]
        targets[privacy] = Target(
            privacy, point, ad_id, Point(location["lat"], location["lon"]), nearest, farthest
        )
    return Dataset(
        targets=targets,
        hidden={
            ad_id for external_id, ad_id in results.items() if external_id.startswith("hidden-")
        },
        visible={
            ad_id for external_id, ad_id in results.items() if external_id.startswith("exact-")
        },
    )


# --- the attacker's tools ----------------------------------------------------------------


def query_points(target: Target, count: int) -> list[Point]:
    """Points spread around the ad: every direction, near and far."""
    golden_angle = 137.50776405
    return [
        destination(
            target.true_point,
            (number * golden_angle) % 360,
            target.nearest_km + (target.farthest_km - target.nearest_km) * number / (count - 1),
        )
        for number in range(count)
    ]


def distance_reading(searcher, target: Target, point: Point, radius_km: float) -> float | None:
    body = searcher.search(
        {"lat": point.lat, "lon": point.lon, "radius_km": radius_km, "portal": PORTAL, "limit": 100}
    )
    for hit in body["hits"]:
        if hit["id"] == target.id:
            return hit["distance_km"]
    return None


def probe_radius(searcher, target: Target, point: Point) -> float:
    """The smallest radius around point at which the ad appears, by bisection."""
    low, high = PROBE_PRECISION_KM, 2 * target.farthest_km
    assert distance_reading(searcher, target, point, high) is not None
    while high - low > PROBE_PRECISION_KM:
        middle = (low + high) / 2
        if distance_reading(searcher, target, point, middle) is None:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def least_squares(readings: list[tuple[Point, float]], start: Point) -> Point:
    """The point whose distances to the query points best match the readings (km),
    by Gauss-Newton on small east/north steps."""
    step_km = 0.001

    def residuals(point: Point) -> list[float]:
        return [haversine_m(point, at) / 1000 - reading for at, reading in readings]

    estimate = start
    for _ in range(100):
        base = residuals(estimate)
        east = [
            (a - b) / step_km
            for a, b in zip(residuals(destination(estimate, 90, step_km)), base, strict=True)
        ]
        north = [
            (a - b) / step_km
            for a, b in zip(residuals(destination(estimate, 0, step_km)), base, strict=True)
        ]
        a11 = sum(e * e for e in east)
        a12 = sum(e * n for e, n in zip(east, north, strict=True))
        a22 = sum(n * n for n in north)
        b1 = -sum(e * r for e, r in zip(east, base, strict=True))
        b2 = -sum(n * r for n, r in zip(north, base, strict=True))
        determinant = a11 * a22 - a12 * a12
        move_east = (b1 * a22 - b2 * a12) / determinant
        move_north = (a11 * b2 - a12 * b1) / determinant
        estimate = destination(destination(estimate, 90, move_east), 0, move_north)
        if math.hypot(move_east, move_north) < 1e-6:
            break
    return estimate


def km_between(a: Point, b: Point) -> float:
    return haversine_m(a, b) / 1000


@pytest.fixture(scope="module")
def distance_attacks(searcher, dataset) -> dict[Privacy, tuple[Point, list[float]]]:
    """Per level: the estimate from 50 distance readings, and the readings."""
    found = {}
    for privacy, target in dataset.targets.items():
        readings = []
        for point in query_points(target, 50):
            reading = distance_reading(searcher, target, point, target.farthest_km + 50)
            assert reading is not None
            readings.append((point, reading))
        start = min(readings, key=lambda pair: pair[1])[0]
        found[privacy] = least_squares(readings, start), [reading for _, reading in readings]
    return found


@pytest.fixture(scope="module")
def probe_attacks(searcher, dataset) -> dict[Privacy, Point]:
    """Per level: the estimate from the radii at which the ad appears from 6 points."""
    found = {}
    for privacy, target in dataset.targets.items():
        readings = [
            (point, probe_radius(searcher, target, point)) for point in query_points(target, 6)
        ]
        start = min(readings, key=lambda pair: pair[1])[0]
        found[privacy] = least_squares(readings, start)
    return found


def report(attack: str, target: Target, estimate: Point) -> tuple[float, float]:
    from_true = km_between(estimate, target.true_point)
    from_published = km_between(estimate, target.published)
    print(
        f"\n[{attack}] {target.privacy.value}: estimate {from_true:.3f} km from the true point "
        f"(snap error {target.snap_error_km:.3f} km), {from_published:.3f} km from the "
        f"published point"
    )
    return from_true, from_published


# --- snapped locations ---------------------------------------------------------------------


@pytest.mark.parametrize("privacy", [Privacy.EXACT, Privacy.APPROXIMATE, Privacy.AREA])
def test_search_shows_the_snapped_point_only(searcher, dataset, privacy):
    target = dataset.targets[privacy]
    assert target.published == publishable_point(target.true_point, privacy)
    body = searcher.search(
        {
            "lat": target.true_point.lat,
            "lon": target.true_point.lon,
            "radius_km": 50,
            "portal": PORTAL,
        }
    )
    (hit,) = [hit for hit in body["hits"] if hit["id"] == target.id]
    assert Point(hit["location"]["lat"], hit["location"]["lon"]) == target.published


def test_a_distance_is_the_nearest_float_to_its_rounded_decimal():
    """The same figures as rounding the multiple of the step to one decimal with round()."""
    rng = random.Random(4)
    distances = [rng.uniform(0, 20_040_000) for _ in range(20_000)]
    distances += [rng.uniform(0, 30_000) for _ in range(20_000)]
    distances += [0.0, 49.999, 50.0, 50.001, 149.9, 450.0, 2_950.0, 20_037_508.3]
    for privacy, step in DISTANCE_STEP_KM.items():
        for distance_m in distances:
            expected = round(round(distance_m / 1000 / step) * step, 1)
            assert rounded_distance_km(distance_m, privacy) == expected, (distance_m, privacy)
    assert rounded_distance_km(2_900, Privacy.EXACT) == 2.9  # 29 * 0.1 is 2.9000000000000004


def test_distances_are_multiples_of_the_levels_step(distance_attacks):
    for privacy, (_, readings) in distance_attacks.items():
        step = DISTANCE_STEP_KM[privacy]
        assert all(abs(reading / step - round(reading / step)) < 1e-9 for reading in readings), (
            privacy,
            readings,
        )
        assert len(set(readings)) > 5, "readings from 50 places should differ"


def test_distance_readings_locate_an_exact_ad(distance_attacks, dataset):
    target = dataset.targets[Privacy.EXACT]
    from_true, _ = report("distance readings", target, distance_attacks[Privacy.EXACT][0])
    assert from_true <= EXACT_ATTACK_BOUND_KM


def test_radius_probing_locates_an_exact_ad(probe_attacks, dataset):
    target = dataset.targets[Privacy.EXACT]
    from_true, _ = report("radius probing", target, probe_attacks[Privacy.EXACT])
    assert from_true <= EXACT_ATTACK_BOUND_KM


@pytest.mark.parametrize("privacy", [Privacy.APPROXIMATE, Privacy.AREA])
def test_distance_readings_find_the_published_point_not_the_true_one(
    distance_attacks, dataset, privacy
):
    target = dataset.targets[privacy]
    from_true, from_published = report("distance readings", target, distance_attacks[privacy][0])
    tolerance = READING_TOLERANCE_FRACTION_OF_STEP * DISTANCE_STEP_KM[privacy]
    assert from_published <= tolerance
    assert abs(from_true - target.snap_error_km) <= tolerance
    assert from_true > 3 * EXACT_ATTACK_BOUND_KM


@pytest.mark.parametrize("privacy", [Privacy.APPROXIMATE, Privacy.AREA])
def test_radius_probing_finds_the_published_point_not_the_true_one(probe_attacks, dataset, privacy):
    target = dataset.targets[privacy]
    from_true, from_published = report("radius probing", target, probe_attacks[privacy])
    assert from_published <= EXACT_ATTACK_BOUND_KM
    assert abs(from_true - target.snap_error_km) <= EXACT_ATTACK_BOUND_KM
    assert from_true > 3 * EXACT_ATTACK_BOUND_KM


# --- hidden ads ----------------------------------------------------------------------------

PLACED_QUERIES = [
    pytest.param({"lat": 60.1699, "lon": 24.9384, "radius_km": 5}, id="radius-small"),
    pytest.param({"lat": 60.1699, "lon": 24.9384, "radius_km": 1000}, id="radius-large"),
    pytest.param({"lat": -16.8, "lon": -179.99, "radius_km": 50}, id="radius-antimeridian"),
    pytest.param(
        {"lat": 60.17, "lon": 24.94, "radius_km": 5, "sort": "recent"}, id="radius-recent"
    ),
    pytest.param({"lat": 60.17, "lon": 24.94, "radius_km": 5, "q": SEARCH_WORD}, id="radius-words"),
    pytest.param({"bbox": "-180,-90,180,90"}, id="bbox-world"),
    pytest.param({"bbox": "24,60,26,61", "q": SEARCH_WORD}, id="bbox-words"),
    pytest.param({"bbox": "179,-17,-179,-16"}, id="bbox-antimeridian"),
    pytest.param({"bbox": "24,56,26,61", "lat": 60, "lon": 25}, id="bbox-nearest"),
    pytest.param({"lat": 60.1699, "lon": 24.9384}, id="nearest"),
    pytest.param({"lat": 0, "lon": 0, "sort": "distance", "q": SEARCH_WORD}, id="nearest-words"),
]


@pytest.mark.parametrize("params", PLACED_QUERIES)
def test_hidden_ads_are_never_found_by_place_or_in_distance_order(searcher, dataset, params):
    hits, _ = searcher.search_all(params | {"limit": 100})
    found = {hit["id"] for hit in hits}
    assert found & dataset.visible, "the query should find the visible neighbours"
    assert not found & dataset.hidden


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({}, id="recent"),
        pytest.param({"q": SEARCH_WORD}, id="words"),
        pytest.param({"q": SEARCH_WORD, "sort": "recent"}, id="words-recent"),
        pytest.param({"lat": 60.17, "lon": 24.94, "sort": "recent"}, id="point-recent"),
        pytest.param({"category": "space"}, id="category"),
    ],
)
def test_hidden_ads_are_found_without_a_place_and_show_none(searcher, dataset, params):
    hits, _ = searcher.search_all(params | {"limit": 100})
    hidden = [hit for hit in hits if hit["id"] in dataset.hidden]
    assert {hit["id"] for hit in hidden} == dataset.hidden
    for hit in hidden:
        assert hit["location"] is None
        assert hit["distance_km"] is None
        assert hit["privacy"] == "hidden"


def test_hidden_ads_have_no_geometry_in_geojson(searcher, dataset):
    body = searcher.search({"q": SEARCH_WORD, "format": "geojson", "limit": 100})
    features = {feature["id"]: feature for feature in body["features"]}
    assert dataset.hidden <= set(features)
    for ad_id in dataset.hidden:
        assert features[ad_id]["geometry"] is None
        assert "location" not in features[ad_id]["properties"]
        assert features[ad_id]["properties"]["distance_km"] is None
