"""Search speed (issue 4, "Speed"): GET /v1/search over 100,000 and then 1,000,000
realistic ads, each query measured three ways on the same database:

  API      our API under gunicorn (bench/common.gunicorn), one client, keep-alive;
  SQL      the exact statements the search engine sends (captured from it), run straight
           through psycopg on a connection set up like the engine's
           (plan_cache_mode=force_custom_plan), and again with psycopg's defaults alone
           (prepared after 5 executions, PostgreSQL free to switch to a generic plan);
  minimal  bench/minimal_app.py under gunicorn with as many workers: one Flask route that
           runs the same statements on a per-worker psycopg connection and answers
           orjson of the rows, the floor for any Python API on this machine.

    .venv/bin/python bench/search.py [--sizes 100000,1000000] [--requests 200]
        [--budget 20] [--duration 8] [--clients 4] [--turns 4] [--workers N] [--rounds 2]
        [--explain] [--keep] [--growth communities|density] [--arrival batches|random]

The directory grows by communities: the ads of the first size live around 53 real cities
and their towns; each larger size adds as many copies of those communities, placed elsewhere
on Earth, as it adds ads (900,000 more ads: 9 copies), so a town is as dense at 1M as at
100k, and the queries of a size go to the towns that have ads by then. `--growth density`
instead puts every ad in the first towns (10 times denser at 1M).

Ads are written with COPY as portals send them, in batches of up to 1,000 ads of one
portal, the batches of all portals interleaved at random (`--arrival random`: every ad at
random, the worst case for heap locality); the search indexes are dropped during a load
and rebuilt after it, as a bulk load would, then VACUUM ANALYZE. Each query's variants
(a different town, point, category, currency and words each request) are the same for
all three ways.

Each size has a database of its own (the smaller ones copied from the set-up one and
loaded with the same first ads) and an API and a minimal server of its own, all running
at once. Each query is measured at every size in turn, seconds apart, smallest first and
then largest first, `--rounds` times: this machine's speed drifts by a quarter or more
within minutes, which a measurement of one size after the other took for growth. The
summary gives the mean of the rounds, and the growth round by round. The
requests-per-second runs of the API and of the minimal endpoint take turns too
(`--turns`, 2 s each by default), for the same reason. During those runs the bench also
reads the CPU each part used (the server's gunicorn processes, PostgreSQL, the API's Redis,
the clients in this process, the rest of the machine), per request: the machine is
saturated, so the ratio of throughputs is the inverse ratio of those sums, and their
difference by part says where the API's extra cost lies. Takes about 10 minutes on 2
cores. Prints figures; asserts nothing."""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import math
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import orjson
import psycopg
from sqlalchemy import event, text

from bench.common import CpuMeter, children, database, gunicorn, gunicorn_app, postmaster_pid
from directory import build_wiring, create_app
from directory.__main__ import DEFAULT_WORKERS
from directory.db import libpq_url, unit_of_work
from directory.demo import CATALOGUE, PHRASES
from directory.geo import Point, Privacy, publishable_point
from directory.services.currencies import register_currency
from directory.services.portals import create_portal
from directory.settings import Settings

# --- where the ads are -----------------------------------------------------------------
# Anchor cities (name, lat, lon, language of most ads, national currency or None, weight);
# each gets a portal and a handful of satellite towns 10 to 150 km away.
ANCHORS = [
    ("Paris", 48.8566, 2.3522, "fr", "EUR", 6), ("Lyon", 45.7640, 4.8357, "fr", "EUR", 3),
    ("Marseille", 43.2965, 5.3698, "fr", "EUR", 2), ("Toulouse", 43.6047, 1.4442, "fr", "EUR", 2),
    ("Nantes", 47.2184, -1.5536, "fr", "EUR", 2), ("Lille", 50.6292, 3.0573, "fr", "EUR", 1.5),
    ("Brussels", 50.8503, 4.3517, "fr", "EUR", 2), ("Geneva", 46.2044, 6.1432, "fr", "CHF", 1),
    ("Montreal", 45.5019, -73.5674, "fr", "CAD", 2), ("Dakar", 14.7167, -17.4677, "fr", None, 1),
    ("Berlin", 52.5200, 13.4050, "de", "EUR", 5), ("Hamburg", 53.5511, 9.9937, "de", "EUR", 2),
    ("Munich", 48.1351, 11.5820, "de", "EUR", 2), ("Cologne", 50.9375, 6.9603, "de", "EUR", 2),
    ("Freiburg", 47.9990, 7.8420, "de", "EUR", 1.5), ("Leipzig", 51.3397, 12.3731, "de", "EUR", 1),
    ("Vienna", 48.2082, 16.3738, "de", "EUR", 2), ("Zurich", 47.3769, 8.5417, "de", "CHF", 1.5),
    ("Madrid", 40.4168, -3.7038, "es", "EUR", 4), ("Barcelona", 41.3874, 2.1686, "es", "EUR", 3),
    ("Valencia", 39.4699, -0.3763, "es", "EUR", 1.5), ("Seville", 37.3891, -5.9845, "es", "EUR", 1),
    ("Bilbao", 43.2630, -2.9350, "es", "EUR", 1), ("Buenos Aires", -34.6037, -58.3816, "es", "ARS", 3),
    ("Mexico City", 19.4326, -99.1332, "es", "MXN", 3), ("Bogota", 4.7110, -74.0721, "es", "COP", 1.5),
    ("Santiago", -33.4489, -70.6693, "es", "CLP", 1.5), ("Lima", -12.0464, -77.0428, "es", "PEN", 1),
    ("Montevideo", -34.9011, -56.1645, "es", "UYU", 1), ("London", 51.5072, -0.1276, "en", "GBP", 6),
    ("Bristol", 51.4545, -2.5879, "en", "GBP", 2), ("Manchester", 53.4808, -2.2426, "en", "GBP", 2),
    ("Edinburgh", 55.9533, -3.1883, "en", "GBP", 1), ("Dublin", 53.3498, -6.2603, "en", "EUR", 1.5),
    ("New York", 40.7128, -74.0060, "en", "USD", 4), ("Portland", 45.5152, -122.6784, "en", "USD", 2),
    ("San Francisco", 37.7749, -122.4194, "en", "USD", 2), ("Chicago", 41.8781, -87.6298, "en", "USD", 2),
    ("Austin", 30.2672, -97.7431, "en", "USD", 1), ("Toronto", 43.6532, -79.3832, "en", "CAD", 2),
    ("Vancouver", 49.2827, -123.1207, "en", "CAD", 1.5), ("Melbourne", -37.8136, 144.9631, "en", "AUD", 2),
    ("Sydney", -33.8688, 151.2093, "en", "AUD", 2), ("Auckland", -36.8485, 174.7633, "en", "NZD", 1),
    ("Cape Town", -33.9249, 18.4241, "en", "ZAR", 1.5), ("Nairobi", -1.2921, 36.8219, "en", "KES", 1),
    ("Lagos", 6.5244, 3.3792, "en", "NGN", 1), ("Mumbai", 19.0760, 72.8777, "en", "INR", 1),
    ("Tokyo", 35.6762, 139.6503, "en", "JPY", 1), ("Amsterdam", 52.3676, 4.9041, "en", "EUR", 2),
    ("Copenhagen", 55.6761, 12.5683, "en", "DKK", 1), ("Suva", -18.1248, 178.4501, "en", "FJD", 0.3),
]  # fmt: skip
SATELLITES = (4, 8)  # per anchor
LANGUAGES = ("en", "fr", "de", "es")
PORTAL_KINDS = {"en": "lets", "fr": "sel", "de": "tauschring", "es": "banco-de-tiempo"}
SCATTERED_SHARE = 0.05  # anywhere on Earth, in one of the worldwide portals
FOREIGN_LANGUAGE_SHARE = 0.08
PRIVACY_SHARES = (("hidden", 0.10), ("approximate", 0.60), ("exact", 0.15), ("area", 0.15))
OFFER_SHARE = 0.65
PORTAL_ONLY_SHARE = 0.05
PRICED_OFFER_SHARE = 0.3
GROUP_FILED_SHARE = 0.03  # ads filed under a group code rather than a leaf
UNCATALOGUED_SHARE = 0.1  # ads in leaf categories the demo catalogue has no words for
COMMUNITY_CURRENCY_EVERY = 3  # every third portal runs its own ledger currency
KM_PER_DEGREE = 111.32
PRICE_UNITS = ("once", "item", "hour", "day", "week", "month", "kg")
COPY_CHUNK = 200_000
COLUMNS = (
    "id, portal_id, external_id, kind, title, body, category, tags, location, privacy, "
    "visibility, currencies, price_amount, price_currency, price_unit, language, images, "
    "expires_at, member, ledger_account, content_hash, created_at, updated_at"
)


