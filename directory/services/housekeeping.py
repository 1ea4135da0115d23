"""Periodic clean-up run by `directory worker`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, func, select, tuple_, update
from sqlalchemy.orm import Session

from directory.models import SyncSession, SyncSessionItem, SyncStatus

# Staged items (and expired sessions) handled per call. A resync stages up to
# sync_session_max_items, each left to purge once it ends, and a worker away for a while
# finds many resyncs' worth: in one statement they outlasted the statement timeout, and
# the purge failed every round while the backlog grew. A batch is a short transaction.
SYNC_PURGE_BATCH = 10_000
# How long a finished sync session is kept, for a commit sent again (its answer was lost)
# to be answered as it was, and for GET /v1/sync-sessions/{id}. Each resync left its row
# for good otherwise, with its answer (an error per rejected ad): megabytes a resync.
FINISHED_SYNC_SESSION_KEPT = timedelta(days=30)


@dataclass(frozen=True)
class HousekeepingReport:
    expired_sync_sessions: int
    purged_sync_items: int
    deleted_sync_sessions: int = 0
    more: bool = False  # a batch was full: more may be due at once

    def __add__(self, other: HousekeepingReport) -> HousekeepingReport:
        return HousekeepingReport(
            self.expired_sync_sessions + other.expired_sync_sessions,
            self.purged_sync_items + other.purged_sync_items,
            self.deleted_sync_sessions + other.deleted_sync_sessions,
            other.more,
        )


def close_stale_sync_sessions(
    session: Session, *, limit: int = SYNC_PURGE_BATCH
) -> HousekeepingReport:
    """Open sync sessions past their expiry are aborted; the staged items of every
    finished session are dropped (a committed session's items have been applied); a
    session finished more than FINISHED_SYNC_SESSION_KEPT ago goes. At most `limit` of
    each a call.

    What another transaction holds is skipped, not waited for: another worker's
    housekeeping purging the same items, or a commit under way on a session that has just
    expired (it finds the session as it leaves it, at the next call)."""
    expiring = (
        select(SyncSession.id)
        .where(SyncSession.status == SyncStatus.OPEN, SyncSession.expires_at <= func.now())
        .order_by(SyncSession.expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    expired = session.execute(
        update(SyncSession)
        .where(SyncSession.id.in_(expiring.scalar_subquery()))
        .values(status=SyncStatus.ABORTED, finished_at=func.now())
        .returning(SyncSession.id)
    ).all()
    finished = select(SyncSession.id).where(SyncSession.status != SyncStatus.OPEN)
    purgeable = (
        select(SyncSessionItem.session_id, SyncSessionItem.external_id)
        .where(SyncSessionItem.session_id.in_(finished))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    purged = session.execute(
        delete(SyncSessionItem).where(
            tuple_(SyncSessionItem.session_id, SyncSessionItem.external_id).in_(purgeable)
        )
    ).rowcount
    # Their items gone (above, or at an earlier call): a session's delete never takes
    # an unbounded number of items with it.
    long_finished = (
        select(SyncSession.id)
        .where(
            SyncSession.status != SyncStatus.OPEN,
            SyncSession.finished_at < func.now() - FINISHED_SYNC_SESSION_KEPT,
            ~select(SyncSessionItem.session_id)
            .where(SyncSessionItem.session_id == SyncSession.id)
            .exists(),
        )
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    deleted = session.execute(
        delete(SyncSession).where(SyncSession.id.in_(long_finished.scalar_subquery()))
    ).rowcount
    return HousekeepingReport(
        expired_sync_sessions=len(expired),
        purged_sync_items=purged,
        deleted_sync_sessions=deleted,
        more=max(len(expired), purged, deleted) >= limit,
    )
