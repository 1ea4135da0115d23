"""`portals.webhook_rotation_key`: the idempotency key of the latest webhook secret rotation.

A rotation whose answer was lost, sent again, rotated a second time: the secret the
portal's receiver holds stopped signing at once (a rotation during an overlap ends the
older secret), and the one between was never seen. From this release a rotation may carry
an `idempotency_key`; sent again with the key of the latest rotation, it answers that
rotation's secrets instead of rotating again.

Downgrade: drops the column; rotations are no longer recognised when sent again.

Lock safety: ADD COLUMN (nullable, no default), a moment's ACCESS EXCLUSIVE lock.
Backward compatibility: the previous release neither reads nor writes the column. While
it still serves (a rolling deploy), a rotation it makes leaves the column as it was: the
key of the rotation before it, sent again to the new release, then answers the secrets as
they are without rotating.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("portals", sa.Column("webhook_rotation_key", sa.String(128)))


def downgrade() -> None:
    op.drop_column("portals", "webhook_rotation_key")
