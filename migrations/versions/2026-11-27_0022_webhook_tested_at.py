"""A portal's last webhook test: portals.webhook_tested_at.

A portal may send a test event to its webhook (POST /v1/portals/me/webhook/test) at
most once every 15 seconds (services/webhook_tests.py), as it may have its website
checked: the turn is taken on its row, like website_checked_at.

Downgrade: drops the column.

Lock safety: ADD COLUMN without a default is a change of the catalogue only.
Backward compatibility: the previous release needs no change, and does not read it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "portals", sa.Column("webhook_tested_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("portals", "webhook_tested_at")
