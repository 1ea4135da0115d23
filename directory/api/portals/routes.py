"""The calling portal's own profile."""

from __future__ import annotations

from datetime import timedelta

from flask.views import MethodView

from directory.api.auth import BEARER_AUTH, require_portal
from directory.api.blueprint import Blueprint
from directory.api.db import transaction, wiring
from directory.api.errors import RETRY_AFTER_HEADER, ErrorSchema
from directory.api.portals.schemas import (
    PortalPatchSchema,
    PortalSchema,
    RotateSecretSchema,
    WebhookSecretsSchema,
    WebhookTestSchema,
)
from directory.services import portals, webhook_tests, websites

blp = Blueprint("portals", __name__, url_prefix="/v1", description="A portal's own profile")

CHECK_INTERVAL_S = websites.CHECK_INTERVAL.seconds
TEST_INTERVAL_S = webhook_tests.TEST_INTERVAL.seconds


def _profile(session, caller) -> portals.Profile:
    return portals.profile(session, portal_id=caller.id, max_ads=wiring().settings.portal_max_ads)


@blp.route("/portals/me")
class OwnPortal(MethodView):
    @blp.response(200, PortalSchema)
    @blp.doc(operationId="getOwnPortal", security=BEARER_AUTH)
    def get(self):
        """Read the calling portal's profile"""
        with transaction() as session:
            caller = require_portal(session)
            return _profile(session, caller)

    @blp.arguments(PortalPatchSchema)
    @blp.response(200, PortalSchema)
    @blp.doc(operationId="updateOwnPortal", security=BEARER_AUTH)
    def patch(self, changes):
        """Change fields of the calling portal's profile

        A new website is unverified (see `verifyWebsite`) and gets a new token: the
        portal's ads have no `global_id` until it is verified."""
        with transaction() as session:
            caller = require_portal(session)
            portals.update_profile(
                session,
                portal_id=caller.id,
                changes=changes,
                allow_loopback=wiring().settings.webhook_allow_loopback,
            )
            return _profile(session, caller)


@blp.route("/portals/me/website/verify")
class OwnWebsiteVerification(MethodView):
    @blp.response(200, PortalSchema)
    @blp.alt_response(
        409,
        schema=ErrorSchema,
        description="Not verified, the message saying why: no_website (none is set), "
        "website_not_verified (unreachable, an HTTP error, a refused address or "
        "redirect, the token not found), website_taken (another portal of this "
        "directory has verified this website)",
    )
    @blp.alt_response(
        429,
        schema=ErrorSchema,
        description=f"The website was checked less than {CHECK_INTERVAL_S} s ago, or is being "
        "checked now "
        "(website_checked_recently), or as many other websites as the directory checks at "
        "once are being checked (website_checks_busy): see Retry-After",
        headers=RETRY_AFTER_HEADER,
    )
    @blp.doc(operationId="verifyWebsite", security=BEARER_AUTH)
    def post(self):
        """Prove the portal's website is its own

        The website names the portal's ads everywhere (their `global_id`), so they have
        one only once the portal has shown it controls the site: it publishes
        `website_verification.token` of its profile on a line of its own at
        `website_verification.url` (`<website>/.well-known/commons-directory`, plain
        text), then calls this. The directory fetches that URL now (public addresses
        only; at most 3 redirects, within the website's host; 10 seconds in all) and,
        if the token is there, marks the website verified and republishes the portal's
        public ads with their global ids through the feed. Of the portals of a
        directory that claim one website, one at most is verified. A failed check
        changes nothing (a verified website stays verified). A website is checked at
        most once every 20 seconds, and the directory checks a few websites at a time
        at most (DIRECTORY_WEBSITE_CHECKS_AT_ONCE, one by default)."""
        settings = wiring().settings
        with transaction() as session:
            caller = require_portal(session)  # first: a request without a key takes no slot
        with websites.check_slot(wiring().engine, slots=settings.website_checks_at_once):
            with transaction() as session:
                challenge = websites.verification_challenge(session, portal_id=caller.id)
            # Outside any transaction: the website may take seconds to answer.
            websites.look_for_token(challenge, allow_loopback=settings.webhook_allow_loopback)
        with transaction() as session:
            websites.record_verification(session, challenge=challenge)
            return _profile(session, caller)


@blp.route("/portals/me/webhook-secret")
class WebhookSecret(MethodView):
    @blp.response(200, WebhookSecretsSchema)
    @blp.doc(operationId="getWebhookSecret", security=BEARER_AUTH)
    def get(self):
        """Read the secrets that sign the portal's webhooks"""
        with transaction() as session:
            caller = require_portal(session)
            return portals.webhook_secrets(session, portal_id=caller.id)

    # Every field has a default: a POST without a body rotates with them.
    @blp.arguments(RotateSecretSchema, required=False)
    @blp.response(200, WebhookSecretsSchema)
    @blp.alt_response(
        409,
        schema=ErrorSchema,
        description="The idempotency_key is the latest rotation's, made with another "
        "overlap_hours (idempotency_key_reused): nothing was rotated",
    )
    @blp.doc(operationId="rotateWebhookSecret", security=BEARER_AUTH)
    def post(self, rotation):
        """Replace the webhook signing secret

        The current secret keeps signing beside the new one for `overlap_hours`, so the
        portal can switch its receiver over without missing a message. The body may be
        left out: every field has its default. Send an `idempotency_key` to repeat a
        rotation safely after its answer was lost, with the same `overlap_hours`."""
        with transaction() as session:
            caller = require_portal(session)
            return portals.rotate_webhook_secret(
                session,
                portal_id=caller.id,
                overlap=timedelta(hours=rotation["overlap_hours"]),
                idempotency_key=rotation["idempotency_key"],
            )


@blp.route("/portals/me/webhook/test")
class OwnWebhookTest(MethodView):
    @blp.response(200, WebhookTestSchema, description="Sent: how the endpoint answered")
    @blp.alt_response(
        409, schema=ErrorSchema, description="The portal has no webhook_url (no_webhook)"
    )
    @blp.alt_response(
        429,
        schema=ErrorSchema,
        description=f"The portal's webhook was tested less than {TEST_INTERVAL_S} s ago, or is "
        "being tested "
        "now (webhook_tested_recently), or another portal's is being tested "
        "(webhook_tests_busy): see Retry-After",
        headers=RETRY_AFTER_HEADER,
    )
    @blp.doc(operationId="testWebhook", security=BEARER_AUTH)
    def post(self):
        """Send a test event to the portal's webhook now

        A `webhook.test` event, `{"type": "webhook.test", "timestamp": ..., "data":
        {"portal": "<slug>"}}`, signed and sent exactly as the relay's events are (the
        current secret and, during a rotation, the previous one; the same URL checks and
        timeouts), under a webhook-id of its own (`test_...`). The answer says whether
        the endpoint took it and, if not, why. The test is stored nowhere, never retried
        and changes nothing: a 410 disables the webhook only when a delivery gets it.
        Also for a webhook disabled by a 410, before setting its URL again (the answer's
        `webhook_disabled_at` says it is still disabled). A portal tests at most once
        every 30 s, and the directory one portal's webhook at a time: each test may hold
        an API process for the 15 s the relay waits for an answer."""
        with transaction() as session:
            caller = require_portal(session)
            test = webhook_tests.prepare(session, portal_id=caller.id)
        with webhook_tests.slot(wiring().engine):
            with transaction() as session:
                webhook_tests.take_turn(session, portal_id=caller.id)
            # Outside any transaction: the endpoint may take seconds to answer.
            return webhook_tests.send(test, allow_loopback=wiring().settings.webhook_allow_loopback)
