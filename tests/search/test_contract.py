"""The search contract, held against a brute-force answer computed in Python.

A few hundred ads (seeded random: clustered around towns, worldwide, across the
antimeridian and near both poles; every kind, privacy level and many filters; some
portal-only, expired, deleted or of a suspended portal) are written once through the
API. Each generated query is then paged to its end with the cursor, on every engine,
and must give exactly the ads, in exactly the order, that the brute force computes
from the ads' published (snapped) locations; facets must equal its counts.

Text search can't be brute-forced (stemming, typos, ranking): its behaviours are
tested one by one at the end, on every engine too."""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import pytest

from directory.geo import (
    DISTANCE_STEP_KM,
    BBox,
    Point,
    Privacy,
    haversine_m,
    rounded_distance_km,
)
from directory.models import PortalStatus
from directory.services.portals import generate_key
from tests.factories import PortalWithKey
from tests.search.conftest import SearchWorld, destination

SEED = 20261125
# Ads closer than this to a radius boundary are left out of a comparison: the engine and
# the brute force may measure a hair apart, and "exactly on the boundary" is not a rule
# worth testing with floats. Likewise for distances near a rounding boundary.
BOUNDARY_TOLERANCE_M = 1.0

ACTIVE_PORTALS = ("alpha", "beta", "words")
SUSPENDED_PORTAL = "gamma"
# Portals that register a ledger (after publishing: their ads reach the index again
# through the change feed); ads of the others are never payable, account or not.
LEDGER_PORTALS = ("alpha", SUSPENDED_PORTAL)
TOWNS = {
    "brussels": Point(50.8503, 4.3517),
    "lyon": Point(45.7640, 4.8357),
    "montreal": Point(45.5019, -73.5674),
    "wellington": Point(-41.2865, 174.7762),
}
ANTIMERIDIAN = Point(-16.8, 180.0)  # Fiji's Taveuni straddles it
GROUPS = ("food", "garden", "home", "media", "sports")
QUERY_CATEGORIES = (*GROUPS, "food.baked", "garden.tools", "home.repairs", "media.books")
TAG_POOL = ("bikes", "organic", "repairs", "vegan", "tools", "kids", "local")
CURRENCIES = ("EUR", "HOUR", "CAD", "NZD", "GIFT", "BARTER")
LANGUAGES = ("en", "en-GB", "fr", "fr-CA", "de", "es", None)
QUERY_LANGUAGES = ("en", "fr", "fr-CA", "fr-ca", "de", "en,de", "es,fr")
PRICE_UNITS = ("once", "item", "hour", "day", "kg")
PRIVACY_WEIGHTS = {"exact": 40, "approximate": 25, "area": 20, "hidden": 15}
# Title words of the random ads; the words the text tests look for (vélo, garden,
# bicycle, sourdough...) are not among them.
ADJECTIVES = ("Fresh", "Old", "Handmade", "Spare", "Organic", "Second-hand", "Small", "Large")
NOUNS = ("bread", "books", "chairs", "lessons", "soap", "jars", "tools", "jackets", "lamps")
BODY_WORDS = ("ask", "weekdays", "pickup", "delivery", "swap", "welcome", "quality", "cheap")

# Ads of the text tests: (key, title, body, language, category).
TEXT_ADS = (
    ("velo", "Vélo de ville à donner", "Un vélo solide, freins neufs.", "fr", "sports.bikes"),
    ("gardening", "Gardening help on weekends", "Weeding and planting.", "en", "home.gardening"),
    ("garden", "Vegetable garden to share", "A plot with raised beds.", "en", "garden.plants"),
    ("bicycle", "Bicycle with a child seat", "Sturdy frame, new tyres.", "en", "sports.bikes"),
    ("french", "Cours de cuisine végétarienne", "Les légumes de saison.", "fr", "education"),
    ("german", "Gebrauchte Bücher zu verschenken", "Romane, gut erhalten.", "de", "media.books"),
    ("english", "Piano lessons for beginners", "Patient teacher, all ages.", "en", "education"),
    ("sourdough-title", "Sourdough starter to share", "Live culture, fed daily.", "en", "food"),
    ("sourdough-body", "Kitchen help", "I can also teach you to bake sourdough.", "en", "food"),
    # Greek ends a word with the final sigma in lower case, not in capitals, and
    # PostgreSQL's lower() keeps each as it is: the ads' words end in either. No language:
    # the body is read as written, no stemmer folds the two.
    ("greek", "Μαθήματα κιθάρας", "Για αρχάριους μαθητές.", None, "education"),
    ("greek-capitals", "ΜΑΘΗΜΑΤΑ ΚΙΘΑΡΑΣ", "ΓΙΑ ΑΡΧΑΡΙΟΥΣ ΜΑΘΗΤΕΣ.", None, "education"),
    # Devanagari and Tamil write vowel signs and viramas as combining marks: a word goes
    # on through them. The other Hindi ad has words starting with each letter of हिन्दी.
    ("hindi", "हिन्दी पुस्तकें", "पढ़ने के लिए", "hi", "media.books"),
    ("hindi-other", "नया दरवाज़ा", "हाथ से बना", "hi", "home"),
    ("tamil", "தமிழ் புத்தகங்கள்", "படிக்க இலவசம்", "ta", "media.books"),
    # A body is indexed stemmed in its ad's language only.
    ("russian", "Объявление", "Продаю старые книги.", "ru", "media.books"),
    ("greek-body", "Αγγελία", "Πουλάω παλιά βιβλία.", "el", "media.books"),
)
# Tags of some of them (Greek: a tag ends in the final sigma in lower case, not in
# capitals).
TEXT_AD_TAGS = {"greek": ["κηπος"], "greek-capitals": ["ΚΗΠΟΣ"]}
TEXT_ADS_PLACE = Point(51.0543, 3.7174)  # Ghent, away from the towns above
# Exact ads on the antimeridian, sent under each of its spellings as (lat, lon) (a Point
# would spell it 180). Latitudes apart, so that distance order never rests on how each
# side rounds 180 against -180.
ON_ANTIMERIDIAN = {"east": (-16.7, 180.0), "west": (-16.9, -180.0)}


