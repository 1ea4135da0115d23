from __future__ import annotations

from marshmallow import Schema, fields, post_load, validate

from directory.api.fields import Text, Url, WholeNumber, currency_code_field, unique_values
from directory.models import Ledger, LedgerProtocol, PortalStatus
from directory.services.portals import MAX_WEBSITE_LENGTH, PROFILE_TEXT_LIMITS

# Credit Commons node names are short path segments.
LEDGER_NODE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


class LedgerSchema(Schema):
    """The ledger the portal's members are paid on."""

    protocol = fields.Enum(
        LedgerProtocol,
        by_value=True,
        required=True,
        metadata={"description": "The ledger's protocol"},
    )
    url = Url(
        schemes={"https", "http"},
        required=True,
        validate=validate.Length(max=2048),
        metadata={
            "description": "The ledger node's base URL: https, to a public address (the "
            "same checks as webhook_url)",
            "example": "https://ledger.example.org/",
        },
    )
    node = fields.String(
        required=True,
        validate=validate.Regexp(
            LEDGER_NODE, error="Must be 1 to 100 letters, digits, '_', '.' or '-'."
        ),
        metadata={"description": "The node's name on its ledger", "example": "lyon-sel"},
    )

    @post_load
    def to_ledger(self, data, **kwargs):
        return Ledger(**data)


class PortalSchema(Schema):
    """A portal's own profile."""

    slug = fields.String(metadata={"description": "The portal's id in the directory"})
    name = fields.String()
    website = fields.String(allow_none=True)
    contact = fields.String(
        allow_none=True,
        metadata={"description": "How the directory's operators reach the portal's team"},
    )
    description = fields.String(allow_none=True)
    default_currencies = fields.List(
        fields.String(), metadata={"description": "Applied to ads that name no currencies"}
    )
    webhook_url = fields.String(
        allow_none=True,
        metadata={"description": "Where relay messages are sent (Standard Webhooks)"},
    )
    webhook_disabled_at = fields.DateTime(
        allow_none=True,
        metadata={
            "description": "Set when the endpoint answered 410 Gone: no webhooks are sent "
            "(messages wait in the inbox) until webhook_url is set again"
        },
    )
    webhook_disabled_reason = fields.String(allow_none=True)
    ledger = fields.Nested(
        LedgerSchema,
        allow_none=True,
        metadata={"description": "Where members' ads with a ledger_account are paid"},
    )
    status = fields.Enum(PortalStatus, by_value=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class PortalPatchSchema(Schema):
    """Fields of the profile to change; absent fields stay as they are."""

    # The service checks these too (the CLI creates portals): the same limits.
    name = Text(validate=validate.Length(1, PROFILE_TEXT_LIMITS["name"]))
    website = Url(
        schemes={"https", "http"},
        allow_none=True,
        validate=validate.Length(max=MAX_WEBSITE_LENGTH),
    )
    contact = Text(allow_none=True, validate=validate.Length(1, PROFILE_TEXT_LIMITS["contact"]))
    description = Text(allow_none=True, multiline=True, validate=validate.Length(max=4000))
    default_currencies = fields.List(
        currency_code_field(),
        validate=[validate.Length(max=20), unique_values],
        metadata={"description": "Applied to ads that name no currencies"},
    )
    webhook_url = Url(
        schemes={"https", "http"},
        allow_none=True,
        validate=validate.Length(max=2048),
        metadata={
            "description": "https, to a public address (checked now and at each delivery); "
            "setting it again re-enables a webhook disabled by a 410"
        },
    )
    ledger = fields.Nested(
        LedgerSchema,
        allow_none=True,
        metadata={
            "description": "Register the ledger its members are paid on (null removes it): "
            "ads with a ledger_account then show a payment block"
        },
    )


class WebhookSecretsSchema(Schema):
    secret = fields.String(
        metadata={"description": "Verifies webhook-signature (Standard Webhooks, whsec_...)"}
    )
    previous_secret = fields.String(
        allow_none=True,
        metadata={"description": "Still signs beside the new one until it expires"},
    )
    previous_secret_expires_at = fields.DateTime(allow_none=True)


class RotateSecretSchema(Schema):
    # strict: a JSON integer only, not "2"; 2.5 or 1e-40 hours are refused, not truncated.
    overlap_hours = WholeNumber(
        strict=True,
        load_default=24,
        validate=validate.Range(0, 168),
        metadata={
            "description": "How long the current secret keeps signing beside the new one "
            "(0: stops at once)"
        },
    )
