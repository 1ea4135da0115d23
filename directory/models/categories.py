from __future__ import annotations

from sqlalchemy import CheckConstraint, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from directory.db import Base


class Category(Base):
    """The published taxonomy: top-level groups and their children, one level deep.
    Its rows are written by migrations, so every database has the same taxonomy."""

    __tablename__ = "categories"
    __table_args__ = (
        CheckConstraint("domain IN ('goods', 'services', 'other')", name="domain"),
        CheckConstraint("code ~ '^[a-z][a-z-]*(\\.[a-z][a-z-]*)?$'", name="code_format"),
    )

    code: Mapped[str] = mapped_column(String(64), primary_key=True)
    parent_code: Mapped[str | None] = mapped_column(ForeignKey("categories.code"), index=True)
    domain: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(100))
    position: Mapped[int] = mapped_column(Integer)
