"""Website verification: `portals.website_verification_token`, `website_verified_at`,
`website_checked_at`.

Revision ID: 0008
Revises: 0007
Created: 2026-11-26

Nothing proved that a portal controls the website it claims, and the website names its
ads everywhere (their global_id): a portal of another directory could claim a
community's site and shadow its ads in federated searches, and in this one whoever set a
website first kept its real owner out (409 website_taken). From this release a portal
proves its website by publishing a token at <website>/.well-known/commons-directory
(services.websites), its ads have a global_id only once it has, and the one-portal-per-
website rule holds among verified portals only: `uq_portals_website_identity` becomes a
unique index WHERE website_verified_at IS NOT NULL, under the same name (the API maps it
to website_taken).

Existing portals with a website are verified by this upgrade (and given a token, which
their profile shows): the operator created and vetted them, and their ads' global ids
would otherwise all vanish at once.

Downgrade: 0007 allows one portal per website, verified or not; if several now claim
one, the downgrade stops and names them, changing nothing. After a downgrade every
website gives global ids again, verified or not, as before this release.

Lock safety: ADD COLUMN (nullable, no default) three times, a moment's ACCESS EXCLUSIVE lock
each; the backfill updates one row per portal with a website (a few hundred); the
partial unique index is built under the table's lock in milliseconds at that size.
Backward compatibility: the previous release neither reads nor writes the new columns.
While it still serves (a rolling deploy), it gives every website global ids as before,
and a website it changes keeps the previous one's verification: deploy it promptly.
"""

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A frozen copy of services.portals.VERIFICATION_TOKEN_BYTES.
TOKEN_BYTES = 24


def upgrade() -> None:
    op.add_column("portals", sa.Column("website_verification_token", sa.String(64)))
    op.add_column("portals", sa.Column("website_verified_at", sa.DateTime(timezone=True)))
    op.add_column("portals", sa.Column("website_checked_at", sa.DateTime(timezone=True)))
    connection = op.get_bind()
    vetted = connection.scalars(
        sa.text("SELECT id FROM portals WHERE website_identity IS NOT NULL ORDER BY id")
    ).all()
    for portal_id in vetted:
        connection.execute(
            sa.text(
                "UPDATE portals SET website_verification_token = :token, "
                "website_verified_at = now() WHERE id = :id"
            ),
            {"token": secrets.token_urlsafe(TOKEN_BYTES), "id": portal_id},
        )
    op.drop_constraint("uq_portals_website_identity", "portals", type_="unique")
    op.create_index(
        "uq_portals_website_identity",
        "portals",
        ["website_identity"],
        unique=True,
        postgresql_where=sa.text("website_verified_at IS NOT NULL"),
    )


def downgrade() -> None:
    shared = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT string_agg(slug || ' (' || website || ', ' || CASE WHEN "
                "website_verified_at IS NULL THEN 'unverified' ELSE 'verified' END || ')', "
                "', ' ORDER BY slug) FROM portals WHERE website_identity IS NOT NULL "
                "GROUP BY website_identity HAVING count(*) > 1 ORDER BY 1"
            )
        )
        .scalars()
        .all()
    )
    if shared:
        raise RuntimeError(
            "portals share a website, which the previous release allows one portal only; "
            "give all but one of each group another website (or none), then downgrade "
            "again: " + "; ".join(shared)
        )
    op.drop_index("uq_portals_website_identity", table_name="portals")
    op.create_unique_constraint("uq_portals_website_identity", "portals", ["website_identity"])
    op.drop_column("portals", "website_checked_at")
    op.drop_column("portals", "website_verified_at")
    op.drop_column("portals", "website_verification_token")
