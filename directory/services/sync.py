"""Sync sessions: a full resync of a portal's ads spread over many requests, applied
atomically. Items are staged as they arrive; the commit applies them all and deletes
every ad of the portal that was not staged, in one transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from directory.errors import VALIDATION_ERROR, Conflict, InvalidInput, NotFound
from directory.models import Ad, Portal, SyncSession, SyncSessionItem, SyncStatus
from directory.services.ads import (
    MAX_BATCH_ITEMS,
    AdInput,
    ItemResult,
    Lifetimes,
    Rejected,
    Upsert,
    ad_limit,
    apply_changes,
    check_ads,
    count_ads,
    delete_all_but,
    duplicate_item,
    lock_and_count_ads,
    lock_portal_writes,
    rejection,
)

COMMIT_CHUNK = MAX_BATCH_ITEMS
# The open sessions a refused opening names, oldest first, for a portal that lost them
# to abort them (there is no listing of a portal's sessions).
MAX_SESSIONS_IN_MESSAGE = 10


@dataclass(frozen=True)
class SyncSummary:
    id: uuid.UUID
    status: SyncStatus
    created_at: datetime
    expires_at: datetime
    finished_at: datetime | None
    staged: int
    rejected: int


@dataclass(frozen=True)
class CommitResult:
    summary: SyncSummary
    created: int
    updated: int
    unchanged: int
    deleted: int
    kept_rejected: int
    rejected_items: list[ItemResult]


def open_session(session: Session, *, portal_id: int, ttl: timedelta, max_open: int) -> SyncSummary:
    """Open a sync session, unless the portal has `max_open` open already (neither
    committed, aborted nor expired): each holds its staged ads until it ends."""
    # The portal's row lock, as a currency registration takes it, so that two openings
    # at once cannot both pass the count. Not the portal's write lock: shared, it would
    # not keep openings apart; exclusive, it would wait for a commit that may take
    # minutes. FOR NO KEY UPDATE, as the row itself does not change: it does not wait for
    # writes that only refer to the portal (a commit creating ads).
    session.execute(select(Portal.id).where(Portal.id == portal_id).with_for_update(key_share=True))
    now = datetime.now(UTC)
    open_now = (
        SyncSession.portal_id == portal_id,
        SyncSession.status == SyncStatus.OPEN,
        SyncSession.expires_at > now,
    )
    held = session.scalar(select(func.count()).select_from(SyncSession).where(*open_now))
    if held >= max_open:
        oldest = session.execute(
            select(SyncSession.id, SyncSession.expires_at)
            .where(*open_now)
            .order_by(SyncSession.expires_at, SyncSession.id)
            .limit(MAX_SESSIONS_IN_MESSAGE)
        ).all()
        more = held - len(oldest)
        raise Conflict(
            f"the portal has {held} sync sessions open and may have at most {max_open}: "
            "commit or abort one (DELETE /v1/sync-sessions/{id}), or wait until one "
            f"expires (the first at {oldest[0].expires_at.isoformat()}). Open, oldest "
            f"first: {', '.join(str(row.id) for row in oldest)}"
            + (f" and {more} more" if more else ""),
            code="too_many_sync_sessions",
        )
    sync = SyncSession(portal_id=portal_id, expires_at=now + ttl)
    session.add(sync)
    session.flush()
    return _summary(session, sync)


def _summary(session: Session, sync: SyncSession) -> SyncSummary:
    session.refresh(sync)
    if sync.result is not None:
        # Committed: its items are purged by housekeeping; the commit kept their counts.
        staged, rejected = sync.result["staged"], sync.result["rejected"]
    else:
        staged, rejected = session.execute(
            select(
                func.count().filter(SyncSessionItem.data.is_not(None)),
                func.count().filter(SyncSessionItem.data.is_(None)),
            ).where(SyncSessionItem.session_id == sync.id)
        ).one()
    return SyncSummary(
        id=sync.id,
        status=sync.status,
        created_at=sync.created_at,
        expires_at=sync.expires_at,
        finished_at=sync.finished_at,
        staged=staged,
        rejected=rejected,
    )


def _get(session: Session, *, portal_id: int, session_id: uuid.UUID, lock: bool = False):
    query = select(SyncSession).where(
        SyncSession.id == session_id, SyncSession.portal_id == portal_id
    )
    sync = session.scalar(query.with_for_update() if lock else query)
    if sync is None:
        # Another portal's session is reported as missing: its existence is not ours to know.
        raise NotFound(
            f"no sync session {session_id}", field="session_id", details={"location": "path"}
        )
    return sync


def _require_open(sync: SyncSession) -> None:
    # A session that ended no sooner than it expired is told as expired, whoever ended
    # it: the worker's housekeeping closes expired sessions as aborted (no portal did),
    # and a portal would otherwise be told "expired" or "aborted" by when it asked.
    expired = sync.expires_at <= (sync.finished_at or datetime.now(UTC))
    if sync.status is SyncStatus.COMMITTED or (sync.status is not SyncStatus.OPEN and not expired):
        raise Conflict(f"sync session {sync.id} is {sync.status}", code="sync_session_closed")
    if expired:
        raise Conflict(
            f"sync session {sync.id} expired at {sync.expires_at.isoformat()}; open a new one",
            code="sync_session_expired",
        )


def get_session(session: Session, *, portal_id: int, session_id: uuid.UUID) -> SyncSummary:
    return _summary(session, _get(session, portal_id=portal_id, session_id=session_id))


def stage_items(
    session: Session,
    *,
    portal_id: int,
    session_id: uuid.UUID,
    items: list[tuple[str | None, AdInput | dict]],
    lifetimes: Lifetimes,
    max_items: int,
    max_ads: int,
) -> tuple[list[ItemResult], SyncSummary]:
    """Stage ads, each given as an AdInput or as the errors the API found in it. Ads are
    checked now, so errors come back at once; a rejected ad is remembered as such and
    kept as it is at commit. An item without a valid external id refuses them all: its
    ad could be neither staged nor kept. Sending an external id again replaces what was
    staged. A session holds at most `max_items` ads (rejected ones included), and
    stages no more than the portal may store (ads.ad_limit, of `max_ads`) unless it
    stores as many already: a request that would take it past either stages nothing.
    Returns each item's result and the session as it now stands."""
    if len(items) > MAX_BATCH_ITEMS:
        raise InvalidInput(f"at most {MAX_BATCH_ITEMS} items per request", field="items")
    unnamed = next((index for index, (external_id, _) in enumerate(items) if not external_id), None)
    if unnamed is not None:
        # Nothing could be remembered of it, so its ad would be deleted at commit.
        raise InvalidInput(
            f"item {unnamed} has no valid external_id, so the ad it stands for would be "
            "deleted at commit; nothing was staged: fix the item, then send them again",
            field=f"items.{unnamed}.external_id",
        )
    sync = _get(session, portal_id=portal_id, session_id=session_id, lock=True)
    _require_open(sync)
    valid = [ad for _, ad in items if isinstance(ad, AdInput)]
    domain_errors = iter(check_ads(session, portal_id=portal_id, ads=valid, lifetimes=lifetimes))
    rows: dict[str, dict | None] = {}
    results: list[ItemResult] = []
    first_index: dict[str, int] = {}
    for index, (external_id, ad) in enumerate(items):
        if not isinstance(ad, AdInput):  # the errors the API's schemas found in it
            result = ItemResult(external_id, "rejected", error=VALIDATION_ERROR, errors=ad)
        elif (error := next(domain_errors)) is not None:
            result = rejection(external_id, error, within="ad")
        else:
            result = ItemResult(external_id, "staged")
        if external_id in first_index:
            # As in a batch: the first stands, and what it was told stays true.
            duplicate = duplicate_item(external_id, first=first_index[external_id])
            results.append(rejection(external_id, duplicate))
            continue
        first_index[external_id] = index
        if result.status == "staged":
            # Nothing finer than the ad will keep is stored, even while staged.
            rows[external_id] = ad.with_publishable_location().to_json()
        else:
            rows[external_id] = None
        results.append(result)
    if rows:
        statement = pg_insert(SyncSessionItem).values(
            [
                {"session_id": sync.id, "external_id": key, "data": data}
                for key, data in rows.items()
            ]
        )
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["session_id", "external_id"],
                set_={"data": statement.excluded.data},
            )
        )
    # Counted once written, so that ids staged already count once; the session's row
    # lock (above) keeps two requests from passing the limit together.
    summary = _summary(session, sync)
    held = summary.staged + summary.rejected
    if held > max_items:
        raise Conflict(
            f"a sync session stages at most {max_items} ads, and this request would "
            f"make it {held}; nothing of it was staged",
            field="items",
            code="sync_session_full",
        )
    # Each ad staged (not rejected) is one of the portal's at commit: refused now, rather
    # than once the portal has staged them all. The commit counts again, exactly. More
    # staged than the portal stores means new ads among them, and at least that many at
    # commit: refused. No more than it stores may all be ads it has, which a portal above
    # a lowered limit may still change (so counted, only past the limit: rarely).
    limit = ad_limit(session.get_one(Portal, portal_id), max_ads=max_ads)
    if summary.staged > limit and summary.staged > count_ads(session, portal_id=portal_id):
        raise Conflict(
            f"this request would make the session stage {summary.staged} ads, and the "
            f"portal may store at most {limit}: committed, it would be refused; nothing "
            "of the request was staged",
            field="items",
            code="too_many_ads",
        )
    return results, summary


