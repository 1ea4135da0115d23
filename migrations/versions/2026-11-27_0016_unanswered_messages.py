"""Unanswered messages: a conversation records who wrote last, and how many in a row.

A party may send only so many messages in a row before the other answers
(`DIRECTORY_RELAY_UNANSWERED_MESSAGES`, services/relay.py): `last_sender` and
`unanswered_messages` are kept by the statement that appends each message.

No backfill: existing conversations start at no message in a row, so the limit applies
to them from the upgrade on. Counting their past messages would lock every conversation
with messages for one long UPDATE, holding up the messages sent meanwhile.

Downgrade: drops the two columns.

Lock safety: ADD COLUMN with a constant default and a CHECK that holds for every existing
row (both columns at their defaults): an ACCESS EXCLUSIVE lock while the constraints
check the rows (milliseconds per ten thousand rows).
Backward compatibility: the previous release does not write the columns, so its
messages, during a rolling deploy, are not counted.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "conversations",
        sa.Column(
            "last_sender",
            sa.Enum(
                "initiator",
                "recipient",
                name="last_sender_role",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=True,
        ),
    )
    op.add_column(
        "conversations",
        sa.Column("unanswered_messages", sa.Integer(), server_default="0", nullable=False),
    )
    op.create_check_constraint(
        "last_sender_when_unanswered",
        "conversations",
        "(last_sender IS NULL) = (unanswered_messages = 0)",
    )


def downgrade() -> None:
    op.drop_constraint("last_sender_when_unanswered", "conversations", type_="check")
    op.drop_column("conversations", "unanswered_messages")
    op.drop_column("conversations", "last_sender")