CHILDREN = {
    "food": ("produce", "baked", "preserves", "meals"),
    "garden": ("plants", "seeds", "tools", "firewood"),
    "home": ("repairs", "cleaning", "gardening", "moving"),
    "media": ("books", "music", "films", "games"),
    "sports": ("bikes", "outdoor", "fitness"),
}
ADS_PER_PORTAL = {"alpha": 130, "beta": 100, "gamma": 40}
BATCH_SIZE = 30


# --- the dataset -------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishedAd:
    """An ad as stored (read back from its portal), with what decides its visibility."""

    id: str
    portal: str
    kind: str
    title: str
    category: str
    tags: tuple[str, ...]
    location: Point | None
    privacy: Privacy
    portal_only: bool
    currencies: tuple[str, ...]
    price: tuple[Decimal, str] | None  # amount, currency
    language: str | None
    updated_at: datetime
    searchable: bool  # neither expired nor of a suspended portal
    ledger_account: str | None
    payable: bool  # a ledger account, on a portal with a ledger


@dataclass
class Dataset:
    ads: dict[str, PublishedAd]
    portals: dict[str, PortalWithKey]
    categories: set[str]
    expired: set[str]
    deleted: set[str]
    suspended: set[str]
    text_ads: dict[str, str]  # key -> id
    antimeridian_ads: dict[str, str]  # key of ON_ANTIMERIDIAN -> id
    update_times: list[datetime] = field(default_factory=list)

    def headers(self, viewer: str | None) -> dict[str, str]:
        return {} if viewer is None else self.portals[viewer].headers

    def viewer_id(self, viewer: str | None) -> int | None:
        return None if viewer is None else self.portals[viewer].id

    def resolve(self, params: dict) -> dict:
        """Query parameters with symbolic values (see Since) made concrete."""
        return {
            name: value.resolve(self) if isinstance(value, Since) else value
            for name, value in params.items()
        }


def _random_point(rng: random.Random) -> tuple[str, Point]:
    roll = rng.random()
    if roll < 0.62:
        town = rng.choice(sorted(TOWNS))
        # sqrt: evenly spread over the disc rather than bunched at the centre
        distance = 25 * math.sqrt(rng.random())
        return town, destination(TOWNS[town], rng.uniform(0, 360), distance)
    if roll < 0.73:
        lon = rng.uniform(179.3, 180.7)
        return "antimeridian", Point(
            ANTIMERIDIAN.lat + rng.uniform(-0.5, 0.5), lon - 360 * (lon > 180)
        )
    if roll < 0.84:
        lat = rng.uniform(85.0, 89.9) * rng.choice((1, -1))
        return "pole", Point(lat, rng.uniform(-180, 180))
    lat = math.degrees(math.asin(rng.uniform(-1, 1)))  # uniform over the sphere
    return "world", Point(lat, rng.uniform(-180, 180))


def _random_ad(rng: random.Random, number: int, portal: str) -> dict:
    _, point = _random_point(rng)
    privacy = rng.choices(list(PRIVACY_WEIGHTS), weights=list(PRIVACY_WEIGHTS.values()))[0]
    currencies = rng.sample(CURRENCIES, rng.randint(1, 3))
    group = rng.choice(GROUPS)
    ad = {
        "kind": rng.choice(("offer", "want")),
        "title": f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}",
        "body": " ".join(rng.choices(BODY_WORDS, k=6)),
        "category": group if rng.random() < 0.2 else f"{group}.{rng.choice(CHILDREN[group])}",
        "tags": [
            tag.upper() if rng.random() < 0.3 else tag
            for tag in rng.sample(TAG_POOL, rng.randint(0, 3))
        ],
        # Hidden ads send a location too: it must be dropped, not stored.
        "location": {"lat": point.lat, "lon": point.lon},
        "privacy": privacy,
        "currencies": currencies,
        "member": f"m-{number}",
    }
    language = rng.choice(LANGUAGES)
    if language is not None:
        ad["language"] = language
    if rng.random() < 0.4:
        ad["price"] = {
            "amount": str(Decimal(rng.randint(0, 20000)) / 100),
            "currency": rng.choice(currencies),
            "unit": rng.choice(PRICE_UNITS),
        }
    if portal in ("alpha", "beta") and rng.random() < 0.12:
        ad["visibility"] = "portal"
    if rng.random() < 0.4:
        ad["ledger_account"] = f"acct-{number}"
    return ad


