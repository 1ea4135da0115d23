"""A per-portal limit on stored ads: `portals.max_ads`.

A portal stores at most `DIRECTORY_PORTAL_MAX_ADS` ads (services/ads.py, 409
too_many_ads beyond), unless an operator set its own limit here (`directory portals
set-max-ads`). NULL, as every existing portal gets: the setting applies.

Downgrade: drops the column; every portal's limit is then the setting's.

Lock safety: ADD COLUMN without a default changes the catalog only; the CHECK looks at
the portals (a few hundred rows, all NULL) under an ACCESS EXCLUSIVE lock for
milliseconds.
Backward compatibility: the previous release neither reads nor writes the column: during
a rolling deploy its processes let a portal pass its limit, which only this release's
refuse.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("portals", sa.Column("max_ads", sa.Integer(), nullable=True))
    op.create_check_constraint("max_ads_not_negative", "portals", "max_ads >= 0")


def downgrade() -> None:
    op.drop_constraint("max_ads_not_negative", "portals", type_="check")
    op.drop_column("portals", "max_ads")
