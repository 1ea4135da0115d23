"""Conversation-ended events: a delivery tells a portal that a conversation ended.

When one party blocks a conversation, or is erased by their community (or their
community closes), the other party's portal is sent a `conversation.ended` event, by
webhook and in its inbox, like a message (services/relay.py). Its delivery names the
conversation instead of a message: `deliveries.message_id` may now be NULL, and
`deliveries.ended_conversation_id` (unique: a conversation ends once) is set instead.

Downgrade: deletes the conversation-ended deliveries (the previous release delivers only
messages), then restores `message_id`'s NOT NULL.

Lock safety: DROP NOT NULL changes the catalog only; ADD COLUMN without a default too.
The foreign key, the unique index and the CHECK read the deliveries under an ACCESS
EXCLUSIVE lock (a second or so per million rows, all NULL in the new column): the
worker's claims and new messages wait meanwhile.
Backward compatibility: the previous release's inbox reads deliveries joined to their
messages, and passes over those without one; its worker's claim leases them too (counting
an attempt each time, which later retries' backoff starts from) but sends nothing, and
they come due again after the lease: during a rolling deploy, events written by this
release wait until its own workers deliver them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column("deliveries", "message_id", nullable=True)
    op.add_column("deliveries", sa.Column("ended_conversation_id", sa.Uuid(), nullable=True))
    op.create_foreign_key(
        op.f("fk_deliveries_ended_conversation_id_conversations"),
        "deliveries",
        "conversations",
        ["ended_conversation_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.create_unique_constraint(
        op.f("uq_deliveries_ended_conversation_id"), "deliveries", ["ended_conversation_id"]
    )
    op.create_check_constraint(
        "a_message_or_an_end",
        "deliveries",
        "(message_id IS NULL) <> (ended_conversation_id IS NULL)",
    )


def downgrade() -> None:
    op.execute("DELETE FROM deliveries WHERE message_id IS NULL")
    op.drop_constraint("a_message_or_an_end", "deliveries", type_="check")
    op.drop_column("deliveries", "ended_conversation_id")
    op.alter_column("deliveries", "message_id", nullable=False)