@pytest.fixture(scope="module")
def dataset(search_world: SearchWorld) -> Dataset:
    rng = random.Random(SEED)
    world = search_world
    portals = {
        slug: world.make_portal(slug, default_currencies=("EUR",))
        for slug in (*ACTIVE_PORTALS, SUSPENDED_PORTAL)
    }
    planned = {
        slug: [(f"{slug}-{n:04d}", _random_ad(rng, n, slug)) for n in range(count)]
        for slug, count in ADS_PER_PORTAL.items()
    }
    ids: dict[tuple[str, str], str] = {}
    # Many small batches, portals taking turns: ads get many distinct updated_at values,
    # interleaved across portals, for sort=recent and updated_since to mean something.
    for start in range(0, max(ADS_PER_PORTAL.values()), BATCH_SIZE):
        for slug, ads in planned.items():
            chunk = ads[start : start + BATCH_SIZE]
            if not chunk:
                continue
            items = [{"op": "upsert", "external_id": e, "ad": ad} for e, ad in chunk]
            for (external_id, _), result in zip(
                chunk, world.batch(portals[slug], items), strict=True
            ):
                ids[slug, external_id] = result["id"]
    text_items = [
        {
            "op": "upsert",
            "external_id": f"text-{key}",
            "ad": {
                "kind": "offer",
                "title": title,
                "body": body,
                "category": category,
                "tags": TEXT_AD_TAGS.get(key, []),
                "location": {"lat": TEXT_ADS_PLACE.lat, "lon": TEXT_ADS_PLACE.lon},
                "privacy": "exact",
                "language": language,
                "member": "m-text",
            },
        }
        for key, title, body, language, category in TEXT_ADS
    ]
    text_results = world.batch(portals["words"], text_items)
    text_ads = {key: result["id"] for (key, *_), result in zip(TEXT_ADS, text_results, strict=True)}
    antimeridian_items = [
        {
            "op": "upsert",
            "external_id": f"antimeridian-{key}",
            "ad": {
                "kind": "offer",
                "title": f"Kava bowl from the {key}",
                "body": "Carved on Taveuni.",
                "category": "home",
                "location": {"lat": lat, "lon": lon},
                "privacy": "exact",
                "member": "m-antimeridian",
            },
        }
        for key, (lat, lon) in ON_ANTIMERIDIAN.items()
    ]
    antimeridian_results = world.batch(portals["words"], antimeridian_items)
    antimeridian_ads = {
        key: result["id"] for key, result in zip(ON_ANTIMERIDIAN, antimeridian_results, strict=True)
    }

    # Later changes: some ads change (a later updated_at), some expire, some are deleted.
    expired: set[str] = set()
    deleted: set[str] = set()
    for slug, ads in planned.items():
        if slug == SUSPENDED_PORTAL:
            continue
        changed = rng.sample(ads, 12)
        items = [
            {"op": "upsert", "external_id": e, "ad": ad | {"title": f"{ad['title']} (updated)"}}
            for e, ad in changed[:6]
        ]
        items += [{"op": "expire", "external_id": e} for e, _ in changed[6:9]]
        items += [{"op": "delete", "external_id": e} for e, _ in changed[9:]]
        world.batch(portals[slug], items)
        expired |= {ids[slug, e] for e, _ in changed[6:9]}
        deleted |= {ids[slug, e] for e, _ in changed[9:]}

    for slug in LEDGER_PORTALS:
        world.register_ledger(portals[slug])

    published: dict[str, PublishedAd] = {}
    for slug, portal in portals.items():
        for item in world.own_ads(portal):
            location = item["location"]
            price = item["price"]
            published[item["id"]] = PublishedAd(
                id=item["id"],
                portal=slug,
                kind=item["kind"],
                title=item["title"],
                category=item["category"],
                tags=tuple(item["tags"]),
                location=None if location is None else Point(location["lat"], location["lon"]),
                privacy=Privacy(item["privacy"]),
                portal_only=item["visibility"] == "portal",
                currencies=tuple(item["currencies"]),
                price=None if price is None else (Decimal(price["amount"]), price["currency"]),
                language=item["language"],
                updated_at=datetime.fromisoformat(item["updated_at"]),
                searchable=not item["expired"] and slug != SUSPENDED_PORTAL,
                ledger_account=item["ledger_account"],
                payable=item["ledger_account"] is not None and slug in LEDGER_PORTALS,
            )
    world.set_status(portals[SUSPENDED_PORTAL], PortalStatus.SUSPENDED)
    return Dataset(
        ads=published,
        portals=portals,
        categories=set(world.wiring.category_codes),
        expired=expired,
        deleted=deleted,
        suspended={ad.id for ad in published.values() if ad.portal == SUSPENDED_PORTAL},
        text_ads=text_ads,
        antimeridian_ads=antimeridian_ads,
        update_times=sorted({ad.updated_at for ad in published.values()}),
    )


# --- the brute force ---------------------------------------------------------------------


@dataclass(frozen=True)
class Since:
    """updated_since at a fraction of the dataset's change times (known only at run time)."""

    fraction: float

    def resolve(self, dataset: Dataset) -> str:
        times = dataset.update_times
        return times[int(self.fraction * (len(times) - 1))].isoformat()


@dataclass
class Expected:
    ids: list[str]
    distance_m: dict[str, float]
    borderline: set[str]  # within BOUNDARY_TOLERANCE_M of the radius: left out of comparisons


def _split(params: dict, name: str) -> list[str]:
    value = params.get(name)
    return [] if value is None else [part.strip() for part in str(value).split(",")]


