"""Several directories searched as one: regional or topical directories beside a global one.

    with FederatedSearch(["https://annuaire.example.org", "https://lyon.example.org"]) as both:
        page = both.search(lat=45.76, lon=4.84, radius_km=10, limit=20)
        for hit in page.hits:
            print(hit.directory, hit.ad.title, hit.ad.distance_km)
        if page.partial:
            print([status for status in page.directories if status.outcome != "ok"])

Each page asks every directory at once (one thread each over the sync clients) and waits
at most `timeout_s`: a directory that is down or slower yields a page marked `partial`,
with its reason, never an exception; only when no directory asked answers does the page
raise `FederationError` (its cursor stays good for another try). A cursor of another
search raises `InvalidFederatedCursor`.

The merge follows the sort: `distance` nearest first (`distance_km`), `recent` by
`updated_at`, newest first, ties in the order the directories were given; `relevance`
takes turns, one ad from each directory in turn by that directory's own rank (ranks of
different engines cannot be compared, turns are fair). An ad published in several
directories is shown once, where it comes first: ads are the same when their `global_id`
is (the portal's website and its own id of the ad), unless their payment blocks name
different ledgers, nodes or accounts (a copy without one is the same as any); an ad without
a global id is never taken for another. Copies that disagree on whom to pay are all shown:
a directory lying about an ad, nearer or newer than the true copy, would otherwise hide
it, and its payers pay someone else.

One opaque `next_cursor` continues all directories. A directory's own cursor continues
after the whole page it returned, while the merge may have taken only part of it, so the
combined cursor holds, for each directory, the cursor of its current page and the hits
taken from that page: an 8-byte digest of each one's id, and its `version`. The next page
asks for that page again and goes on after the last hit that is still as it was taken
(same id, same version, so the same place in the order), leaving out any other hit
already taken (changed since). Nothing that stays put is skipped or repeated, whatever
ads are added, changed or removed in between. The sort keys of the hits cannot serve
instead: a hit shows its distance rounded to its privacy level and no relevance score,
so only `recent` could compare them. As with a directory's own cursor, an ad that itself
changes between two pages can move across where the search stands: it is then missed
(moved before), or shown again (moved after, when it was shown from an earlier page of
that directory; one taken from the page being read is left out). The hits taken are kept
for at most MAX_TAKEN per directory, about 17 characters each.

The cursor also holds 8-byte digests of the ads already shown (their global id, and for
one with a payment block how it is paid), so a copy met pages later is still dropped: it
grows by about 11 characters per ad shown that has a global id, 33 for one with a payment
block. And, for each directory, 8-byte digests of the cursors of its that the search moved on
to (about 11 characters a page): a directory whose page gives one of them again as its
next_cursor (a cache answering the first page whatever the cursor) would lead back to hits
shown already, without end; it is an error on that page instead, as one not understood.

A directory that failed on a page is asked again on the next one from where it stood: its
ads then come late in the merge rather than not at all. The search ends (`next_cursor`
None) when no directory that answered has more. A directory that answers a page with no
hit left to merge but says more follow is read on at once, within the page's deadline; one
that does so MAX_PAGES_WITHOUT_HITS times in a row is an error on that page ("pages
without hits"), and the page is merged without it, instead of waiting for it.

Facets are each directory's counts summed: an ad published in two directories is counted
twice (counts carry no identity to tell). A directory whose hits are all shown is still
asked for its counts, so that every page's facets describe the whole search."""

from __future__ import annotations

import base64
import binascii
import hashlib
import inspect
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

import httpx
import msgspec

