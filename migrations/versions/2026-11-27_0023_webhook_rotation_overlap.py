"""The overlap of the latest webhook secret rotation: portals.webhook_rotation_overlap_hours.

A rotation sent again with its idempotency key (its answer was lost) answers the secrets
as they are; sent again with the same key and another overlap_hours, it is refused
(services/portals.py), as a message's key reused for other words is. Rotations made
before this revision kept no overlap: their key is taken again whatever it is sent with.

Downgrade: drops the column.

Lock safety: ADD COLUMN without a default is a change of the catalogue only.
Backward compatibility: the previous release needs no change, and does not read it; a
rotation it makes leaves the column as it was, which a later retry of that rotation's
key is compared against. Its keys are the portal's own, new for each rotation, so such a
retry finds another key and rotates, as the previous release would.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "portals", sa.Column("webhook_rotation_overlap_hours", sa.Integer(), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("portals", "webhook_rotation_overlap_hours")
