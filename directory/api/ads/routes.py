"""Ads: a portal publishes, changes, expires and deletes its own ads by its own ids;
anyone reads a public ad by the directory's id."""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter

from flask import Response, request
from flask.views import MethodView

from directory.api.ads.schemas import (
    AdPutSchema,
    AdSchema,
    BatchResultSchema,
    BatchSchema,
    OwnAdsArgsSchema,
    OwnAdsPageSchema,
    PublicAdSchema,
)
from directory.api.auth import BEARER_AUTH, require_portal
from directory.api.blueprint import Blueprint
from directory.api.db import transaction, wiring
from directory.api.errors import ErrorSchema
from directory.api.fields import ItemErrors, json_response
from directory.errors import InvalidInput, NotFound
from directory.services import ads
from directory.services.ads import (
    EXTERNAL_ID,
    EXTERNAL_ID_RULE,
    Delete,
    Expire,
    Preconditions,
    Rejected,
    Upsert,
)

blp = Blueprint("ads", __name__, url_prefix="/v1", description="Publish and read ads")

AD_REF = {
    "in": "path",
    "name": "ad_ref",
    "required": True,
    "schema": {"type": "string", "pattern": EXTERNAL_ID.pattern},
    "description": "For GET: the directory's id of the ad (a UUID). For PUT, DELETE and "
    "expire: the calling portal's own id of the ad (its external id).",
}


ETAG_HEADER = {
    "ETag": {
        "description": "The ad as the portal reads it (its version, what its portal's "
        "website and ledger add, whether it has expired): pass it as If-Match to make a "
        "change conditional",
        "schema": {"type": "string"},
    }
}
IF_MATCH = {
    "in": "header",
    "name": "If-Match",
    "required": False,
    "schema": {"type": "string"},
    "description": "Only apply when the ad's ETag is one of these (or `*`: when it exists); "
    "else 412",
}
IF_NONE_MATCH = {
    "in": "header",
    "name": "If-None-Match",
    "required": False,
    "schema": {"type": "string"},
    "description": "Only apply when the ad's ETag is none of these (`*`: when there is no "
    "such ad, so that a PUT never replaces one); else 412",
}
PRECONDITION_FAILED = "If-Match or If-None-Match did not hold for the ad as it is"


def _preconditions() -> Preconditions:
    return Preconditions(
        if_match=request.headers.get("If-Match"),
        if_none_match=request.headers.get("If-None-Match"),
    )


@contextlib.contextmanager
def _not_found_names(parameter: str):
    """A missing ad named by the path parameter that asked for it, in the path (the
    services name the ad's field, as a batch item has it)."""
    try:
        yield
    except NotFound as error:
        raise NotFound(error.message, field=parameter, details={"location": "path"}) from None


def _external_id(value: str, *, field: str = "ad_ref", location: str = "path") -> str:
    if not EXTERNAL_ID.fullmatch(value):
        raise InvalidInput(
            f"{field} must be {EXTERNAL_ID_RULE}",
            field=field,
            details={"location": location},
        )
    return value


