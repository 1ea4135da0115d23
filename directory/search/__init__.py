"""Search: one query model and one result model, answered by interchangeable engines.

The PostgreSQL engine (`postgres.py`) is the default; the Meilisearch engine
(`meili.py`) serves large deployments. Both implement `SearchEngine` and are held to
the same contract by tests/search/test_contract.py.

What a hit may show is decided once, not in each engine: engines hand over an ad's
stored values, which the API renders as its public schema documents, and a distance
measured from the ad's stored (already snapped) point, which `shown_distance_km`
rounds to its privacy level."""

from __future__ import annotations

import enum
import hashlib
import re
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Protocol

import orjson

from directory import cursors
from directory.errors import InvalidInput
from directory.geo import BBox, Point, Privacy, rounded_distance_km
from directory.models import AdKind

MAX_RADIUS_KM = 1000.0
MAX_LIMIT = 100
DEFAULT_LIMIT = 20
CURSOR_PREFIX = "s1."


def _combining_marks() -> str:
    """The combining marks (categories Mn, Mc, Me) as a regular expression's class body.
    All of them lie in planes 0, 1 and 14 (tests/search/test_words.py checks it against
    the whole of Unicode, which would take 0.15 s to scan at each start; this takes 10 ms)."""
    planes = (range(0x20000), range(0xE0000, 0xE1000))
    marks = [
        code for plane in planes for code in plane if unicodedata.category(chr(code))[0] == "M"
    ]
    ranges: list[list[int]] = []
    for code in marks:
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    return "".join(
        re.escape(chr(first)) + ("" if first == last else "-" + re.escape(chr(last)))
        for first, last in ranges
    )


# What a query's text is searched as, by every engine: its words. Punctuation is no
# operator ("-bike" does not exclude, quotes make no phrase), as in PostgreSQL's tsquery.
# A word goes on through the combining marks of its letters, as PostgreSQL's parser reads
# an ad's words: Python's \w takes no mark, and split हिन्दी into ह, न and द (Devanagari's
# vowel signs and virama are marks, as are Tamil's and Hebrew's points, and the accents
# of a decomposed "ve\u0301lo"), which found other ads and not the one with the word.
WORD = re.compile(rf"\w[\w{_combining_marks()}]*")
# Different words a query may have (case aside; a repeat counts once). Every word must
# match, so longer queries find next to nothing, and ranking's cost grows steeply with
# words that match the same places ("de dé dè dê …" are one word once unaccented).
MAX_QUERY_WORDS = 16


def query_words(text: str) -> list[str]:
    """The query's different words, case-folded, each once, in their order: a repeat adds
    nothing to which ads match, and only cost to ranking them."""
    return list(dict.fromkeys(WORD.findall(text.casefold())))


class Sort(enum.StrEnum):
    DISTANCE = "distance"  # nearest first; needs a point
    RELEVANCE = "relevance"  # best text match first; needs q
    RECENT = "recent"  # most recently changed first


class Facet(enum.StrEnum):
    CATEGORY = "category"
    KIND = "kind"
    CURRENCY = "currency"
    PORTAL = "portal"


@dataclass(frozen=True)
class PriceRange:
    currency: str
    minimum: Decimal | None = None
    maximum: Decimal | None = None


@dataclass(frozen=True)
class SortKey:
    """Where a page ended: the sort value of its last hit, and its id to break ties.

    Paging continues strictly after this key, so ads that change or disappear between
    two requests never make a page repeat or skip the ads that stayed put."""

    value: float | str  # metres, relevance score, or updated_at as ISO text
    ad_id: uuid.UUID


