from __future__ import annotations

import enum
import uuid
from datetime import datetime
from decimal import Decimal

from geoalchemy2 import Geography, Geometry
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Computed,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY, TSVECTOR
from sqlalchemy.orm import Mapped, mapped_column

from directory.db import Base
from directory.geo import Privacy
from directory.models.types import created_at_column, enum_column, updated_at_column


class AdKind(enum.StrEnum):
    OFFER = "offer"
    WANT = "want"


class Visibility(enum.StrEnum):
    PUBLIC = "public"
    PORTAL = "portal"  # seen only by the owning portal


class PriceUnit(enum.StrEnum):
    ONCE = "once"
    ITEM = "item"
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    KG = "kg"


class ChangeOp(enum.StrEnum):
    UPSERT = "upsert"
    DELETE = "delete"


class Ad(Base):
    """An offer or a want, published by a portal on behalf of one of its members."""

    __tablename__ = "ads"
    __table_args__ = (
        UniqueConstraint("portal_id", "external_id"),
        CheckConstraint("char_length(title) BETWEEN 1 AND 200", name="title_length"),
        CheckConstraint("char_length(body) <= 8000", name="body_length"),
        CheckConstraint("cardinality(currencies) BETWEEN 1 AND 20", name="currencies_count"),
        CheckConstraint("cardinality(tags) <= 20", name="tags_count"),
        CheckConstraint("cardinality(images) <= 10", name="images_count"),
        CheckConstraint(
            "(location IS NULL) = (privacy = 'hidden')", name="location_matches_privacy"
        ),
        CheckConstraint(
            "(price_amount IS NULL) = (price_currency IS NULL) "
            "AND (price_amount IS NULL) = (price_unit IS NULL)",
            name="price_complete",
        ),
        CheckConstraint("price_amount IS NULL OR price_amount >= 0", name="price_not_negative"),
        CheckConstraint("version >= 1", name="version_positive"),
        # Every index here is paid for by each ad written, 10,000 a second at full speed:
        # only those that search queries need (see directory/search/postgres.py).
        Index(None, "location", postgresql_using="gist"),  # radius, nearest first
        Index(None, "location_box", postgresql_using="gist"),  # bounding boxes
        Index(None, "search_vector", postgresql_using="gin"),  # words
        Index(
            None,
            "search_words",
            postgresql_using="gin",
            postgresql_ops={"search_words": "gin_trgm_ops"},
        ),  # typos
        Index(None, "updated_at", "id"),  # most recent first
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    portal_id: Mapped[int] = mapped_column(ForeignKey("portals.id", ondelete="CASCADE"))
    external_id: Mapped[str] = mapped_column(String(128))
    kind: Mapped[AdKind] = enum_column(AdKind, "ad_kind")
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    category: Mapped[str] = mapped_column(ForeignKey("categories.code"))
    tags: Mapped[list[str]] = mapped_column(ARRAY(String(40)), server_default="{}")
    # Already snapped to the privacy level: the exact point of a non-exact ad never lands here.
    location = mapped_column(
        Geography(geometry_type="POINT", srid=4326, spatial_index=False), nullable=True
    )
    privacy: Mapped[Privacy] = enum_column(Privacy, "ad_privacy")
    visibility: Mapped[Visibility] = enum_column(Visibility, "ad_visibility")
    currencies: Mapped[list[str]] = mapped_column(ARRAY(String(64)))
    price_amount: Mapped[Decimal | None] = mapped_column(Numeric(14, 4))
    price_currency: Mapped[str | None] = mapped_column(String(64))
    price_unit: Mapped[PriceUnit | None] = enum_column(PriceUnit, "ad_price_unit", nullable=True)
    language: Mapped[str | None] = mapped_column(String(35))
    images: Mapped[list[str]] = mapped_column(ARRAY(String(2048)), server_default="{}")
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    member: Mapped[str] = mapped_column(String(64))
    ledger_account: Mapped[str | None] = mapped_column(String(128))
    # False: members of other portals cannot open a conversation about this ad.
    accepts_contact: Mapped[bool] = mapped_column(Boolean, server_default=true())
    version: Mapped[int] = mapped_column(Integer, server_default="1")
    # Digest of the ad as the portal sent it: an identical PUT changes nothing.
    content_hash: Mapped[str] = mapped_column(String(32))
    # Kept by PostgreSQL from the columns above (functions from migration 0002). A box
    # query is a latitude/longitude rectangle, so it runs on the planar copy of the
    # point; the geography index draws boxes as great circles, not parallels.
    location_box = mapped_column(
        Geometry(geometry_type="POINT", srid=4326, spatial_index=False),
        Computed("location::geometry", persisted=True),
        nullable=True,
    )
    search_vector = mapped_column(
        TSVECTOR,
        Computed("directory_search_vector(language, title, tags, body)", persisted=True),
        nullable=True,
    )
    search_words: Mapped[str | None] = mapped_column(
        Text, Computed("directory_search_words(title, tags)", persisted=True)
    )
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()


class AdChange(Base):
    """The ordered log of changes to what the public may see, read through the feed.

    Rows are ordered by (txid, seq): a sequence alone is not safe to follow, because a
    transaction may take a lower number and commit after a higher one has been read.
    The feed only serves rows whose transaction is older than every transaction still
    running, and every later row then sorts after them."""

    __tablename__ = "ad_changes"
    __table_args__ = (Index(None, "txid", "seq"),)

    seq: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    txid: Mapped[int] = mapped_column(
        BigInteger, server_default=text("(pg_current_xact_id()::text::bigint)")
    )
    ad_id: Mapped[uuid.UUID] = mapped_column(Uuid)  # no FK: deletions are logged too
    # The key orders more than it checks: logging a change takes a key share lock on the
    # portal's row, which a change of the whole portal's public view (suspension, website,
    # ledger: services.portals._log_public_ads, under FOR UPDATE) waits for, and waits
    # behind. That change then lists every ad as the write left it; without the key, an
    # ad a write made public meanwhile would keep its upsert as the feed's last word
    # (tests/api/test_feed.py, the portal change races).
    portal_id: Mapped[int] = mapped_column(ForeignKey("portals.id", ondelete="CASCADE"), index=True)
    op: Mapped[ChangeOp] = enum_column(ChangeOp, "ad_change_op")
    changed_at: Mapped[datetime] = created_at_column()
