"""The Meilisearch engine: the PostgreSQL engine's answers, from an index that the
worker keeps in step with the change feed (directory/search/indexing.py).

Meilisearch selects and orders; PostgreSQL renders. A hit from Meilisearch is only an
ad id with its sort values; the ads of a page are then loaded with `get_public_rows`,
in one query, which keeps one rendering path for both engines and checks again, at
read time, that each ad is still public, unexpired and of an active portal (the index
follows the database about a second behind). Facet counts come from Meilisearch alone.

Everything sent to Meilisearch is built by pure functions (`document`, `query_filter`,
`search_params` and the keyset filters) so that tests check them without a server.

Where Meilisearch cannot give exactly the PostgreSQL answer, and what we do about it:
- Distances. Meilisearch measures on a sphere of 6,371,000 m (the geoutils crate),
  PostGIS on one of 6,371,008.7714 m: radii are scaled by the ratio of the two, so the
  same ads fall inside. Its distance sort puts ads less than a metre apart in one
  bucket ordered by the next sort rule: the engine reads a window of hits, measures
  each with `haversine_m` and sorts it exactly, keeping only the part of the window
  that no unread hit can precede (see `DISTANCE_BAND_M`).
- Words and relevance: Meilisearch's own matching (prefixes, typos, all words
  required) and ranking, not PostgreSQL's stemming and trigram similarity. A
  relevance cursor cannot be a filter (ranking scores are not filterable): the next
  page is found by reading the hits again up to the cursor's ad, so relevance paging
  ends at `MAX_TOTAL_HITS` hits, and when the cursor's ad has meanwhile left the index
  or changed its score the page continues after the score it had (ads tied with it are
  then taken as shown, there being no id order among them to tell).
- Ties on sort values are broken by id as in PostgreSQL, through three numeric fields
  that split the UUID (`id_parts`): Meilisearch compares numbers exactly, while its
  string comparisons are recent (v1.15) and have open bugs.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import meilisearch
import requests
from meilisearch.errors import MeilisearchApiError, MeilisearchError
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from directory.db import make_session_factory
from directory.errors import DirectoryError
from directory.geo import EARTH_RADIUS_M, BBox, Point, haversine_m
from directory.search import (
    WORD,
    Facet,
    Facets,
    SearchHit,
    SearchPage,
    SearchQuery,
    Sort,
    SortKey,
    encode_cursor,
)
from directory.search.postgres import PostgresSearch
from directory.services.ads import AdRecord, get_public_rows
from directory.settings import Settings

log = logging.getLogger("directory.search.meili")

INDEX_NAME = "ads"
PRIMARY_KEY = "id"
# Per HTTP request to Meilisearch; a search or a document batch takes far less.
MEILISEARCH_TIMEOUT_S = 10
# What failing to get an answer from Meilisearch raises. The client wraps refused
# connections, timeouts and error statuses in MeilisearchError, but lets through
# requests' own errors for an answer cut short (ChunkedEncodingError) or not JSON.
UNAVAILABLE_ERRORS = (MeilisearchError, requests.RequestException)
TASK_POLL_INTERVAL_MS = 50

# Meilisearch's haversine uses this radius (geoutils); ours is PostGIS's (geo.py).
MEILISEARCH_EARTH_RADIUS_M = 6_371_000.0
RADIUS_SCALE = MEILISEARCH_EARTH_RADIUS_M / EARTH_RADIUS_M
# How far Meilisearch's distance order may stray from the exact one: it buckets hits
# within 1 m of each other (ordered by id inside a bucket), with fewer than 1,000
# candidates it sorts by whole metres first, and its haversine loses centimetres at
# short range. An unread hit is never nearer than the last read one minus this band.
DISTANCE_BAND_M = 3.0

# The deepest a search may page; Meilisearch's default is 1,000 and its docs warn that
# much beyond 20,000 makes deep pages slow. Keyset paging (recent, distance) reads each
# page from the top of its own filter, so only relevance paging is bounded by it.
MAX_TOTAL_HITS = 10_000
# PostgreSQL returns every facet value; Meilisearch returns at most this many per facet
# (default 100), the most frequent first.
MAX_FACET_VALUES = 10_000

# The UUID's 128 bits as three numbers below 2**53, which a float (Meilisearch stores
# numbers as f64) holds exactly. Compared in this order, they order ids as PostgreSQL
# orders uuids (bytewise).
ID_PART_BITS = (43, 43, 42)
ID_FIELDS = ("id_hi", "id_mid", "id_lo")

SEARCHABLE_ATTRIBUTES = ["title", "tags", "body"]
FILTERABLE_ATTRIBUTES = [
    "_geo",
    "category",
    "category_group",
    "currencies",
    "expires_at_ts",
    "has_location",
    "has_price",
    "id",
    *ID_FIELDS,
    "kind",
    "language",
    "language_primary",
    "lat",
    "lng",
    "payable",
    "portal",
    "price_amount",
    "price_currency",
    "tags",
    "updated_at_ts",
]
SORTABLE_ATTRIBUTES = ["_geo", "updated_at_ts", *ID_FIELDS]
# "sort" first: a sorted search (recent, distance) is ordered by its sort alone, as in
# PostgreSQL, the words only selecting; a relevance search sends no sort, so the
# rule is idle and the word rules order it.
RANKING_RULES = ["sort", "words", "typo", "proximity", "attribute", "exactness"]
INDEX_SETTINGS: dict[str, Any] = {
    "searchableAttributes": SEARCHABLE_ATTRIBUTES,
    "filterableAttributes": FILTERABLE_ATTRIBUTES,
    "sortableAttributes": SORTABLE_ATTRIBUTES,
    "rankingRules": RANKING_RULES,
    "faceting": {"maxValuesPerFacet": MAX_FACET_VALUES, "sortFacetValuesBy": {"*": "count"}},
    "pagination": {"maxTotalHits": MAX_TOTAL_HITS},
}
# Which document attribute each facet counts.
FACET_ATTRIBUTES = {
    Facet.CATEGORY: "category",
    Facet.KIND: "kind",
    Facet.CURRENCY: "currencies",
    Facet.PORTAL: "portal",
}
# Every document has exactly one kind: the sum of its counts is the exact total, where
# Meilisearch's totalHits stops at maxTotalHits.
TOTAL_FACET = "kind"
# What the engine reads of a hit: its id and sort values, never the ad itself.
HIT_ATTRIBUTES = ["id", "updated_at_ts", "_geo", *ID_FIELDS]
# Whole words, as PostgreSQL requires every word of q.
MATCHING_STRATEGY = "all"
# A relevance page is found by reading the hits from the top: in windows this large.
RELEVANCE_WINDOW = 200

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


class SearchUnavailable(DirectoryError):
    status = 503
    code = "search_unavailable"


class IndexingError(Exception):
    """A Meilisearch task failed or did not finish in time; the message says which."""


# --- documents ----------------------------------------------------------------------------


def epoch_us(moment: datetime) -> int:
    """Microseconds since 1970, exact (timestamptz's precision; below 2**53 until 2255)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // MICROSECOND


def from_epoch_us(value: int | float) -> datetime:
    return EPOCH + timedelta(microseconds=int(value))


def id_parts(ad_id: uuid.UUID) -> tuple[int, int, int]:
    value = ad_id.int
    parts = []
    shift = 128
    for bits in ID_PART_BITS:
        shift -= bits
        parts.append((value >> shift) & ((1 << bits) - 1))
    return parts[0], parts[1], parts[2]


def id_from_parts(parts: Iterable[int]) -> uuid.UUID:
    value = 0
    for part, bits in zip(parts, ID_PART_BITS, strict=True):
        value = (value << bits) | int(part)
    return uuid.UUID(int=value)


def document(ad: AdRecord) -> dict[str, Any]:
    """The ad as indexed: what filters, sorts, facets and words need, nothing more."""
    hi, mid, lo = id_parts(ad.id)
    language = None if ad.language is None else ad.language.lower()
    price = ad.price
    doc: dict[str, Any] = {
        "id": str(ad.id),
        "id_hi": hi,
        "id_mid": mid,
        "id_lo": lo,
        "portal": ad.portal,
        "kind": ad.kind.value,
        "category": ad.category,
        "category_group": ad.category.partition(".")[0],
        "title": ad.title,
        "body": ad.body,
        "tags": [tag.lower() for tag in ad.tags],
        "currencies": list(ad.currencies),
        "language": language,
        "language_primary": None if language is None else language.split("-")[0],
        "has_price": price is not None,
        # Numeric(14, 4): at most 14 digits, so float order is the decimal order.
        "price_amount": None if price is None else float(price.amount),
        "price_currency": None if price is None else price.currency,
        "updated_at_ts": epoch_us(ad.updated_at),
        "expires_at_ts": epoch_us(ad.expires_at),
        "has_location": ad.location is not None,
        # The portal's ledger is part of the ad's public view: registering or removing
        # it republishes the portal's ads with accounts through the change feed.
        "payable": ad.payment is not None,
    }
    if ad.location is not None:
        # Hidden ads have no _geo: geo filters leave them out, as PostgreSQL does.
        doc["_geo"] = {"lat": ad.location.lat, "lng": ad.location.lon}
        # The same point as plain numbers, for the distance cursor's "same place" test.
        doc["lat"] = ad.location.lat
        doc["lng"] = ad.location.lon
    return doc


# --- filter expressions -------------------------------------------------------------------


def quote(value: str) -> str:
    """A string value for a filter, always double-quoted: the parser reads \\" as a quote
    and then unescapes backslashes, so both are escaped (backslashes first)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def number(value: int | float | Decimal) -> str:
    """A number in plain decimal notation (never 1e-05), exactly as Python holds it."""
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number here")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        value = Decimal(repr(value))
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def search_words(query: SearchQuery) -> str:
    """The query's words alone: Meilisearch reads a leading "-" as exclusion and quotes as
    a phrase, where PostgreSQL finds the words."""
    return " ".join(WORD.findall(query.text or ""))


def any_of(attribute: str, values: Iterable[str]) -> str:
    return f"{attribute} IN [{', '.join(quote(value) for value in values)}]"


def geo_radius(point: Point, metres: float) -> str:
    """Within `metres` of `point` as PostGIS measures (Meilisearch's radius is scaled)."""
    return f"_geoRadius({number(point.lat)}, {number(point.lon)}, {number(metres * RADIUS_SCALE)})"


def geo_box(box: BBox) -> str:
    """Inside the box; one crossing the antimeridian is sent as its two halves, rather
    than relying on how each Meilisearch version reads a box whose west is east of its
    east (recent versions wrap it; the code doing so carries a TODO). A box ending on
    the antimeridian also takes its other spelling, as a box of no width: Meilisearch
    reads a box as inclusive ranges of _geo.lat and _geo.lng."""
    parts = [
        f"_geoBoundingBox([{number(box.north)}, {number(east)}], [{number(box.south)}, {number(west)}])"
        for west, east in box.lon_ranges()
    ]
    return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"


def query_filter(query: SearchQuery, *, now: datetime) -> list[str]:
    """Everything that selects ads, as conditions Meilisearch ANDs together; the same
    selection as directory.search.postgres.filters (less what the index holds anyway:
    only public ads of active portals are indexed)."""
    conditions = [f"expires_at_ts > {epoch_us(now)}"]
    if not query.includes_hidden:
        conditions.append("has_location = true")
    if query.radius_km is not None:
        conditions.append(geo_radius(query.point, query.radius_km * 1000.0))
    if query.bbox is not None:
        conditions.append(geo_box(query.bbox))
    if query.kinds:
        conditions.append(any_of("kind", (kind.value for kind in query.kinds)))
    if query.categories:
        conditions.append(any_of("category", query.categories))
    if query.tags:
        conditions.append(any_of("tags", (tag.lower() for tag in query.tags)))
    if query.currencies:
        conditions.append(any_of("currencies", query.currencies))
    if query.languages:
        primaries = [code for code in query.languages if "-" not in code]
        language = any_of("language", query.languages)
        if primaries:
            # "fr" also finds "fr-CA".
            language = f"({language} OR {any_of('language_primary', primaries)})"
        conditions.append(language)
    if query.portals:
        conditions.append(any_of("portal", query.portals))
    if query.updated_since is not None:
        conditions.append(f"updated_at_ts >= {epoch_us(query.updated_since)}")
    if query.has_price is not None:
        conditions.append(f"has_price = {'true' if query.has_price else 'false'}")
    if query.payable is not None:
        conditions.append(f"payable = {'true' if query.payable else 'false'}")
    if query.price is not None:
        conditions.append(f"price_currency = {quote(query.price.currency)}")
        if query.price.minimum is not None:
            conditions.append(f"price_amount >= {number(query.price.minimum)}")
        if query.price.maximum is not None:
            conditions.append(f"price_amount <= {number(query.price.maximum)}")
    return conditions


def id_before(ad_id: uuid.UUID, *, inclusive: bool = False) -> str:
    """Ids ordered before `ad_id` (or equal to it, when inclusive), part by part."""
    hi, mid, lo = (number(part) for part in id_parts(ad_id))
    last = "<=" if inclusive else "<"
    return (
        f"(id_hi < {hi} OR (id_hi = {hi} AND id_mid < {mid}) "
        f"OR (id_hi = {hi} AND id_mid = {mid} AND id_lo {last} {lo}))"
    )


def recent_after(key: SortKey) -> str:
    """Hits after `key` in most-recent-first order: older, or as old with a lower id."""
    changed = epoch_us(datetime.fromisoformat(str(key.value)))
    return f"(updated_at_ts < {changed} OR (updated_at_ts = {changed} AND {id_before(key.ad_id)}))"


def nearest_after(point: Point, key: SortKey, key_point: Point | None) -> list[str]:
    """A superset of the hits after `key` in nearest-first order (the caller drops the
    rest by exact distance): none nearer than the key by more than the band, and none
    at the key's own point with an id up to the key's. The second condition is exact
    (same point, same distance) and skips piles of ads snapped to one cell centre."""
    conditions = []
    nearer = float(key.value) - DISTANCE_BAND_M
    if nearer > 0:
        conditions.append(f"NOT {geo_radius(point, nearer)}")
    if key_point is not None:
        conditions.append(
            f"NOT (lat = {number(key_point.lat)} AND lng = {number(key_point.lon)} "
            f"AND {id_before(key.ad_id, inclusive=True)})"
        )
    return conditions


def sort_rules(query: SearchQuery) -> list[str] | None:
    ids = [f"{field}:{'desc' if query.sort is Sort.RECENT else 'asc'}" for field in ID_FIELDS]
    if query.sort is Sort.RECENT:
        return ["updated_at_ts:desc", *ids]
    if query.sort is Sort.DISTANCE:
        point = query.point
        return [f"_geoPoint({number(point.lat)}, {number(point.lon)}):asc", *ids]
    return None  # relevance: the ranking rules


def search_params(
    query: SearchQuery,
    *,
    now: datetime,
    after: Sequence[str] = (),
    limit: int,
    offset: int = 0,
) -> dict[str, Any]:
    """The body of one search request (besides q) for a window of hits."""
    params: dict[str, Any] = {
        "filter": [*query_filter(query, now=now), *after],
        "limit": limit,
        "offset": offset,
        "attributesToRetrieve": HIT_ATTRIBUTES,
        "matchingStrategy": MATCHING_STRATEGY,
    }
    sort = sort_rules(query)
    if sort is not None:
        params["sort"] = sort
    if query.sort is Sort.RELEVANCE:
        params["showRankingScore"] = True
    return params


def facet_params(query: SearchQuery, *, now: datetime) -> dict[str, Any]:
    """Counts over the whole result set (no cursor), no hits."""
    names = {FACET_ATTRIBUTES[facet] for facet in query.facets} | {TOTAL_FACET}
    return {
        "filter": query_filter(query, now=now),
        "limit": 0,
        "facets": sorted(names),
        "matchingStrategy": MATCHING_STRATEGY,
    }


def facets_from_distribution(query: SearchQuery, distribution: Mapping[str, Mapping]) -> Facets:
    """PostgreSQL's facet shape: a group's count includes its children's ads; values by
    count, then by name."""
    counts: dict[Facet, dict[str, int]] = {}
    for facet in query.facets:
        bucket = {
            str(value): int(count)
            for value, count in distribution.get(FACET_ATTRIBUTES[facet], {}).items()
        }
        if facet is Facet.CATEGORY:
            for code, count in list(bucket.items()):
                group, dot, _ = code.partition(".")
                if dot:
                    bucket[group] = bucket.get(group, 0) + count
        counts[facet] = dict(sorted(bucket.items(), key=lambda item: (-item[1], item[0])))
    total = sum(int(count) for count in distribution.get(TOTAL_FACET, {}).values())
    return Facets(total=total, counts=counts)


# --- the engine ---------------------------------------------------------------------------


def in_place(query: SearchQuery, point: Point | None) -> bool:
    """Whether an ad at `point` (None: hidden) is in the query's area, or may be in its
    distance order. The index is a second behind the database, hours when no worker
    runs: an ad made hidden since, or moved, is still where it was in it, and would show
    in an area (or nearest first) that its stored place is not in."""
    if point is None:
        return query.includes_hidden
    if query.radius_km is not None:
        return haversine_m(query.point, point) <= query.radius_km * 1000.0
    if query.bbox is not None:
        box = query.bbox
        return box.south <= point.lat <= box.north and any(
            west <= point.lon <= east for west, east in box.lon_ranges()
        )
    return True


@dataclass(frozen=True, slots=True)
class _Candidate:
    """A hit as Meilisearch ranked it: the ad's id, its sort key and indexed point."""

    ad_id: uuid.UUID
    key: SortKey
    point: Point | None


def _point_of(hit: Mapping) -> Point | None:
    geo = hit.get("_geo")
    return None if not geo else Point(float(geo["lat"]), float(geo["lng"]))


def _recent_key(hit: Mapping) -> SortKey:
    return SortKey(from_epoch_us(hit["updated_at_ts"]).isoformat(), uuid.UUID(hit["id"]))


def _recent_is_after(key: SortKey, after: SortKey) -> bool:
    mine, theirs = datetime.fromisoformat(str(key.value)), datetime.fromisoformat(str(after.value))
    return mine < theirs or (mine == theirs and key.ad_id < after.ad_id)


def _batches(items: Iterator[_Candidate], size: int) -> Iterator[list[_Candidate]]:
    while batch := list(itertools.islice(items, size)):
        yield batch


class MeiliSearch:
    """The SearchEngine on Meilisearch.

    A search by a portal for its own portal-only ads (`viewer_portal_id` set) is
    answered by the PostgreSQL engine on the same database: those ads are not in the
    change feed, so never in the index, and a portal must see its own ads at once."""

    name = "meilisearch"

    def __init__(
        self,
        client: meilisearch.Client,
        *,
        database: Engine,
        index_name: str = INDEX_NAME,
    ):
        self.client = client
        self.index_name = index_name
        self._session_factory = make_session_factory(database)
        self._portal_view = PostgresSearch(database)
        # Whether this process has checked (and, if need be, created and configured) the
        # live index: once is enough, settings only change with a deploy.
        self.prepared = False

    @classmethod
    def from_settings(cls, settings: Settings, *, database: Engine) -> MeiliSearch:
        client = meilisearch.Client(
            settings.meilisearch_url,
            settings.meilisearch_key or None,
            timeout=MEILISEARCH_TIMEOUT_S,
        )
        return cls(client, database=database, index_name=settings.meilisearch_index)

    # --- searching --------------------------------------------------------------------

    def search(self, query: SearchQuery) -> SearchPage:
        if query.viewer_portal_id is not None:
            return self._portal_view.search(query)
        now = datetime.now(UTC)
        try:
            with self._session_factory() as session, session.begin():
                hits, keys, more = self._page(session, query, self._candidates(query, now))
            facets = self._facets(query, now) if query.facets else None
        except UNAVAILABLE_ERRORS as error:
            # The details (addresses, Meilisearch's own messages) go to the log only.
            log.exception("Meilisearch search failed")
            raise SearchUnavailable("search is unavailable; retry shortly") from error
        cursor = encode_cursor(query, keys[-1]) if more and hits else None
        return SearchPage(hits=hits, next_cursor=cursor, facets=facets)

    def _page(self, session: Session, query: SearchQuery, candidates: Iterator[_Candidate]):
        """The first `limit` candidates that are still public (checked in PostgreSQL,
        one query per batch, normally one), and whether a further one exists."""
        hits: list[SearchHit] = []
        keys: list[SortKey] = []
        for batch in _batches(candidates, query.limit + 1):
            rows = get_public_rows(session, ad_ids=[candidate.ad_id for candidate in batch])
            for candidate in batch:
                row = rows.get(candidate.ad_id)
                if row is None:
                    continue  # left public view since it was indexed
                place = None if row.lat is None else Point(row.lat, row.lon)
                if not in_place(query, place):
                    continue  # made hidden or moved since it was indexed
                if len(hits) == query.limit:
                    return hits, keys, True
                distance = None
                if query.point is not None and place is not None:
                    distance = haversine_m(query.point, place)
                hits.append(SearchHit(row, distance_m=distance))
                keys.append(candidate.key)
        return hits, keys, False

    def _candidates(self, query: SearchQuery, now: datetime) -> Iterator[_Candidate]:
        if query.sort is Sort.DISTANCE:
            return self._nearest(query, now)
        if query.sort is Sort.RELEVANCE:
            return self._most_relevant(query, now)
        return self._most_recent(query, now)

    def _hits(self, query: SearchQuery, params: dict[str, Any]) -> list[dict]:
        return self.client.index(self.index_name).search(search_words(query), params)["hits"]

    def _most_recent(self, query: SearchQuery, now: datetime) -> Iterator[_Candidate]:
        after = query.after
        window = query.limit + 1
        while True:
            extra = [] if after is None else [recent_after(after)]
            hits = self._hits(query, search_params(query, now=now, after=extra, limit=window))
            progressed = False
            for hit in hits:
                key = _recent_key(hit)
                if after is not None and not _recent_is_after(key, after):
                    continue  # the filter is a bound; order is checked here exactly
                progressed = True
                yield _Candidate(key.ad_id, key, _point_of(hit))
                after = key
            if len(hits) < window or not progressed:
                return
            window = min(window * 2, MAX_TOTAL_HITS)

    def _nearest(self, query: SearchQuery, now: datetime) -> Iterator[_Candidate]:
        point = query.point
        after = query.after
        key_point = None if after is None else self._key_point(point, after)
        window = query.limit + 1
        while True:
            extra = [] if after is None else nearest_after(point, after, key_point)
            hits = self._hits(query, search_params(query, now=now, after=extra, limit=window))
            measured = []
            for hit in hits:
                hit_point = _point_of(hit)
                if hit_point is None:
                    continue
                key = SortKey(haversine_m(point, hit_point), uuid.UUID(hit["id"]))
                if after is None or (key.value, key.ad_id) > (after.value, after.ad_id):
                    measured.append(_Candidate(key.ad_id, key, hit_point))
            measured.sort(key=lambda candidate: (candidate.key.value, candidate.key.ad_id))
            if len(hits) < window:
                yield from measured  # everything left was read
                return
            # Hits not read yet are at least this far: the sure part of the window.
            last = _point_of(hits[-1])
            horizon = haversine_m(point, last) - DISTANCE_BAND_M if last else float("inf")
            sure = [candidate for candidate in measured if candidate.key.value < horizon]
            if not sure and window < MAX_TOTAL_HITS:
                window = min(window * 4, MAX_TOTAL_HITS)
                continue
            if not sure:
                # A pile deeper than Meilisearch will rank: take the window as it is.
                sure = measured
                if not sure:
                    return
            yield from sure
            after, key_point = sure[-1].key, sure[-1].point

    def _key_point(self, point: Point, key: SortKey) -> Point | None:
        """The indexed point of the cursor's ad, if it is still where the cursor measured
        it (its distance identical), to skip the ads at that point up to its id."""
        try:
            found = dict(
                self.client.index(self.index_name).get_document(
                    str(key.ad_id), {"fields": ["_geo"]}
                )
            )
        except MeilisearchApiError as error:
            if error.code == "document_not_found":
                return None
            raise
        key_point = _point_of(found)
        if key_point is None or haversine_m(point, key_point) != key.value:
            return None
        return key_point

    def _most_relevant(self, query: SearchQuery, now: datetime) -> Iterator[_Candidate]:
        after = query.after
        passed = after is None
        window = max(query.limit + 1, RELEVANCE_WINDOW)
        offset = 0
        while offset < MAX_TOTAL_HITS:
            params = search_params(query, now=now, limit=window, offset=offset)
            hits = self._hits(query, params)
            for hit in hits:
                key = SortKey(float(hit.get("_rankingScore", 0.0)), uuid.UUID(hit["id"]))
                if not passed:
                    if key == after:
                        passed = True  # the cursor's ad, scored as it was
                        continue
                    # Ranked before the cursor: shown already, as was the cursor's ad
                    # itself should it rank higher now (edited since): taken as the
                    # cursor there, it made the ads it had come after repeat.
                    if key.value >= after.value:
                        continue
                    passed = True  # the cursor's ad is gone or fell: go on after its score
                yield _Candidate(key.ad_id, key, _point_of(hit))
            if len(hits) < window:
                return
            offset += window

    def _facets(self, query: SearchQuery, now: datetime) -> Facets:
        result = self.client.index(self.index_name).search(
            search_words(query), facet_params(query, now=now)
        )
        return facets_from_distribution(query, result.get("facetDistribution") or {})

    # --- index management (used by directory/search/indexing.py) ------------------------

    def wait(self, task: Any, *, timeout_s: float) -> None:
        """Wait for a task (a TaskInfo) and fail unless it succeeded."""
        done = self.client.wait_for_task(
            task.task_uid,
            timeout_in_ms=int(timeout_s * 1000),
            interval_in_ms=TASK_POLL_INTERVAL_MS,
        )
        if done.status != "succeeded":
            raise IndexingError(
                f"Meilisearch task {done.uid} ({done.type}) on {done.index_uid} "
                f"{done.status}: {done.error}"
            )

    def index_exists(self, uid: str) -> bool:
        try:
            self.client.get_raw_index(uid)
        except MeilisearchApiError as error:
            if error.code == "index_not_found":
                return False
            raise
        return True

    def create_index(self, uid: str, *, timeout_s: float) -> None:
        self.wait(self.client.create_index(uid, {"primaryKey": PRIMARY_KEY}), timeout_s=timeout_s)
        self.configure(uid, timeout_s=timeout_s)

    def drop_index(self, uid: str, *, timeout_s: float) -> None:
        if self.index_exists(uid):
            self.wait(self.client.delete_index(uid), timeout_s=timeout_s)

    def configure(self, uid: str, *, timeout_s: float) -> bool:
        """Bring the index's settings to INDEX_SETTINGS; nothing is sent when they are
        already so (a settings change makes Meilisearch re-index). True if changed."""
        changes = settings_changes(self.client.index(uid).get_settings(), INDEX_SETTINGS)
        if changes:
            self.wait(self.client.index(uid).update_settings(changes), timeout_s=timeout_s)
        return bool(changes)

    def prepare(self, *, timeout_s: float) -> bool:
        """Make sure the live index exists; True when it must be rebuilt: created just
        now (empty), or found with other settings than ours. Those change with a release
        that indexes something new (payable came so), and the documents in the index
        were made by the release before: given the new settings in place, Meilisearch
        would re-index them still without what the new release filters on. A rebuild
        sends every document anew into a fresh index made with our settings. (A change
        to `document` alone, with the same settings, needs `directory reindex`.)"""
        if self.index_exists(self.index_name):
            current = self.client.index(self.index_name).get_settings()
            stale = bool(settings_changes(current, INDEX_SETTINGS))
        else:
            self.create_index(self.index_name, timeout_s=timeout_s)
            stale = True
        self.prepared = True
        return stale

    def put_documents(self, uid: str, documents: list[dict]):
        """Add or replace whole documents; returns the task to wait for."""
        return self.client.index(uid).add_documents(documents, primary_key=PRIMARY_KEY)

    def delete_documents(self, uid: str, ad_ids: list[uuid.UUID]):
        """Delete documents by id (by filter: deleting by a list of ids is deprecated in
        the client); returns the task to wait for."""
        return self.client.index(uid).delete_documents(
            filter=any_of("id", (str(ad_id) for ad_id in ad_ids))
        )

    def delete_expired(self, uid: str, *, now: datetime):
        """Delete the documents of ads whose expiry has passed; returns the task."""
        return self.client.index(uid).delete_documents(filter=f"expires_at_ts <= {epoch_us(now)}")

    def swap(self, first: str, second: str, *, timeout_s: float) -> None:
        self.wait(self.client.swap_indexes([{"indexes": [first, second]}]), timeout_s=timeout_s)


def settings_changes(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
    """The part of `wanted` that differs from `current`. Attribute lists whose order
    does not matter are compared as sets (Meilisearch returns them sorted); nested
    settings only on the keys we set."""
    unordered = {"filterableAttributes", "sortableAttributes"}
    changes = {}
    for name, value in wanted.items():
        present = current.get(name)
        if name in unordered:
            same = isinstance(present, list) and set(map(str, present)) == set(value)
        elif isinstance(value, dict):
            same = isinstance(present, dict) and all(present.get(k) == v for k, v in value.items())
        else:
            same = present == value
        if not same:
            changes[name] = value
    return changes