from directory_client import models
from directory_client.client import DirectoryClient
from directory_client.errors import (
    NOT_UNDERSTOOD,
    AnswerNotUnderstood,
    DirectoryError,
    DirectoryUnavailable,
)
from directory_client.payments import ledger_identity
from directory_client.transport import NO_RETRIES, query, require_timeout

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100  # the API's largest `limit` (openapi.yaml, searchAds)
SORTS = frozenset({"distance", "recent", "relevance"})
# The filters of DirectoryClient.search_ads, which the federated search passes on.
FILTERS = frozenset(inspect.signature(DirectoryClient.search_ads).parameters) - {
    "self",
    "sort",
    "limit",
    "cursor",
    "facets",
}
# fed1 cursors (the count and the last id taken) are refused: they cannot say which of
# the hits taken changed since.
CURSOR_PREFIX = "fed2."
# 64 bits: the chance that two of a million global ids share a digest is below 1 in 30
# million, and a shared digest would hide one ad.
DIGEST_BYTES = 8
# Hits taken from the page a directory is being read at: at most a page (MAX_PAGE_SIZE),
# and those carried past its end when ads added before them pushed them off it.
MAX_TAKEN = 2 * MAX_PAGE_SIZE
# Pages in a row that a directory may answer with no hit left to merge but more said to
# follow, read within a page's deadline before it is left out of the page. One is normal
# (a page read again whose hits were all taken); the directory never sends an empty one.
MAX_PAGES_WITHOUT_HITS = 4
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


class FederationError(DirectoryError):
    """No directory answered: `statuses` says what happened to each."""

    def __init__(self, statuses: Sequence[DirectoryStatus]) -> None:
        reasons = "; ".join(f"{status.directory}: {status.reason}" for status in statuses)
        super().__init__(f"no directory answered ({reasons})")
        self.statuses = list(statuses)


class InvalidFederatedCursor(DirectoryError):
    """A cursor that is not a next_cursor of this federated search."""


class _OutOfTime(DirectoryError):
    """A directory's pages without hits went on past the page's deadline."""


class Outcome(StrEnum):
    OK = "ok"
    TIMED_OUT = "timed_out"
    ERROR = "error"


@dataclass(frozen=True)
class DirectoryStatus:
    directory: str  # the directory's base URL
    outcome: Outcome
    reason: str | None = None  # why it failed: the error, or the deadline missed
    hits: int = 0  # hits of the page taken from it (copies shown from another left out)


@dataclass(frozen=True, slots=True)
class FederatedHit:
    ad: models.SearchHit
    directory: str  # base URL of the directory it was taken from


@dataclass(frozen=True)
class FederatedPage:
    hits: list[FederatedHit]
    next_cursor: str | None
    # Summed over the directories that answered. Portals (and their community currencies,
    # "<portal>:<CODE>") are counted by slug, which is unique within one directory only:
    # namesakes of two directories add up there; facets_by_directory tells them apart.
    facets: models.FacetCounts | None
    directories: list[DirectoryStatus]  # in the order the directories were given
    # Each answering directory's own counts, by its base URL (None: no facets asked).
    facets_by_directory: dict[str, models.FacetCounts] | None = None

    @property
    def partial(self) -> bool:
        """Some directory did not answer: hits and facets leave its ads out."""
        return any(status.outcome is not Outcome.OK for status in self.directories)


