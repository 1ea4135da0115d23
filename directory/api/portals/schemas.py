from __future__ import annotations

from marshmallow import Schema, fields, validate

from directory.api.fields import Text, Url, currency_code_field, unique_values
from directory.models import PortalStatus


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
    status = fields.Enum(PortalStatus, by_value=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class PortalPatchSchema(Schema):
    """Fields of the profile to change; absent fields stay as they are."""

    name = Text(validate=validate.Length(1, 200))
    website = Url(schemes={"https", "http"}, allow_none=True, validate=validate.Length(max=2048))
    contact = Text(allow_none=True, validate=validate.Length(1, 320))
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
    # strict: 2.5 or 1e-40 hours are refused, not truncated.
    overlap_hours = fields.Integer(
        strict=True,
        load_default=24,
        validate=validate.Range(0, 168),
        metadata={
            "description": "How long the current secret keeps signing beside the new one "
            "(0: stops at once)"
        },
    )