@dataclass
class Town:
    name: str
    lat: float
    lon: float
    language: str
    currency: str | None
    weight: float
    sigma_km: float
    portal: int  # index into World.portals
    generation: int = 0  # the load (size step) whose ads live here: see make_world


@dataclass
class PortalSpec:
    slug: str
    name: str
    currencies: tuple[str, ...]  # national first, then a community code if any
    community: str | None = None
    id: int = 0


@dataclass
class World:
    towns: list[Town]
    portals: list[PortalSpec]
    worldwide: list[int]  # portals of the scattered ads
    leaves: list[str]
    groups: dict[str, list[str]]  # group code -> its leaves
    category_names: dict[str, str]
    rng_seed: int
    words: dict[str, list[str]] = field(default_factory=dict)  # language -> query words


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def make_world(
    rng: np.random.Generator,
    categories: list[tuple[str, str | None, str]],
    replicas: list[int],
) -> World:
    """The anchor cities and their towns (generation 0), then, for each later load,
    `replicas[generation - 1]` copies of every anchor's community (same language,
    currencies and size) placed somewhere else on Earth: the directory grows by more
    communities joining, so each town keeps the same density of ads."""
    portals: list[PortalSpec] = []
    towns: list[Town] = []
    anchors = [(0, *anchor) for anchor in ANCHORS]
    low, high = math.sin(math.radians(-45)), math.sin(math.radians(62))
    for generation, copies in enumerate(replicas, start=1):
        for copy in range(copies):
            for name, _lat, _lon, language, currency, weight in ANCHORS:
                lat = math.degrees(math.asin(float(rng.uniform(low, high))))
                lon = float(rng.uniform(-180, 180))
                place = f"{name} {generation}-{copy + 1}"
                anchors.append((generation, place, lat, lon, language, currency, weight))
    for index, (generation, name, lat, lon, language, currency, weight) in enumerate(anchors):
        slug = f"{PORTAL_KINDS[language]}-{_slug(name)}"
        community = None
        if index % COMMUNITY_CURRENCY_EVERY == 0:
            community = f"{slug}:{''.join(c for c in name.upper() if c.isalpha())[:8]}"
        national = (currency,) if currency else ()
        portals.append(
            PortalSpec(slug, f"{name} exchange", national + ((community,) if community else ()))
        )
        portals[-1].community = community
        sigma = 4.0 + 2.5 * weight
        towns.append(Town(name, lat, lon, language, currency, weight, sigma, index, generation))
        for number in range(int(rng.integers(*SATELLITES, endpoint=True))):
            distance_km = float(rng.uniform(10, 150))
            bearing = float(rng.uniform(0, 2 * math.pi))
            town_lat = lat + distance_km * math.cos(bearing) / KM_PER_DEGREE
            town_lon = lon + distance_km * math.sin(bearing) / (
                KM_PER_DEGREE * math.cos(math.radians(lat))
            )
            town_lon = (town_lon + 180) % 360 - 180
            towns.append(
                Town(
                    f"{name} {number + 1}",
                    town_lat,
                    town_lon,
                    language,
                    currency,
                    weight * float(rng.lognormal(-1.6, 0.6)),
                    float(rng.uniform(3, 12)),
                    index,
                    generation,
                )
            )
    worldwide = []
    for slug in ("worldwide-gifts", "nomad-exchange", "global-timebank"):
        worldwide.append(len(portals))
        portals.append(PortalSpec(slug, slug.replace("-", " ").title(), ()))
    groups: dict[str, list[str]] = {}
    names = {}
    for code, parent, name in categories:
        names[code] = name
        if parent is not None:
            groups.setdefault(parent, []).append(code)
    leaves = sorted(code for code, parent, _ in categories if parent is not None)
    world = World(towns, portals, worldwide, leaves, groups, names, 0)
    world.words = {language: query_words(language) for language in LANGUAGES}
    return world


STOP = {
    "with", "from", "your", "pour", "dans", "avec", "eine", "einen", "einer", "mit", "und",
    "para", "con", "los", "las", "une", "des", "del", "the", "and", "for", "aus", "dem",
    "zum", "zur", "vom", "der", "die", "das", "sans", "nach",
}  # fmt: skip


def query_words(language: str) -> list[str]:
    """Words people would type: those of the catalogue's subjects in this language."""
    found = []
    for texts in CATALOGUE.values():
        entry = texts.get(language)
        if entry is None:
            continue
        for subject in entry.subjects:
            for word in subject.replace("'", " ").replace("(", " ").replace(")", " ").split():
                word = word.strip(".,").lower()
                if len(word) >= 4 and word not in STOP and word.isalpha():
                    found.append(word)
    return sorted(set(found))


# --- generating ads ----------------------------------------------------------------------


def _choices(rng: np.random.Generator, shares, count: int) -> np.ndarray:
    values, weights = zip(*shares, strict=True)
    weights = np.asarray(weights, dtype=float)
    return rng.choice(len(values), size=count, p=weights / weights.sum())