def _in_box(box: BBox, point: Point) -> bool:
    """The oracle's own box test, not BBox.lon_ranges, which the engines use: 180 and
    -180 are one meridian, so a point on it is in every box that reaches it."""
    if not box.south <= point.lat <= box.north:
        return False
    spellings = (180.0, -180.0) if abs(point.lon) == 180.0 else (point.lon,)
    if box.west <= box.east:
        return any(box.west <= lon <= box.east for lon in spellings)
    return any(lon >= box.west or lon <= box.east for lon in spellings)


def brute_force(dataset: Dataset, params: dict, viewer: str | None) -> Expected:
    """What a search must answer, by looking at every ad."""
    point = None
    if "lat" in params:
        point = Point(float(params["lat"]), float(params["lon"]))
    radius_m = float(params["radius_km"]) * 1000 if "radius_km" in params else None
    box = None
    if "bbox" in params:
        west, south, east, north = map(float, params["bbox"].split(","))
        box = BBox(west, south, east, north)
    sort = params.get("sort") or ("distance" if point is not None else "recent")
    categories = set()
    for code in _split(params, "category"):
        categories.add(code)
        if "." not in code:
            categories |= {c for c in dataset.categories if c.startswith(code + ".")}
    tags = {tag.lower() for tag in _split(params, "tags")}
    currencies = set(_split(params, "currency"))
    languages = [code.lower() for code in _split(params, "language")]
    slugs = set(_split(params, "portal"))
    since = datetime.fromisoformat(params["updated_since"]) if "updated_since" in params else None
    price_currency = params.get("price_currency")
    price_min = Decimal(params["price_min"]) if "price_min" in params else None
    price_max = Decimal(params["price_max"]) if "price_max" in params else None
    has_price = {"true": True, "false": False, None: None}[params.get("has_price")]
    if price_currency is not None:
        has_price = True
    payable = {"true": True, "false": False, None: None}[params.get("payable")]

    def language_matches(language: str | None) -> bool:
        if language is None:
            return False
        language = language.lower()
        return any(
            language == code or ("-" not in code and language.split("-")[0] == code)
            for code in languages
        )

    def selected(ad: PublishedAd) -> bool:
        if not ad.searchable or (ad.portal_only and ad.portal != viewer):
            return False
        if (radius_m is not None or box is not None or sort == "distance") and ad.location is None:
            return False
        if (
            radius_m is not None
            and haversine_m(point, ad.location) > radius_m + BOUNDARY_TOLERANCE_M
        ):
            return False
        if box is not None and not _in_box(box, ad.location):
            return False
        return (
            ("kind" not in params or ad.kind == params["kind"])
            and (not categories or ad.category in categories)
            and (not tags or any(tag.lower() in tags for tag in ad.tags))
            and (not currencies or bool(currencies & set(ad.currencies)))
            and (not languages or language_matches(ad.language))
            and (not slugs or ad.portal in slugs)
            and (since is None or ad.updated_at >= since)
            and (has_price is None or (ad.price is not None) == has_price)
            and (payable is None or ad.payable == payable)
            and (
                price_currency is None
                or (
                    ad.price[1] == price_currency
                    and (price_min is None or ad.price[0] >= price_min)
                    and (price_max is None or ad.price[0] <= price_max)
                )
            )
        )

    ads = [ad for ad in dataset.ads.values() if selected(ad)]
    distance_m = {
        ad.id: haversine_m(point, ad.location)
        for ad in ads
        if point is not None and ad.location is not None
    }
    if sort == "distance":
        ads.sort(key=lambda ad: (distance_m[ad.id], ad.id))
    else:
        ads.sort(key=lambda ad: (ad.updated_at, ad.id), reverse=True)
    borderline = set()
    if radius_m is not None:
        borderline = {
            ad.id for ad in ads if abs(distance_m[ad.id] - radius_m) <= BOUNDARY_TOLERANCE_M
        }
    return Expected([ad.id for ad in ads], distance_m, borderline)


def brute_force_facets(dataset: Dataset, ids: list[str], facets: list[str]) -> dict:
    counts: dict[str, Counter] = {facet: Counter() for facet in facets}
    for ad in (dataset.ads[ad_id] for ad_id in ids):
        if "category" in counts:
            counts["category"][ad.category] += 1
            if "." in ad.category:
                counts["category"][ad.category.split(".")[0]] += 1
        if "kind" in counts:
            counts["kind"][ad.kind] += 1
        if "currency" in counts:
            counts["currency"].update(ad.currencies)
        if "portal" in counts:
            counts["portal"][ad.portal] += 1
    return {"total": len(ids)} | {facet: dict(counter) for facet, counter in counts.items()}


def _near_rounding_boundary(distance_m: float, privacy: Privacy) -> bool:
    step_m = DISTANCE_STEP_KM[privacy] * 1000
    return abs((distance_m % step_m) - step_m / 2) <= BOUNDARY_TOLERANCE_M


def check_hit(dataset: Dataset, hit: dict, expected: Expected, has_point: bool) -> None:
    ad = dataset.ads[hit["id"]]
    assert (hit["payment"] is not None) == ad.payable, hit
    shown = hit["location"]
    if ad.location is None:
        assert shown is None, hit
        assert hit["distance_km"] is None, hit
        return
    assert Point(shown["lat"], shown["lon"]) == ad.location, hit
    if not has_point:
        assert hit["distance_km"] is None, hit
        return
    distance_m = expected.distance_m[ad.id]
    if not _near_rounding_boundary(distance_m, ad.privacy):
        assert hit["distance_km"] == rounded_distance_km(distance_m, ad.privacy), (
            hit["distance_km"],
            distance_m,
            ad.privacy,
        )


