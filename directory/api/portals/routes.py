"""The calling portal's own profile."""

from __future__ import annotations

from datetime import timedelta

from flask.views import MethodView

from directory.api.auth import BEARER_AUTH, require_portal
from directory.api.blueprint import Blueprint
from directory.api.db import transaction, wiring
from directory.api.errors import ErrorSchema
from directory.api.portals.schemas import (
    PortalPatchSchema,
    PortalSchema,
    RotateSecretSchema,
    WebhookSecretsSchema,
)
from directory.services import portals

blp = Blueprint("portals", __name__, url_prefix="/v1", description="A portal's own profile")


@blp.route("/portals/me")
class OwnPortal(MethodView):
    @blp.response(200, PortalSchema)
    @blp.doc(operationId="getOwnPortal", security=BEARER_AUTH)
    def get(self):
        """Read the calling portal's profile"""
        with transaction() as session:
            caller = require_portal(session)
            return portals.get_portal_by_id(session, portal_id=caller.id)

    @blp.arguments(PortalPatchSchema)
    @blp.response(200, PortalSchema)
    @blp.alt_response(
        409, schema=ErrorSchema, description="Another portal of this directory has this website"
    )
    @blp.doc(operationId="updateOwnPortal", security=BEARER_AUTH)
    def patch(self, changes):
        """Change fields of the calling portal's profile

        The website names the portal's ads everywhere (their `global_id`), so it is one
        portal's in a directory: however it is spelt, another portal's is refused
        (`website_taken`)."""
        with transaction() as session:
            caller = require_portal(session)
            return portals.update_profile(
                session,
                portal_id=caller.id,
                changes=changes,
                allow_loopback=wiring().settings.webhook_allow_loopback,
            )


@blp.route("/portals/me/webhook-secret")
class WebhookSecret(MethodView):
    @blp.response(200, WebhookSecretsSchema)
    @blp.doc(operationId="getWebhookSecret", security=BEARER_AUTH)
    def get(self):
        """Read the secrets that sign the portal's webhooks"""
        with transaction() as session:
            caller = require_portal(session)
            return portals.webhook_secrets(session, portal_id=caller.id)

    @blp.arguments(RotateSecretSchema)
    @blp.response(200, WebhookSecretsSchema)
    @blp.doc(operationId="rotateWebhookSecret", security=BEARER_AUTH)
    def post(self, rotation):
        """Replace the webhook signing secret

        The current secret keeps signing beside the new one for `overlap_hours`, so the
        portal can switch its receiver over without missing a message."""
        with transaction() as session:
            caller = require_portal(session)
            return portals.rotate_webhook_secret(
                session, portal_id=caller.id, overlap=timedelta(hours=rotation["overlap_hours"])
            )