def generate_rows(world: World, towns: list[Town], start: int, count: int, seed: int, arrival: str):
    """`count` ads (as tuples in COLUMNS order) in `towns` (and scattered), numbered
    from `start`, in chunks, in the order of `arrival` (see in_portal_batches)."""
    rng = np.random.default_rng([seed, start])
    now = datetime.now(UTC)
    town_weights = np.array([town.weight for town in towns])
    town_weights /= town_weights.sum()
    catalogued = {
        language: sorted(code for code, texts in CATALOGUE.items() if language in texts)
        for language in LANGUAGES
    }
    uncatalogued = [code for code in world.leaves if code not in CATALOGUE]
    privacy_names = [name for name, _ in PRIVACY_SHARES]
    for offset in range(0, count, COPY_CHUNK):
        n = min(COPY_CHUNK, count - offset)
        scattered = (rng.random(n) < SCATTERED_SHARE).tolist()
        town_index = rng.choice(len(towns), size=n, p=town_weights).tolist()
        north = rng.normal(size=n).tolist()
        east = rng.normal(size=n).tolist()
        anywhere_lat = np.degrees(np.arcsin(rng.uniform(-0.9, 0.9, size=n))).tolist()
        anywhere_lon = rng.uniform(-180, 180, size=n).tolist()
        privacy = _choices(rng, PRIVACY_SHARES, n).tolist()
        offers = (rng.random(n) < OFFER_SHARE).tolist()
        foreign = (rng.random(n) < FOREIGN_LANGUAGE_SHARE).tolist()
        other_language = rng.integers(0, len(LANGUAGES), size=n).tolist()
        portal_only = (rng.random(n) < PORTAL_ONLY_SHARE).tolist()
        priced = (rng.random(n) < PRICED_OFFER_SHARE).tolist()
        category_draw = rng.random(n).tolist()
        picks = rng.integers(0, 1 << 30, size=(n, 8)).tolist()
        amounts = rng.lognormal(2.5, 1.0, size=n).tolist()
        expires_days = rng.uniform(1, 300, size=n).tolist()
        age_days = rng.uniform(0, 365, size=n).tolist()
        members = rng.integers(1, 400_000, size=n).tolist()
        rows = []
        for i in range(n):
            number = start + offset + i
            pick = picks[i]
            if scattered[i]:
                portal = world.portals[world.worldwide[pick[0] % len(world.worldwide)]]
                language = LANGUAGES[other_language[i]]
                lat, lon = anywhere_lat[i], anywhere_lon[i]
                place = None
                national = None
            else:
                town = towns[town_index[i]]
                portal = world.portals[town.portal]
                language = LANGUAGES[other_language[i]] if foreign[i] else town.language
                lat = town.lat + north[i] * town.sigma_km / KM_PER_DEGREE
                lon = town.lon + east[i] * town.sigma_km / (
                    KM_PER_DEGREE * math.cos(math.radians(town.lat))
                )
                lat = max(-89.9, min(89.9, lat))
                lon = (lon + 180) % 360 - 180
                place = town.name.rsplit(" ", 1)[0] if town.name[-1].isdigit() else town.name
                national = town.currency
            privacy_name = privacy_names[privacy[i]]
            point = publishable_point(
                None if privacy_name == "hidden" else Point(lat, lon), Privacy(privacy_name)
            )
            # Category and words.
            if category_draw[i] < UNCATALOGUED_SHARE:
                category = uncatalogued[pick[1] % len(uncatalogued)]
            else:
                written = catalogued[language]
                category = written[pick[1] % len(written)]
            entry = CATALOGUE.get(category, {}).get(language)
            if entry is None:
                subjects = (world.category_names[category].lower(),)
                tags_pool = (category.split(".")[1],)
            else:
                subjects, tags_pool = entry.subjects, entry.tags
            if category_draw[i] > 1 - GROUP_FILED_SHARE:
                category = category.split(".")[0]
            subject = subjects[pick[2] % len(subjects)]
            phrases = PHRASES[language]
            offer = bool(offers[i])
            titles = phrases.offer_titles if offer else phrases.want_titles
            title = titles[pick[3] % len(titles)].format(
                subject=subject, Subject=subject[:1].upper() + subject[1:]
            )
            openings = phrases.offer_openings if offer else phrases.want_openings
            opening = openings[pick[4] % len(openings)].format(subject=subject)
            where_place = place or "town"
            if pick[5] % 2:
                where = phrases.goods_places[pick[5] % len(phrases.goods_places)]
                where = where.format(place=where_place)
            else:
                where = phrases.service_places[pick[5] % len(phrases.service_places)].format(
                    place=where_place, when=phrases.whens[pick[6] % len(phrases.whens)]
                )
            body = (
                f"{opening[:1].upper()}{opening[1:]} {where} "
                f"{phrases.closings[pick[6] % len(phrases.closings)]}"
            )
            tag_count = 1 + pick[7] % min(3, len(tags_pool))
            first = pick[7] % len(tags_pool)
            tags = [tags_pool[(first + k) % len(tags_pool)] for k in range(tag_count)]
            # Currencies: national, hours, gift, barter and ledger currencies.
            draw = pick[0] % 100
            community = portal.community
            if draw < 25 and national:
                currencies = [national]
            elif draw < 45 and national:
                currencies = [national, "HOUR"]
            elif draw < 65:
                currencies = ["HOUR"]
            elif draw < 80 and community:
                currencies = [community, "HOUR"] if draw < 72 else [community]
            elif draw < 92:
                currencies = ["GIFT"]
            else:
                currencies = ["BARTER"] if draw < 96 else ["HOUR", "GIFT"]
            price_amount = price_currency = price_unit = None
            payable = [code for code in currencies if code not in ("GIFT", "BARTER")]
            if offer and priced[i] and payable:
                price_currency = payable[0]
                price_amount = f"{amounts[i]:.2f}"
                price_unit = PRICE_UNITS[pick[3] % len(PRICE_UNITS)]
            updated = now - timedelta(days=age_days[i])
            rows.append(
                (
                    uuid.uuid4(), portal.id, f"ad-{number}", "offer" if offer else "want",
                    title, body, category, tags,
                    None if point is None else f"SRID=4326;POINT({point.lon} {point.lat})",
                    privacy_name, "portal" if portal_only[i] else "public", currencies,
                    price_amount, price_currency, price_unit, language, [],
                    now + timedelta(days=expires_days[i]), f"m-{members[i]}",
                    None, "0" * 32, updated, updated,
                )
            )  # fmt: skip
        if arrival == "batches":
            yield in_portal_batches(rows, rng)
        else:
            yield rows


PORTAL_BATCH = 1000  # ads per POST /v1/ads/batch, as portals send them
PORTAL_COLUMN = COLUMNS.split(", ").index("portal_id")


