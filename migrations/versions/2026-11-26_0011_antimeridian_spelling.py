"""Points on the antimeridian stored as lon 180, never -180.

180 and -180 are one meridian, and ads were stored under whichever spelling their portal
sent. PostGIS's nearest-first scan on the geography index then fails ("index returned
tuples in wrong order") when an ad stored at one spelling is searched for at the other,
so a radius search there answered 500. From this release the directory writes and
searches one spelling, 180 (directory.geo.Point); this rewrites the points stored at -180,
and logs the public ones to the change feed, so that the Meilisearch index follows.

Downgrade: nothing to undo. The previous release reads 180 as well as -180.

Lock safety: an UPDATE of the ads on the meridian only, found through the planar GiST
index (a box of no width); `location_box` follows, as a generated column.
Backward compatibility: the previous release may still write -180 while it serves (a
rolling deploy); such a point searched for at 180 fails as before until it is written
again or this migration is run again (it is idempotent).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Each public ad rewritten is logged to the change feed, as any write of it is: the
    # Meilisearch index and the feed's readers then have it at 180 too.
    op.execute(
        """
        WITH rewritten AS (
            UPDATE ads
            SET location = ST_SetSRID(ST_MakePoint(180, ST_Y(location_box)), 4326)::geography
            WHERE location_box && ST_MakeEnvelope(-180, -90, -180, 90, 4326)
              AND ST_X(location_box) = -180
            RETURNING id, portal_id, visibility
        )
        INSERT INTO ad_changes (ad_id, portal_id, op)
        SELECT id, portal_id, 'upsert' FROM rewritten WHERE visibility = 'public'
        """
    )


def downgrade() -> None:
    pass
