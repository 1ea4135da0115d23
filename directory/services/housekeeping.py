"""Periodic clean-up run by `directory worker`."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, select, tuple_, update
from sqlalchemy.orm import Session

from directory.models import SyncSession, SyncSessionItem, SyncStatus

# Staged items (and expired sessions) handled per call. A resync stages up to
# sync_session_max_items, each left to purge once it ends, and a worker away for a while
# finds many resyncs' worth: in one statement they outlasted the statement timeout, and
# the purge failed every round while the backlog grew. A batch is a short transaction.
SYNC_PURGE_BATCH = 10_000


@dataclass(frozen=True)
class HousekeepingReport:
    expired_sync_sessions: int
    purged_sync_items: int
    more: bool = False  # a batch was full: more may be due at once

    def __add__(self, other: HousekeepingReport) -> HousekeepingReport:
        return HousekeepingReport(
            self.expired_sync_sessions + other.expired_sync_sessions,
            self.purged_sync_items + other.purged_sync_items,
            other.more,
        )


def close_stale_sync_sessions(
    session: Session, *, limit: int = SYNC_PURGE_BATCH
) -> HousekeepingReport:
    """Open sync sessions past their expiry are aborted; the staged items of every
    finished session are dropped (a committed session's items have been applied). At
    most `limit` of each a call.

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
    return HousekeepingReport(
        expired_sync_sessions=len(expired),
        purged_sync_items=purged,
        more=max(len(expired), purged) >= limit,
    )