def in_portal_batches(rows: list[tuple], rng: np.random.Generator) -> list[tuple]:
    """The rows as portals send them: each portal's ads in batches of up to a thousand,
    the batches of all portals interleaved at random. A batch lands on neighbouring table
    pages, as it does in production; `--arrival random` spreads every ad at random
    instead, the worst case for a radius query (each ad on a page of its own)."""
    by_portal: dict[int, list[tuple]] = {}
    for row in rows:
        by_portal.setdefault(row[PORTAL_COLUMN], []).append(row)
    batches = [
        ads[start : start + PORTAL_BATCH]
        for ads in by_portal.values()
        for start in range(0, len(ads), PORTAL_BATCH)
    ]
    return [row for index in rng.permutation(len(batches)) for row in batches[index]]


# --- loading ---------------------------------------------------------------------------


def search_indexes(conn) -> list[tuple[str, str]]:
    """The indexes of ads that back no constraint: dropped during a load."""
    return conn.execute(
        "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.tablename = 'ads' "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname) "
        "ORDER BY i.indexname"
    ).fetchall()


def load(
    url: str, world: World, towns: list[Town], start: int, count: int, seed: int, arrival: str
) -> dict[str, float]:
    """COPY `count` ads on two connections, then rebuild the search indexes and VACUUM
    ANALYZE. Returns the time of each step."""
    timings = {}
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        indexes = search_indexes(conn)
        for name, _ in indexes:
            conn.execute(f"DROP INDEX {name}")
    started = time.perf_counter()
    chunks: queue.Queue = queue.Queue(maxsize=4)
    problems: list[BaseException] = []

    def writer() -> None:
        try:
            with psycopg.connect(libpq_url(url)) as conn:
                conn.execute("SET synchronous_commit = off")
                while (rows := chunks.get()) is not None:
                    with conn.cursor().copy(f"COPY ads ({COLUMNS}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
                    conn.commit()
        except BaseException as error:  # reported by the main thread
            problems.append(error)
            while chunks.get() is not None:
                pass

    writers = [threading.Thread(target=writer) for _ in range(2)]
    for thread in writers:
        thread.start()
    generate_s = 0.0
    mark = time.perf_counter()
    for rows in generate_rows(world, towns, start, count, seed, arrival):
        generate_s += time.perf_counter() - mark
        chunks.put(rows)
        mark = time.perf_counter()
    for _ in writers:
        chunks.put(None)
    for thread in writers:
        thread.join()
    if problems:
        raise problems[0]
    timings["copy"] = time.perf_counter() - started
    timings["generate (within copy)"] = generate_s

    started = time.perf_counter()
    pending: queue.Queue = queue.Queue()
    # Slowest first, so that the two connections finish together.
    order = ("search_words", "search_vector", "location_box", "location", "updated_at")
    for _name, definition in sorted(
        indexes,
        key=lambda item: next((i for i, part in enumerate(order) if part in item[0]), 9),
    ):
        pending.put(definition)

    def builder() -> None:
        try:
            with psycopg.connect(libpq_url(url), autocommit=True) as conn:
                conn.execute("SET maintenance_work_mem = '1GB'")
                while True:
                    try:
                        definition = pending.get_nowait()
                    except queue.Empty:
                        return
                    conn.execute(definition)
        except BaseException as error:
            problems.append(error)

    builders = [threading.Thread(target=builder) for _ in range(2)]
    for thread in builders:
        thread.start()
    for thread in builders:
        thread.join()
    if problems:
        raise problems[0]
    timings["index"] = time.perf_counter() - started
    started = time.perf_counter()
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE ads")
        conn.execute("VACUUM ANALYZE portals")
    timings["vacuum analyze"] = time.perf_counter() - started
    return timings


def set_up(url: str, rng: np.random.Generator, replicas: list[int]) -> World:
    settings = Settings(database_url=url)
    wiring = build_wiring(settings)
    with wiring.engine.connect() as connection:
        categories = [
            tuple(row)
            for row in connection.execute(
                text("SELECT code, parent_code, name FROM categories ORDER BY position")
            )
        ]
    world = make_world(rng, categories, replicas)
    with unit_of_work(wiring.session_factory) as session:
        for spec in world.portals:
            national = [code for code in spec.currencies if ":" not in code]
            portal, _ = create_portal(
                session,
                slug=spec.slug,
                name=spec.name,
                default_currencies=national or ["HOUR"],
            )
            spec.id = portal.id
            if spec.community:
                register_currency(
                    session,
                    portal_id=portal.id,
                    code=spec.community.split(":")[1],
                    name=f"{spec.name} credits",
                )
    wiring.close()
    return world


# --- the queries -------------------------------------------------------------------------

QUERIES = {
    "radius10+category": "10 km radius + category",
    "radius50+currency+q": "50 km radius + currency + q",
    "bbox+facets": "1°x1° bbox + 4 facets",
    "nearest20": "nearest 20, worldwide",
}


def make_variants(
    world: World, towns: list[Town], rng: np.random.Generator, count: int
) -> dict[str, list[str]]:
    """Query strings for each query: a different town of `towns` (mostly where the ads
    are), point, category, currency and words each time."""
    weights = np.array([town.weight for town in towns]) ** 0.7
    weights /= weights.sum()

    def town() -> Town:
        if rng.random() < 0.25:
            return towns[int(rng.integers(len(towns)))]
        return towns[int(rng.choice(len(towns), p=weights))]

    def near(place: Town, km: float) -> tuple[float, float]:
        lat = place.lat + float(rng.normal()) * km / KM_PER_DEGREE
        lon = place.lon + float(rng.normal()) * km / (KM_PER_DEGREE * math.cos(math.radians(lat)))
        return round(lat, 4), round((lon + 180) % 360 - 180, 4)

    def category() -> str:
        if rng.random() < 0.3:
            return str(rng.choice(sorted(world.groups)))
        return str(rng.choice(world.leaves))

    def currency(place: Town) -> str:
        community = world.portals[place.portal].community
        options = ["HOUR", "HOUR", "GIFT"]
        if place.currency:
            options += [place.currency, place.currency, f"{place.currency},HOUR"]
        if community:
            options += [community, f"{community},HOUR"]
        return str(rng.choice(options))

    def words(place: Town) -> str:
        language = place.language if rng.random() > 0.15 else str(rng.choice(LANGUAGES))
        vocabulary = world.words[language]
        picked = [str(rng.choice(vocabulary)) for _ in range(1 if rng.random() < 0.75 else 2)]
        if rng.random() < 0.1:  # a typo: two letters swapped
            word = picked[0]
            at = int(rng.integers(1, len(word) - 2))
            picked[0] = word[:at] + word[at + 1] + word[at] + word[at + 2 :]
        return " ".join(picked)

    variants: dict[str, list[str]] = {name: [] for name in QUERIES}
    for _ in range(count):
        place = town()
        lat, lon = near(place, 5)
        variants["radius10+category"].append(
            urlencode({"lat": lat, "lon": lon, "radius_km": 10, "category": category()})
        )
        place = town()
        lat, lon = near(place, 5)
        variants["radius50+currency+q"].append(
            urlencode(
                {
                    "lat": lat,
                    "lon": lon,
                    "radius_km": 50,
                    "currency": currency(place),
                    "q": words(place),
                }
            )
        )
        place = town()
        lat, lon = near(place, 10)
        box = [lon - 0.5, lat - 0.5, lon + 0.5, lat + 0.5]
        box = [max(-180, box[0]), max(-90, box[1]), min(180, box[2]), min(90, box[3])]
        variants["bbox+facets"].append(
            urlencode(
                {
                    "bbox": ",".join(f"{value:.4f}" for value in box),
                    "facets": "category,kind,currency,portal",
                }
            )
        )
        place = town()
        lat, lon = near(place, 20)
        variants["nearest20"].append(urlencode({"lat": lat, "lon": lon, "limit": 20}))
    return variants


Statements = list[tuple[str, dict]]


@dataclass
class Captured:
    """What the search engine sent for each variant of each query, and how its
    connections are set up (so that the raw runs and the minimal app match them)."""

    queries: dict[str, list[Statements]]
    settings: dict[str, str]  # set by the engine at connection time (pg_settings: client)
    autocommit: bool
    prepare_threshold: int | None

    def options(self, *, leave_out: tuple[str, ...] = ()) -> str:
        return " ".join(
            f"-c {name}={value}" for name, value in self.settings.items() if name not in leave_out
        )


def capture(url: str, variants: dict[str, list[str]]) -> Captured:
    """The statements the search engine sends for each variant, with their parameters,
    caught on the engine's connections (the app runs in this process, on Flask's test
    client, and answers each variant once)."""
    app = create_app(Settings.from_env(os.environ | {"DIRECTORY_DATABASE_URL": url}))
    search_db = app.extensions["directory"].search_db
    caught: list[tuple[str, dict]] = []
    connections: list = []

    class Recording(psycopg.Cursor):
        # The engine runs its statements on the psycopg connection itself, not through
        # SQLAlchemy's execute: caught on their way into psycopg.
        def execute(self, query, params=None, **kwargs):
            if " ads" in query:
                caught.append((query, dict(params or {})))
                connections.append(self.connection)
            return super().execute(query, params, **kwargs)

    @event.listens_for(search_db, "connect")
    def record(dbapi_connection, connection_record):
        dbapi_connection.cursor_factory = Recording

    client = app.test_client()
    queries: dict[str, list[Statements]] = {}
    for name, strings in variants.items():
        queries[name] = []
        for query in strings:
            caught.clear()
            response = client.get("/v1/search?" + query)
            if response.status_code != 200:
                raise SystemExit(
                    f"{name}: {query} answered {response.status_code}: {response.text}"
                )
            queries[name].append(list(caught))
    driver = connections[-1]
    with search_db.connect() as connection:
        settings = dict(
            connection.exec_driver_sql(
                "SELECT name, setting FROM pg_settings WHERE source = 'client' "
                "AND name NOT IN ('client_encoding', 'DateStyle', 'TimeZone', 'extra_float_digits')"
            ).all()
        )
    app.extensions["directory"].close()
    return Captured(queries, settings, driver.autocommit, driver.prepare_threshold)


# --- measuring ---------------------------------------------------------------------------


def percentiles(latencies: list[float]) -> tuple[float, float, float]:
    ordered = sorted(latencies)

    def at(share: float) -> float:
        return ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)] * 1000

    return at(0.5), at(0.95), at(0.99)


