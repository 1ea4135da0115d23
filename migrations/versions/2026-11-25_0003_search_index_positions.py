"""Search index positions: how far each Meilisearch index has followed the change feed.

Revision ID: 0003
Revises: 0002
Created: 2026-11-25

Lock safety: creates one new table; no existing table is locked.
Backward compatibility: only adds a table; the previous release neither reads nor
writes it and keeps working. The table starts empty: an index without a position is
rebuilt from the database by the worker (or `directory reindex`) before it follows
the feed.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "search_index_positions",
        sa.Column("index_name", sa.String(length=64), nullable=False),
        sa.Column("feed_cursor", sa.String(length=64), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("index_name", name=op.f("pk_search_index_positions")),
    )


def downgrade() -> None:
    op.drop_table("search_index_positions")
