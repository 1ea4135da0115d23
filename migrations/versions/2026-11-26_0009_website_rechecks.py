"""Website re-checks: `portals.website_verified_by`, `website_recheck_failing_since`,
`website_recheck_failure`.

A website verified by a fetch stayed verified for good, even once its token was gone
(the domain lost, sold, or the site rebuilt without it): the portal kept its global ids,
and the site's new owner could not verify it here (website_taken). From this release the
worker looks for the token again every few days (services.websites.claim_recheck), and
withdraws a verification whose token has stayed missing for a grace period.

Only websites the directory verified by a fetch are looked at again: `website_verified_by`
says how a website was verified, "fetch" or "operator" (`portals create --trust-website`,
`portals verify-website --trust`). The websites verified before this release count as the
operator's: 0008 verified the existing portals' without a fetch, and which of the others
were fetched is not recorded. A portal can verify again to have its website re-checked.

Downgrade: drops the three columns; 0008 never looks at a website again.

Lock safety: ADD COLUMN (nullable, no default) three times, a moment's ACCESS EXCLUSIVE
lock each; the backfill updates the verified portals (a few hundred rows); ADD CONSTRAINT
checks them under the same lock in milliseconds at that size.
Backward compatibility: the previous release neither reads nor writes the new columns.
While it still serves (a rolling deploy), a website it verifies has no
website_verified_by, and is not re-checked (as the operator's): verify it again after.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("portals", sa.Column("website_verified_by", sa.String(16)))
    op.add_column("portals", sa.Column("website_recheck_failing_since", sa.DateTime(timezone=True)))
    op.add_column("portals", sa.Column("website_recheck_failure", sa.String(1000)))
    op.execute(
        "UPDATE portals SET website_verified_by = 'operator' WHERE website_verified_at IS NOT NULL"
    )
    op.create_check_constraint(
        "website_verified_by",
        "portals",
        "website_verified_by IN ('fetch', 'operator')",
    )


def downgrade() -> None:
    op.drop_constraint("website_verified_by", "portals", type_="check")
    op.drop_column("portals", "website_recheck_failure")
    op.drop_column("portals", "website_recheck_failing_since")
    op.drop_column("portals", "website_verified_by")