class Client:
    """One keep-alive HTTP client (gunicorn's sync workers close after each response;
    http.client then reconnects by itself)."""

    def __init__(self, base_url: str):
        host, port = base_url.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=300)
        self.errors: Counter = Counter()

    def get(self, path: str) -> float:
        started = time.perf_counter()
        self.connection.request("GET", path)
        response = self.connection.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            self.errors[f"{response.status} {body[:200]!r}"] += 1
        return elapsed

    def close(self) -> None:
        self.connection.close()


@dataclass
class Budget:
    """How many runs a sequential measurement makes: `count`, unless `seconds` run out
    first (a slow query), but never fewer than `minimum`."""

    count: int
    seconds: float
    minimum: int

    def runs(self, items: list):
        started = time.perf_counter()
        for done, item in enumerate(items[: self.count]):
            if done >= self.minimum and time.perf_counter() - started > self.seconds:
                return
            yield item


def sequential(base_url: str, paths: list[str], budget: Budget) -> tuple[list[float], Counter]:
    client = Client(base_url)
    # Warm-up: every worker has its connections, caches and plans for this query.
    for path in Budget(20, 3, 3).runs(paths[::-1]):
        client.get(path)
    client.errors.clear()
    latencies = [client.get(path) for path in budget.runs(paths)]
    client.close()
    return latencies, client.errors


