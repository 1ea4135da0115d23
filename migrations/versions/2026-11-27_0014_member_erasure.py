"""Member erasure: a conversation's party can be erased.

A portal whose member leaves, or asks to be forgotten, erases them from the directory
(`POST /v1/portals/me/member-erasures`, services/members.py). Their ads go, and in each
conversation they were a party to, the messages go and their handle and name are
emptied: `initiator_member`, `initiator_name` and `recipient_member` may now be NULL,
and `ad_title` too once the advertiser (the recipient) is erased. The conversation row
stays, with its random aliases only, so the other party's portal learns that it ended,
and the limits on new conversations still count it.

A new index, `ix_conversations_recipient_member`, finds one member's conversations as
the advertiser (erasure, and the conversation list's member filter, which scanned all of
a portal's received conversations).

Downgrade: deletes the conversations with an erased party (their messages are gone
already; the previous release cannot show a party without a handle), then restores the
NOT NULL constraints.

Lock safety: DROP NOT NULL and ADD CONSTRAINT CHECK on conversations: an ACCESS
EXCLUSIVE lock while the constraints check the rows (milliseconds per ten thousand
rows). CREATE INDEX, not concurrently: conversations are written only on a new
conversation or message; on a large relay create the index beforehand with CREATE INDEX
CONCURRENTLY under this name, and this migration skips it.
Backward compatibility: the previous release never writes NULL there, and reads the
columns as strings: while it still serves (a rolling deploy), erase no member.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ERASABLE = ("ad_title", "initiator_member", "initiator_name", "recipient_member")
CHECKS = {
    "initiator_named_unless_erased": "(initiator_member IS NULL) = (initiator_name IS NULL)",
    "recipient_unnamed_when_erased": "recipient_member IS NOT NULL OR recipient_name IS NULL",
    "ad_title_unless_advertiser_erased": "ad_title IS NOT NULL OR recipient_member IS NULL",
}


def upgrade() -> None:
    for column in ERASABLE:
        op.alter_column("conversations", column, nullable=True)
    for name, condition in CHECKS.items():
        op.create_check_constraint(name, "conversations", condition)
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_conversations_recipient_member"
        " ON conversations (recipient_portal_id, recipient_member)"
    )


def downgrade() -> None:
    op.drop_index("ix_conversations_recipient_member", table_name="conversations")
    for name in CHECKS:
        op.drop_constraint(name, "conversations", type_="check")
    op.execute(
        "DELETE FROM conversations"
        " WHERE initiator_member IS NULL OR recipient_member IS NULL OR ad_title IS NULL"
    )
    for column in ERASABLE:
        op.alter_column("conversations", column, nullable=False)
