"""Members of the calling portal, whom the directory knows only by their handles."""

from __future__ import annotations

from flask.views import MethodView

from directory.api.auth import BEARER_AUTH, require_portal
from directory.api.blueprint import Blueprint
from directory.api.db import transaction, wiring
from directory.api.members.schemas import ErasureRequestSchema, ErasureSchema
from directory.services import members

blp = Blueprint(
    "members",
    __name__,
    url_prefix="/v1",
    description="A portal's members, known to the directory only by their handles",
)


@blp.route("/portals/me/member-erasures")
class MemberErasures(MethodView):
    @blp.arguments(ErasureRequestSchema)
    @blp.response(200, ErasureSchema)
    @blp.doc(operationId="eraseMember", security=BEARER_AUTH)
    def post(self, erasure):
        """Erase a member from the directory

        For a member who left the community, or asked it to forget them: everything
        the directory holds under the handle goes, in one transaction, at once.
        - Their ads are deleted, as by DELETE (the feed and search are told).
        - Every conversation they are a party to loses all its messages (both
          parties', delivered or not: what is still pending is not delivered), and
          their handle and name; when they were the advertiser, the ad's title and id too. The
          conversation stays, with its random aliases: the other party's portal is
          told it ended (a conversation.ended event, unless it had ended already), reads
          so (the party's `erased` is true), and writing in it is refused with 409
          party_erased. A webhook already on its way may still arrive.
        - Their ads staged in the portal's sync sessions are dropped: an open
          session's commit will not publish them (finished sessions keep none either).

        The portal's ad writes and sync commits under way are waited for, and its
        other ad writes wait while the erasure runs. Remove the member from what the
        portal publishes first (its own export, what `directory-sync` reads): else the
        next resync publishes their ads again.

        The directory keeps no list of members, so erasing a handle it never saw, or
        erasing again, removes nothing and succeeds. The handle may be used again
        afterwards: it is a new member to the directory. Nothing is kept to tell the
        member was erased, other than the conversations' aliases."""
        with transaction() as session:
            caller = require_portal(session)
            return members.erase_member(
                session,
                portal_id=caller.id,
                member=erasure["member"],
                lifetimes=wiring().lifetimes,
            )
