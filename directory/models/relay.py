"""The contact relay: conversations about an ad between two members of (usually)
different portals, their messages, and each message's delivery to the recipient's portal.

Members are known only by their portal's opaque handle, and to each other only by a
random per-conversation alias and the display name they chose. No email address, and
no address of any kind, is ever stored."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from directory.db import Base
from directory.models.types import created_at_column, enum_column

MAX_MESSAGE_CHARS = 8000
MAX_NAME_CHARS = 80
MAX_SEQ = 2**31 - 1  # messages.seq is an integer column


class Role(enum.StrEnum):
    """A party of a conversation: who wrote first, and the ad's owner."""

    INITIATOR = "initiator"
    RECIPIENT = "recipient"

    @property
    def other(self) -> Role:
        return Role.RECIPIENT if self is Role.INITIATOR else Role.INITIATOR


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # retried for the whole delivery period in vain; still in the inbox


class DeliveryChannel(enum.StrEnum):
    WEBHOOK = "webhook"
    INBOX = "inbox"


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (
        CheckConstraint(
            f"char_length(initiator_name) BETWEEN 1 AND {MAX_NAME_CHARS}",
            name="initiator_name_length",
        ),
        CheckConstraint(
            f"recipient_name IS NULL OR char_length(recipient_name) BETWEEN 1 AND {MAX_NAME_CHARS}",
            name="recipient_name_length",
        ),
        CheckConstraint("initiator_alias <> recipient_alias", name="aliases_differ"),
        CheckConstraint(
            "(blocked_at IS NULL) = (blocked_by IS NULL)", name="blocked_by_when_blocked"
        ),
        # An erased party (services/members.py) keeps only its alias: no handle, no name;
        # an erased advertiser takes the title of its ad with it.
        CheckConstraint(
            "(initiator_member IS NULL) = (initiator_name IS NULL)",
            name="initiator_named_unless_erased",
        ),
        CheckConstraint(
            "recipient_member IS NOT NULL OR recipient_name IS NULL",
            name="recipient_unnamed_when_erased",
        ),
        CheckConstraint(
            "ad_title IS NOT NULL OR recipient_member IS NULL",
            name="ad_title_unless_advertiser_erased",
        ),
        CheckConstraint(
            "(last_sender IS NULL) = (unanswered_messages = 0)",
            name="last_sender_when_unanswered",
        ),
        # Each portal's list, newest activity first.
        Index(
            "ix_conversations_initiator_activity",
            "initiator_portal_id",
            text("last_message_at DESC"),
            text("id DESC"),
        ),
        Index(
            "ix_conversations_recipient_activity",
            "recipient_portal_id",
            text("last_message_at DESC"),
            text("id DESC"),
        ),
        # One member's conversations (the list's member filter), and the limits on new
        # conversations per portal and member (from the portal's recent openings).
        Index(
            "ix_conversations_member_opened",
            "initiator_portal_id",
            "initiator_member",
            "created_at",
        ),
        Index("ix_conversations_portal_opened", "initiator_portal_id", "created_at"),
        # The conversations of one member as the advertiser (the list's member filter,
        # erasure), and those one portal's members opened with them lately (the limit on
        # new conversations with one member).
        Index(
            "ix_conversations_recipient_opened",
            "recipient_portal_id",
            "recipient_member",
            "initiator_portal_id",
            "created_at",
        ),
        Index(None, "ad_id"),
        Index(None, "last_message_at"),  # retention
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    # The ad may be deleted later; the conversation goes on and keeps its title.
    ad_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("ads.id", ondelete="SET NULL"))
    ad_title: Mapped[str | None] = mapped_column(String(200))  # None: its advertiser erased
    initiator_portal_id: Mapped[int] = mapped_column(ForeignKey("portals.id", ondelete="CASCADE"))
    initiator_member: Mapped[str | None] = mapped_column(String(64))  # None: erased
    initiator_alias: Mapped[str] = mapped_column(String(32))
    initiator_name: Mapped[str | None] = mapped_column(String(MAX_NAME_CHARS))
    recipient_portal_id: Mapped[int] = mapped_column(ForeignKey("portals.id", ondelete="CASCADE"))
    recipient_member: Mapped[str | None] = mapped_column(String(64))  # None: erased
    recipient_alias: Mapped[str] = mapped_column(String(32))
    recipient_name: Mapped[str | None] = mapped_column(String(MAX_NAME_CHARS))  # first reply
    blocked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    blocked_by: Mapped[Role | None] = enum_column(Role, "conversation_role", nullable=True)
    message_count: Mapped[int] = mapped_column(Integer, server_default="0")
    # Who wrote last, and how many messages in a row: a party may send only so many
    # before the other answers (services/relay.py), so that what reaches a member
    # unasked is bounded by the limits on new conversations.
    last_sender: Mapped[Role | None] = enum_column(Role, "last_sender_role", nullable=True)
    unanswered_messages: Mapped[int] = mapped_column(Integer, server_default="0")
    created_at: Mapped[datetime] = created_at_column()
    last_message_at: Mapped[datetime] = created_at_column()


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("conversation_id", "seq"),
        # A portal's retry of a send it is unsure about finds the message it already made.
        UniqueConstraint("sender_portal_id", "idempotency_key"),
        CheckConstraint(f"char_length(body) BETWEEN 1 AND {MAX_MESSAGE_CHARS}", name="body_length"),
        CheckConstraint("seq >= 1", name="seq_positive"),
        Index(None, "created_at"),  # retention
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE")
    )
    seq: Mapped[int] = mapped_column(Integer)  # 1, 2, ... within its conversation
    sender_role: Mapped[Role] = enum_column(Role, "message_sender_role")
    sender_portal_id: Mapped[int] = mapped_column(ForeignKey("portals.id", ondelete="CASCADE"))
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = created_at_column()


