"""Closed portals: `portals.status` may be "closed".

A community that leaves the directory for good is closed by an operator (`directory
portals close`, services/closing.py): its ads, members and keys go, and the portal row
stays, with its name only, for the other side of its members' conversations.

Downgrade: closed portals become suspended (what the previous release can show of a
portal whose keys are revoked and whose ads are gone), then the constraint is restored.

Lock safety: the CHECK constraint is dropped and added again, checking the portals (a
few hundred rows) under an ACCESS EXCLUSIVE lock for milliseconds.
Backward compatibility: the previous release reads a closed portal's status as an unknown
enum value: close no portal while it still serves (a rolling deploy).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint("portal_status", "portals", type_="check")
    op.create_check_constraint(
        "portal_status", "portals", "status IN ('active', 'suspended', 'closed')"
    )


def downgrade() -> None:
    op.execute("UPDATE portals SET status = 'suspended' WHERE status = 'closed'")
    op.drop_constraint("portal_status", "portals", type_="check")
    op.create_check_constraint("portal_status", "portals", "status IN ('active', 'suspended')")
