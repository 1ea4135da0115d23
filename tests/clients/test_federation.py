"""Several directories searched as one (directory_client.federation), against two real
directory instances: two `directory serve` processes on 127.0.0.1, each on a database of
its own, holding overlapping ads. What each federated answer should be is worked out by
brute force from each directory's own complete answer to the same search.

The data: one portal (the same website, spelt differently, and another slug) publishes
some ads in both directories and some in one only; each directory has a portal of its own;
a portal without website publishes the very same ad in both, which must not be merged; and
in B an impostor claims the website of one of A's portals without verifying it.
Websites are verified as an operator vouching for them would verify them (their
example.org sites cannot be fetched)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import orjson
import psycopg
import pytest
from directory_client import models
from directory_client.client import DirectoryClient
from directory_client.federation import (
    FederatedSearch,
    FederationError,
    InvalidFederatedCursor,
    Outcome,
)
from sqlalchemy.orm import Session

from directory.__main__ import alembic_config
from directory.db import make_engine, make_session_factory, unit_of_work
from directory.geo import Point
from directory.services import portals, websites
from tests import factories
from tests.factories import ad_payload
from tests.peers import Peer
from tests.search.conftest import destination

REPO = Path(__file__).resolve().parents[2]
ORIGIN = Point(45.7640, 4.8357)  # Lyon
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
SHARED_WEBSITE = "https://sel-lyon.example.org"
GRENOBLE_WEBSITE = "https://sel-grenoble.example.org"
# A bound on paging, so a cursor that never ends fails instead of looping.
MAX_PAGES = 200


# --- two directories ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class DirectoryProcess:
    """`directory serve` (gunicorn, one worker) on a free loopback port, on `database_url`."""

    def __init__(self, database_url: str, log_path: Path):
        self.database_url = database_url
        self.log_path = log_path
        self.url = ""
        self._process: subprocess.Popen | None = None

    def start(self) -> DirectoryProcess:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        environment = {
            name: value for name, value in os.environ.items() if not name.startswith("DIRECTORY_")
        } | {
            "DIRECTORY_ENVIRONMENT": "test",
            "DIRECTORY_DATABASE_URL": self.database_url,
            "DIRECTORY_RATE_LIMIT_STORAGE_URL": "memory://",
            "DIRECTORY_SEARCH_RATE_LIMIT_ANONYMOUS": "1000000 per second",
            "DIRECTORY_SEARCH_RATE_LIMIT_PORTAL": "1000000 per second",
            "DIRECTORY_LOG_LEVEL": "WARNING",
        }
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "directory", "serve", "--bind", f"127.0.0.1:{port}",
                 "--workers", "1"],
                env=environment,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                pytest.fail(f"directory exited at start:\n{self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        pytest.fail(
            f"directory not ready within {START_TIMEOUT_S:g} s:\n{self.log_path.read_text()}"
        )

    def stop(self) -> None:
        """SIGTERM, as an operator stops it: gunicorn closes its socket and exits."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


@dataclass
class Directory:
    process: DirectoryProcess
    keys: dict[str, str]  # portal slug -> key

    @property
    def url(self) -> str:
        return self.process.url

    def portal(self, slug: str) -> DirectoryClient:
        return DirectoryClient(self.url, key=self.keys[slug])


@pytest.fixture(scope="module")
def new_database(cluster) -> Iterator[Callable[[], str]]:
    """Makes migrated databases of the test cluster, dropped at the end of the module."""
    from alembic import command

    names = []

    def make() -> str:
        name = f"federation_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(cluster.admin_url("postgres"), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        names.append(name)
        url = cluster.admin_url(name).replace("postgresql://", "postgresql+psycopg://")
        command.upgrade(alembic_config(url), "head")
        return url

    yield make
    with psycopg.connect(cluster.admin_url("postgres"), autocommit=True) as admin:
        for name in names:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def start_directory(tmp_path_factory) -> Iterator[Callable[[str], DirectoryProcess]]:
    processes: list[DirectoryProcess] = []

    def start(database_url: str) -> DirectoryProcess:
        log = tmp_path_factory.mktemp("directory") / "serve.log"
        process = DirectoryProcess(database_url, log)
        processes.append(process)
        return process.start()

    yield start
    for process in processes:
        process.stop()