def concurrent(
    base_url: str, paths: list[str], clients: int, duration: float
) -> tuple[float, list[float], Counter]:
    """Requests per second with `clients` keep-alive clients for `duration` seconds
    (requests still running at the end are not counted)."""
    latencies: list[float] = []
    errors: Counter = Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)
    deadline = [0.0]

    def run(offset: int) -> None:
        client = Client(base_url)
        mine = []
        barrier.wait()
        index = offset
        while True:
            latency = client.get(paths[index % len(paths)])
            if time.perf_counter() > deadline[0]:
                break
            mine.append(latency)
            index += 1
        client.close()
        with lock:
            latencies.extend(mine)
            errors.update(client.errors)

    threads = [
        threading.Thread(target=run, args=(k * len(paths) // clients,)) for k in range(clients)
    ]
    for thread in threads:
        thread.start()
    deadline[0] = time.perf_counter() + duration
    barrier.wait()
    for thread in threads:
        thread.join()
    return len(latencies) / duration, latencies, errors


@dataclass
class Served:
    """A server under load: where it answers, what to ask it, and the processes whose CPU
    its requests cost (by name: the server, PostgreSQL, Redis, the clients)."""

    base_url: str
    paths: list[str]
    parts: dict[str, Callable[[], list[int]]]


@dataclass
class Loaded:
    """What `in_turns` measured of one server."""

    rps: float
    latencies: list[float]
    errors: Counter
    per_turn: list[int]  # requests answered in each turn
    cpu_ms: dict[str, float]  # CPU per request by part (and "other": the rest of the machine)


def in_turns(servers: list[Served], args) -> list[Loaded]:
    """`concurrent` for each server, `args.duration` seconds each in all, in `args.turns`
    turns (A B, B A, ...): measured one after the other, the machine's drift (a quarter
    within minutes) went into their ratio."""
    latencies: list[list[float]] = [[] for _ in servers]
    errors: list[Counter] = [Counter() for _ in servers]
    per_turn: list[list[int]] = [[] for _ in servers]
    cpu: list[Counter] = [Counter() for _ in servers]
    for turn in range(args.turns):
        order = list(enumerate(servers))
        for index, served in order if turn % 2 == 0 else order[::-1]:
            meter = CpuMeter(served.parts)
            _, turn_latencies, turn_errors = concurrent(
                served.base_url, served.paths, args.clients, args.duration / args.turns
            )
            cpu[index].update(meter.stop())
            latencies[index] += turn_latencies
            errors[index].update(turn_errors)
            per_turn[index].append(len(turn_latencies))
    return [
        Loaded(
            rps=len(measured) / args.duration,
            latencies=measured,
            errors=failed,
            per_turn=counts,
            cpu_ms={part: seconds / max(1, len(measured)) * 1000 for part, seconds in used.items()},
        )
        for measured, failed, counts, used in zip(latencies, errors, per_turn, cpu, strict=True)
    ]


# How the raw runs connect: (options to leave out of the engine's, prepare_threshold).
SQL_MODES = {
    # As the engine's connections (plan_cache_mode=force_custom_plan: PostgreSQL plans
    # each execution for its own values, even once psycopg has prepared the statement).
    "engine": ((), "engine"),
    # psycopg's and PostgreSQL's defaults: prepared from the 5th execution on, and after
    # 5 custom plans PostgreSQL may settle on one generic plan for all values.
    "default": (("plan_cache_mode",), 5),
    # Never prepared: planned each time for its own values (and parsed each time).
    "unprepared": (("plan_cache_mode",), None),
}
TRAP_RUNS = 50  # the psycopg-defaults run: enough executions for a generic plan to show


def raw_sql(
    url: str, captured: Captured, runs: list[Statements], mode: str, budget: Budget
) -> tuple[list[float], str, float]:
    """Each variant's statements (in one transaction unless the engine autocommits) on
    one fresh connection; returns the latencies, what became of the prepared statements
    and the mean number of hits per page."""
    leave_out, threshold = SQL_MODES[mode]
    if threshold == "engine":
        threshold = captured.prepare_threshold
    if mode == "default":
        budget = Budget(max(budget.count, TRAP_RUNS), budget.seconds, TRAP_RUNS)
    latencies, hits = [], []
    with psycopg.connect(
        libpq_url(url),
        options=captured.options(leave_out=leave_out),
        autocommit=captured.autocommit,
        prepare_threshold=threshold,
    ) as conn:
        for statements in budget.runs(runs):
            started = time.perf_counter()
            with conn.cursor() as cursor:
                for number, (statement, parameters) in enumerate(statements):
                    cursor.execute(statement, parameters)
                    rows = cursor.fetchall()
                    if number == 0:
                        hits.append(min(len(rows), 20))
            if not captured.autocommit:
                conn.commit()
            latencies.append(time.perf_counter() - started)
        prepared, generic, custom = conn.execute(
            "SELECT count(*), coalesce(sum(generic_plans), 0), coalesce(sum(custom_plans), 0) "
            "FROM pg_prepared_statements"
        ).fetchone()
    note = (
        f"{prepared} prepared: {generic} generic / {custom} custom plans"
        if prepared
        else "never prepared"
    )
    return latencies, note, statistics.mean(hits)


@contextlib.contextmanager
def minimal_server(url: str, variants_file: Path, *, workers: int):
    """bench/minimal_app.py under gunicorn, started as bench/common.gunicorn starts the API."""
    with gunicorn_app(
        "bench.minimal_app:app",
        workers=workers,
        env={"BENCH_DATABASE_URL": libpq_url(url), "BENCH_VARIANTS_FILE": str(variants_file)},
    ) as process:
        yield process


@dataclass
class Result:
    api: tuple[float, float, float]
    minimal: tuple[float, float, float]
    sql: dict[str, tuple[float, float, float]]
    sql_notes: dict[str, str]
    runs: dict[str, int]
    api_rps: float
    minimal_rps: float
    api_loaded: tuple[float, float, float]
    minimal_loaded: tuple[float, float, float]
    errors: Counter
    hits: float
    turn_ratios: list[float]  # API/minimal requests of each turn
    api_cpu_ms: dict[str, float]
    minimal_cpu_ms: dict[str, float]


def measure(
    url: str,
    name: str,
    captured: Captured,
    query_strings: list[str],
    api: subprocess.Popen,
    minimal: subprocess.Popen,
    args,
):
    variants = captured.queries[name]
    order = [i % len(variants) for i in range(args.requests)]
    api_paths = ["/v1/search?" + query_strings[i] for i in order]
    minimal_paths = [f"/search/{name}/{i}" for i in order]
    budget = Budget(args.requests, args.budget, 10)
    errors: Counter = Counter()
    runs = {}
    api_latencies, api_errors = sequential(api.base_url, api_paths, budget)
    errors.update({f"API: {k}": v for k, v in api_errors.items()})
    minimal_latencies, minimal_errors = sequential(minimal.base_url, minimal_paths, budget)
    errors.update({f"minimal: {k}": v for k, v in minimal_errors.items()})
    runs["API"], runs["minimal"] = len(api_latencies), len(minimal_latencies)
    sql, notes = {}, {}
    for mode in SQL_MODES:
        latencies, note, hits = raw_sql(url, captured, [variants[i] for i in order], mode, budget)
        sql[mode], notes[mode], runs[f"SQL {mode}"] = percentiles(latencies), note, len(latencies)
    postmaster = postmaster_pid(url)

    def parts(server: subprocess.Popen) -> dict[str, Callable[[], list[int]]]:
        # The API's Redis for both: what the minimal costs there is the baseline (nothing).
        return {
            "server": lambda: [server.pid, *children(server.pid)],
            "PostgreSQL": lambda: [postmaster, *children(postmaster)],
            "Redis": lambda: [api.redis_pid],
            "clients": lambda: [os.getpid()],
        }

    api_loaded, minimal_loaded = in_turns(
        [
            Served(api.base_url, api_paths, parts(api)),
            Served(minimal.base_url, minimal_paths, parts(minimal)),
        ],
        args,
    )
    errors.update({f"API (concurrent): {k}": v for k, v in api_loaded.errors.items()})
    errors.update({f"minimal (concurrent): {k}": v for k, v in minimal_loaded.errors.items()})
    return Result(
        api=percentiles(api_latencies),
        minimal=percentiles(minimal_latencies),
        sql=sql,
        sql_notes=notes,
        runs=runs,
        api_rps=api_loaded.rps,
        minimal_rps=minimal_loaded.rps,
        api_loaded=percentiles(api_loaded.latencies) if api_loaded.latencies else (math.nan,) * 3,
        minimal_loaded=percentiles(minimal_loaded.latencies)
        if minimal_loaded.latencies
        else (math.nan,) * 3,
        errors=errors,
        hits=hits,
        turn_ratios=[
            ours / theirs if theirs else math.nan
            for ours, theirs in zip(api_loaded.per_turn, minimal_loaded.per_turn, strict=True)
        ],
        api_cpu_ms=api_loaded.cpu_ms,
        minimal_cpu_ms=minimal_loaded.cpu_ms,
    )


def explain(url: str, captured: Captured, statements: Statements) -> str:
    """EXPLAIN ANALYZE of one variant's statements, on a connection set up as the engine's."""
    out = []
    with psycopg.connect(
        libpq_url(url), options=captured.options(), autocommit=True, prepare_threshold=None
    ) as conn:
        for statement, parameters in statements:
            plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters).fetchall()
            out.append("\n".join(row[0] for row in plan))
    return "\n\n".join(out)


def describe(url: str) -> str:
    with psycopg.connect(libpq_url(url)) as conn:
        ads, located, public, size = conn.execute(
            "SELECT count(*), count(location), count(*) FILTER (WHERE visibility = 'public'), "
            "pg_size_pretty(pg_total_relation_size('ads')) FROM ads"
        ).fetchone()
    return f"{ads:,} ads ({located:,} located, {public:,} public); table and indexes {size}"


def fmt(values: tuple[float, float, float]) -> str:
    return "/".join(
        "-" if value != value else f"{value:.1f}" if value < 100 else f"{value:.0f}"
        for value in values
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="ads to measure at")
    parser.add_argument("--requests", type=int, default=200, help="per query and way")
    parser.add_argument(
        "--budget",
        type=float,
        default=20.0,
        help="seconds after which a sequential run of a slow query stops early (at least 10 "
        f"runs; {TRAP_RUNS} for the psycopg-defaults run)",
    )
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per rps run")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument(
        "--turns", type=int, default=4, help="rps runs of the API and minimal in turns"
    )
    parser.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help="gunicorn workers (as `serve`)"
    )
    parser.add_argument(
        "--growth",
        choices=("communities", "density"),
        default="communities",
        help="how the directory grows from one size to the next: by more communities, each "
        "as dense as the first ones (default), or by more ads in the same towns",
    )
    parser.add_argument(
        "--arrival",
        choices=("batches", "random"),
        default="batches",
        help="the order ads reach the table: in portals' batches (default) or at random",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="times each size is measured, the sizes taking turns (figures: their mean)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--explain", action="store_true", help="EXPLAIN ANALYZE each query")
    parser.add_argument(
        "--keep", action="store_true", help="print the database URL and wait for Enter at the end"
    )
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(","))
    # The bench is one client address: lift the anonymous search limit out of its way
    # (the limiter itself still runs, as in production).
    os.environ["DIRECTORY_SEARCH_RATE_LIMIT_ANONYMOUS"] = "1000000 per second"
    os.environ.setdefault("DIRECTORY_LOG_LEVEL", "WARNING")

    began = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    results: dict[int, dict[str, list[Result]]] = {size: {} for size in sizes}
    if args.growth == "communities":
        replicas = [round((b - a) / sizes[0]) for a, b in itertools.pairwise(sizes)]
    else:
        replicas = []
    with database() as url, tempfile.TemporaryDirectory(prefix="bench-search-") as scratch:
        world = set_up(url, rng, replicas)
        print(
            f"{len(world.towns)} towns around {len(world.portals) - len(world.worldwide)} "
            f"cities ({len(ANCHORS)} real ones, growth by {args.growth}, ads arriving in "
            f"{args.arrival}), "
            f"{len(world.portals)} portals, {len(world.leaves)} leaf categories; "
            f"{args.workers} gunicorn workers, {args.clients} concurrent clients; up to "
            f"{args.requests} requests per query and way ({args.budget:g} s budget), "
            f"{args.duration:g} s per rps run (in {args.turns} turns with the minimal's); "
            f"{args.rounds} rounds"
        )
        # A database per size, each grown as the directory grows, so that the sizes can be
        # measured in turns: this machine's speed drifts by a quarter within minutes, and
        # measuring one size after the other took that drift for growth.
        urls = {size: copy_database(url, f"ads_{size}") for size in sizes[:-1]}
        urls[sizes[-1]] = url
        query_strings: dict[int, dict[str, list[str]]] = {}
        captured: dict[int, Captured] = {}
        variants_files: dict[int, Path] = {}
        loaded = 0
        for step, size in enumerate(sizes):
            generation = step if replicas else 0
            new_towns = [town for town in world.towns if town.generation == generation]
            for target in sizes[step:]:
                timings = load(
                    urls[target], world, new_towns, loaded, size - loaded, args.seed, args.arrival
                )
            total = sum(timings.values()) - timings["generate (within copy)"]
            steps = ", ".join(f"{part} {seconds:.0f} s" for part, seconds in timings.items())
            print(f"\nloaded {size - loaded:,} ads in {total:.0f} s ({steps}): {describe(url)}")
            loaded = size
            # Queries go where the ads are now: at a larger size, mostly to the new towns.
            towns = [town for town in world.towns if town.generation <= generation]
            query_strings[size] = make_variants(world, towns, rng, args.requests)
            captured[size] = capture(urls[size], query_strings[size])
            variants_files[size] = Path(scratch) / f"variants-{size}.json"
            variants_files[size].write_bytes(
                orjson.dumps(
                    {
                        "options": captured[size].options(),
                        "autocommit": captured[size].autocommit,
                        "queries": captured[size].queries,
                    }
                )
            )
            if step == 0:
                print(
                    f"the engine's connections: {captured[size].options()}, autocommit "
                    f"{captured[size].autocommit}, prepare_threshold "
                    f"{captured[size].prepare_threshold}"
                )
        with contextlib.ExitStack() as servers:
            # Every size served at once, so that each query measures the sizes one right
            # after the other (seconds apart, not minutes): growth is then a comparison
            # within one moment of the machine, whose speed drifts by a quarter or more.
            served = {
                size: (
                    servers.enter_context(gunicorn(urls[size], workers=args.workers)),
                    servers.enter_context(
                        minimal_server(urls[size], variants_files[size], workers=args.workers)
                    ),
                )
                for size in sizes
            }
            for round_ in range(1, args.rounds + 1):
                print(f"\nround {round_} of {args.rounds}:")
                for turn, name in enumerate(QUERIES):
                    # Smallest first, then largest first (ABBA): a drift weighs on both.
                    for size in sizes if (round_ + turn) % 2 else sizes[::-1]:
                        api, minimal = served[size]
                        result = measure(
                            urls[size],
                            name,
                            captured[size],
                            query_strings[size][name],
                            api,
                            minimal,
                            args,
                        )
                        results[size].setdefault(name, []).append(result)
                        print_result(f"{size:,} ads, {name}", name, result)
        if args.explain:
            for size in sizes:
                for name in QUERIES:
                    print(
                        f"\nEXPLAIN ANALYZE {name} at {size:,} ads "
                        f"({query_strings[size][name][0]}):"
                    )
                    print(explain(urls[size], captured[size], captured[size].queries[name][0]))
        report(sizes, results)
        print(f"\ntotal run time {time.perf_counter() - began:.0f} s")
        if args.keep:
            print(
                "databases: " + ", ".join(urls[size] for size in sizes) + "  (Enter destroys them)"
            )
            input()


