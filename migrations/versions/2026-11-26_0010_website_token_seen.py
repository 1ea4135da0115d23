"""`portals.website_token_seen_at`: when the directory last found the token at the website.

A re-check withdraws a verification once the token has been missing for the grace period
(0009). A directory cut off from the network for that long would have withdrawn every
website it verified by a fetch. From this release a withdrawal also needs proof that the
directory reaches the web: another website's token found lately, which this column records
(set by a verification by fetch and by each re-check that finds the token).

No backfill: which past checks found a token is not recorded. Until the first re-checks
after the upgrade find some, withdrawals wait, which errs on the side of keeping.

Downgrade: drops the column; 0009 withdraws without the proof.

Lock safety: ADD COLUMN (nullable, no default), a moment's ACCESS EXCLUSIVE lock.
Backward compatibility: the previous release neither reads nor writes the column. While
it still serves (a rolling deploy), a website it verifies or re-checks leaves it as it was.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("portals", sa.Column("website_token_seen_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("portals", "website_token_seen_at")
