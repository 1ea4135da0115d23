"""Portal blocks: a community refuses another community's members.

A portal blocks another (`PUT /v1/portals/me/blocked-portals/{slug}`, services/
portal_blocks.py): no conversation opens between a member of either and an ad of the
other's, and no message is written in one they already have, until the blocker lifts it
(services/relay.py). `portal_blocks` holds one row per block, keyed by the blocker and the
blocked portal, which the relay looks up both ways in the statements it runs already.

Downgrade: drops the table, and with it every block.

Lock safety: a new, empty table. Its two foreign keys take a SHARE ROW EXCLUSIVE lock on
`portals` for an instant: a portal's profile or status being changed is waited for, and
waits (reads, ad writes and relay messages do not).
Backward compatibility: the previous release does not know the table and enforces no
block: during a rolling deploy, its processes still let members of blocked communities
open conversations and write in them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "portal_blocks",
        sa.Column("blocker_portal_id", sa.BigInteger(), nullable=False),
        sa.Column("blocked_portal_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "blocker_portal_id <> blocked_portal_id", name=op.f("ck_portal_blocks_not_self")
        ),
        sa.ForeignKeyConstraint(
            ["blocker_portal_id"],
            ["portals.id"],
            name=op.f("fk_portal_blocks_blocker_portal_id_portals"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["blocked_portal_id"],
            ["portals.id"],
            name=op.f("fk_portal_blocks_blocked_portal_id_portals"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "blocker_portal_id", "blocked_portal_id", name=op.f("pk_portal_blocks")
        ),
    )


def downgrade() -> None:
    op.drop_table("portal_blocks")
