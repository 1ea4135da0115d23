from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column, relationship

from directory.db import Base
from directory.models.types import created_at_column, enum_column, updated_at_column


class PortalStatus(enum.StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"  # by an operator, until reactivated
    # Left the directory for good (services/closing.py): nothing of its members is kept,
    # only its name, for the other side of the conversations its members had.
    CLOSED = "closed"


class LedgerProtocol(enum.StrEnum):
    """How members' clients pay on a portal's ledger; each has an adapter in the client."""

    CREDIT_COMMONS = "credit-commons"


@dataclass(frozen=True)
class Ledger:
    """A portal's registered ledger."""

    protocol: LedgerProtocol
    url: str
    node: str


class Portal(Base):
    """A community site or ledger that publishes its members' ads in the directory."""

    __tablename__ = "portals"
    __table_args__ = (
        CheckConstraint("slug ~ '^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$'", name="slug_format"),
        # A ledger is registered whole or not at all.
        CheckConstraint(
            "(ledger_protocol IS NULL) = (ledger_url IS NULL) "
            "AND (ledger_url IS NULL) = (ledger_node IS NULL)",
            name="ledger_complete",
        ),
        CheckConstraint("website_verified_by IN ('fetch', 'operator')", name="website_verified_by"),
        CheckConstraint("max_ads >= 0", name="max_ads_not_negative"),
        # Every search leaves out the ads of portals that are not active: a few among
        # hundreds or thousands, found in this index without reading the others.
        Index("ix_portals_not_active", "id", postgresql_where=text("status <> 'active'")),
        # Of the portals of a directory that claim one website, one at most has proved it
        # is its own: the one whose ads it names (their global_id). Claims stay open to
        # others until then, so that a squatter cannot keep the site's real owner out.
        Index(
            "uq_portals_website_identity",
            "website_identity",
            unique=True,
            postgresql_where=text("website_verified_at IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    slug: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    website: Mapped[str | None] = mapped_column(String(2048))
    # SHA-256 (hex) of the website's global-id prefix (services.ads.global_id_prefix):
    # the website names the portal's ads everywhere, so two verified portals of one
    # directory cannot share it. A digest, since a normalised website can outgrow an
    # index entry.
    website_identity: Mapped[str | None] = mapped_column(String(64))
    # What the portal publishes at <website>/.well-known/commons-directory to prove the
    # website is its own (services.websites); a new one with each new website, None
    # without one.
    website_verification_token: Mapped[str | None] = mapped_column(String(64))
    # When the portal proved it (or an operator vouched for it); None: its ads have no
    # global_id. Cleared when the website changes.
    website_verified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # How: "fetch" (the token was found there; the worker looks for it again every few
    # days) or "operator" (vouched for, never looked at again: services.websites.
    # VerifiedBy). None while unverified, and for verifications older than both.
    website_verified_by: Mapped[str | None] = mapped_column(String(16))
    # When the directory last fetched the website to verify it, or to look for the token
    # again: one fetch at a time per portal, at most one every CHECK_INTERVAL.
    website_checked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The portal's last webhook test (services/webhook_tests.py): one at most every so often.
    webhook_tested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Since when, and why, the token has not been found again (services.websites.
    # record_recheck): the verification is withdrawn once that has lasted long enough.
    website_recheck_failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    website_recheck_failure: Mapped[str | None] = mapped_column(String(1000))
    # When the directory last found the token there (a verification by fetch, a re-check):
    # proof that it reached the web then, which withdrawing another portal's verification
    # needs (services.websites.record_recheck).
    website_token_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    contact: Mapped[str | None] = mapped_column(String(320))
    description: Mapped[str | None] = mapped_column(Text)
    default_currencies: Mapped[list[str]] = mapped_column(
        ARRAY(String(64)), server_default="{}", default=list
    )
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    # Standard Webhooks secrets ("whsec_..."): kept as they are, since signing needs them.
    # After a rotation the previous one signs too, until it expires.
    webhook_secret: Mapped[str] = mapped_column(String(100))
    webhook_previous_secret: Mapped[str | None] = mapped_column(String(100))
    webhook_previous_secret_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True)
    )
    # The idempotency key of the latest rotation: sent again, it rotates no more. With the
    # overlap it was made with (None for rotations before migration 0023): sent again with
    # another, the key is refused as reused.
    webhook_rotation_key: Mapped[str | None] = mapped_column(String(128))
    webhook_rotation_overlap_hours: Mapped[int | None] = mapped_column(Integer)
    # Set when the endpoint answered 410 Gone: no more webhooks until the URL is set again
    # (messages wait in the inbox meanwhile).
    webhook_disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    webhook_disabled_reason: Mapped[str | None] = mapped_column(String(300))
    # The ledger its members' ads are paid on (issue 7): where payers' own clients go;
    # the directory never calls it and holds no credential for it.
    ledger_protocol: Mapped[LedgerProtocol | None] = enum_column(
        LedgerProtocol, "ledger_protocol", nullable=True
    )
    ledger_url: Mapped[str | None] = mapped_column(String(2048))
    ledger_node: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[PortalStatus] = enum_column(
        PortalStatus, "portal_status", server_default=PortalStatus.ACTIVE.value
    )
    # The most ads the portal may store, set by an operator (`directory portals
    # set-max-ads`; 0: no new ones); None: the directory's DIRECTORY_PORTAL_MAX_ADS.
    max_ads: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()

    keys: Mapped[list[PortalKey]] = relationship(back_populates="portal", lazy="raise")

    @property
    def ledger(self) -> Ledger | None:
        if self.ledger_protocol is None:
            return None
        return Ledger(self.ledger_protocol, self.ledger_url, self.ledger_node)

    @ledger.setter
    def ledger(self, ledger: Ledger | None) -> None:
        self.ledger_protocol = None if ledger is None else ledger.protocol
        self.ledger_url = None if ledger is None else ledger.url
        self.ledger_node = None if ledger is None else ledger.node


class PortalKey(Base):
    """An API key of a portal. Only a SHA-256 digest of the key is kept: keys are long
    random strings, so a fast hash is as safe as a slow one and costs one index lookup."""

    __tablename__ = "portal_keys"
    __table_args__ = (Index(None, "portal_id"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    portal_id: Mapped[int] = mapped_column(ForeignKey("portals.id", ondelete="CASCADE"))
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters of the key, shown in listings so an admin can tell keys apart.
    hint: Mapped[str] = mapped_column(String(16))
    label: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = created_at_column()
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    portal: Mapped[Portal] = relationship(back_populates="keys", lazy="raise")
