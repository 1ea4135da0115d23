"""The contact relay: conversations, messages and their deliveries; webhook secrets and
state on portals; whether an ad accepts contact.

Revision ID: 0004
Revises: 0003
Created: 2026-11-25

Lock safety: creates three new tables. On `ads` and `portals` it adds columns with
constant defaults (no table rewrite on PostgreSQL 11+), each ALTER holding its ACCESS
EXCLUSIVE lock only for a moment; env.py's lock_timeout makes a blocked ALTER fail
rather than queue writes behind it. Filling `portals.webhook_secret` updates every
portal row once (a few hundred rows).
Backward compatibility: the previous release neither reads nor writes the new tables
and columns; every new column has a default, so its inserts keep working.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("ad_id", sa.Uuid(), nullable=True),
        sa.Column("ad_title", sa.String(length=200), nullable=False),
        sa.Column("initiator_portal_id", sa.BigInteger(), nullable=False),
        sa.Column("initiator_member", sa.String(length=64), nullable=False),
        sa.Column("initiator_alias", sa.String(length=32), nullable=False),
        sa.Column("initiator_name", sa.String(length=80), nullable=False),
        sa.Column("recipient_portal_id", sa.BigInteger(), nullable=False),
        sa.Column("recipient_member", sa.String(length=64), nullable=False),
        sa.Column("recipient_alias", sa.String(length=32), nullable=False),
        sa.Column("recipient_name", sa.String(length=80), nullable=True),
        sa.Column("blocked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "blocked_by",
            sa.Enum(
                "initiator",
                "recipient",
                name="conversation_role",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=True,
        ),
        sa.Column("message_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "last_message_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "(blocked_at IS NULL) = (blocked_by IS NULL)",
            name=op.f("ck_conversations_blocked_by_when_blocked"),
        ),
        sa.CheckConstraint(
            "char_length(initiator_name) BETWEEN 1 AND 80",
            name=op.f("ck_conversations_initiator_name_length"),
        ),
        sa.CheckConstraint(
            "initiator_alias <> recipient_alias", name=op.f("ck_conversations_aliases_differ")
        ),
        sa.CheckConstraint(
            "recipient_name IS NULL OR char_length(recipient_name) BETWEEN 1 AND 80",
            name=op.f("ck_conversations_recipient_name_length"),
        ),
        sa.ForeignKeyConstraint(
            ["ad_id"], ["ads.id"], name=op.f("fk_conversations_ad_id_ads"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["initiator_portal_id"],
            ["portals.id"],
            name=op.f("fk_conversations_initiator_portal_id_portals"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["recipient_portal_id"],
            ["portals.id"],
            name=op.f("fk_conversations_recipient_portal_id_portals"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversations")),
    )
    op.create_index(op.f("ix_conversations_ad_id"), "conversations", ["ad_id"], unique=False)
    op.create_index(
        "ix_conversations_initiator_activity",
        "conversations",
        [
            "initiator_portal_id",
            sa.literal_column("last_message_at DESC"),
            sa.literal_column("id DESC"),
        ],
        unique=False,
    )
    op.create_index(
        op.f("ix_conversations_last_message_at"), "conversations", ["last_message_at"], unique=False
    )
    op.create_index(
        "ix_conversations_member_opened",
        "conversations",
        ["initiator_portal_id", "initiator_member", "created_at"],
        unique=False,
    )
    op.create_index(
        "ix_conversations_portal_opened",
        "conversations",
        ["initiator_portal_id", "created_at"],
        unique=False,
    )
    op.create_index(
        "ix_conversations_recipient_activity",
        "conversations",
        [
            "recipient_portal_id",
            sa.literal_column("last_message_at DESC"),
            sa.literal_column("id DESC"),
        ],
        unique=False,
    )
    op.create_table(
        "messages",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column(
            "sender_role",
            sa.Enum(
                "initiator",
                "recipient",
                name="message_sender_role",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("sender_portal_id", sa.BigInteger(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=128), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "char_length(body) BETWEEN 1 AND 8000", name=op.f("ck_messages_body_length")
        ),
        sa.CheckConstraint("seq >= 1", name=op.f("ck_messages_seq_positive")),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_messages_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["sender_portal_id"],
            ["portals.id"],
            name=op.f("fk_messages_sender_portal_id_portals"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
        sa.UniqueConstraint("conversation_id", "seq", name=op.f("uq_messages_conversation_id_seq")),
        sa.UniqueConstraint(
            "sender_portal_id",
            "idempotency_key",
            name=op.f("uq_messages_sender_portal_id_idempotency_key"),
        ),
    )
    op.create_index(op.f("ix_messages_created_at"), "messages", ["created_at"], unique=False)
    op.create_table(
        "deliveries",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("portal_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "pending",
                "delivered",
                "failed",
                name="delivery_state",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            server_default="pending",
            nullable=False,
        ),
        sa.Column("attempts", sa.SmallInteger(), server_default="0", nullable=False),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("last_status", sa.SmallInteger(), nullable=True),
        sa.Column("last_error", sa.String(length=300), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "delivered_via",
            sa.Enum(
                "webhook",
                "inbox",
                name="delivery_channel",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=True,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "(state = 'delivered') = (delivered_at IS NOT NULL AND delivered_via IS NOT NULL)",
            name=op.f("ck_deliveries_delivered_when_and_how"),
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_deliveries_message_id_messages"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["portal_id"],
            ["portals.id"],
            name=op.f("fk_deliveries_portal_id_portals"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deliveries")),
        sa.UniqueConstraint("message_id", name=op.f("uq_deliveries_message_id")),
    )
    op.create_index(
        op.f("ix_deliveries_next_attempt_at"),
        "deliveries",
        ["next_attempt_at"],
        unique=False,
        postgresql_where=sa.text("state = 'pending'"),
    )
    op.create_index(
        "ix_deliveries_pending_since",
        "deliveries",
        ["created_at"],
        unique=False,
        postgresql_where=sa.text("state = 'pending'"),
    )
    op.create_index(
        op.f("ix_deliveries_portal_id_id"),
        "deliveries",
        ["portal_id", "id"],
        unique=False,
        postgresql_where=sa.text("state <> 'delivered'"),
    )
    op.add_column(
        "ads",
        sa.Column("accepts_contact", sa.Boolean(), server_default=sa.text("true"), nullable=False),
    )
    op.add_column("portals", sa.Column("webhook_secret", sa.String(length=100), nullable=True))
    # A secret for each existing portal: 32 bytes from the server's strong random source
    # (gen_random_uuid), in the Standard Webhooks format.
    op.execute(
        "UPDATE portals SET webhook_secret = 'whsec_' || encode(sha256("
        "uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())), 'base64')"
    )
    op.alter_column("portals", "webhook_secret", nullable=False)
    op.add_column(
        "portals", sa.Column("webhook_previous_secret", sa.String(length=100), nullable=True)
    )
    op.add_column(
        "portals",
        sa.Column("webhook_previous_secret_expires_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.add_column(
        "portals", sa.Column("webhook_disabled_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "portals", sa.Column("webhook_disabled_reason", sa.String(length=300), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("portals", "webhook_disabled_reason")
    op.drop_column("portals", "webhook_disabled_at")
    op.drop_column("portals", "webhook_previous_secret_expires_at")
    op.drop_column("portals", "webhook_previous_secret")
    op.drop_column("portals", "webhook_secret")
    op.drop_column("ads", "accepts_contact")
    op.drop_index(
        op.f("ix_deliveries_portal_id_id"),
        table_name="deliveries",
        postgresql_where=sa.text("state <> 'delivered'"),
    )
    op.drop_index(
        "ix_deliveries_pending_since",
        table_name="deliveries",
        postgresql_where=sa.text("state = 'pending'"),
    )
    op.drop_index(
        op.f("ix_deliveries_next_attempt_at"),
        table_name="deliveries",
        postgresql_where=sa.text("state = 'pending'"),
    )
    op.drop_table("deliveries")
    op.drop_index(op.f("ix_messages_created_at"), table_name="messages")
    op.drop_table("messages")
    op.drop_index("ix_conversations_recipient_activity", table_name="conversations")
    op.drop_index("ix_conversations_portal_opened", table_name="conversations")
    op.drop_index("ix_conversations_member_opened", table_name="conversations")
    op.drop_index(op.f("ix_conversations_last_message_at"), table_name="conversations")
    op.drop_index("ix_conversations_initiator_activity", table_name="conversations")
    op.drop_index(op.f("ix_conversations_ad_id"), table_name="conversations")
    op.drop_table("conversations")