class FederatedSearch:
    """`directories`: clients, or base URLs for which clients are made (tried once each,
    each attempt bounded by `timeout_s`: a federated search would rather show what it has
    than wait for a retry). Clients passed in are left open by `close`; their own
    `timeout_s`, which bounds each attempt whole, bounds how long a request the page's
    deadline gave up on keeps a thread busy in the background."""

    def __init__(
        self,
        directories: Sequence[DirectoryClient | str],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if not directories:
            raise ValueError("a federated search needs at least one directory")
        require_timeout(timeout_s)
        self.timeout_s = timeout_s
        self._owned: list[DirectoryClient] = []
        self._clients: list[DirectoryClient] = []
        for directory in directories:
            if isinstance(directory, str):
                directory = DirectoryClient(directory, timeout_s=timeout_s, retry=NO_RETRIES)
                self._owned.append(directory)
            self._clients.append(directory)
        names = self.directories
        if len(set(names)) != len(names):
            raise ValueError(f"a directory is listed twice: {names}")

    @property
    def directories(self) -> list[str]:
        return [client.base_url for client in self._clients]

    def __enter__(self) -> FederatedSearch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for client in self._owned:
            client.close()

    def search(
        self,
        *,
        sort: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
        facets: Iterable[str] | None = None,
        **filters: Any,
    ) -> FederatedPage:
        """One merged page; the filters are those of DirectoryClient.search_ads. Without
        `sort`, as a single directory: relevance with `q`, else distance with a point,
        else recent. Pass `next_cursor` as `cursor`, with the same filters and sort."""
        unknown = sorted(set(filters) - FILTERS)
        if unknown:
            raise TypeError(f"unknown search filters: {', '.join(unknown)}")
        if sort is None:
            point = filters.get("lat") is not None
            sort = "relevance" if filters.get("q") else "distance" if point else "recent"
        if sort not in SORTS:
            raise ValueError(f"sort must be one of {', '.join(sorted(SORTS))}, not {sort!r}")
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}")
        facets = None if facets is None else list(facets)
        fingerprint = self._fingerprint(sort, filters)
        state = (
            _State.start(len(self._clients))
            if cursor is None
            else self._decode(cursor, fingerprint)
        )

        answers, statuses = self._fetch(
            state, sort=sort, limit=limit, facets=facets, filters=filters
        )
        streams = {
            index: answer.stream for index, answer in answers.items() if answer.stream is not None
        }
        seen = set(state.seen)
        turn = state.turn
        if sort == "relevance":
            taken, turn = _merge_in_turns(
                list(streams.values()), seen, limit=limit, turn=turn, directories=len(self._clients)
            )
        else:
            taken = _merge_ordered(list(streams.values()), seen, limit=limit, sort=sort)

        positions = [
            streams[index].position_after() if index in streams else position
            for index, position in enumerate(state.positions)
        ]
        # A directory that failed does not keep the search going on its own.
        more = any(not positions[index].done for index in answers)
        next_cursor = _State(fingerprint, positions, turn, frozenset(seen)).encode()
        taken_from = Counter(stream.index for stream, _ in taken)
        counted = {
            self._clients[index].base_url: answer.facets
            for index, answer in answers.items()
            if answer.facets
        }
        return FederatedPage(
            hits=[FederatedHit(hit, self._clients[stream.index].base_url) for stream, hit in taken],
            next_cursor=next_cursor if more else None,
            facets=None if facets is None else _summed(list(counted.values())),
            directories=[
                replace(status, hits=taken_from[index]) for index, status in enumerate(statuses)
            ],
            facets_by_directory=None if facets is None else counted,
        )

    def iter_search(self, *, page_size: int = MAX_PAGE_SIZE, **filters: Any) -> FederatedHits:
        """Every hit of a federated search, page after page (same arguments as search,
        but for limit and cursor); the iterator's `partial` says whether any page was."""
        return FederatedHits(self, page_size=page_size, filters=filters)

    # --- asking the directories -------------------------------------------------------

    def _fetch(
        self,
        state: _State,
        *,
        sort: str,
        limit: int,
        facets: list[str] | None,
        filters: Mapping[str, Any],
    ) -> tuple[dict[int, _Answer], list[DirectoryStatus]]:
        """What each directory that answered gave, and every directory's status: all
        asked at once, waited for until the page's deadline."""
        deadline = time.monotonic() + self.timeout_s
        asked = [
            index
            for index, position in enumerate(state.positions)
            if not position.done or facets is not None
        ]
        executor = ThreadPoolExecutor(
            max_workers=max(1, len(asked)), thread_name_prefix="federated-search"
        )
        try:
            futures: dict[int, Future[_Answer]] = {
                index: executor.submit(
                    self._read,
                    index,
                    state.positions[index],
                    sort=sort,
                    limit=limit,
                    facets=facets,
                    filters=filters,
                    deadline=deadline,
                )
                for index in asked
            }
            wait(futures.values(), timeout=self.timeout_s)
        finally:
            # Requests past the deadline finish in the background, bounded by their
            # clients' timeouts; nobody waits for them.
            executor.shutdown(wait=False, cancel_futures=True)

        answers: dict[int, _Answer] = {}
        statuses = []
        for index, client in enumerate(self._clients):
            future = futures.get(index)
            if future is None:  # all its hits shown already, and no facets asked
                statuses.append(DirectoryStatus(client.base_url, Outcome.OK))
                continue
            if not future.done():
                statuses.append(
                    DirectoryStatus(
                        client.base_url,
                        Outcome.TIMED_OUT,
                        f"no answer within {self.timeout_s:g} s",
                    )
                )
                continue
            try:
                answers[index] = future.result()
            except DirectoryUnavailable as error:
                timed_out = isinstance(error.__cause__, httpx.TimeoutException)
                outcome = Outcome.TIMED_OUT if timed_out else Outcome.ERROR
                statuses.append(DirectoryStatus(client.base_url, outcome, str(error)))
                continue
            except _OutOfTime as error:
                statuses.append(DirectoryStatus(client.base_url, Outcome.TIMED_OUT, str(error)))
                continue
            except DirectoryError as error:  # an error answer, or one not understood
                statuses.append(DirectoryStatus(client.base_url, Outcome.ERROR, str(error)))
                continue
            statuses.append(DirectoryStatus(client.base_url, Outcome.OK))
        # Raised rather than an empty page: the cursor stays valid for another try.
        if asked and not answers:
            raise FederationError([statuses[index] for index in asked])
        return answers, statuses

    def _read(
        self,
        index: int,
        position: _Position,
        *,
        sort: str,
        limit: int,
        facets: list[str] | None,
        filters: Mapping[str, Any],
        deadline: float,
    ) -> _Answer:
        """A directory's hits not yet merged, read from where it stands (in a thread of
        its own). A page with none left to merge, but more said to follow, is read past
        (and counted: one is normal, when every hit it holds was taken); after
        MAX_PAGES_WITHOUT_HITS of them in a row the directory is given up for this page."""
        client = self._clients[index]
        if position.done:  # all its hits shown: asked for its counts only
            page = client.search_ads(sort=sort, facets=facets, limit=1, **filters)
            return _Answer(None, page.facets)
        counts = None
        for passed in range(MAX_PAGES_WITHOUT_HITS):
            if passed and time.monotonic() >= deadline:
                raise _OutOfTime(
                    f"no page with hits within {self.timeout_s:g} s ({passed} without)"
                )
            page = client.search_ads(
                sort=sort,
                facets=None if passed else facets,  # the same counts on every page
                cursor=position.cursor,
                limit=min(MAX_PAGE_SIZE, len(position.taken) + limit),
                **filters,
            )
            # The merge compares times of different directories: each needs its zone.
            if any(hit.updated_at.tzinfo is None for hit in page.hits):
                raise AnswerNotUnderstood(f"{NOT_UNDERSTOOD}: an updated_at without a time zone")
            _check_moves_on(position, page)
            counts = page.facets if counts is None else counts
            stream = _Stream.after(index, position, page)
            if stream.hits or stream.next_cursor is None:
                return _Answer(stream, counts)
            position = stream.position_after()  # past the page, none of it merged
        raise DirectoryError(
            f"{MAX_PAGES_WITHOUT_HITS} pages without hits in a row, each saying more follow "
            "(next_cursor): left out of this page"
        )

    # --- the cursor -------------------------------------------------------------------

    def _fingerprint(self, sort: str, filters: Mapping[str, Any]) -> str:
        """What a cursor is bound to: the directories, the sort and the filters as sent
        (limit and facets may change from page to page)."""
        described = msgspec.json.encode(
            [self.directories, sort, sorted(query(filters).items())], order="sorted"
        )
        return hashlib.sha256(described).hexdigest()[:16]

    def _decode(self, cursor: str, fingerprint: str) -> _State:
        state = _State.decode(cursor)
        if state.fingerprint != fingerprint or len(state.positions) != len(self._clients):
            raise InvalidFederatedCursor(
                "cursor belongs to a different search (other filters, sort or "
                "directories): repeat the same search or start again without a cursor"
            )
        return state


