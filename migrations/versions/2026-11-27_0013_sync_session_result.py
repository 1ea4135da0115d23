"""`sync_sessions.result`: what a sync session's commit did, to answer it again.

A commit whose answer was lost, sent again, was refused with 409 sync_session_closed: an
error for a resync that had been applied, and the counts and the ads it rejected were
lost with the answer. From this release the commit stores its answer's counts and
rejected items here, and a commit sent again to a committed session answers them.

No backfill: sessions committed before keep none, and a commit sent again to one of them
is refused as before.

Downgrade: drops the column; a commit sent again is refused again.

Lock safety: ADD COLUMN (nullable, no default), a moment's ACCESS EXCLUSIVE lock.
Backward compatibility: the previous release neither reads nor writes the column. While
it still serves (a rolling deploy), a session it commits keeps none, as above.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("sync_sessions", sa.Column("result", postgresql.JSONB()))


def downgrade() -> None:
    op.drop_column("sync_sessions", "result")
