"""Paging a federated search while ads change between its pages: every ad that stays put is
shown once from each directory that has it, whatever is added, changed or removed in
between, in every sort. The two directories are the test app served twice over HTTP on
127.0.0.1 (the same ads, from a portal without website: no ad is taken for another), so
that a page takes part of each directory's page and the cursor must resume inside it.

And directories that answer pages without hits while saying more follow (a real HTTP
server in front of a directory): read past within the page, or left out of it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import orjson
import pytest
from directory_client.client import DirectoryClient
from directory_client.federation import (
    MAX_PAGES_WITHOUT_HITS,
    FederatedPage,
    FederatedSearch,
    Outcome,
)

from tests.live import LiveDirectory
from tests.peers import Peer

ORIGIN = {"lat": 45.76, "lon": 4.84}
NEAR = {**ORIGIN, "radius_km": 200, "sort": "distance"}
# A bound on paging, so a cursor that never ends fails instead of looping.
MAX_PAGES = 100


def ad(number: int, *, title: str | None = None, km: float | None = None) -> dict:
    """Ad `number`, about `km` (default: number / 4) north of ORIGIN, exactly placed."""
    north_km = number / 4 if km is None else km
    return {
        "kind": "offer",
        "title": title or f"Bike {number}",
        "body": "A bike.",
        "category": "home.repairs",
        "member": f"m{number}",
        "location": {"lat": ORIGIN["lat"] + north_km / 111.2, "lon": ORIGIN["lon"]},
        "privacy": "exact",
        "currencies": ["HOUR"],
    }


@pytest.fixture
def two(app) -> Iterator[tuple[str, str]]:
    with LiveDirectory(app) as a, LiveDirectory(app) as b:
        yield a.url, b.url


@pytest.fixture
def writer(two, make_portal) -> Iterator[DirectoryClient]:
    portal = make_portal(default_currencies=["EUR"])
    with DirectoryClient(two[0], key=portal.key) as client:
        yield client


def publish(writer: DirectoryClient, ads: dict[str, dict]) -> None:
    result = writer.batch_ads([{"external_id": name, "ad": body} for name, body in ads.items()])
    assert {item.status for item in result.results} <= {"created", "updated"}, result


def page_through(
    search: FederatedSearch,
    *,
    limit: int,
    after_page: Mapping[int, Callable[[], object]] | None = None,
    **filters,
) -> list[tuple[str, str]]:
    """(directory, title) of every hit shown, page after page; `after_page[n]` is called
    after page n (1 for the first), before the next is asked for."""
    after_page = after_page or {}
    shown: list[tuple[str, str]] = []
    cursor = None
    for number in range(1, MAX_PAGES + 1):
        page: FederatedPage = search.search(limit=limit, cursor=cursor, **filters)
        assert not page.partial, page.directories
        assert page.hits or page.next_cursor is None, f"page {number} is empty but not the last"
        shown += [(hit.directory, hit.ad.title) for hit in page.hits]
        if page.next_cursor is None:
            return shown
        if number in after_page:
            after_page[number]()
        cursor = page.next_cursor
    raise AssertionError(f"still paging after {MAX_PAGES} pages")


def titles_now(url: str, **filters) -> list[str]:
    with DirectoryClient(url) as client:
        return [hit.title for hit in client.iter_search(**filters)]


def assert_each_shown_once_per_directory(
    shown: list[tuple[str, str]], directories: tuple[str, str], stayed: set[str]
) -> None:
    counts = Counter(shown)
    repeated = {key: count for key, count in counts.items() if count > 1}
    assert not repeated, f"shown more than once: {repeated}"
    for url in directories:
        missed = stayed - {title for directory, title in shown if directory == url}
        assert not missed, f"never shown from {url}: {sorted(missed)}"


@pytest.mark.parametrize(
    "deleted", [["ad-2"], ["ad-1", "ad-2"], ["ad-2", "ad-3"]], ids=["last", "two-last", "next"]
)
def test_distance_paging_skips_nothing_when_the_last_ad_taken_leaves(two, writer, deleted):
    # Page 1 (limit 4) takes ad-1 and ad-2 from each directory.
    publish(writer, {f"ad-{n}": ad(n) for n in range(1, 11)})
    with FederatedSearch(list(two)) as both:
        shown = page_through(
            both,
            limit=4,
            after_page={1: lambda: [writer.delete_ad(name) for name in deleted]},
            **NEAR,
        )

    assert shown[:4] == [(url, f"Bike {n}") for n in (1, 2) for url in two]
    stayed = set(titles_now(two[0], **NEAR))
    assert_each_shown_once_per_directory(shown, two, stayed)


def test_recent_paging_repeats_nothing_when_the_last_ad_taken_changes(two, writer):
    # Page 1 (limit 4, newest first) takes ad-8 and ad-7 from each directory; ad-7 then
    # changes and comes first in the directory's own order.
    for number in range(1, 9):
        publish(writer, {f"ad-{number}": ad(number)})
    with FederatedSearch(list(two)) as both:
        shown = page_through(
            both,
            limit=4,
            after_page={1: lambda: writer.put_ad("ad-7", ad(7, title="Bike 7 (price changed)"))},
            sort="recent",
        )

    assert [title for _, title in shown[:4]] == ["Bike 8", "Bike 8", "Bike 7", "Bike 7"]
    assert_each_shown_once_per_directory(shown, two, {f"Bike {n}" for n in range(1, 7)})
    assert not any(title.endswith("(price changed)") for _, title in shown)


@pytest.mark.parametrize("km", [0.1, 1.6, 50], ids=["nearer", "a-little-farther", "farthest"])
def test_distance_paging_when_the_last_ad_taken_moves(two, writer, km):
    # ad-2 (0.5 km), the last taken on page 1, moves: nearer, among the ads not shown yet,
    # or farthest of all. The ads that stayed put are each shown once all the same, and
    # ad-2 is not shown again wherever it goes on the page being read.
    publish(writer, {f"ad-{n}": ad(n) for n in range(1, 11)})
    with FederatedSearch(list(two)) as both:
        shown = page_through(
            both,
            limit=4,
            after_page={1: lambda: writer.put_ad("ad-2", ad(2, km=km))},
            **NEAR,
        )

    stayed = {f"Bike {n}" for n in range(1, 11) if n != 2}
    assert_each_shown_once_per_directory(shown, two, stayed)


def test_relevance_paging_skips_and_repeats_nothing_when_taken_ads_change(two, writer):
    # Relevance shows no score to resume after: the hits taken, by id and version, are
    # what the next page goes on after.
    ads = {f"ad-{n}": ad(n, title="Bike " * (12 - n) + f"no. {n}") for n in range(1, 11)}
    publish(writer, ads)
    ranked = titles_now(two[0], q="bike", sort="relevance")
    assert ranked == [ads[f"ad-{n}"]["title"] for n in range(1, 11)]  # the data's sanity

    def change() -> None:  # page 1 took ad-1 and ad-2 from each directory
        writer.delete_ad("ad-2")
        writer.put_ad("ad-1", ad(1, title="Bike no. 1, now rather less of a bike"))

    with FederatedSearch(list(two)) as both:
        shown = page_through(both, limit=4, after_page={1: change}, q="bike")

    stayed = {ads[f"ad-{n}"]["title"] for n in range(3, 11)}
    assert_each_shown_once_per_directory(shown, two, stayed)
    assert not any("rather less" in title for _, title in shown)


def test_ads_added_before_the_cursor_push_none_taken_into_view_again(two, writer):
    # Four pages of 40 take 80 of each directory's first page, read again each time with
    # a limit of 100; then 30 ads come nearer than all. The page read again ends 20 hits
    # before where it ended: the last 10 taken are past its end, on the next page, and
    # must not be shown again there.
    publish(writer, {f"ad-{n}": ad(n) for n in range(1, 151)})

    nearer = {f"new-{n}": ad(1000 + n, km=n / 1000) for n in range(1, 31)}
    with FederatedSearch(list(two)) as both:
        shown = page_through(
            both, limit=40, after_page={4: lambda: publish(writer, nearer)}, **NEAR
        )

    assert_each_shown_once_per_directory(shown, two, {f"Bike {n}" for n in range(1, 151)})


def test_paging_without_changes_shows_every_ad_once_from_each_directory(two, writer):
    publish(writer, {f"ad-{n}": ad(n) for n in range(1, 24)})
    with FederatedSearch(list(two)) as both:
        for limit in (1, 3, 7, 100):
            shown = page_through(both, limit=limit, **NEAR)
            assert shown == [(url, f"Bike {n}") for n in range(1, 24) for url in two]
            recent = page_through(both, limit=limit, sort="recent")
            assert sorted(recent) == sorted(shown)


# --- pages without hits -------------------------------------------------------------------


class Hollow(Peer):
    """A directory in front of `target` that answers its first `hollow_pages` pages (all
    of them if None) with no hits and a next_cursor of its own, then goes on with the
    target's first page: a directory that is broken, or hostile. `asked` counts the
    searches that came."""

    def __init__(self, target: str | None, *, hollow_pages: int | None) -> None:
        super().__init__()
        self.target = target
        self.hollow_pages = hollow_pages
        self.asked = 0

    def handler(self) -> type[BaseHTTPRequestHandler]:
        hollow = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hollow.asked += 1
                url = urlsplit(self.path)
                params = dict(parse_qsl(url.query))
                cursor = params.pop("cursor", "")
                passed = int(cursor.removeprefix("hollow-")) if cursor.startswith("hollow-") else 0
                if not cursor or cursor.startswith("hollow-"):
                    if hollow.hollow_pages is None or passed < hollow.hollow_pages:
                        self._answer(200, {"hits": [], "next_cursor": f"hollow-{passed + 1}"})
                        return
                elif cursor:
                    params["cursor"] = cursor
                answer = httpx.get(f"{hollow.target}{url.path}?{urlencode(params)}")
                self._answer(answer.status_code, orjson.loads(answer.content))

            def _answer(self, status: int, body: dict) -> None:
                content = orjson.dumps({"facets": None, **body})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, *args) -> None:
                pass

        return Handler


def test_a_directory_answering_only_pages_without_hits_is_left_out_of_the_page(two, writer):
    publish(writer, {f"ad-{n}": ad(n) for n in range(1, 6)})
    with (
        Hollow(None, hollow_pages=None) as hollow,
        FederatedSearch([two[0], hollow.origin], timeout_s=5) as both,
    ):
        page = both.search(sort="recent", limit=5)
        asked = hollow.asked
        titles, cursor, pages = [], None, []
        for _ in range(MAX_PAGES):  # not iter_search: a search that never ends fails here
            pages.append(both.search(sort="recent", limit=2, cursor=cursor))
            titles += [hit.ad.title for hit in pages[-1].hits]
            cursor = pages[-1].next_cursor
            if cursor is None:
                break

    assert sorted(hit.ad.title for hit in page.hits) == [f"Bike {n}" for n in range(1, 6)]
    assert page.directories[0].outcome is Outcome.OK
    assert page.directories[1].outcome is Outcome.ERROR
    assert "pages without hits" in page.directories[1].reason
    assert asked == MAX_PAGES_WITHOUT_HITS
    assert page.next_cursor is None  # the one directory that answered has no more
    assert sorted(titles) == [f"Bike {n}" for n in range(1, 6)]
    assert len(pages) == 3 and all(page.partial for page in pages)


@pytest.mark.parametrize("hollow_pages", [1, MAX_PAGES_WITHOUT_HITS - 1])
def test_pages_without_hits_before_the_real_ones_are_read_past_within_the_page(
    two, writer, hollow_pages
):
    publish(writer, {f"ad-{n}": ad(n) for n in range(1, 8)})
    with (
        Hollow(two[1], hollow_pages=hollow_pages) as hollow,
        FederatedSearch([two[0], hollow.origin], timeout_s=5) as both,
    ):
        first = both.search(limit=4, **NEAR)
        shown = page_through(both, limit=4, **NEAR)

    assert [status.outcome for status in first.directories] == [Outcome.OK, Outcome.OK]
    assert [(hit.directory, hit.ad.title) for hit in first.hits] == [
        (url, f"Bike {n}") for n in (1, 2) for url in (two[0], hollow.origin)
    ]
    assert shown == [(url, f"Bike {n}") for n in range(1, 8) for url in (two[0], hollow.origin)]


# --- cursors that lead nowhere --------------------------------------------------------------


class Forgetful(Peer):
    """A directory in front of `target` that drops the cursor of every search (a cache
    keyed without it, say): whatever page is asked for, it answers the first one, with the
    first page's next_cursor. `asked` counts the searches that came."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.asked = 0

    def handler(self) -> type[BaseHTTPRequestHandler]:
        forgetful = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                forgetful.asked += 1
                url = urlsplit(self.path)
                params = [(k, v) for k, v in parse_qsl(url.query) if k != "cursor"]
                answer = httpx.get(f"{forgetful.target}{url.path}?{urlencode(params)}")
                self.send_response(answer.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *args) -> None:
                pass

        return Handler


