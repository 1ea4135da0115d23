"""The change feed: every change to what the public may see, in a safe order."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, text, tuple_
from sqlalchemy.orm import Session

from directory import cursors
from directory.errors import InvalidInput
from directory.models import AdChange, ChangeOp
from directory.services.ads import AdRecord, get_public_ads

CURSOR_PREFIX = "f1."
# Two bigints (up to 19 digits each, no leading zero) as written by encode.
POSITION = re.compile(r"(?P<txid>0|[1-9][0-9]{0,18})\.(?P<seq>0|[1-9][0-9]{0,18})")
MAX_BIGINT = 2**63 - 1


@dataclass(frozen=True)
class FeedPosition:
    txid: int
    seq: int

    def encode(self) -> str:
        return cursors.encode(CURSOR_PREFIX, f"{self.txid}.{self.seq}".encode())

    @classmethod
    def decode(cls, cursor: str) -> FeedPosition:
        problem = _invalid_since("since must be a cursor returned by GET /v1/feed (next_cursor)")
        try:
            raw = cursors.decode(CURSOR_PREFIX, cursor).decode()
        except ValueError:  # UnicodeDecodeError included
            raise problem from None
        # int() would also take "1_0", " 1" and other scripts' digits.
        match = POSITION.fullmatch(raw)
        if match is None:
            raise problem
        txid, seq = int(match["txid"]), int(match["seq"])
        if txid > MAX_BIGINT or seq > MAX_BIGINT:  # PostgreSQL would fail the query
            raise problem
        return cls(txid, seq)


def _invalid_since(message: str) -> InvalidInput:
    return InvalidInput(
        message, field="since", code="invalid_cursor", details={"location": "query"}
    )


START = FeedPosition(0, 0)


@dataclass(frozen=True)
class FeedEntry:
    op: ChangeOp
    ad_id: uuid.UUID
    changed_at: datetime
    ad: AdRecord | None  # the ad as it is now, for upserts


@dataclass(frozen=True)
class FeedPage:
    entries: list[FeedEntry]
    next_cursor: str
    more: bool


def transaction_ids_gone_back(session: Session) -> str | None:
    """Why the feed cannot be followed on this cluster, if so: its order rests on
    transaction ids, and a database restored into a new cluster (a dump, a logical copy)
    starts them over below those already in the feed, so every later change would sort
    before the readers' cursors and never reach them. None when all is well. Physical
    replicas and pg_upgrade keep the ids."""
    newest = session.scalar(select(func.max(AdChange.txid)))
    if newest is None:
        return None
    next_id = _next_transaction_id(session)
    if newest < next_id:
        return None
    return (
        f"the change feed holds transaction ids up to {newest}, and this cluster is at "
        f"{next_id}: the database was restored into a new cluster, whose transaction ids "
        "start over, so feed readers and the search index would miss every change from now "
        "on. Stop PostgreSQL and raise the cluster's epoch above the feed's, with "
        f"pg_resetwal --epoch={(newest >> 32) + 1} <data directory>, then start it again"
    )


def _next_transaction_id(session: Session) -> int:
    # The snapshot's xmax: the next id to be given out, read without taking one.
    return session.scalar(text("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"))


def read_feed(session: Session, *, since: str | None, limit: int) -> FeedPage:
    """Changes after `since`, oldest first, each told as the ad stands now: an upsert
    carries the ad as it is now, or is told as a deletion if the ad is not public now
    (expired above all: its expiry wrote nothing to the feed); a deletion of an ad that
    is public now is told as an upsert. An ad out of public view is told alike whether
    it is gone or its portal keeps it (portal-only, expired): which, is the portal's to
    know.

    Entries are in transaction-id order, and two transactions that wrote one ad may
    have taken their ids in the other order than they committed (an id comes with a
    transaction's first write, which can precede the portal lock it then waits for).
    Told by the ad's state when read, the last word on an ad is right whatever that
    order: a sync commit that made an ad public again after a write that withdrew it no
    longer ends the feed with a deletion."""
    position = START if since is None else FeedPosition.decode(since)
    # Only transactions older than every running one: nothing can still commit before them.
    horizon = text("pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
    rows = session.execute(
        select(AdChange.txid, AdChange.seq, AdChange.op, AdChange.ad_id, AdChange.changed_at)
        .where(
            tuple_(AdChange.txid, AdChange.seq) > tuple_(position.txid, position.seq),
            AdChange.txid < horizon,
        )
        .order_by(AdChange.txid, AdChange.seq)
        .limit(limit + 1)
    ).all()
    if not rows and position.txid >= _next_transaction_id(session):
        # No cursor of this feed is there yet: it would be answered with no changes, and
        # again with itself, until the directory's transactions reach it, if ever.
        raise _invalid_since(
            "since is ahead of this directory's feed: it is no next_cursor of its "
            "GET /v1/feed (another directory's?)"
        )
    more = len(rows) > limit
    rows = rows[:limit]
    ads = get_public_ads(session, ad_ids=[row.ad_id for row in rows])
    # An upsert of an ad not public now is told as a deletion: an ad that expired since
    # writes nothing more to the feed, and skipped, its upsert would leave a reader with
    # the ad as last told, under its old expiry. Deleted ads are told so too: skipped
    # for them alone, it would tell anyone which of the others their portals still keep.
    entries = []
    for row in rows:
        ad = ads.get(row.ad_id)
        if ad is not None:
            entries.append(FeedEntry(ChangeOp.UPSERT, row.ad_id, row.changed_at, ad))
        else:
            entries.append(FeedEntry(ChangeOp.DELETE, row.ad_id, row.changed_at, None))
    last = FeedPosition(rows[-1].txid, rows[-1].seq) if rows else position
    return FeedPage(entries=entries, next_cursor=last.encode(), more=more)
