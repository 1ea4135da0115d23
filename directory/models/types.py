"""Column types shared by the models."""

from __future__ import annotations

import enum

from sqlalchemy import DateTime, Enum, func
from sqlalchemy.orm import mapped_column


def enum_column(enum_cls: type[enum.Enum], name: str, **kwargs):
    """An enum stored by value as text with a named CHECK, so adding a member is a plain
    constraint change instead of an ALTER TYPE."""
    return mapped_column(
        Enum(
            enum_cls,
            name=name,
            native_enum=False,
            create_constraint=True,
            length=16,
            values_callable=lambda members: [member.value for member in members],
            validate_strings=True,
        ),
        **kwargs,
    )


def created_at_column():
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


def updated_at_column():
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