# --- generated queries -------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    params: dict
    viewer: str | None = None  # the portal whose key is sent
    limits: tuple[int, ...] = (20,)  # page sizes, used in turn (only limit may change)

    def __str__(self) -> str:
        return self.name


def _filters(rng: random.Random, chance: float) -> dict:
    params: dict = {}
    if rng.random() < chance:
        params["kind"] = rng.choice(("offer", "want"))
    if rng.random() < chance:
        params["category"] = ",".join(rng.sample(QUERY_CATEGORIES, rng.randint(1, 2)))
    if rng.random() < chance:
        tags = rng.sample(TAG_POOL, rng.randint(1, 2))
        params["tags"] = ",".join(tag.title() if rng.random() < 0.5 else tag for tag in tags)
    if rng.random() < chance:
        params["currency"] = ",".join(rng.sample(CURRENCIES, rng.randint(1, 2)))
    if rng.random() < chance:
        params["language"] = rng.choice(QUERY_LANGUAGES)
    if rng.random() < chance * 0.6:
        slugs = (*ACTIVE_PORTALS, SUSPENDED_PORTAL)
        params["portal"] = ",".join(rng.sample(slugs, rng.randint(1, 2)))
    if rng.random() < chance * 0.6:
        params["updated_since"] = Since(rng.choice((0.1, 0.4, 0.7, 0.95)))
    if rng.random() < chance * 0.4:
        params["payable"] = rng.choice(("true", "false"))
    roll = rng.random()
    if roll < chance * 0.5:
        params["has_price"] = rng.choice(("true", "false"))
    elif roll < chance:
        params["price_currency"] = rng.choice(("EUR", "HOUR"))
        low = rng.randint(0, 10000) / 100
        if rng.random() < 0.7:
            params["price_min"] = f"{low:.2f}"
        if rng.random() < 0.7 or "price_min" not in params:
            params["price_max"] = f"{low + rng.randint(0, 15000) / 100:.2f}"
    return params


def _viewer(rng: random.Random) -> str | None:
    return rng.choices((None, "alpha", "beta"), weights=(70, 20, 10))[0]


def _limits(rng: random.Random) -> tuple[int, ...]:
    return rng.choice(((20,), (7, 50), (100,), (1, 13, 60), (33,)))


def _radius_cases(rng: random.Random) -> list[Case]:
    cases = []
    for number in range(30):
        kind = ("town", "town", "antimeridian", "pole", "world")[number % 5]
        if kind == "town":
            town = rng.choice(sorted(TOWNS))
            centre = destination(TOWNS[town], rng.uniform(0, 360), rng.uniform(0, 20))
            radius = rng.uniform(1, 40)
        elif kind == "antimeridian":
            centre = Point(
                ANTIMERIDIAN.lat + rng.uniform(-0.4, 0.4),
                rng.choice((179.9, -179.9, 180.0, -180.0, 179.5)),
            )
            radius = rng.uniform(5, 150)
        elif kind == "pole":
            centre = Point(rng.choice((90.0, -90.0, 88.0, -87.5)), rng.uniform(-180, 180))
            radius = rng.uniform(50, 1000)
        else:
            centre = Point(math.degrees(math.asin(rng.uniform(-1, 1))), rng.uniform(-180, 180))
            radius = rng.uniform(100, 1000)
        params = {
            "lat": round(centre.lat, 5),
            "lon": round(centre.lon, 5),
            "radius_km": round(radius, 3),
        }
        sort = rng.choice((None, None, "distance", "recent"))
        if sort:
            params["sort"] = sort
        params |= _filters(rng, chance=0.2)
        cases.append(Case(f"radius-{number:02d}-{kind}", params, _viewer(rng), _limits(rng)))
    return cases


def _random_box(rng: random.Random, kind: str) -> str:
    if kind == "town":
        centre = TOWNS[rng.choice(sorted(TOWNS))]
        dlat, dlon = rng.uniform(0.03, 0.3), rng.uniform(0.05, 0.5)
        box = (centre.lon - dlon, centre.lat - dlat, centre.lon + dlon, centre.lat + dlat)
    elif kind == "antimeridian":
        box = rng.choice(
            (
                (rng.uniform(179.2, 179.9), -17.4, rng.uniform(-179.9, -179.2), -16.2),  # crossing
                (179.5, -17.5, 180.0, -16.0),  # up to the antimeridian from the west
                (-180.0, -17.5, -179.5, -16.0),  # and from the east
                (rng.uniform(170, 179.9), -20.0, rng.uniform(-180, -170), -10.0),
            )
        )
    elif kind == "pole":
        south = rng.uniform(84.0, 88.0)
        box = rng.choice(
            (
                (-180.0, south, 180.0, 90.0),
                (rng.uniform(-180, 0), south, rng.uniform(0, 180), 90.0),
                (rng.uniform(90, 180), south, rng.uniform(-180, -90), 90.0),  # crossing, polar
                (-180.0, -90.0, 180.0, -south),
                (rng.uniform(-180, 0), -90.0, rng.uniform(0, 180), -south),
            )
        )
    elif kind == "world":
        box = (-180.0, -90.0, 180.0, 90.0)
    else:
        south = rng.uniform(-80, 60)
        west = rng.uniform(-180, 170)
        box = (west, south, min(180.0, west + rng.uniform(5, 120)), south + rng.uniform(5, 40))
    return ",".join(f"{value:.6f}".rstrip("0").rstrip(".") for value in box)