def commit(
    session: Session,
    *,
    portal_id: int,
    session_id: uuid.UUID,
    lifetimes: Lifetimes,
    max_ads: int,
    delete_all: bool = False,
) -> CommitResult:
    """Apply the session. A session committed already (the answer to its commit was
    lost) is answered as its commit was, and nothing changes. A commit that creates ads
    and would leave the portal more than it may store (ads.ad_limit, of `max_ads`) is
    refused whole, and the session stays open: a resync is the portal's complete set,
    not a part of it. One that creates none never is, as changes and deletions never are.
    A session in which nothing was staged, of a portal that has ads, deletes them all:
    refused (Conflict empty_resync, the session staying open) unless `delete_all`, since
    a portal's export that came out empty (a failed query, a file cut off) looks the
    same, and would take every ad of its community out of the directory at once."""
    sync = _get(session, portal_id=portal_id, session_id=session_id, lock=True)
    if sync.status is SyncStatus.COMMITTED and sync.result is not None:
        return _committed(session, sync)
    _require_open(sync)
    lock_portal_writes(session, portal_id, exclusive=True)
    if not delete_all:
        _refuse_deleting_all_unasked(session, portal_id=portal_id, sync=sync)
    counts = {"created": 0, "updated": 0, "unchanged": 0, "rejected": 0}
    rejected_items: list[ItemResult] = []
    after = ""
    while True:
        chunk = session.execute(
            select(SyncSessionItem.external_id, SyncSessionItem.data)
            .where(SyncSessionItem.session_id == sync.id, SyncSessionItem.external_id > after)
            .order_by(SyncSessionItem.external_id)
            .limit(COMMIT_CHUNK)
        ).all()
        if not chunk:
            break
        after = chunk[-1].external_id
        operations = []
        for external_id, data in chunk:
            if data is None:
                operations.append(
                    Rejected(external_id, {"_schema": ["rejected when staged; kept as it was"]})
                )
            else:
                operations.append(Upsert(external_id, AdInput.from_json(data)))
        # The limit is checked once the portal's ads are as the resync leaves them.
        results = apply_changes(
            session, portal_id=portal_id, operations=operations, lifetimes=lifetimes, max_ads=None
        )
        for operation, result in zip(operations, results, strict=True):
            counts[result.status] += 1
            # Those rejected when staged were told so then; the commit tells the others.
            if result.status == "rejected" and not isinstance(operation, Rejected):
                rejected_items.append(result)
    staged_ids = select(SyncSessionItem.external_id).where(SyncSessionItem.session_id == sync.id)
    deleted = delete_all_but(session, portal_id=portal_id, keep=staged_ids)
    # Only new ads are refused: a resync that creates none changes and deletes ads the
    # portal has, which a limit lowered below them never refuses.
    stored = lock_and_count_ads(session, portal_id=portal_id) if counts["created"] else 0
    limit = ad_limit(session.get_one(Portal, portal_id), max_ads=max_ads)
    if stored > limit:
        raise Conflict(
            f"this resync would leave the portal {stored} ads, and it may store at most "
            f"{limit}: nothing was committed, and the session stays open (abort it, then "
            "resync fewer ads; or ask the directory's operators for a higher limit, then "
            "commit again)",
            code="too_many_ads",
        )
    before = _summary(session, sync)
    sync.status = SyncStatus.COMMITTED
    sync.finished_at = datetime.now(UTC)
    sync.result = {
        "staged": before.staged,
        "rejected": before.rejected,
        "created": counts["created"],
        "updated": counts["updated"],
        "unchanged": counts["unchanged"],
        "deleted": deleted,
        "kept_rejected": counts["rejected"],
        "rejected_items": [
            {"external_id": item.external_id, "error": item.error, "errors": item.errors}
            for item in rejected_items
        ],
    }
    session.flush()
    return _committed(session, sync)


