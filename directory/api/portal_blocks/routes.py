"""The communities the calling portal blocks: their members and its own no longer talk."""

from __future__ import annotations

from flask.views import MethodView

from directory.api.auth import BEARER_AUTH, require_portal
from directory.api.blueprint import Blueprint
from directory.api.db import transaction
from directory.api.errors import ErrorSchema
from directory.api.portal_blocks.schemas import BlockedPortalListSchema, BlockedPortalSchema
from directory.services import portal_blocks
from directory.services.portal_blocks import MAX_BLOCKS_PER_PORTAL
from directory.services.portals import SLUG

blp = Blueprint(
    "portal_blocks",
    __name__,
    url_prefix="/v1",
    description="Communities a portal blocks: no conversation between their members and its own",
)

PORTAL_SLUG = {
    "in": "path",
    "name": "slug",
    "required": True,
    "schema": {"type": "string", "pattern": SLUG.pattern},
    "description": "The other portal's slug, as conversations show its community",
}
BAD_SLUG = "Not a portal's slug, or (for PUT) the calling portal's own"
UNKNOWN_SLUG = "No portal has that slug"


@blp.route("/portals/me/blocked-portals")
class BlockedPortals(MethodView):
    @blp.response(200, BlockedPortalListSchema)
    @blp.doc(operationId="listBlockedPortals", security=BEARER_AUTH)
    def get(self):
        """List the portals the calling portal blocks

        Only the blocker sees its blocks."""
        with transaction() as session:
            caller = require_portal(session)
            return {"blocked_portals": portal_blocks.list_blocked_portals(session, portal=caller)}


@blp.route("/portals/me/blocked-portals/<string:slug>", parameters=[PORTAL_SLUG])
class BlockedPortal(MethodView):
    @blp.response(200, BlockedPortalSchema)
    @blp.alt_response(400, schema=ErrorSchema, description=BAD_SLUG)
    @blp.alt_response(404, schema=ErrorSchema, description=UNKNOWN_SLUG)
    @blp.alt_response(
        409,
        schema=ErrorSchema,
        description=f"The portal blocks {MAX_BLOCKS_PER_PORTAL} portals already "
        "(too_many_blocks): unblock one first",
    )
    @blp.doc(operationId="blockPortal", security=BEARER_AUTH)
    def put(self, slug: str):
        """Block another portal: its members and the calling portal's no longer talk

        For a community pestered by another's members. While either of two portals
        blocks the other, a member of one cannot open a conversation about an ad of the
        other's, and neither party can write in a conversation they have (409
        community_blocked, which tells the other portal that it is blocked: it is a
        community's decision, like a suspension). Conversations are not ended and can
        still be read; unblocking lets them go on. Messages accepted before the block
        are still delivered. Blocking again changes nothing and answers the same, with
        `blocked_at` from the first time. A portal blocks at most 1,000 others."""
        with transaction() as session:
            caller = require_portal(session)
            return portal_blocks.block_portal(session, portal=caller, slug=slug)

    @blp.response(204)
    @blp.alt_response(400, schema=ErrorSchema, description="Not a portal's slug")
    @blp.alt_response(404, schema=ErrorSchema, description=UNKNOWN_SLUG)
    @blp.doc(operationId="unblockPortal", security=BEARER_AUTH)
    def delete(self, slug: str):
        """Unblock a portal

        Its members and the calling portal's may talk again (unless it blocks the
        calling portal too), in the conversations they had as well. Unblocking a portal
        that is not blocked changes nothing (204)."""
        with transaction() as session:
            caller = require_portal(session)
            portal_blocks.unblock_portal(session, portal=caller, slug=slug)
