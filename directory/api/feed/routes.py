"""The change feed that mirrors, other directories and search indexes follow."""

from __future__ import annotations

from flask.views import MethodView
from marshmallow import Schema, fields, validate

from directory.api.ads.schemas import PublicAdSchema
from directory.api.auth import BEARER_AUTH
from directory.api.blueprint import Blueprint
from directory.api.db import transaction
from directory.api.errors import RETRY_AFTER_HEADER, ErrorSchema
from directory.api.fields import WholeNumber
from directory.models import ChangeOp
from directory.services import feed

blp = Blueprint("feed", __name__, url_prefix="/v1", description="Change feed")


class FeedArgsSchema(Schema):
    since = fields.String(
        load_default=None,
        validate=validate.Length(1, 200),
        metadata={"description": "next_cursor of the previous page; absent: from the start"},
    )
    limit = WholeNumber(load_default=500, validate=validate.Range(1, 1000))


class FeedEntrySchema(Schema):
    op = fields.Enum(ChangeOp, by_value=True, metadata={"description": "upsert or delete"})
    ad_id = fields.UUID()
    changed_at = fields.DateTime()
    ad = fields.Nested(
        PublicAdSchema, allow_none=True, metadata={"description": "For upserts: the ad now"}
    )


class FeedPageSchema(Schema):
    changes = fields.List(fields.Nested(FeedEntrySchema))
    next_cursor = fields.String(metadata={"description": "Pass as since to continue"})
    more = fields.Boolean(metadata={"description": "True when more changes are waiting now"})


@blp.route("/feed")
class Feed(MethodView):
    @blp.arguments(FeedArgsSchema, location="query")
    @blp.response(200, FeedPageSchema)
    @blp.alt_response(
        429,
        schema=ErrorSchema,
        description="Too many feed pages from this client: see Retry-After",
        headers=RETRY_AFTER_HEADER,
    )
    @blp.doc(operationId="readFeed", security=[{}, *BEARER_AUTH])
    def get(self, args):
        """Changes to public ads, oldest first

        `upsert` carries the ad as it is now; `delete` means it left public view
        (deleted, expired, made portal-only, or its portal suspended). Ads also end
        at their `expires_at` without a feed entry. Follow `next_cursor` until
        `more` is false, then poll with it.

        Anyone may read it. Pages are rate-limited as searches are, with a budget of
        their own: per client address, or per portal at its higher limit when the
        portal's key comes with the request (the feed is the same for every reader)."""
        with transaction() as session:
            page = feed.read_feed(session, since=args["since"], limit=args["limit"])
        return {"changes": page.entries, "next_cursor": page.next_cursor, "more": page.more}
