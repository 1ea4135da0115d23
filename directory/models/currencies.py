from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import CheckConstraint, ForeignKey, Numeric, String
from sqlalchemy.orm import Mapped, mapped_column

from directory.db import Base
from directory.models.types import created_at_column, updated_at_column


class Currency(Base):
    """A community currency registered by the portal that runs its ledger.

    National currencies (ISO 4217), hours, gift and barter are built in and not stored.
    A community code is namespaced by its portal (``<portal-slug>:<CODE>``), so two
    communities that both chose "TALENT" never collide."""

    __tablename__ = "currencies"
    __table_args__ = (
        CheckConstraint(
            "code ~ '^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?:[A-Z][A-Z0-9]{1,11}$'",
            name="code_format",
        ),
        CheckConstraint("value_hours IS NULL OR value_hours > 0", name="value_hours_positive"),
        CheckConstraint(
            "(value_amount IS NULL) = (value_currency IS NULL) "
            "AND (value_amount IS NULL OR value_amount > 0)",
            name="value_pair",
        ),
    )

    code: Mapped[str] = mapped_column(String(64), primary_key=True)
    portal_id: Mapped[int] = mapped_column(ForeignKey("portals.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    symbol: Mapped[str | None] = mapped_column(String(8))
    value_hours: Mapped[Decimal | None] = mapped_column(Numeric(12, 6))
    value_amount: Mapped[Decimal | None] = mapped_column(Numeric(14, 4))
    value_currency: Mapped[str | None] = mapped_column(String(3))
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = updated_at_column()