class FederatedHits(Iterator[FederatedHit]):
    """The hits of every page of a federated search. `partial` becomes True once a page
    was (some directory did not answer), and `failures` keeps those directories'
    statuses, page after page."""

    def __init__(
        self, search: FederatedSearch, *, page_size: int, filters: Mapping[str, Any]
    ) -> None:
        self.partial = False
        self.failures: list[DirectoryStatus] = []
        self._hits = self._follow(search, page_size, dict(filters))

    def __next__(self) -> FederatedHit:
        return next(self._hits)

    def _follow(
        self, search: FederatedSearch, page_size: int, filters: dict[str, Any]
    ) -> Iterator[FederatedHit]:
        cursor = None
        while True:
            page = search.search(limit=page_size, cursor=cursor, **filters)
            if page.partial:
                self.partial = True
                self.failures += [s for s in page.directories if s.outcome is not Outcome.OK]
            yield from page.hits
            if page.next_cursor is None:
                return
            cursor = page.next_cursor


# --- state kept in the cursor -------------------------------------------------------------


class _Taken(msgspec.Struct, array_like=True, frozen=True):
    """A hit taken from a directory: the digest of its id, and its version then."""

    id: Annotated[bytes, msgspec.Meta(min_length=DIGEST_BYTES, max_length=DIGEST_BYTES)]
    version: int