@blp.route("/ads/<string:ad_ref>", parameters=[AD_REF])
class AdByRef(MethodView):
    @blp.response(200, PublicAdSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No public ad with that id")
    @blp.doc(operationId="getAd")
    def get(self, ad_ref: str):
        """Read a public ad as the world may see it

        Ads that are expired, deleted, visible to their portal only, or of a suspended
        portal are not found."""
        with _not_found_names("ad_ref"):
            try:
                ad_id = uuid.UUID(ad_ref)
            except ValueError:
                raise NotFound(f"no public ad with id {ad_ref!r}") from None
            with transaction() as session:
                return ads.get_public_ad(session, ad_id=ad_id)

    @blp.arguments(AdPutSchema)
    @blp.response(
        200,
        AdSchema,
        description="The ad was changed, or was already like this",
        headers=ETAG_HEADER,
    )
    @blp.alt_response(201, schema=AdSchema, description="The ad was created", headers=ETAG_HEADER)
    @blp.alt_response(
        409,
        schema=ErrorSchema,
        description="A new ad, and the portal stores as many as it may (too_many_ads)",
    )
    @blp.alt_response(412, schema=ErrorSchema, description=PRECONDITION_FAILED)
    @blp.doc(operationId="putAd", security=BEARER_AUTH, parameters=[IF_MATCH, IF_NONE_MATCH])
    def put(self, ad_input, ad_ref: str):
        """Create or replace one of the calling portal's ads by its own id

        Idempotent: sending the same ad again changes nothing (200, same ETag). For a
        non-exact privacy level only a snapped location is stored. `If-None-Match: *`
        creates the ad only if there is none; `If-Match` changes it only as it was.
        A portal stores at most 100,000 ads by default (DIRECTORY_PORTAL_MAX_ADS; its
        profile's `ads` tells its own limit): a new ad beyond is refused (409
        too_many_ads), while its existing ads may always be changed."""
        external_id = _external_id(ad_ref)
        with transaction() as session:
            portal = require_portal(session)
            result, record = ads.upsert_ad(
                session,
                portal_id=portal.id,
                external_id=external_id,
                ad=ad_input,
                preconditions=_preconditions(),
                lifetimes=wiring().lifetimes,
                max_ads=wiring().settings.portal_max_ads,
            )
        status = 201 if result.status == "created" else 200
        return record, status, {"ETag": record.etag}

    @blp.response(204)
    @blp.alt_response(412, schema=ErrorSchema, description=PRECONDITION_FAILED)
    @blp.doc(operationId="deleteAd", security=BEARER_AUTH, parameters=[IF_MATCH, IF_NONE_MATCH])
    def delete(self, ad_ref: str):
        """Delete one of the calling portal's ads by its own id

        Deleting an ad that does not exist (any more) is harmless: also 204 (but for
        `If-Match`, which asks for the ad as it was: 412)."""
        external_id = _external_id(ad_ref)
        with transaction() as session:
            portal = require_portal(session)
            ads.delete_ad(
                session,
                portal_id=portal.id,
                external_id=external_id,
                preconditions=_preconditions(),
                lifetimes=wiring().lifetimes,
            )


@blp.route("/ads/<string:ad_ref>/expire", parameters=[AD_REF])
class AdExpiry(MethodView):
    @blp.response(200, AdSchema, headers=ETAG_HEADER)
    @blp.alt_response(404, schema=ErrorSchema, description="The portal has no ad of that id")
    @blp.alt_response(412, schema=ErrorSchema, description=PRECONDITION_FAILED)
    @blp.doc(operationId="expireAd", security=BEARER_AUTH, parameters=[IF_MATCH, IF_NONE_MATCH])
    def post(self, ad_ref: str):
        """End one of the calling portal's ads now, keeping it for the portal

        The ad leaves public view; sending it again with PUT brings it back."""
        external_id = _external_id(ad_ref)
        with transaction() as session, _not_found_names("ad_ref"):
            portal = require_portal(session)
            record = ads.expire_ad(
                session,
                portal_id=portal.id,
                external_id=external_id,
                preconditions=_preconditions(),
                lifetimes=wiring().lifetimes,
            )
        return record, 200, {"ETag": record.etag}


def _operation(item) -> ads.Operation:
    if isinstance(item, ItemErrors):
        return Rejected(item.external_id, item.messages)
    if item["op"] == "delete":
        return Delete(item["external_id"])
    if item["op"] == "expire":
        return Expire(item["external_id"])
    return Upsert(item["external_id"], item["ad"])


def result_rows(results) -> list[dict]:
    return [
        {
            "index": index,
            "external_id": result.external_id,
            "status": result.status,
            "id": result.id,
            "version": result.version,
            "etag": result.etag,
            "error": result.error,
            "errors": result.errors,
        }
        for index, result in enumerate(results)
    ]


@blp.route("/ads/batch")
class AdBatch(MethodView):
    @blp.arguments(BatchSchema)
    @blp.response(200, BatchResultSchema)
    @blp.doc(operationId="batchAds", security=BEARER_AUTH)
    def post(self, batch):
        """Apply up to 1,000 upserts, deletes and expiries in one transaction

        Each item gets its own result: created, updated, unchanged, deleted, expired, or
        rejected with its code (`error`, as a single write of it would be answered) and
        its errors (the other items are applied all the same). With
        `replace: true` the items are the portal's complete set of ads: the others are
        deleted, those of rejected items kept as they are; an item without a valid
        `external_id` then refuses the whole batch (400), as its ad would be deleted.
        New ads beyond the portal's limit on stored ads (see `putAd`) are rejected
        (too_many_ads), the last items first, the message naming the limit; the others
        are applied."""
        operations = [_operation(item) for item in batch["items"]]
        with transaction() as session:
            portal = require_portal(session)
            if batch["replace"]:
                summary = ads.replace_all(
                    session,
                    portal_id=portal.id,
                    operations=operations,
                    lifetimes=wiring().lifetimes,
                    max_ads=wiring().settings.portal_max_ads,
                )
                results, deleted = summary.results, summary.deleted
            else:
                results = ads.apply_changes(
                    session,
                    portal_id=portal.id,
                    operations=operations,
                    lifetimes=wiring().lifetimes,
                    max_ads=wiring().settings.portal_max_ads,
                )
                deleted = 0
        # Serialised straight to JSON: these rows are BatchResultSchema's shape already,
        # and dumping 1,000 of them through the schema costs as much as storing them.
        return json_response(
            {
                "results": result_rows(results),
                "counts": dict(Counter(result.status for result in results)),
                "deleted_by_replace": deleted,
            }
        )


@blp.route("/portals/me/ads")
class OwnAds(MethodView):
    @blp.arguments(OwnAdsArgsSchema, location="query")
    @blp.response(200, OwnAdsPageSchema)
    @blp.doc(operationId="listOwnAds", security=BEARER_AUTH)
    def get(self, args):
        """List the calling portal's own ads, all of them, in external-id order"""
        after = None
        if args["cursor"] is not None:
            after = _external_id(args["cursor"], field="cursor", location="query")
        with transaction() as session:
            portal = require_portal(session)
            records, next_after = ads.list_own_ads(
                session,
                portal_id=portal.id,
                after=after,
                limit=args["limit"],
                include_expired=args["include_expired"],
            )
        return {"items": records, "next_cursor": next_after}


@blp.route(
    "/portals/me/ads/<string:external_id>",
    parameters=[
        {
            "in": "path",
            "name": "external_id",
            "required": True,
            "schema": {"type": "string", "pattern": EXTERNAL_ID.pattern},
            "description": "The portal's own id of the ad",
        }
    ],
)
class OwnAd(MethodView):
    @blp.response(200, AdSchema, headers=ETAG_HEADER)
    @blp.alt_response(
        304,
        description="If-None-Match named the ad's current ETag: it has not changed",
        headers=ETAG_HEADER,
        success=True,
    )
    @blp.alt_response(404, schema=ErrorSchema, description="The portal has no ad of that id")
    @blp.doc(
        operationId="getOwnAd",
        security=BEARER_AUTH,
        parameters=[
            {
                **IF_NONE_MATCH,
                "description": "The ETag of the copy the caller holds: 304 while it is current",
            }
        ],
    )
    def get(self, external_id: str):
        """Read one of the calling portal's ads, whatever its visibility or expiry"""
        external_id = _external_id(external_id, field="external_id")
        with transaction() as session, _not_found_names("external_id"):
            portal = require_portal(session)
            record = ads.get_own_ad(session, portal_id=portal.id, external_id=external_id)
        if_none_match = request.headers.get("If-None-Match")
        if if_none_match is not None and ads.etag_matches(
            if_none_match, record.etag, weak=True, name="If-None-Match"
        ):
            return Response(status=304, headers={"ETag": record.etag})
        return record, 200, {"ETag": record.etag}
