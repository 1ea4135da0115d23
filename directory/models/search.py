"""Where each search index stands in the change feed."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from directory.db import Base
from directory.models.types import updated_at_column


class SearchIndexPosition(Base):
    """The feed cursor up to which an external search index holds every change.

    Written only after the index has confirmed the changes, in the transaction that
    read them: after a crash the indexer replays from here, and replaying is harmless
    because every change is applied as "the ad is now like this" or "the ad is gone"."""

    __tablename__ = "search_index_positions"

    # The Meilisearch index uid (letters, digits, - and _, at most 400 bytes there;
    # ours are short names like "ads").
    index_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    feed_cursor: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = updated_at_column()