@contextmanager
def straight_to(database_url: str) -> Iterator[Session]:
    """A unit of work on the database of a directory."""
    engine = make_engine(database_url, pool_size=1)
    try:
        with unit_of_work(make_session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()


def create_portals(database_url: str, slugs: Sequence[str]) -> dict[str, str]:
    """Portals written straight to the database; returns their keys."""
    with straight_to(database_url) as session:
        return {slug: factories.create_portal(session, slug=slug).key for slug in slugs}


def trust_websites(database_url: str, slugs: Sequence[str]) -> None:
    """Their websites verified, as `directory portals verify-website --trust` does."""
    with straight_to(database_url) as session:
        for slug in slugs:
            portal_id = portals.get_portal(session, slug=slug).id
            websites.trust_website(session, portal_id=portal_id)


def ad(external_id: str, distance_km: float, bearing: float, title: str, **overrides) -> dict:
    point = destination(ORIGIN, bearing, distance_km)
    payload = ad_payload(
        title=title,
        body=overrides.pop("body", f"{title}, near Lyon."),
        location={"lat": point.lat, "lon": point.lon},
        **overrides,
    )
    return {"op": "upsert", "external_id": external_id, "ad": payload}


# Shared: the portal of SHARED_WEBSITE publishes these in both directories, unchanged.
SHARED = [
    ad("s-1", 0.8, 10, "Bicycle repairs", body="Bicycle bicycle bicycle: tyres and brakes."),
    ad("s-2", 2.0, 80, "Bicycle lessons for adults"),
    ad("s-3", 3.1, 150, "Sourdough bread", category="food.meals"),
    ad("s-4", 4.4, 200, "Ladder to lend", kind="want"),
    ad("s-5", 5.0, 260, "Bicycle trailer", body="A bicycle trailer for bicycle trips."),
    ad("s-6", 6.3, 300, "Sewing machine repairs"),
    ad("s-7", 7.7, 340, "Garden help", category="food.meals"),
    ad("s-8", 9.2, 45, "Bicycle parts", currencies=["HOUR"]),
]
# Only in directory A (same portal), then its own portal's.
ONLY_A = [
    ad("a-1", 1.0, 20, "Bicycle bell"),  # at the same distance as b-1
    ad("a-2", 2.6, 100, "Piano lessons"),
    ad("a-3", 4.4, 220, "Bicycle pump", body="Bicycle bicycle bicycle bicycle."),
    ad("a-4", 8.0, 320, "Moving boxes", kind="want"),
]
ONLY_GRENOBLE = [
    ad("g-1", 1.7, 60, "Bicycle saddle"),
    ad("g-2", 5.5, 120, "Jam", category="food.meals", currencies=["EUR"]),
    ad("g-3", 10.5, 170, "Bicycle helmet"),
]
ONLY_B = [
    ad("b-1", 1.0, 200, "Bicycle lights"),  # at the same distance as a-1
    ad("b-2", 1.4, 30, "Bicycle lock", body="Bicycle lock, bicycle chain, bicycle stand."),
    ad("b-3", 3.6, 90, "Guitar lessons"),
    ad("b-4", 6.8, 250, "Bicycle basket"),
]
# The impostor's copy of A's g-1, nearer: its claim of A's website unverified, it must
# not hide A's ad.
IMPOSTOR = [ad("g-1", 0.5, 60, "Bicycle saddle", body="Bicycle saddle: ask the impostor.")]
ONLY_ANNECY = [
    ad("y-1", 2.3, 330, "Bicycle repair stand", currencies=["EUR"]),
    ad("y-2", 7.1, 15, "Honey", category="food.meals"),
    ad("y-3", 11.0, 140, "Bicycle wheels", kind="want"),
]
# The very same ad in both directories, from a portal without a website: two ads.
NO_WEBSITE = [ad("n-1", 3.3, 70, "Bicycle tools to lend")]
# For the test that changes data between pages: a tag of their own.
MOVING_A = [
    ad("m-a1", 1.5, 0, "Moving ad A1", tags=["moving"]),
    ad("m-a2", 3.0, 0, "Moving ad A2", tags=["moving"]),
    ad("m-a3", 4.5, 0, "Moving ad A3", tags=["moving"]),
]
MOVING_B = [
    ad("m-b1", 1.0, 180, "Moving ad B1", tags=["moving"]),
    ad("m-b2", 2.0, 180, "Moving ad B2", tags=["moving"]),
    ad("m-b3", 2.2, 180, "Moving ad B3", tags=["moving"]),
    ad("m-b4", 3.5, 180, "Moving ad B4", tags=["moving"]),
]


def publish(directory: Directory, slug: str, items: list[dict]) -> None:
    with directory.portal(slug) as portal:
        result = portal.batch_ads(items)
    assert result.counts == {"created": len(items)}, result


@pytest.fixture(scope="module")
def directories(new_database, start_directory) -> tuple[Directory, Directory]:
    """Directory A and directory B, running, with their ads written through their APIs in
    turns, so that the two directories' updated_at interleave."""
    url_a, url_b = new_database(), new_database()
    a = Directory(
        start_directory(url_a), create_portals(url_a, ["sel-lyon", "sel-grenoble", "jardin"])
    )
    b = Directory(
        start_directory(url_b), create_portals(url_b, ["lyon", "sel-annecy", "jardin", "impostor"])
    )
    for directory, slug, website in [
        (a, "sel-lyon", SHARED_WEBSITE),
        (a, "sel-grenoble", GRENOBLE_WEBSITE),
        (b, "lyon", "HTTPS://SEL-Lyon.Example.org:443/"),  # the same site, spelt otherwise
        (b, "sel-annecy", "https://sel-annecy.example.org"),
        (b, "impostor", GRENOBLE_WEBSITE),  # and never verified
    ]:
        with directory.portal(slug) as portal:
            portal.update_own_portal({"website": website})
    trust_websites(url_a, ["sel-lyon", "sel-grenoble"])
    trust_websites(url_b, ["lyon", "sel-annecy"])
    publish(a, "sel-lyon", SHARED[:4] + ONLY_A)
    publish(b, "lyon", ONLY_B + SHARED)
    publish(a, "sel-grenoble", ONLY_GRENOBLE)
    publish(a, "sel-lyon", SHARED[4:])
    publish(b, "sel-annecy", ONLY_ANNECY)
    publish(b, "impostor", IMPOSTOR)
    publish(a, "jardin", NO_WEBSITE + MOVING_A)
    publish(b, "jardin", NO_WEBSITE + MOVING_B)
    return a, b


@pytest.fixture
def federated(directories) -> Iterator[FederatedSearch]:
    a, b = directories
    with FederatedSearch([a.url, b.url], timeout_s=10) as search:
        yield search


# --- brute force ----------------------------------------------------------------------------

Tagged = tuple[int, models.SearchHit]  # (index of the directory, hit)


def every_hit(url: str, **search) -> list[models.SearchHit]:
    with DirectoryClient(url) as client:
        return list(client.iter_search(**search))


def shown_once(tagged: Iterator[Tagged]) -> list[tuple[int, str]]:
    """(directory, ad id) of each hit whose global id was not shown before."""
    seen, shown = set(), []
    for index, hit in tagged:
        if hit.global_id is not None:
            if hit.global_id in seen:
                continue
            seen.add(hit.global_id)
        shown.append((index, str(hit.id)))
    return shown


def merged(lists: Sequence[list[models.SearchHit]], key) -> list[tuple[int, str]]:
    """All hits sorted by key, ties by directory then by each directory's own order."""
    ordered = sorted(
        ((key(hit), index, position, hit) for index, hits in enumerate(lists)
         for position, hit in enumerate(hits)),
        key=lambda item: item[:3],
    )  # fmt: skip
    return shown_once((index, hit) for _, index, _, hit in ordered)


def in_turns(lists: Sequence[list[models.SearchHit]]) -> list[tuple[int, str]]:
    """One new ad from each directory in turn, by each directory's own rank."""
    queues = [deque(hits) for hits in lists]
    seen, shown, turn = set(), [], 0
    while any(queues):
        while not queues[turn]:
            turn = (turn + 1) % len(queues)
        while queues[turn]:
            hit = queues[turn].popleft()
            if hit.global_id is None or hit.global_id not in seen:
                seen.add(hit.global_id)
                shown.append((turn, str(hit.id)))
                break
        turn = (turn + 1) % len(queues)
    return shown


def paged(
    search: FederatedSearch, *, limit: int, cursor: str | None = None, **filters
) -> list[tuple[int, str]]:
    """(directory, ad id) of every hit, following next_cursor page after page."""
    directories = search.directories
    shown = []
    for _ in range(MAX_PAGES):
        page = search.search(limit=limit, cursor=cursor, **filters)
        assert not page.partial, page.directories
        assert len(page.hits) <= limit
        shown += [(directories.index(hit.directory), str(hit.ad.id)) for hit in page.hits]
        if page.next_cursor is None:
            return shown
        cursor = page.next_cursor
    raise AssertionError(f"still paging after {MAX_PAGES} pages")


def distance(hit: models.SearchHit) -> float:
    return hit.distance_km


def newest_first(hit: models.SearchHit) -> float:
    return -hit.updated_at.timestamp()


# --- merging --------------------------------------------------------------------------------

NEAR_LYON = {"lat": ORIGIN.lat, "lon": ORIGIN.lon, "radius_km": 50}


@pytest.mark.parametrize("limit", [1, 4, 7, 100])
def test_distance_order_is_both_directories_merged_nearest_first(directories, federated, limit):
    a, b = directories
    lists = [every_hit(d.url, sort="distance", **NEAR_LYON) for d in (a, b)]
    expected = merged(lists, distance)
    assert paged(federated, limit=limit, sort="distance", **NEAR_LYON) == expected
    # Sanity of the data: ties across directories, and copies to drop.
    assert len(expected) < sum(map(len, lists))


@pytest.mark.parametrize("limit", [1, 5, 100])
def test_recent_order_is_both_directories_merged_newest_first(directories, federated, limit):
    a, b = directories
    lists = [every_hit(d.url, sort="recent") for d in (a, b)]
    expected = merged(lists, newest_first)
    assert paged(federated, limit=limit, sort="recent") == expected
    runs = [index for position, (index, _) in enumerate(expected)
            if position == 0 or expected[position - 1][0] != index]  # fmt: skip
    assert len(runs) >= 4  # the directories interleave


@pytest.mark.parametrize("limit", [1, 3, 100])
def test_relevance_takes_one_ad_from_each_directory_in_turn(directories, federated, limit):
    a, b = directories
    lists = [every_hit(d.url, q="bicycle", sort="relevance") for d in (a, b)]
    expected = in_turns(lists)
    assert paged(federated, limit=limit, q="bicycle") == expected
    assert [index for index, _ in expected[:6]] == [0, 1, 0, 1, 0, 1]


def test_the_hits_are_the_directories_own_tagged_with_where_they_came_from(directories, federated):
    a, b = directories
    page = federated.search(sort="recent", limit=100)
    own = {a.url: every_hit(a.url, sort="recent"), b.url: every_hit(b.url, sort="recent")}
    for hit in page.hits:
        assert hit.ad in own[hit.directory]
    assert [status.outcome for status in page.directories] == [Outcome.OK, Outcome.OK]
    assert sum(status.hits for status in page.directories) == len(page.hits)


def test_an_ad_of_one_portal_in_both_directories_is_shown_once(federated):
    hits = list(federated.iter_search(page_size=3, sort="distance", **NEAR_LYON))
    global_ids = [hit.ad.global_id for hit in hits if hit.ad.global_id is not None]
    assert len(global_ids) == len(set(global_ids))
    shared = {f"{SHARED_WEBSITE}#{item['external_id']}" for item in SHARED}
    assert shared <= set(global_ids)


def test_an_unverified_claim_of_a_website_does_not_shadow_its_portals_ads(federated):
    # With a global id, the impostor's nearer copy would come first and hide A's ad.
    a_url, b_url = federated.directories
    saddles = [
        (hit.directory, hit.ad.portal, hit.ad.global_id)
        for hit in federated.iter_search(sort="distance", **NEAR_LYON)
        if hit.ad.title == "Bicycle saddle"
    ]
    assert saddles == [
        (b_url, "impostor", None),
        (a_url, "sel-grenoble", f"{GRENOBLE_WEBSITE}#g-1"),
    ]


def paid_to(
    payee: str | None, *, ledger_url: str = "https://ledger.example.org/", nearest: bool = False
) -> Callable[[int, bytes], tuple[int, bytes]]:
    """A rewrite of a directory's answer: the shared portal's ads said to be paid to
    `payee` on `ledger_url` (None: not said how to pay), and with `nearest`, nearer than
    all (a directory that lies, or a portal of it that took the site over)."""

    def rewrite(status: int, body: bytes) -> tuple[int, bytes]:
        page = orjson.loads(body)
        for hit in page["hits"]:
            if (hit.get("global_id") or "").startswith(SHARED_WEBSITE):
                if nearest:
                    hit["distance_km"] = 0.0
                hit["payment"] = payee and {
                    "protocol": "credit-commons",
                    "ledger_url": ledger_url,
                    "node": "sel-lyon",
                    "payee": payee,
                    "currencies": hit["currencies"],
                    "price": hit.get("price"),
                }
        return status, orjson.dumps(page)

    return rewrite


def bike_repairs(directories, rewrite_a, rewrite_b) -> list[tuple[int, str | None]]:
    """(directory, payee) of each copy of the shared portal's s-1 a federated search
    shows, each directory's answers rewritten."""
    a, b = directories
    with (
        Proxy(a.url, rewrite=rewrite_a) as proxy_a,
        Proxy(b.url, rewrite=rewrite_b) as proxy_b,
        FederatedSearch([proxy_a.origin, proxy_b.origin]) as search,
    ):
        hits = list(search.iter_search(sort="distance", **NEAR_LYON))
        origins = [proxy_a.origin, proxy_b.origin]
    return [
        (origins.index(hit.directory), hit.ad.payment and hit.ad.payment.payee)
        for hit in hits
        if hit.ad.global_id == f"{SHARED_WEBSITE}#s-1"
    ]


def test_a_copy_paid_to_someone_else_does_not_hide_the_ad_it_claims_to_be(directories):
    # Were the copies one ad, the lying nearer one would come first and be the only one
    # shown: whoever paid from it would pay mallory, never seeing the advertiser's own.
    shown = bike_repairs(directories, paid_to("oscar"), paid_to("mallory", nearest=True))
    assert shown == [(1, "mallory"), (0, "oscar")]


def test_copies_paid_the_same_way_are_one_ad_however_the_ledger_is_spelt(directories):
    spelt_otherwise = paid_to("oscar", ledger_url="HTTPS://Ledger.Example.org:443")
    assert bike_repairs(directories, paid_to("oscar"), spelt_otherwise) == [(0, "oscar")]


def test_a_copy_that_says_how_to_pay_and_one_that_does_not_are_one_ad(directories):
    # A portal that registered its ledger in one of the directories only.
    assert bike_repairs(directories, paid_to(None), paid_to("oscar")) == [(0, None)]
    assert bike_repairs(directories, paid_to("oscar"), paid_to(None)) == [(0, "oscar")]


def test_the_same_ad_of_a_portal_without_website_is_shown_from_each_directory(
    directories, federated
):
    a, b = directories
    hits = [
        hit for hit in federated.iter_search(q="tools") if hit.ad.title == "Bicycle tools to lend"
    ]
    assert sorted(hit.directory for hit in hits) == sorted([a.url, b.url])
    assert all(hit.ad.global_id is None for hit in hits)


def test_paging_shows_every_distinct_ad_exactly_once(directories, federated):
    a, b = directories
    distinct = set()
    for url in (a.url, b.url):
        for hit in every_hit(url, sort="recent"):
            distinct.add(hit.global_id or f"{url} {hit.id}")
    shown = [
        hit.ad.global_id or f"{hit.directory} {hit.ad.id}"
        for hit in federated.iter_search(page_size=2, sort="recent")
    ]
    assert sorted(shown) == sorted(distinct)


def test_facets_are_the_directories_counts_summed(directories, federated):
    a, b = directories
    asked = ["category", "kind", "currency", "portal"]
    page = federated.search(facets=asked, limit=2, **NEAR_LYON)
    own = []
    for url in (a.url, b.url):
        with DirectoryClient(url) as client:
            own.append(client.search_ads(facets=asked, **NEAR_LYON).facets)
    assert page.facets.total == own[0].total + own[1].total
    # Each directory's own counts: a portal's slug names it within its directory only.
    assert page.facets_by_directory == {a.url: own[0], b.url: own[1]}
    for name in asked:
        sums: dict[str, int] = {}
        for facets in own:
            for value, count in getattr(facets, name).items():
                sums[value] = sums.get(value, 0) + count
        assert getattr(page.facets, name) == sums
    # Later pages, where one directory may have nothing left to show, count it still.
    last = page
    while last.next_cursor is not None:
        last = federated.search(facets=asked, limit=10, cursor=last.next_cursor, **NEAR_LYON)
    assert last.facets == page.facets


def test_a_cursor_of_another_search_is_refused(directories, federated):
    a, b = directories
    cursor = federated.search(q="bicycle", limit=2).next_cursor
    with pytest.raises(InvalidFederatedCursor, match="different search"):
        federated.search(q="ladder", limit=2, cursor=cursor)
    with pytest.raises(InvalidFederatedCursor, match="different search"):
        federated.search(q="bicycle", sort="recent", limit=2, cursor=cursor)
    with (
        FederatedSearch([b.url, a.url]) as other_order,
        pytest.raises(InvalidFederatedCursor, match="different search"),
    ):
        other_order.search(q="bicycle", limit=2, cursor=cursor)
    with DirectoryClient(a.url) as one:
        own_cursor = one.search_ads(q="bicycle", limit=2).next_cursor
    # base64 would drop what is not of its alphabet: the cursor with more is not it.
    tampered = (cursor + "!!!!", cursor + "    ", cursor + "!!", cursor + "\n")
    for wrong in (own_cursor, "fed1.bm90IGEgY3Vyc29y", "fed1.!!", "", *tampered):
        with pytest.raises(InvalidFederatedCursor, match="next_cursor returned by"):
            federated.search(q="bicycle", limit=2, cursor=wrong)
    # The limit may change from page to page.
    assert federated.search(q="bicycle", limit=5, cursor=cursor).hits


def test_paging_stays_exact_when_an_ad_before_the_cursor_leaves(directories, federated):
    # Page 1 takes B's two nearest and not its third; the first of them then leaves B. A
    # count of hits taken would now skip B's third: the id of the last one taken does not.
    a, b = directories
    moving = {"tags": ["moving"], "sort": "distance", **NEAR_LYON}
    lists = [every_hit(d.url, **moving) for d in (a, b)]
    expected = merged(lists, distance)
    first = federated.search(limit=3, **moving)
    taken = [(federated.directories.index(hit.directory), str(hit.ad.id)) for hit in first.hits]
    assert taken == expected[:3]
    assert [index for index, _ in taken] == [1, 0, 1]
    with b.portal("jardin") as portal:
        portal.delete_ad("m-b1")
    rest = paged(federated, limit=3, cursor=first.next_cursor, **moving)
    assert taken + rest == expected


# --- directories that fail ------------------------------------------------------------------


def test_a_directory_stopped_between_pages_leaves_partial_results(directories, start_directory):
    a, b = directories
    b_again = start_directory(b.process.database_url)  # a second instance of B, to stop
    with FederatedSearch([a.url, b_again.url], timeout_s=10) as search:
        first = search.search(limit=4, sort="distance", **NEAR_LYON)
        assert not first.partial
        b_again.stop()
        second = search.search(limit=4, sort="distance", cursor=first.next_cursor, **NEAR_LYON)
        afresh = search.iter_search(page_size=4, sort="distance", **NEAR_LYON)
        rest = list(afresh)

    assert second.partial
    assert [status.outcome for status in second.directories] == [Outcome.OK, Outcome.ERROR]
    assert b_again.url in second.directories[1].reason
    # A continues exactly after the last of its hits taken, leaving out what B showed.
    a_hits = every_hit(a.url, sort="distance", **NEAR_LYON)
    a_ids = [str(hit.id) for hit in a_hits]
    last_from_a = max(a_ids.index(str(hit.ad.id)) for hit in first.hits if hit.directory == a.url)
    shown = {hit.ad.global_id for hit in first.hits if hit.ad.global_id}
    continuation = [str(hit.id) for hit in a_hits[last_from_a + 1 :] if hit.global_id not in shown]
    assert [str(hit.ad.id) for hit in second.hits] == continuation[:4]
    assert {hit.directory for hit in second.hits} == {a.url}
    # Searched afresh: A's ads only, marked so on every page, and no exception.
    assert afresh.partial
    assert {status.directory for status in afresh.failures} == {b_again.url}
    assert [str(hit.ad.id) for hit in rest] == a_ids


def test_when_no_directory_answers_the_search_fails():
    nowhere = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    with (
        FederatedSearch(nowhere, timeout_s=5) as search,
        pytest.raises(FederationError, match="no directory answered") as raised,
    ):
        search.search(sort="recent")
    assert [status.outcome for status in raised.value.statuses] == [Outcome.ERROR] * 2


class Proxy(Peer):
    """Forwards GET requests to `target` after `delay_s`, its answers passed through
    `rewrite` and sent with `headers` added: a directory that is slow, or that answers
    otherwise."""

    def __init__(
        self,
        target: str,
        *,
        delay_s: float = 0.0,
        rewrite: Callable[[int, bytes], tuple[int, bytes]] = lambda status, body: (status, body),
        headers: dict[str, str] | None = None,
    ):
        super().__init__()
        self.target = target
        self.delay_s = delay_s
        self.rewrite = rewrite
        self.headers = headers or {}

    def handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.server.stopping.wait(proxy.delay_s):
                    return  # stopped meanwhile: the connection just closes
                answer = httpx.get(
                    f"{proxy.target}{self.path}", headers={"Accept": "application/json"}
                )
                status, body = proxy.rewrite(answer.status_code, answer.content)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for name, value in proxy.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        return Handler


def test_a_directory_slower_than_the_deadline_leaves_partial_results(directories):
    a, b = directories
    with (
        Proxy(b.url, delay_s=5) as slow_b,
        FederatedSearch([a.url, slow_b.origin], timeout_s=0.5) as search,
    ):
        started = time.monotonic()
        page = search.search(sort="recent", limit=100)
        waited = time.monotonic() - started

    assert waited < 2
    assert page.partial
    assert page.directories[1].outcome is Outcome.TIMED_OUT
    assert page.directories[1].reason
    assert [str(hit.ad.id) for hit in page.hits] == [
        str(hit.id) for hit in every_hit(a.url, sort="recent")
    ]


def test_a_slow_directory_within_the_deadline_is_waited_for(directories):
    a, b = directories
    with (
        Proxy(b.url, delay_s=0.3) as slow_b,
        FederatedSearch([a.url, slow_b.origin], timeout_s=5) as search,
    ):
        page = search.search(sort="recent", limit=100)
    assert not page.partial
    assert {hit.directory for hit in page.hits} == {a.url, slow_b.origin}


def without_titles(status: int, body: bytes) -> tuple[int, bytes]:
    """A field that is never null left out: what no release of the directory answers. (An
    earlier release's answer without a later field that may be null reads as null.)"""
    page = orjson.loads(body)
    for hit in page["hits"]:
        del hit["title"]
    return status, orjson.dumps(page)


def without_time_zones(status: int, body: bytes) -> tuple[int, bytes]:
    page = orjson.loads(body)
    for hit in page["hits"]:
        hit["updated_at"] = hit["updated_at"][:19]  # 2026-01-01T00:00:00, zone cut off
    return status, orjson.dumps(page)


def refused(status: int, body: bytes) -> tuple[int, bytes]:
    envelope = {
        "code": 400,
        "status": "Bad Request",
        "error": "validation_error",
        "message": "Unknown query parameter: payable",
        "errors": {"query": {"payable": ["Unknown field."]}},
    }
    return 400, orjson.dumps(envelope)


@pytest.mark.parametrize(
    ("answering", "reason"),
    [
        pytest.param({"rewrite": refused}, "400 validation_error", id="refused"),
        pytest.param({"rewrite": without_titles}, "answer not understood", id="missing-a-field"),
        pytest.param(
            {"rewrite": without_time_zones}, "without a time zone", id="times-without-zone"
        ),
        pytest.param(
            {"headers": {"Content-Encoding": "gzip"}}, "DecodingError", id="garbled-encoding"
        ),
    ],
)
def test_a_directory_answering_otherwise_is_reported_with_its_reason(
    directories, answering, reason
):
    a, b = directories
    with (
        Proxy(b.url, **answering) as other_b,
        FederatedSearch([a.url, other_b.origin]) as search,
    ):
        page = search.search(sort="recent", limit=100)
    assert page.partial
    assert page.directories[1].outcome is Outcome.ERROR
    assert reason in page.directories[1].reason
    assert {hit.directory for hit in page.hits} == {a.url}


def test_unknown_filters_and_bad_arguments_are_refused(federated):
    with pytest.raises(TypeError, match="colour"):
        federated.search(colour="red")
    with pytest.raises(ValueError, match="sort"):
        federated.search(sort="cheapest")
    with pytest.raises(ValueError, match="limit"):
        federated.search(limit=101)


@pytest.mark.parametrize("timeout_s", [0, -1, float("nan"), float("inf"), "5"])
def test_a_timeout_that_is_no_positive_number_of_seconds_is_refused(directories, timeout_s):
    # nan timed every directory out at once ("no answer within nan s"); inf crashed the
    # page with an OverflowError.
    a, _ = directories
    with DirectoryClient(a.url) as client, pytest.raises(ValueError, match="timeout_s"):
        FederatedSearch([client], timeout_s=timeout_s)