@dataclass(frozen=True, kw_only=True)
class SearchQuery:
    text: str | None = None
    point: Point | None = None
    radius_km: float | None = None
    bbox: BBox | None = None
    kinds: tuple[AdKind, ...] = ()
    # Already expanded: a group stands for itself and all its children.
    categories: tuple[str, ...] = ()
    # As asked: each engine folds the case of both sides alike (PostgreSQL's lower() and
    # Python's are not the same for every letter, casefold() differs from both).
    tags: tuple[str, ...] = ()
    currencies: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()  # lower case; "fr" also matches "fr-ca"
    portals: tuple[str, ...] = ()  # slugs
    updated_since: datetime | None = None
    has_price: bool | None = None
    # Ads whose advertiser can be paid on their portal's ledger (or, False, cannot).
    payable: bool | None = None
    price: PriceRange | None = None
    sort: Sort = Sort.RECENT
    limit: int = DEFAULT_LIMIT
    after: SortKey | None = None
    facets: tuple[Facet, ...] = ()
    # The authenticated portal, whose own portal-only ads are included.
    viewer_portal_id: int | None = None

    @property
    def has_area(self) -> bool:
        return self.radius_km is not None or self.bbox is not None

    @property
    def includes_hidden(self) -> bool:
        """Hidden ads have no location: never in an area, never ordered by distance."""
        return not self.has_area and self.sort is not Sort.DISTANCE

    def continued_after(self, key: SortKey) -> SearchQuery:
        return replace(self, after=key)

    def fingerprint(self) -> str:
        """What a cursor is bound to: everything that selects or orders the hits."""
        parts = {
            "text": self.text,
            "point": None if self.point is None else [self.point.lat, self.point.lon],
            "radius_km": self.radius_km,
            "bbox": None
            if self.bbox is None
            else [self.bbox.west, self.bbox.south, self.bbox.east, self.bbox.north],
            "kinds": sorted(self.kinds),
            "categories": sorted(self.categories),
            "tags": sorted(tag.lower() for tag in self.tags),
            "currencies": sorted(self.currencies),
            "languages": sorted(self.languages),
            "portals": sorted(self.portals),
            "updated_since": None if self.updated_since is None else self.updated_since.isoformat(),
            "has_price": self.has_price,
            "price": None
            if self.price is None
            else [self.price.currency, str(self.price.minimum), str(self.price.maximum)],
            "sort": self.sort.value,
            "viewer": self.viewer_portal_id,
        }
        if self.payable is not None:  # only when set: cursors from before it existed hold
            parts["payable"] = self.payable
        digest = hashlib.blake2b(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS), digest_size=8)
        return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One ad found, as its values in RECORD_COLUMNS' order (see `record_from_row`),
    which the API renders straight away: building an AdRecord for each hit only to
    render it cost another 8-10 µs a hit, 0.2 ms on a page of 20."""

    row: Sequence
    distance_m: float | None = None  # from the query's point to the ad's stored point


def shown_distance_km(distance_m: float | None, privacy: Privacy | str) -> float | None:
    """The distance a hit shows: rounded to its privacy level, none for a hidden ad.
    The privacy may be its text, as read without SQLAlchemy's types."""
    if distance_m is None or privacy == Privacy.HIDDEN:
        return None
    return rounded_distance_km(distance_m, privacy)


@dataclass(frozen=True)
class Facets:
    total: int
    counts: dict[Facet, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchPage:
    hits: list[SearchHit]
    next_cursor: str | None
    facets: Facets | None = None


class SearchEngine(Protocol):
    """Answers a search. Implementations differ in where the index lives, never in
    which ads they return or in what order."""

    name: str

    def search(self, query: SearchQuery) -> SearchPage: ...


# --- cursors -----------------------------------------------------------------------------


def encode_cursor(query: SearchQuery, key: SortKey) -> str:
    raw = orjson.dumps([query.fingerprint(), key.value, key.ad_id.hex])
    return cursors.encode(CURSOR_PREFIX, raw)


def decode_cursor(query: SearchQuery, cursor: str) -> SortKey:
    """The key a cursor continues after; refused when it came from another query."""

    def problem(message: str) -> InvalidInput:
        return InvalidInput(
            message, field="cursor", code="invalid_cursor", details={"location": "query"}
        )

    try:
        fingerprint, value, ad_hex = orjson.loads(cursors.decode(CURSOR_PREFIX, cursor))
        if not isinstance(ad_hex, str):
            raise TypeError
        ad_id = uuid.UUID(hex=ad_hex)
    except (ValueError, TypeError):  # orjson.JSONDecodeError is a ValueError
        raise problem("cursor must be a next_cursor returned by GET /v1/search") from None
    expected_type = str if query.sort is Sort.RECENT else float
    if isinstance(value, int) and expected_type is float:
        value = float(value)
    if not isinstance(fingerprint, str) or not isinstance(value, expected_type):
        raise problem("cursor must be a next_cursor returned by GET /v1/search")
    if query.sort is Sort.RECENT:
        try:
            cursors.aware_time(value)
        except ValueError:
            raise problem("cursor must be a next_cursor returned by GET /v1/search") from None
    if fingerprint != query.fingerprint():
        raise problem(
            "cursor belongs to a different search: repeat the same parameters "
            "(only limit may change) or start again without a cursor"
        )
    return SortKey(value, ad_id)
