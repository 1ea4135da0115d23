"""Keeping the Meilisearch index in step with the database, through the change feed.

`catch_up` follows the feed from the position stored for the index: it reads a page of
changes, applies it to Meilisearch, waits until Meilisearch reports the task done, and
only then stores the page's end as the new position, in the transaction that read the
page. A crash anywhere in between leaves the old position, and the page is applied
again: harmless, since a feed upsert carries the ad as it is now and a delete removes
whatever is there. Each page runs under an advisory lock per index, so two workers
never apply pages side by side.

`rebuild` builds a fresh index from the database and swaps it in, without a moment
when searches see an empty or partial index. It notes the feed position before reading
any ad, so every change it may have missed comes after that position and is applied
by the catch-up that follows. One rebuild of an index runs at a time (two workers
starting on a new deployment, or `directory reindex` beside a worker, would otherwise
share the fresh index: each dropping what the other was filling).

Meilisearch may lose an index (a restart without its data), and a document added to a
missing index creates it anew, empty but for that page and without our settings: the
catch-up therefore checks that the index is there before each page, and rebuilds it
when it is not.

Ads also leave public view when they expire, which writes nothing to the feed: searches
filter on the expiry, and `purge_expired` removes the expired documents now and then.
"""

from __future__ import annotations

import logging
import uuid
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from directory.db import (
    INDEXING_LOCK_NAMESPACE,
    REBUILD_LOCK_NAMESPACE,
    first_free_advisory_lock,
    unit_of_work,
)
from directory.models import Ad, AdChange, ChangeOp, Portal, SearchIndexPosition
from directory.search.meili import IndexingError, MeiliSearch, document
from directory.services.ads import AdRecord, public_condition, record_from_row, records_query
from directory.services.feed import START, FeedPosition, read_feed

if TYPE_CHECKING:
    from directory import Wiring
    from directory.services.feed import FeedEntry

log = logging.getLogger("directory.search.indexing")

CATCH_UP_BATCH = 1000
REBUILD_CHUNK = 1000
# How long a page of the feed may take Meilisearch; past it the page is tried again later.
CATCH_UP_TASK_TIMEOUT_S = 120
# A rebuild waits for millions of documents, and settings changes re-index everything.
REBUILD_TASK_TIMEOUT_S = 6 * 3600
FRESH_SUFFIX = "_new"


class NotMeilisearch(Exception):
    """The wiring searches with another engine: there is no index to maintain."""


class RebuildInProgress(IndexingError):
    """Another process is rebuilding this index."""


def meilisearch_engine(wiring: Wiring) -> MeiliSearch:
    if isinstance(wiring.search, MeiliSearch):
        return wiring.search
    raise NotMeilisearch(
        f"the search engine is {wiring.settings.search_engine!r}: only the Meilisearch "
        "engine has an index to maintain (DIRECTORY_SEARCH_ENGINE=meilisearch)"
    )


# --- positions ------------------------------------------------------------------------------


def load_position(session: Session, *, index_name: str) -> str | None:
    """The feed cursor the index holds every change up to; None if never built."""
    return session.scalar(
        select(SearchIndexPosition.feed_cursor).where(SearchIndexPosition.index_name == index_name)
    )


def store_position(session: Session, *, index_name: str, feed_cursor: str) -> None:
    statement = insert(SearchIndexPosition).values(index_name=index_name, feed_cursor=feed_cursor)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[SearchIndexPosition.index_name],
            set_={"feed_cursor": statement.excluded.feed_cursor, "updated_at": func.now()},
        )
    )


def forget_position(session: Session, *, index_name: str) -> None:
    session.execute(delete(SearchIndexPosition).where(SearchIndexPosition.index_name == index_name))