class Delivery(Base):
    """A message on its way to the recipient's portal, or the news that a conversation
    ended (to the portal of the party who did not end it): the transactional outbox
    (written with the message or the end) and the portal's inbox. Claimed by a worker for a lease; a worker
    that dies mid-delivery lets the lease run out and another tries again, under the same
    webhook-id, so receivers can drop the repeat. Undelivered after the delivery period,
    it is marked failed (and stays in the inbox)."""

    __tablename__ = "deliveries"
    __table_args__ = (
        # Due deliveries, for the worker's claims.
        Index(None, "next_attempt_at", postgresql_where=text("state = 'pending'")),
        # The inbox: what has not reached the portal yet, in order.
        Index(None, "portal_id", "id", postgresql_where=text("state <> 'delivered'")),
        # Giving up on the oldest.
        Index(
            "ix_deliveries_pending_since", "created_at", postgresql_where=text("state = 'pending'")
        ),
        CheckConstraint(
            "(state = 'delivered') = (delivered_at IS NOT NULL AND delivered_via IS NOT NULL)",
            name="delivered_when_and_how",
        ),
        CheckConstraint(
            "(message_id IS NULL) <> (ended_conversation_id IS NULL)", name="a_message_or_an_end"
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    message_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), unique=True
    )
    # A conversation ends once (blocked, or a party erased): one event, to the other party.
    ended_conversation_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), unique=True
    )
    portal_id: Mapped[int] = mapped_column(ForeignKey("portals.id", ondelete="CASCADE"))
    state: Mapped[DeliveryState] = enum_column(
        DeliveryState, "delivery_state", server_default=DeliveryState.PENDING.value
    )
    attempts: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    # A claim by a worker moves this forward by the lease: a worker that dies before it
    # records the outcome leaves the delivery due again when the lease runs out. A portal
    # without a working webhook has its deliveries parked far in the future (inbox only).
    next_attempt_at: Mapped[datetime] = created_at_column()
    last_status: Mapped[int | None] = mapped_column(SmallInteger)
    last_error: Mapped[str | None] = mapped_column(String(300))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivered_via: Mapped[DeliveryChannel | None] = enum_column(
        DeliveryChannel, "delivery_channel", nullable=True
    )
    created_at: Mapped[datetime] = created_at_column()


class PortalBlock(Base):
    """A community refusing another's members: no conversation opens between a member of
    either and an ad of the other's, and no message is written in one they have (either
    way; services/relay.py). Until the blocker lifts it: it ends no conversation."""

    __tablename__ = "portal_blocks"
    __table_args__ = (
        CheckConstraint("blocker_portal_id <> blocked_portal_id", name="not_self"),
        # Who blocks a portal: what its searches leave out (search/postgres.py).
        Index(None, "blocked_portal_id"),
    )

    # The primary key serves the relay's check, both ways, the blocker's list, and what
    # its searches leave out.
    blocker_portal_id: Mapped[int] = mapped_column(
        ForeignKey("portals.id", ondelete="CASCADE"), primary_key=True
    )
    blocked_portal_id: Mapped[int] = mapped_column(
        ForeignKey("portals.id", ondelete="CASCADE"), primary_key=True
    )
    created_at: Mapped[datetime] = created_at_column()
