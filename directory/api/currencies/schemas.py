from __future__ import annotations

from marshmallow import Schema, fields, validate

from directory.api.fields import DecimalString, FullMatch, Text
from directory.services.currencies import CurrencyKind
from directory.services.portals import SLUG


class CurrencySchema(Schema):
    code = fields.String(metadata={"description": "EUR, HOUR, GIFT, BARTER or <portal>:<CODE>"})
    kind = fields.Enum(CurrencyKind, by_value=True)
    name = fields.String()
    portal = fields.String(allow_none=True, metadata={"description": "Owning portal (community)"})
    symbol = fields.String(allow_none=True)
    value_hours = DecimalString(
        digits=6, places=6, allow_none=True, metadata={"description": "Value of one unit in hours"}
    )
    value_amount = DecimalString(digits=10, places=4, allow_none=True)
    value_currency = fields.String(allow_none=True)


class CurrencyListSchema(Schema):
    currencies = fields.List(fields.Nested(CurrencySchema))


class CurrencyArgsSchema(Schema):
    kind = fields.Enum(CurrencyKind, by_value=True, load_default=None)
    portal = fields.String(
        load_default=None,
        validate=FullMatch(SLUG, error="Must be a portal slug such as sel-lyon."),
        metadata={"description": "Only this portal's community currencies"},
    )


class CurrencyValueFields(Schema):
    symbol = Text(allow_none=True, validate=validate.Length(1, 8))
    value_hours = DecimalString(
        digits=6,
        places=6,
        allow_none=True,
        metadata={"description": 'Value of one unit in hours of time, e.g. "0.016667"'},
    )
    value_amount = DecimalString(
        digits=10,
        places=4,
        allow_none=True,
        metadata={"description": 'Value of one unit in value_currency, e.g. "1.00"'},
    )
    value_currency = fields.String(
        allow_none=True,
        validate=FullMatch(r"^[A-Z]{3}$", error="Must be an ISO 4217 code such as EUR."),
    )


class CurrencyCreateSchema(CurrencyValueFields):
    code = fields.String(
        required=True,
        validate=FullMatch(
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