def _bbox_cases(rng: random.Random) -> list[Case]:
    cases = []
    kinds = ("town", "town", "antimeridian", "antimeridian", "pole", "pole", "random", "world")
    for number in range(26):
        kind = kinds[number % len(kinds)]
        params: dict = {"bbox": _random_box(rng, kind)}
        if rng.random() < 0.4:  # a point too: nearest first within the box
            _, south, _, north = map(float, params["bbox"].split(","))
            params |= {
                "lat": round((south + north) / 2, 4),
                "lon": round(rng.uniform(-180, 180), 4),
            }
            if rng.random() < 0.3:
                params["sort"] = "recent"
        params |= _filters(rng, chance=0.2)
        cases.append(Case(f"bbox-{number:02d}-{kind}", params, _viewer(rng), _limits(rng)))
    return cases


def _nearest_cases(rng: random.Random) -> list[Case]:
    cases = []
    for number in range(8):
        _, point = _random_point(rng)
        params = {"lat": round(point.lat, 4), "lon": round(point.lon, 4)}
        if number % 2:
            params["sort"] = "distance"
        params |= _filters(rng, chance=0.15)
        cases.append(
            Case(
                f"nearest-{number:02d}", params, _viewer(rng), rng.choice(((50,), (100,), (9, 100)))
            )
        )
    return cases


def _filter_cases(rng: random.Random) -> list[Case]:
    cases = []
    for number in range(24):
        params = _filters(rng, chance=0.45)
        if number % 4 == 0:
            params["sort"] = "recent"
        cases.append(Case(f"filters-{number:02d}", params, _viewer(rng), _limits(rng)))
    return cases


def _facet_cases(rng: random.Random) -> list[Case]:
    cases = []
    for number in range(12):
        facets = ["category", "kind", "currency", "portal"]
        if number % 3:
            facets = rng.sample(facets, rng.randint(1, 4))
        params: dict = {"facets": ",".join(facets)}
        if number % 3 == 1:
            params["bbox"] = _random_box(rng, rng.choice(("town", "antimeridian", "pole", "world")))
        params |= _filters(rng, chance=0.3)
        cases.append(
            Case(f"facets-{number:02d}", params, _viewer(rng), rng.choice(((1, 100), (100,))))
        )
    return cases


QUERY_RNG = random.Random(SEED + 1)
RADIUS_CASES = _radius_cases(QUERY_RNG)
BBOX_CASES = _bbox_cases(QUERY_RNG)
NEAREST_CASES = _nearest_cases(QUERY_RNG)
FILTER_CASES = _filter_cases(QUERY_RNG)
FACET_CASES = _facet_cases(QUERY_RNG)


def assert_matches_brute_force(searcher, dataset: Dataset, case: Case) -> tuple[list, Expected]:
    params = dataset.resolve(case.params)
    hits, _ = searcher.search_all(
        params, headers=dataset.headers(case.viewer), limits=list(case.limits)
    )
    expected = brute_force(dataset, params, case.viewer)
    got = [hit["id"] for hit in hits]
    assert len(got) == len(set(got)), "paging repeated a hit"
    assert [i for i in got if i not in expected.borderline] == [
        i for i in expected.ids if i not in expected.borderline
    ]
    for hit in hits:
        check_hit(dataset, hit, expected, has_point="lat" in params)
    return hits, expected


# --- the contract ------------------------------------------------------------------------


def test_the_dataset_covers_what_the_contract_is_about(dataset):
    """Not a search test: a guard that the generated data still exercise every rule."""
    ads = list(dataset.ads.values())
    searchable = [ad for ad in ads if ad.searchable]
    located = [ad.location for ad in searchable if ad.location is not None]
    assert len(searchable) > 200
    assert {ad.privacy for ad in searchable} == set(Privacy)
    assert any(ad.portal_only for ad in searchable)
    assert any(abs(point.lon) > 179.5 and point.lon > 0 for point in located)
    assert any(abs(point.lon) > 179.5 and point.lon < 0 for point in located)
    assert sum(point.lat > 85 for point in located) >= 5
    assert sum(point.lat < -85 for point in located) >= 5
    # On the meridian itself, stored as 180 (ON_ANTIMERIDIAN sends both spellings).
    assert 180.0 in {point.lon for point in located}
    assert {lon for _, lon in ON_ANTIMERIDIAN.values()} == {180.0, -180.0}
    assert len(dataset.expired) >= 6 and len(dataset.deleted) >= 6 and len(dataset.suspended) >= 30
    assert len(dataset.update_times) >= 10
    assert sum(ad.payable for ad in searchable) >= 30
    # Unpayable for want of a ledger, though the ad names an account.
    assert any(ad.ledger_account and not ad.payable for ad in searchable)
    # Snapped ads share cell centres: ties that only the id breaks in distance order.
    assert len(located) > len(set(located))


@pytest.mark.parametrize("case", RADIUS_CASES, ids=str)
def test_radius_search_matches_brute_force(searcher, dataset, case):
    assert_matches_brute_force(searcher, dataset, case)


@pytest.mark.parametrize("case", BBOX_CASES, ids=str)
def test_bbox_search_matches_brute_force(searcher, dataset, case):
    assert_matches_brute_force(searcher, dataset, case)


@pytest.mark.parametrize("case", NEAREST_CASES, ids=str)
def test_nearest_first_worldwide_matches_brute_force(searcher, dataset, case):
    assert_matches_brute_force(searcher, dataset, case)