class _Position(msgspec.Struct, array_like=True, frozen=True):
    """Where a directory stands: the page its `cursor` gives (None: the first page) has
    been merged up to the hits `taken` (in the order taken); `done`: none follow.
    `followed`: digests of the directory's cursors the search has moved on to, DIGEST_BYTES
    each (see _check_moves_on)."""

    cursor: str | None = None
    taken: tuple[_Taken, ...] = ()
    done: bool = False
    followed: bytes = b""


class _CursorBody(msgspec.Struct, array_like=True):
    fingerprint: str
    positions: list[_Position]
    turn: Annotated[int, msgspec.Meta(ge=0)]  # relevance: the directory whose turn is next
    seen: bytes  # digests of the ads shown (_identity), DIGEST_BYTES each


@dataclass(frozen=True)
class _State:
    fingerprint: str
    positions: list[_Position]
    turn: int
    seen: frozenset[bytes]

    @classmethod
    def start(cls, directories: int) -> _State:
        return cls("", [_Position()] * directories, 0, frozenset())

    def encode(self) -> str:
        body = _CursorBody(self.fingerprint, self.positions, self.turn, b"".join(sorted(self.seen)))
        # MessagePack rather than JSON: the digests go in as bytes, not as base64 in base64.
        return CURSOR_PREFIX + _base64(msgspec.msgpack.encode(body))

    @classmethod
    def decode(cls, cursor: str) -> _State:
        problem = InvalidFederatedCursor(
            "cursor must be a next_cursor returned by FederatedSearch.search"
        )
        if not isinstance(cursor, str) or not cursor.startswith(CURSOR_PREFIX):
            raise problem
        try:
            raw = _unbase64(cursor[len(CURSOR_PREFIX) :])
            body = msgspec.msgpack.decode(raw, type=_CursorBody)
        except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
            raise problem from None
        if len(body.seen) % DIGEST_BYTES or any(
            len(position.followed) % DIGEST_BYTES for position in body.positions
        ):
            raise problem
        seen = frozenset(
            body.seen[start : start + DIGEST_BYTES]
            for start in range(0, len(body.seen), DIGEST_BYTES)
        )
        return cls(body.fingerprint, body.positions, body.turn, seen)


