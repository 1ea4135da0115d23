from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Index, String, Uuid
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from directory.db import Base
from directory.models.types import created_at_column, enum_column


class SyncStatus(enum.StrEnum):
    OPEN = "open"
    COMMITTED = "committed"
    ABORTED = "aborted"


class SyncSession(Base):
    """A full resync spread over several requests: opened, filled, then committed at once.
    Until the commit nothing a portal publishes changes; the commit replaces all its ads."""

    __tablename__ = "sync_sessions"
    __table_args__ = (Index(None, "portal_id", "status"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    portal_id: Mapped[int] = mapped_column(ForeignKey("portals.id", ondelete="CASCADE"))
    status: Mapped[SyncStatus] = enum_column(
        SyncStatus, "sync_status", server_default=SyncStatus.OPEN.value
    )
    created_at: Mapped[datetime] = created_at_column()
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set by the commit: its counts and rejected items, answered again to a commit sent
    # again (its answer was lost). The staged items are purged after the commit. Its
    # rejected items carry their code (`error`) since codes exist; those stored before
    # have none, and are answered with null (services.sync._committed).
    result: Mapped[dict | None] = mapped_column(JSONB(none_as_null=True))


class SyncSessionItem(Base):
    """One ad staged in a sync session: its validated data, or the fact that it was
    rejected (a rejected ad is kept as it is at commit, never deleted by omission)."""

    __tablename__ = "sync_session_items"

    session_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("sync_sessions.id", ondelete="CASCADE"), primary_key=True
    )
    external_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    # None when the item was rejected.
    data: Mapped[dict | None] = mapped_column(JSONB(none_as_null=True))
