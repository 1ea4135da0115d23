"""Openings per recipient: the index that counts one portal's new conversations with one
member.

The members of one portal may open only so many conversations an hour with one member
of another (`DIRECTORY_RELAY_CONVERSATIONS_WITH_ONE_MEMBER_PER_HOUR`, services/relay.py):
otherwise a portal, making up handles, could send one advertiser 2,000 conversations an
hour, the limit of a whole portal. `ix_conversations_recipient_member`, on the
recipient's portal and handle, gains the opener's portal and the time, so that the
count reads only that portal's recent openings; its two first columns still serve the
erasure and the conversation list's member filter.

Downgrade: the index as it was.

Lock safety: DROP INDEX and CREATE INDEX, not concurrently: conversations are written
only on a new conversation or message, which wait meanwhile (a second or so per million
conversations). On a large relay, create the new index beforehand with CREATE INDEX
CONCURRENTLY under the name ix_conversations_recipient_opened, and this migration only
drops the old one.
Backward compatibility: the previous release needs no change; its queries use the new
index's first columns.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_conversations_recipient_opened ON conversations"
        " (recipient_portal_id, recipient_member, initiator_portal_id, created_at)"
    )
    op.drop_index("ix_conversations_recipient_member", table_name="conversations")


def downgrade() -> None:
    op.create_index(
        "ix_conversations_recipient_member",
        "conversations",
        ["recipient_portal_id", "recipient_member"],
    )
    op.drop_index("ix_conversations_recipient_opened", table_name="conversations")