def feed_head(session: Session) -> str:
    """The cursor of the newest change a feed reader may see now (the same horizon as
    services.feed.read_feed: only transactions older than every running one). Anything
    committed later sorts after it."""
    horizon = text("pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
    newest = session.execute(
        select(AdChange.txid, AdChange.seq)
        .where(AdChange.txid < horizon)
        .order_by(AdChange.txid.desc(), AdChange.seq.desc())
        .limit(1)
    ).first()
    return (START if newest is None else FeedPosition(newest.txid, newest.seq)).encode()


def _lock_key(index_name: str) -> int:
    return zlib.crc32(index_name.encode()) & 0x7FFFFFFF


def _lock_index(session: Session, index_name: str, *, wait: bool) -> bool:
    """The index's writer lock, until the transaction ends. An advisory lock takes no
    transaction id, so holding it never holds back the feed's horizon."""
    function = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
    acquired = session.scalar(
        text(f"SELECT {function}(:namespace, :key)"),
        {"namespace": INDEXING_LOCK_NAMESPACE, "key": _lock_key(index_name)},
    )
    return wait or bool(acquired)


@contextmanager
def rebuild_lock(wiring: Wiring, index_name: str) -> Iterator[None]:
    """The index's rebuild lock, for as long as the block runs; RebuildInProgress when
    another process holds it. Held by a connection outside any transaction (a rebuild
    takes hours on millions of ads), and let go by the server if the process dies."""
    keys = [_lock_key(index_name)]
    with first_free_advisory_lock(wiring.engine, REBUILD_LOCK_NAMESPACE, keys) as taken:
        if taken is None:
            raise RebuildInProgress(
                f"search index {index_name} is being rebuilt by another process "
                "(directory reindex or a worker); wait for it to finish"
            )
        yield


# --- following the feed ---------------------------------------------------------------------


def catch_up(wiring: Wiring, *, batch: int = CATCH_UP_BATCH, max_pages: int | None = None) -> int:
    """Apply the feed's changes since the stored position to the index; returns how many
    changes were applied. An index never built (no position, created just now because
    Meilisearch lost it, or made with an earlier release's settings) is rebuilt
    instead, unless another process is rebuilding it. `max_pages` bounds one call, so
    a worker with a long backlog still gets back to its other work."""
    engine = meilisearch_engine(wiring)
    applied = 0
    pages = 0
    while max_pages is None or pages < max_pages:
        # Before each page: a page added to a lost index would make a new one of it.
        unchecked = not engine.prepared or not engine.index_exists(engine.index_name)
        if unchecked and _prepare(wiring, engine):
            log.warning(
                "search index %s was missing or made with other settings: rebuilding it",
                engine.index_name,
            )
            return applied + _rebuild_unless_running(wiring)
        with unit_of_work(wiring.session_factory) as session:
            if not _lock_index(session, engine.index_name, wait=False):
                return applied  # another process is writing this index
            position = load_position(session, index_name=engine.index_name)
            if position is None:
                page = None  # rebuilt below, once this transaction has let go of the lock
            else:
                page = read_feed(session, since=position, limit=batch)
                if page.next_cursor == position:
                    return applied
                _apply(engine, page.entries)
                store_position(session, index_name=engine.index_name, feed_cursor=page.next_cursor)
        if page is None:
            log.warning("search index %s has no feed position: rebuilding it", engine.index_name)
            return applied + _rebuild_unless_running(wiring)
        applied += len(page.entries)
        pages += 1
        if not page.more:
            break
    return applied


def _prepare(wiring: Wiring, engine: MeiliSearch) -> bool:
    """Make sure the live index exists; True when it must be rebuilt (see
    MeiliSearch.prepare). Its stored position is then forgotten: it told how far the
    lost or outdated index got, and without it every round rebuilds until a rebuild
    succeeds and stores its own."""
    stale = engine.prepare(timeout_s=REBUILD_TASK_TIMEOUT_S)
    if stale:
        with unit_of_work(wiring.session_factory) as session:
            _lock_index(session, engine.index_name, wait=True)
            forget_position(session, index_name=engine.index_name)
    return stale


def _apply(engine: MeiliSearch, entries: Iterable[FeedEntry]) -> None:
    """One page of changes, by its last word on each ad (a later entry supersedes an
    earlier one; the two task lists are then disjoint, so their order is free)."""
    latest: dict[uuid.UUID, FeedEntry] = {}
    for entry in entries:
        latest[entry.ad_id] = entry
    upserts = [document(entry.ad) for entry in latest.values() if entry.op is ChangeOp.UPSERT]
    deletes = [entry.ad_id for entry in latest.values() if entry.op is ChangeOp.DELETE]
    tasks = []
    if upserts:
        tasks.append(engine.put_documents(engine.index_name, upserts))
    if deletes:
        tasks.append(engine.delete_documents(engine.index_name, deletes))
    for task in tasks:
        engine.wait(task, timeout_s=CATCH_UP_TASK_TIMEOUT_S)


def purge_expired(wiring: Wiring, *, now: datetime | None = None) -> None:
    """Delete the documents of expired ads (searches already leave them out)."""
    engine = meilisearch_engine(wiring)
    task = engine.delete_expired(engine.index_name, now=now or datetime.now(UTC))
    engine.wait(task, timeout_s=CATCH_UP_TASK_TIMEOUT_S)


# --- rebuilding -----------------------------------------------------------------------------


def count_public_ads(session: Session) -> int:
    return session.scalar(
        select(func.count())
        .select_from(Ad)
        .join(Portal, Portal.id == Ad.portal_id)
        .where(public_condition())
    )


def public_ads_after(session: Session, *, after: uuid.UUID | None, limit: int) -> list[AdRecord]:
    """The next `limit` ads the public may see, in id order (keyset: no OFFSET)."""
    query = records_query().where(public_condition())
    if after is not None:
        query = query.where(Ad.id > after)
    rows = session.execute(query.order_by(Ad.id).limit(limit))
    return [record_from_row(row) for row in rows]


def _rebuild_unless_running(wiring: Wiring) -> int:
    try:
        return rebuild(wiring)
    except RebuildInProgress:
        return 0  # the other rebuild ends with a catch-up of its own


def rebuild(wiring: Wiring, *, progress: bool = False) -> int:
    """Build the index afresh from the database and swap it in; returns how many ads
    it holds (before the catch-up that follows). RebuildInProgress if another process
    is rebuilding the index."""
    engine = meilisearch_engine(wiring)
    with rebuild_lock(wiring, engine.index_name):
        indexed = _rebuild(wiring, engine, progress=progress)
    catch_up(wiring)
    return indexed


def _rebuild(wiring: Wiring, engine: MeiliSearch, *, progress: bool) -> int:
    from tqdm import tqdm

    live, fresh = engine.index_name, engine.index_name + FRESH_SUFFIX
    # Swapping needs both indexes; a fresh one may be left over from an interrupted run.
    _prepare(wiring, engine)
    engine.drop_index(fresh, timeout_s=REBUILD_TASK_TIMEOUT_S)
    engine.create_index(fresh, timeout_s=REBUILD_TASK_TIMEOUT_S)
    with unit_of_work(wiring.session_factory) as session:
        position = feed_head(session)
        total = count_public_ads(session)
    tasks = []
    indexed = 0
    after = None
    with tqdm(total=total, unit="ad", desc=f"indexing into {fresh}", disable=not progress) as bar:
        while True:
            with unit_of_work(wiring.session_factory) as session:
                records = public_ads_after(session, after=after, limit=REBUILD_CHUNK)
            if not records:
                break
            # Sent without waiting: Meilisearch queues the batches and indexes them together.
            tasks.append(engine.put_documents(fresh, [document(record) for record in records]))
            indexed += len(records)
            after = records[-1].id
            bar.update(len(records))
    for task in tasks:
        engine.wait(task, timeout_s=REBUILD_TASK_TIMEOUT_S)
    with unit_of_work(wiring.session_factory) as session:
        # Waits for a catch-up page in progress; none starts until the swap is recorded.
        _lock_index(session, live, wait=True)
        engine.swap(live, fresh, timeout_s=REBUILD_TASK_TIMEOUT_S)
        store_position(session, index_name=live, feed_cursor=position)
    engine.drop_index(fresh, timeout_s=REBUILD_TASK_TIMEOUT_S)  # now the old documents
    log.info("search index %s rebuilt with %d ads", live, indexed)
    return indexed