def copy_database(url: str, name: str) -> str:
    """A copy of the database at `url`, named `name` (the cluster's owner makes it from
    the first as a template); its URL."""
    base, _, template = url.rpartition("/")
    with psycopg.connect(libpq_url(f"{base}/postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return f"{base}/{name}"


def print_result(title: str, name: str, result: Result) -> None:
    runs = result.runs
    print(
        f"  {title} ({QUERIES[name]}; {result.hits:.1f} hits/page)\n"
        f"    p50/p95/p99 ms  API {fmt(result.api)} [{runs['API']}]  minimal "
        f"{fmt(result.minimal)} [{runs['minimal']}]  SQL as the engine "
        f"{fmt(result.sql['engine'])} [{runs['SQL engine']}]\n"
        f"    SQL with psycopg defaults {fmt(result.sql['default'])} "
        f"[{runs['SQL default']}; {result.sql_notes['default']}]  never prepared "
        f"{fmt(result.sql['unprepared'])} [{runs['SQL unprepared']}]  (as the engine: "
        f"{result.sql_notes['engine']})\n"
        f"    requests/s  API {result.api_rps:.1f}  minimal {result.minimal_rps:.1f}  "
        f"(p50/p95/p99 ms under load: API {fmt(result.api_loaded)}, minimal "
        f"{fmt(result.minimal_loaded)})\n"
        f"    requests API/minimal by turn {' '.join(f'{r:.2f}' for r in result.turn_ratios)}\n"
        f"    CPU ms per request under load: API {cpu_parts(result.api_cpu_ms)}; "
        f"minimal {cpu_parts(result.minimal_cpu_ms)}"
    )
    for error, times in result.errors.most_common(3):
        print(f"    ERROR x{times}: {error}")


def cpu_parts(cpu_ms: dict[str, float]) -> str:
    parts = ", ".join(f"{part} {ms:.2f}" for part, ms in cpu_ms.items())
    return f"{sum(cpu_ms.values()):.2f} ({parts})"


def mean_result(rounds: list[Result]) -> Result:
    """One Result for several rounds of a query: the mean of each figure."""

    def mean(values: list[tuple[float, float, float]]) -> tuple[float, float, float]:
        return tuple(statistics.fmean(column) for column in zip(*values, strict=True))

    errors: Counter = Counter()
    for result in rounds:
        errors.update(result.errors)
    last = rounds[-1]
    return Result(
        api=mean([result.api for result in rounds]),
        minimal=mean([result.minimal for result in rounds]),
        sql={mode: mean([result.sql[mode] for result in rounds]) for mode in last.sql},
        sql_notes=last.sql_notes,
        runs={key: sum(result.runs[key] for result in rounds) for key in last.runs},
        api_rps=statistics.fmean(result.api_rps for result in rounds),
        minimal_rps=statistics.fmean(result.minimal_rps for result in rounds),
        api_loaded=mean([result.api_loaded for result in rounds]),
        minimal_loaded=mean([result.minimal_loaded for result in rounds]),
        errors=errors,
        hits=statistics.fmean(result.hits for result in rounds),
        turn_ratios=[ratio for result in rounds for ratio in result.turn_ratios],
        api_cpu_ms={
            part: statistics.fmean(result.api_cpu_ms[part] for result in rounds)
            for part in last.api_cpu_ms
        },
        minimal_cpu_ms={
            part: statistics.fmean(result.minimal_cpu_ms[part] for result in rounds)
            for part in last.minimal_cpu_ms
        },
    )


def report(sizes: list[int], rounds: dict[int, dict[str, list[Result]]]) -> None:
    results = {
        size: {name: mean_result(measured) for name, measured in rounds[size].items()}
        for size in sizes
    }
    print(
        "\nSummary, the mean of the rounds. Latency p50/p95/p99 in ms, one client, "
        "sequential requests. SQL: the "
        "engine's statements\nthrough psycopg as the engine connects (force_custom_plan); "
        "SQL dflt: psycopg defaults (generic plans\nallowed). rps: requests/s with "
        "concurrent clients."
    )
    header = (
        f"{'ads':>9}  {'query':<20} {'API':>14} {'SQL':>14} {'SQL dflt':>14} {'minimal':>14} "
        f"{'API rps':>8} {'min rps':>8} {'p50 API/min':>11} {'rps API/min':>11}"
    )
    print(header)
    print("-" * len(header))
    for size in sizes:
        for name, result in results[size].items():
            print(
                f"{size:>9,}  {name:<20} {fmt(result.api):>14} {fmt(result.sql['engine']):>14} "
                f"{fmt(result.sql['default']):>14} {fmt(result.minimal):>14} "
                f"{result.api_rps:>8.1f} {result.minimal_rps:>8.1f} "
                f"{result.api[0] / result.minimal[0]:>11.2f} "
                f"{result.api_rps / result.minimal_rps if result.minimal_rps else math.nan:>11.2f}"
            )
    print(
        "\nWhere the throughputs differ: CPU per request under load in ms, the API's and the "
        "minimal's\n(server: its gunicorn processes; other: the rest of the machine), and the "
        "API/minimal requests\nof the rps runs' turns, lowest and highest."
    )
    header = (
        f"{'ads':>9}  {'query':<20} {'API':>6} {'minimal':>8}  API - minimal by part"
        f"{'':<51} {'turns':>10}"
    )
    print(header)
    print("-" * len(header))
    for size in sizes:
        for name, result in results[size].items():
            api, minimal = result.api_cpu_ms, result.minimal_cpu_ms
            by_part = ", ".join(f"{part} {api[part] - minimal[part]:+.2f}" for part in api)
            print(
                f"{size:>9,}  {name:<20} {sum(api.values()):>6.2f} {sum(minimal.values()):>8.2f}"
                f"  {by_part:<72} {min(result.turn_ratios):.2f}-{max(result.turn_ratios):.2f}"
            )
    print(
        "\nGoals: p50 API/minimal <= 2, rps API/minimal >= 0.7, API p50 at the largest size "
        "/ at the smallest < 1.5"
    )
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        for name in QUERIES:
            before, after = results[small][name], results[large][name]
            growth = after.api[0] / before.api[0]
            each = ", ".join(
                f"{late.api[0] / early.api[0]:.2f}"
                for early, late in zip(rounds[small][name], rounds[large][name], strict=True)
            )
            print(
                f"  {name:<20} API p50 {large:,} / {small:,}: {growth:5.2f} "
                f"({'met' if growth < 1.5 else 'NOT met'}; round by round {each}; SQL p50 "
                f"{after.sql['engine'][0] / before.sql['engine'][0]:.2f}, minimal p50 "
                f"{after.minimal[0] / before.minimal[0]:.2f})"
            )
    for size in sizes:
        for name, result in results[size].items():
            ratio = result.api[0] / result.minimal[0]
            rps = result.api_rps / result.minimal_rps if result.minimal_rps else math.nan
            misses = []
            if ratio > 2:
                misses.append(f"p50 API/minimal {ratio:.2f} > 2")
            if rps < 0.7:
                misses.append(f"rps API/minimal {rps:.2f} < 0.7")
            if misses:
                print(f"  {size:,} {name}: NOT met: " + ", ".join(misses))


if __name__ == "__main__":
    main()
