from __future__ import annotations

from decimal import Decimal

from marshmallow import Schema, ValidationError, fields, validate

from directory.api.fields import Text
from directory.services.currencies import CurrencyKind

MAX_VALUE = Decimal("99999999")


class CurrencySchema(Schema):
    code = fields.String(metadata={"description": "EUR, HOUR, GIFT, BARTER or <portal>:<CODE>"})
    kind = fields.Enum(CurrencyKind, by_value=True)
    name = fields.String()
    portal = fields.String(allow_none=True, metadata={"description": "Owning portal (community)"})
    symbol = fields.String(allow_none=True)
    value_hours = fields.Decimal(
        as_string=True, allow_none=True, metadata={"description": "Value of one unit in hours"}
    )
    value_amount = fields.Decimal(as_string=True, allow_none=True)
    value_currency = fields.String(allow_none=True)


class CurrencyListSchema(Schema):
    currencies = fields.List(fields.Nested(CurrencySchema))


class CurrencyArgsSchema(Schema):
    kind = fields.Enum(CurrencyKind, by_value=True, load_default=None)
    portal = fields.String(load_default=None, validate=validate.Length(1, 40))


def decimal_places(places: int):
    def check(value: Decimal) -> None:
        if value.as_tuple().exponent < -places:
            raise ValidationError(f"Must have at most {places} decimal places.")

    return check


class CurrencyValueFields(Schema):
    symbol = Text(allow_none=True, validate=validate.Length(1, 8))
    value_hours = fields.Decimal(
        allow_none=True,
        allow_nan=False,
        validate=[validate.Range(0, MAX_VALUE, min_inclusive=False), decimal_places(6)],
        metadata={"description": "Value of one unit in hours of time (6 decimals at most)"},
    )
    value_amount = fields.Decimal(
        allow_none=True,
        allow_nan=False,
        validate=[validate.Range(0, MAX_VALUE, min_inclusive=False), decimal_places(4)],
        metadata={"description": "Value of one unit in value_currency (4 decimals at most)"},
    )
    value_currency = fields.String(
        allow_none=True,
        validate=validate.Regexp(r"^[A-Z]{3}$", error="Must be an ISO 4217 code such as EUR."),
    )


class CurrencyCreateSchema(CurrencyValueFields):
    code = fields.String(
        required=True,
        validate=validate.Regexp(
            r"^[A-Z][A-Z0-9]{1,11}$",
            error="Must be 2 to 12 capital letters or digits, starting with a letter.",
        ),
        metadata={
            "description": "Short code; registered as <portal-slug>:<code>",
            "example": "TALENT",
        },
    )
    name = Text(required=True, validate=validate.Length(1, 100))


class CurrencyPatchSchema(CurrencyValueFields):
    name = Text(validate=validate.Length(1, 100))
