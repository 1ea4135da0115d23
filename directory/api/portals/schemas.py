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
    webhook_url = fields.String(allow_none=True)
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
        schemes={"https", "http"}, allow_none=True, validate=validate.Length(max=2048)
    )