@pytest.mark.parametrize("case", FILTER_CASES, ids=str)
def test_filtered_search_without_a_place_matches_brute_force(searcher, dataset, case):
    assert_matches_brute_force(searcher, dataset, case)


@pytest.mark.parametrize("case", FACET_CASES, ids=str)
def test_facets_count_the_whole_result_set(searcher, dataset, case):
    params = dataset.resolve(case.params)
    _, bodies = searcher.search_all(
        params, headers=dataset.headers(case.viewer), limits=list(case.limits)
    )
    expected = brute_force(dataset, params, case.viewer)
    wanted = brute_force_facets(dataset, expected.ids, params["facets"].split(","))
    for body in bodies:
        assert body["facets"] == wanted


@pytest.mark.parametrize(
    "bbox",
    [
        pytest.param("-180,-17.5,-179.5,-16", id="from-the-east"),
        pytest.param("179.5,-17.5,180,-16", id="from-the-west"),
        pytest.param("179.5,-17.5,-179.5,-16", id="across"),
        pytest.param("170,-20,-180,-10", id="across-ending-on-it"),
        pytest.param("180,-20,-170,-10", id="across-starting-on-it"),
    ],
)
def test_a_box_touching_the_antimeridian_finds_ads_on_it_under_either_spelling(
    searcher, dataset, bbox
):
    assert set(dataset.antimeridian_ads.values()) <= set(_found(searcher, {"bbox": bbox}))


@pytest.mark.parametrize("key", ON_ANTIMERIDIAN)
@pytest.mark.parametrize("lon", ["180", "-180"])
@pytest.mark.parametrize("sort", ["distance", "recent"])
def test_a_radius_search_on_the_antimeridian_finds_its_ads_under_either_spelling(
    searcher, dataset, key, lon, sort
):
    # An ad sent at one spelling and searched for at the other failed PostGIS's
    # nearest-first scan: 500 "index returned tuples in wrong order".
    lat, _ = ON_ANTIMERIDIAN[key]
    hits, _ = searcher.search_all(
        {"lat": lat, "lon": lon, "radius_km": 1, "sort": sort, "limit": 100}
    )
    assert [(hit["id"], hit["distance_km"]) for hit in hits] == [
        (dataset.antimeridian_ads[key], 0.0)
    ]


def test_an_ad_sent_on_the_antimeridian_at_minus_180_is_shown_at_180(searcher, dataset):
    (hit,) = searcher.search_all({"lat": -16.9, "lon": 180, "radius_km": 1, "limit": 100})[0]
    assert hit["location"] == {"lat": -16.9, "lon": 180.0}


def test_a_box_short_of_the_antimeridian_leaves_ads_on_it_out(searcher, dataset):
    found = set(_found(searcher, {"bbox": "-179.9,-17.5,179.9,-16"}))
    assert found and not set(dataset.antimeridian_ads.values()) & found


# --- visibility ----------------------------------------------------------------------------


def _everything(searcher, headers: dict) -> set[str]:
    hits, _ = searcher.search_all({"limit": 100}, headers=headers)
    return {hit["id"] for hit in hits}


def test_portal_only_ads_are_found_with_their_portals_key_only(searcher, dataset):
    alpha_only = {
        ad.id
        for ad in dataset.ads.values()
        if ad.portal_only and ad.portal == "alpha" and ad.searchable
    }
    assert alpha_only
    assert not alpha_only & _everything(searcher, {})
    assert not alpha_only & _everything(searcher, dataset.headers("beta"))
    assert alpha_only <= _everything(searcher, dataset.headers("alpha"))


@pytest.mark.parametrize("viewer", [None, "alpha", "beta", "words"])
def test_expired_deleted_and_suspended_portals_ads_are_never_found(searcher, dataset, viewer):
    gone = dataset.expired | dataset.deleted | dataset.suspended
    found = _everything(searcher, dataset.headers(viewer))
    assert found and not found & gone
    in_place, _ = searcher.search_all(
        {"bbox": "-180,-90,180,90", "limit": 100}, headers=dataset.headers(viewer)
    )
    assert not {hit["id"] for hit in in_place} & gone


def test_a_suspended_portals_ads_are_not_found_even_by_portal_slug(searcher, dataset):
    hits, _ = searcher.search_all({"portal": SUSPENDED_PORTAL})
    assert hits == []


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(f"Bearer {generate_key()}", id="unknown-key"),
        pytest.param("Bearer not-a-key", id="malformed-key"),
        pytest.param("Bearer ", id="empty-key"),
        pytest.param("Basic YWxhZGRpbjpvcGVuc2VzYW1l", id="not-bearer"),
    ],
)
def test_a_search_with_an_invalid_key_is_refused_not_anonymous(searcher, authorization):
    response = searcher.get({"q": "bread"}, headers={"Authorization": authorization})
    assert response.status_code == 401, response.json
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_search_with_a_suspended_portals_key_is_refused(searcher, dataset):
    response = searcher.get({}, headers=dataset.headers(SUSPENDED_PORTAL))
    assert response.status_code == 403, response.json


# --- text ----------------------------------------------------------------------------------


def _found(searcher, params: dict) -> list[str]:
    hits, _ = searcher.search_all(params | {"limit": 100})
    return [hit["id"] for hit in hits]


@pytest.mark.parametrize("q", ["velo", "Vélo", "VELO", "vÉlo", "VÉLO"])
def test_words_match_regardless_of_accents_and_case(searcher, dataset, q):
    assert dataset.text_ads["velo"] in _found(searcher, {"q": q})