def _base64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unbase64(text: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as error:
        raise ValueError("not base64") from error
    # base64 drops characters outside its alphabet and reads padding: only the spelling
    # _base64 writes is a cursor, not one with more (or less) around it.
    if _base64(raw) != text:
        raise ValueError("not base64 as a cursor spells it")
    return raw


# --- merging ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    """What a directory gave for a page: its hits to merge (None when all were shown),
    and its facet counts if asked."""

    stream: _Stream | None
    facets: models.FacetCounts | None


@dataclass
class _Stream:
    """A directory's hits not yet merged, from the page its position reads."""

    index: int
    position: _Position
    hits: list[models.SearchHit]
    page_ids: frozenset[bytes]  # digests of the ids of all the page's hits
    next_cursor: str | None
    consumed: int = 0

    @classmethod
    def after(cls, index: int, position: _Position, page: models.SearchPage) -> _Stream:
        """The page's hits after the last one still as it was taken (its place in the
        order is the same), without the other hits taken (changed since): ads added,
        changed or removed before it change nothing. None taken is still there: the page
        from its start, without those taken."""
        taken = {hit.id: hit.version for hit in position.taken}
        ids = [_id_digest(hit) for hit in page.hits]
        start = 0
        for number, (digest, hit) in enumerate(zip(ids, page.hits, strict=True)):
            if taken.get(digest) == hit.version:
                start = number + 1
        hits = [
            hit
            for digest, hit in zip(ids[start:], page.hits[start:], strict=True)
            if digest not in taken
        ]
        return cls(index, position, hits, frozenset(ids), page.next_cursor)

    @property
    def head(self) -> models.SearchHit | None:
        return self.hits[self.consumed] if self.consumed < len(self.hits) else None

    @property
    def waiting(self) -> bool:
        """Its fetched hits are used up but the directory has more: the merge cannot
        know what would come next from it."""
        return self.head is None and self.next_cursor is not None

    def take(self) -> models.SearchHit:
        hit = self.hits[self.consumed]
        self.consumed += 1
        return hit

    def position_after(self) -> _Position:
        taken = self.position.taken + tuple(
            _Taken(_id_digest(hit), hit.version) for hit in self.hits[: self.consumed]
        )
        followed = self.position.followed
        if self.consumed < len(self.hits):
            return _Position(self.position.cursor, taken[-MAX_TAKEN:], followed=followed)
        if self.next_cursor is None:
            return _Position(done=True)
        # On to the next page. Taken hits this page did not hold, pushed past its end by
        # ads added before them, are still to be left out there.
        carried = tuple(hit for hit in taken if hit.id not in self.page_ids)
        return _Position(
            self.next_cursor,
            carried[-MAX_TAKEN:],
            followed=followed + _cursor_digest(self.next_cursor),
        )


def _digest(identity: str) -> bytes:
    return hashlib.blake2b(identity.encode(), digest_size=DIGEST_BYTES).digest()


def _identity(global_id: str, paid: Any) -> str:
    return msgspec.json.encode([global_id, paid]).decode()


def _payment_identity(payment: models.Payment) -> list[Any]:
    """Where and whom an ad is paid, however the ledger's URL is spelt."""
    return [payment.protocol, ledger_identity(payment.ledger_url), payment.node, payment.payee]


def _id_digest(hit: models.SearchHit) -> bytes:
    return hashlib.blake2b(hit.id.bytes, digest_size=DIGEST_BYTES).digest()


def _cursor_digest(cursor: str) -> bytes:
    return hashlib.blake2b(cursor.encode(), digest_size=DIGEST_BYTES).digest()


def _check_moves_on(position: _Position, page: models.SearchPage) -> None:
    """AnswerNotUnderstood when the page's next_cursor is one the search has moved on to
    before. A directory's cursors only move on: one given again leads back to a page read
    already (a cache or proxy in front of it answering the first page whatever the
    cursor), whose hits, once all taken, would be taken again from there, page after page
    without end. The directory is then an error on the page, and left behind where it
    stood."""
    if page.next_cursor is None or not position.followed:
        return
    digest = _cursor_digest(page.next_cursor)
    followed = position.followed
    if any(
        followed[start : start + DIGEST_BYTES] == digest
        for start in range(0, len(followed), DIGEST_BYTES)
    ):
        raise AnswerNotUnderstood(
            f"{NOT_UNDERSTOOD}: a page's next_cursor was given before, so following it "
            "would read the same pages again without end (a cache or proxy answering the "
            "same page whatever the cursor?)"
        )


def _first_time(hit: models.SearchHit, seen: set[bytes]) -> bool:
    """True unless a copy of the ad (same global id) was shown already, paid the same way
    or said nothing of how it is paid; remembers it. Copies that name different ledgers or
    accounts to pay are not one ad: one of them is wrong, and which one is not for the
    merge to guess by which came first, showing it alone. A copy that says nothing of
    paying (a portal that registered its ledger in one directory only) is one with any.

    Three digests stand for a shown ad: of its global id (a copy was shown), of the global
    id and its payment (a copy paid that way was), and, for one with a payment, of the
    global id marked paid (a copy saying how to pay was)."""
    if hit.global_id is None:
        return True
    shown = _digest(_identity(hit.global_id, None))
    if hit.payment is None:
        if shown in seen:
            return False
        seen.add(shown)
        return True
    paid_so = _digest(_identity(hit.global_id, _payment_identity(hit.payment)))
    paid_somehow = _digest(_identity(hit.global_id, "paid"))
    if paid_so in seen or (shown in seen and paid_somehow not in seen):
        return False
    seen.update((shown, paid_so, paid_somehow))
    return True


def _sort_key(sort: str, hit: models.SearchHit) -> float | int:
    if sort == "distance":
        return float("inf") if hit.distance_km is None else hit.distance_km
    return -((hit.updated_at - EPOCH) // MICROSECOND)  # newest first, exactly


def _merge_ordered(
    live: list[_Stream], seen: set[bytes], *, limit: int, sort: str
) -> list[tuple[_Stream, models.SearchHit]]:
    """Up to `limit` hits in the sort's order, ties in the directories' order. It stops
    early where a directory's fetched hits run out: its next could come first."""
    taken: list[tuple[_Stream, models.SearchHit]] = []
    while len(taken) < limit:
        if any(stream.waiting for stream in live):
            break
        candidates = [stream for stream in live if stream.head is not None]
        if not candidates:
            break
        stream = min(candidates, key=lambda s: (_sort_key(sort, s.head), s.index))
        hit = stream.take()
        if _first_time(hit, seen):
            taken.append((stream, hit))
    return taken


def _merge_in_turns(
    live: list[_Stream], seen: set[bytes], *, limit: int, turn: int, directories: int
) -> tuple[list[tuple[_Stream, models.SearchHit]], int]:
    """Up to `limit` hits, one from each directory in turn (its next ad not shown yet),
    starting with the directory whose turn it is; and whose turn is next. It stops where
    the directory in turn has used up its fetched hits but has more."""
    taken: list[tuple[_Stream, models.SearchHit]] = []
    while len(taken) < limit:
        playing = [stream for stream in live if stream.head is not None or stream.waiting]
        if not playing:
            break
        stream = min(playing, key=lambda s: (s.index - turn) % directories)
        if stream.waiting:
            break
        hit = stream.take()
        if _first_time(hit, seen):
            taken.append((stream, hit))
            turn = (stream.index + 1) % directories
    return taken, turn


def _summed(all_facets: list[models.FacetCounts]) -> models.FacetCounts:
    """Counts added up, each bucket ordered as a directory orders it: most first."""
    sums: dict[str, dict[str, int]] = {}
    for facets in all_facets:
        for name in ("category", "kind", "currency", "portal"):
            counts = getattr(facets, name)
            if counts is msgspec.UNSET:
                continue
            bucket = sums.setdefault(name, {})
            for value, count in counts.items():
                bucket[value] = bucket.get(value, 0) + count
    return models.FacetCounts(
        total=sum(facets.total for facets in all_facets),
        **{
            name: dict(sorted(bucket.items(), key=lambda item: (-item[1], item[0])))
            for name, bucket in sums.items()
        },
    )


__all__ = [
    "DirectoryStatus",
    "FederatedHit",
    "FederatedHits",
    "FederatedPage",
    "FederatedSearch",
    "FederationError",
    "InvalidFederatedCursor",
    "Outcome",
]