def _refuse_deleting_all_unasked(session: Session, *, portal_id: int, sync: SyncSession) -> None:
    staged_any = select(SyncSessionItem.external_id).where(SyncSessionItem.session_id == sync.id)
    has_ads = select(Ad.id).where(Ad.portal_id == portal_id)
    if session.scalar(select(~staged_any.exists() & has_ads.exists())):
        raise Conflict(
            f"nothing was staged in sync session {sync.id}: committed, it would delete all "
            'of the portal\'s ads. If that is meant, commit with {"delete_all": true}; '
            "otherwise stage the portal's ads first (the session stays open)",
            field="delete_all",
            code="empty_resync",
        )


def _committed(session: Session, sync: SyncSession) -> CommitResult:
    """The answer to the commit of `sync`, as it stored it. A commit answered before
    rejected items had codes stored none: its items are told with error None."""
    result = sync.result
    return CommitResult(
        summary=_summary(session, sync),
        created=result["created"],
        updated=result["updated"],
        unchanged=result["unchanged"],
        deleted=result["deleted"],
        kept_rejected=result["kept_rejected"],
        rejected_items=[
            ItemResult(
                item["external_id"], "rejected", error=item.get("error"), errors=item["errors"]
            )
            for item in result["rejected_items"]
        ],
    )


def abort(session: Session, *, portal_id: int, session_id: uuid.UUID) -> None:
    sync = _get(session, portal_id=portal_id, session_id=session_id, lock=True)
    if sync.status is SyncStatus.COMMITTED:
        raise Conflict(f"sync session {sync.id} is committed already", code="sync_session_closed")
    sync.status = SyncStatus.ABORTED
    sync.finished_at = datetime.now(UTC)
    session.execute(SyncSessionItem.__table__.delete().where(SyncSessionItem.session_id == sync.id))
