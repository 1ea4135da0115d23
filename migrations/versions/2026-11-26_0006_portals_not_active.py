"""An index of the portals that are not active, which every search leaves out.

Revision ID: 0006
Revises: 0005
Created: 2026-11-26

Each search found them by reading every portal (0.06 ms at 523 portals, twice for a
search by distance); the index holds only the few suspended ones.

Lock safety: CREATE INDEX takes a SHARE lock on `portals`, which blocks writes to it
(new portals, profile changes) for as long as the index takes to build: milliseconds
for thousands of rows. Ads and searches do not wait for it.
Backward compatibility: only adds an index; the previous release keeps working.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_portals_not_active",
        "portals",
        ["id"],
        postgresql_where=sa.text("status <> 'active'"),
    )


def downgrade() -> None:
    op.drop_index("ix_portals_not_active", table_name="portals")
