"""The calling portal's own profile."""

from __future__ import annotations

from flask.views import MethodView

from directory.api.auth import BEARER_AUTH, require_portal
from directory.api.blueprint import Blueprint
from directory.api.db import transaction
from directory.api.portals.schemas import PortalPatchSchema, PortalSchema
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
    @blp.doc(operationId="updateOwnPortal", security=BEARER_AUTH)
    def patch(self, changes):
        """Change fields of the calling portal's profile"""
        with transaction() as session:
            caller = require_portal(session)
            return portals.update_profile(session, portal_id=caller.id, changes=changes)
