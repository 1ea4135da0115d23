"""Who blocks a portal: an index on portal_blocks.blocked_portal_id.

A portal's searches leave out the ads of the communities a block stands between it and,
either way (search/postgres.py): the ones it blocked, read by the primary key, and the
ones that blocked it, read by this index.

Downgrade: drops it.

Lock safety: CREATE INDEX, not concurrently: portal_blocks holds at most 1,000 rows a
portal and is written by hand, so the lock lasts a moment.
Backward compatibility: the previous release needs no change.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        op.f("ix_portal_blocks_blocked_portal_id"), "portal_blocks", ["blocked_portal_id"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_portal_blocks_blocked_portal_id"), table_name="portal_blocks")