@pytest.mark.parametrize("q", ["garden", "Garden", "gard"])
def test_words_match_by_prefix(searcher, dataset, q):
    assert dataset.text_ads["gardening"] in _found(searcher, {"q": q})


def test_words_match_by_stem_in_the_asked_language(searcher, dataset):
    found = _found(searcher, {"q": "gardens", "language": "en"})
    assert dataset.text_ads["garden"] in found
    assert dataset.text_ads["gardening"] in found  # english stems both to "garden"


@pytest.mark.parametrize("q", ["bicyle", "bicylce", "bicycel", "bicycke", "bicyccle"])
def test_a_small_typo_in_a_title_word_is_forgiven(searcher, dataset, q):
    assert dataset.text_ads["bicycle"] in _found(searcher, {"q": q})


@pytest.mark.parametrize(
    ("q", "language", "key"),
    [
        ("cuisine", None, "french"),
        ("vegetarienne", None, "french"),
        ("cuisines", "fr", "french"),  # French stemming
        ("bücher", None, "german"),
        ("Bucher", None, "german"),
        ("gebrauchte bücher", "de", "german"),
        ("piano lessons", None, "english"),
        ("lesson", "en", "english"),  # English stemming
    ],
)
def test_ads_in_each_language_are_found(searcher, dataset, q, language, key):
    params = {"q": q} | ({"language": language} if language else {})
    assert dataset.text_ads[key] in _found(searcher, params)


@pytest.mark.parametrize("q", ["αρχάριους", "ΑΡΧΆΡΙΟΥΣ", "Αρχάριους", "αρχαριους μαθητες"])
def test_a_greek_word_ending_in_sigma_is_found_whatever_the_case(searcher, dataset, q):
    found = _found(searcher, {"q": q})
    assert dataset.text_ads["greek"] in found
    assert dataset.text_ads["greek-capitals"] in found


@pytest.mark.parametrize("tags", ["κηπος", "ΚΗΠΟΣ", "Κηπος"])
def test_a_greek_tag_ending_in_sigma_is_found_whatever_the_case(searcher, dataset, tags):
    # PostgreSQL's lower() makes the capital sigma the medial one (U+03C3), where lower
    # case ends a word with the final one (U+03C2): the tags were two to it (one to
    # Meilisearch, which lowers a word's last sigma as Python does).
    assert sorted(_found(searcher, {"tags": tags})) == sorted(
        [dataset.text_ads["greek"], dataset.text_ads["greek-capitals"]]
    )


@pytest.mark.parametrize(
    ("q", "key"),
    [
        ("हिन्दी", "hindi"),
        ("हिन्दी पुस्तकें", "hindi"),
        ("दरवाज़ा", "hindi-other"),
        ("தமிழ்", "tamil"),
        ("தமிழ் புத்தகங்கள்", "tamil"),
        ("ve\u0301lo", "velo"),  # decomposed: v, e, a combining acute, l, o
    ],
)
def test_a_word_with_combining_marks_finds_its_ad_alone(searcher, dataset, q, key):
    # Cut at their marks, the words were letters: हिन्दी looked for words starting with
    # ह, न and द, which found the other Hindi ad and not this one; தமிழ் found nothing.
    assert _found(searcher, {"q": q}) == [dataset.text_ads[key]]


@pytest.mark.parametrize(
    ("q", "key"),
    [
        ("книги", "russian"),
        ("старые книги", "russian"),
        ("βιβλία", "greek-body"),
        ("ΒΙΒΛΙΑ", "greek-body"),
        ("पढ़ने", "hindi"),
    ],
)
def test_a_body_word_in_another_script_is_found_as_written(searcher, dataset, q, key):
    # Bodies are indexed stemmed in their ad's language, and a query naming none was
    # stemmed in the default languages' only (Latin script): книги, written as the ad
    # writes it, found nothing but in titles and tags.
    assert _found(searcher, {"q": q}) == [dataset.text_ads[key]]


def test_words_of_one_ad_do_not_find_the_others(searcher, dataset):
    assert _found(searcher, {"q": "sourdough"}) == [
        dataset.text_ads["sourdough-title"],
        dataset.text_ads["sourdough-body"],
    ]


def test_relevance_puts_a_title_match_before_a_body_only_match(searcher, dataset):
    found = _found(searcher, {"q": "sourdough", "sort": "relevance"})
    title, body = dataset.text_ads["sourdough-title"], dataset.text_ads["sourdough-body"]
    assert found.index(title) < found.index(body)


@pytest.mark.parametrize("q", ["books", "organic", "fresh"])
def test_relevance_paging_returns_every_match_exactly_once(searcher, dataset, q):
    one_page = searcher.search({"q": q, "limit": 100})
    assert one_page["next_cursor"] is None, "the test needs fewer than 100 matches"
    paged, bodies = searcher.search_all({"q": q}, limits=[3, 1, 7])
    assert len(bodies) > 3
    assert [hit["id"] for hit in paged] == [hit["id"] for hit in one_page["hits"]]
    # Every searchable public ad with all the words in its title or tags is among them.
    words = q.split()
    surely = {
        ad.id
        for ad in dataset.ads.values()
        if ad.searchable
        and not ad.portal_only
        and all(
            word in ad.title.casefold().split() or word in {t.casefold() for t in ad.tags}
            for word in words
        )
    }
    assert surely and surely <= {hit["id"] for hit in paged}
