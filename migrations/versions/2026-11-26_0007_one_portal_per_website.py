"""One portal per website: `portals.website_identity`, unique.

Revision ID: 0007
Revises: 0006
Created: 2026-11-26

A portal's website names its ads everywhere (their global_id), and clients searching
several directories show one ad per global_id: a second portal with the same website
could hide another's ads or stand in for them. The column holds the digest of the
normalised website (so every spelling of one site is one), computed here for existing
portals as the service computes it for new ones.

If two portals already share a website, the upgrade stops and names them, changing
nothing: which one keeps it is the operator's call (the other sets another website
with PATCH /v1/portals/me, or an operator clears it), then the upgrade is run again.

Lock safety: ADD COLUMN (nullable, no default) holds its ACCESS EXCLUSIVE lock for a
moment; the backfill updates one row per portal (a few hundred); the unique constraint's
index is built under that lock in milliseconds at that size.
Backward compatibility: the previous release does not write the column, so a portal
whose website it sets during a rollout has none until its website is set again.
"""

from collections import defaultdict
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from directory.services.portals import website_identity

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("portals", sa.Column("website_identity", sa.String(64), nullable=True))
    connection = op.get_bind()
    slugs_by_identity = defaultdict(list)
    websites = connection.execute(
        sa.text("SELECT id, slug, website FROM portals WHERE website IS NOT NULL ORDER BY slug")
    ).all()
    for portal_id, slug, website in websites:
        identity = website_identity(website)
        if identity is not None:
            slugs_by_identity[identity].append((portal_id, slug, website))
    shared = [portals for portals in slugs_by_identity.values() if len(portals) > 1]
    if shared:
        raise RuntimeError(
            "portals share a website, which names their ads everywhere (global_id); give "
            "all but one of each group another website, then upgrade again: "
            + "; ".join(
                ", ".join(f"{slug} ({website})" for _id, slug, website in portals)
                for portals in shared
            )
        )
    for identity, ((portal_id, _slug, _website),) in slugs_by_identity.items():
        connection.execute(
            sa.text("UPDATE portals SET website_identity = :identity WHERE id = :id"),
            {"identity": identity, "id": portal_id},
        )
    op.create_unique_constraint("uq_portals_website_identity", "portals", ["website_identity"])


def downgrade() -> None:
    op.drop_constraint("uq_portals_website_identity", "portals", type_="unique")
    op.drop_column("portals", "website_identity")
