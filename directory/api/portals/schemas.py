from __future__ import annotations

from marshmallow import Schema, fields, post_load, validate

from directory.api.fields import (
    IDEMPOTENCY_KEY,
    BoundedList,
    FullMatch,
    Text,
    Url,
    WholeNumber,
    currency_code_field,
    unique_values,
)
from directory.models import Ledger, LedgerProtocol, PortalStatus
from directory.services.portals import MAX_WEBSITE_LENGTH, PROFILE_TEXT_LIMITS
from directory.services.websites import VerificationState, VerifiedBy, website_verification

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
        validate=FullMatch(LEDGER_NODE, error="Must be 1 to 100 letters, digits, '_', '.' or '-'."),
        metadata={"description": "The node's name on its ledger", "example": "lyon-sel"},
    )

    @post_load
    def to_ledger(self, data, **kwargs):
        return Ledger(**data)


class WebsiteVerificationSchema(Schema):
    """Whether the portal has proved its website is its own, and how to prove it."""

    state = fields.Enum(
        VerificationState,
        by_value=True,
        metadata={
            "description": "verified: the portal's ads have a global_id; unverified: they "
            "have none until the token is found at url (POST /v1/portals/me/website/verify)"
        },
    )
    token = fields.String(
        metadata={
            "description": "What to publish at url, on a line of its own (a site verified "
            "in several directories lists each one's token); new with each new website"
        }
    )
    url = fields.String(
        metadata={
            "description": "Where the directory looks for the token: the website, "
            "normalised, then /.well-known/commons-directory (plain text)",
            "example": "https://sel-lyon.example.org/.well-known/commons-directory",
        }
    )
    verified_at = fields.DateTime(
        allow_none=True,
        metadata={"description": "When the website was verified (null: it is not)"},
    )
    verified_by = fields.Enum(
        VerifiedBy,
        by_value=True,
        allow_none=True,
        metadata={
            "description": "fetch: the token was found at url, and is looked for there again "
            "every few days (daily while it is missing); operator: vouched for by the "
            "directory's operator, never looked at again. Null while unverified"
        },
    )
    failing_since = fields.DateTime(
        allow_none=True,
        metadata={
            "description": "Since when those later looks have not found the token: the "
            "verification is withdrawn once that has lasted the directory's grace period "
            "(14 days unless its operator chose otherwise). Null while they find it"
        },
    )
    last_failure = fields.String(
        allow_none=True,
        metadata={"description": "Why the last look did not find the token"},
    )


class AdUsageSchema(Schema):
    """The portal's stored ads against its limit."""

    stored = fields.Integer(
        metadata={"description": "The ads the portal stores, expired ones included"}
    )
    limit = fields.Integer(
        metadata={
            "description": "The most it may store (the directory's DIRECTORY_PORTAL_MAX_ADS, "
            "or one its operators set for the portal): a new ad beyond is refused (409 "
            "too_many_ads), while its existing ads may always be changed or deleted, even "
            "when it stores more (a limit lowered)"
        }
    )


class PortalSchema(Schema):
    """A portal's own profile."""

    slug = fields.String(metadata={"description": "The portal's id in the directory"})
    name = fields.String()
    website = fields.String(allow_none=True)
    website_verification = fields.Nested(
        WebsiteVerificationSchema,
        allow_none=True,
        metadata={"description": "null when the portal has no website"},
    )
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
    ads = fields.Nested(AdUsageSchema)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()

    def get_attribute(self, obj, attr, default):
        # obj is a services.portals.Profile: the portal, and its ads counted.
        if attr == "ads":
            return obj.ads
        # Not a column: the service that decides it derives it from the portal.
        if attr == "website_verification":
            return website_verification(obj.portal)
        return super().get_attribute(obj.portal, attr, default)


class PortalPatchSchema(Schema):
    """Fields of the profile to change; absent fields stay as they are."""

    # The service checks these too (the CLI creates portals): the same limits.
    name = Text(validate=validate.Length(1, PROFILE_TEXT_LIMITS["name"]))
    website = Url(
        schemes={"https", "http"},
        allow_none=True,
        validate=validate.Length(max=MAX_WEBSITE_LENGTH),
        metadata={
            "description": "A new website (not the same one spelt otherwise) gets a new "
            "verification token and is unverified until verified again: the ads lose "
            "their global_id meanwhile. Without a user name or password"
        },
    )
    contact = Text(allow_none=True, validate=validate.Length(1, PROFILE_TEXT_LIMITS["contact"]))
    description = Text(allow_none=True, multiline=True, validate=validate.Length(max=4000))
    default_currencies = BoundedList(
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


class WebhookTestSchema(Schema):
    """How the portal's webhook endpoint took a test event."""

    webhook_id = fields.String(
        metadata={"description": "The test event's webhook-id (test_...): no event has it"}
    )
    url = fields.String(metadata={"description": "The webhook_url the event was sent to"})
    delivered = fields.Boolean(
        metadata={
            "description": "The endpoint answered 2xx: it would take messages (once "
            "enabled again, if webhook_disabled_at is set)"
        }
    )
    status = fields.Integer(
        allow_none=True, metadata={"description": "Its HTTP status; null when no answer came"}
    )
    error = fields.String(
        allow_none=True,
        metadata={
            "description": "What went wrong, as a delivery's last_error would say it (the "
            "start of the endpoint's answer, an unsafe URL, a timeout...); null when delivered"
        },
    )
    duration_ms = fields.Integer(metadata={"description": "From sending to the answer"})
    webhook_disabled_at = fields.DateTime(
        allow_none=True,
        metadata={
            "description": "Set while the webhook is disabled by a 410 Gone (as in the "
            "profile): the test was sent all the same, but messages wait in the inbox until "
            "webhook_url is set again, however the endpoint answered it"
        },
    )


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
    idempotency_key = fields.String(
        load_default=None,
        validate=IDEMPOTENCY_KEY,
        metadata={
            "description": "The portal's own id for this rotation: sent again with the key "
            "of the latest rotation (after a timeout, say), the request answers the secrets "
            "as they are instead of rotating again, which would end at once the secret the "
            "portal's receiver holds; sent again with another overlap_hours, it is refused "
            "(409 idempotency_key_reused). 1 to 128 letters, digits, '.', '_', ':' or '-'."
        },
    )
