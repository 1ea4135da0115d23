"""Ledgers: the ledger a portal's members are paid on (protocol, URL, node name).

Revision ID: 0005
Revises: 0004
Created: 2026-11-25

Lock safety: adds three nullable columns without defaults to `portals` and one CHECK
constraint; each ALTER holds its ACCESS EXCLUSIVE lock only for a moment (no rewrite;
the CHECK scans a few hundred rows), and env.py's lock_timeout makes a blocked ALTER
fail rather than queue writes behind it.
Backward compatibility: the previous release neither reads nor writes the new columns,
which are nullable, so its inserts keep working.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "portals",
        sa.Column(
            "ledger_protocol",
            sa.Enum(
                "credit-commons",
                name="ledger_protocol",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=True,
        ),
    )
    op.add_column("portals", sa.Column("ledger_url", sa.String(length=2048), nullable=True))
    op.add_column("portals", sa.Column("ledger_node", sa.String(length=100), nullable=True))
    op.create_check_constraint(
        "ledger_complete",
        "portals",
        "(ledger_protocol IS NULL) = (ledger_url IS NULL) "
        "AND (ledger_url IS NULL) = (ledger_node IS NULL)",
    )


def downgrade() -> None:
    op.drop_constraint("ledger_complete", "portals", type_="check")
    op.drop_column("portals", "ledger_node")
    op.drop_column("portals", "ledger_url")
    op.drop_column("portals", "ledger_protocol")