@pytest.mark.parametrize("limit", [30, 100])
def test_a_directory_whose_cursor_leads_back_is_left_out_rather_than_paged_for_ever(
    two, writer, limit
):
    # More ads than a directory's largest page: the forgetful one's first page says more
    # follow, and the page it gives for that cursor is the first again.
    publish(writer, {f"ad-{n}": ad(n) for n in range(1, 131)})
    with (
        Forgetful(two[1]) as forgetful,
        FederatedSearch([two[0], forgetful.origin], timeout_s=5) as both,
    ):
        pages = []
        cursor = None
        for _ in range(MAX_PAGES):  # not iter_search: a search that never ends fails here
            pages.append(both.search(limit=limit, cursor=cursor, **NEAR))
            cursor = pages[-1].next_cursor
            if cursor is None:
                break
        assert cursor is None, f"still paging after {MAX_PAGES} pages"
        hits = list(both.iter_search(page_size=limit, **NEAR))

    shown = Counter((hit.directory, hit.ad.title) for page in pages for hit in page.hits)
    assert {title: count for (url, title), count in shown.items() if url == two[0]} == {
        f"Bike {n}": 1 for n in range(1, 131)
    }
    # Its first page is read again under the cursor it gave when asked for fewer hits
    # (another cursor, which the search has not moved on to) before the cursor repeats.
    assert max(count for (url, _), count in shown.items() if url == forgetful.origin) <= 2
    failed = [s for page in pages for s in page.directories if s.outcome is not Outcome.OK]
    assert failed and all(s.directory == forgetful.origin for s in failed)
    assert "given before" in failed[0].reason
    assert Counter((hit.directory, hit.ad.title) for hit in hits) == shown
