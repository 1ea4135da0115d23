"""Periodic clean-up run by `directory worker`."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from directory.models import SyncSession, SyncSessionItem, SyncStatus


@dataclass(frozen=True)
class HousekeepingReport:
    expired_sync_sessions: int
    purged_sync_items: int


def close_stale_sync_sessions(session: Session) -> HousekeepingReport:
    """Open sync sessions past their expiry are aborted; the staged items of every
    finished session are dropped (a committed session's items have been applied)."""
    expired = session.execute(
        update(SyncSession)
        .where(SyncSession.status == SyncStatus.OPEN, SyncSession.expires_at <= func.now())
        .values(status=SyncStatus.ABORTED, finished_at=func.now())
        .returning(SyncSession.id)
    ).all()
    finished = select(SyncSession.id).where(SyncSession.status != SyncStatus.OPEN)
    purged = session.execute(
        delete(SyncSessionItem).where(SyncSessionItem.session_id.in_(finished))
    ).rowcount
    return HousekeepingReport(expired_sync_sessions=len(expired), purged_sync_items=purged)
