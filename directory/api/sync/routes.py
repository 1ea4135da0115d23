"""Sync sessions: an atomic full resync spread over several requests."""

from __future__ import annotations

import uuid

from flask.views import MethodView

from directory.api.ads.routes import result_rows
from directory.api.auth import BEARER_AUTH, require_portal
from directory.api.blueprint import Blueprint
from directory.api.db import transaction, wiring
from directory.api.errors import ErrorSchema
from directory.api.fields import ItemErrors
from directory.api.headers import LOCATION_HEADER, location_of
from directory.api.sync.schemas import (
    CommitResultSchema,
    CommitSchema,
    StageResultSchema,
    StageSchema,
    SyncSessionSchema,
)
from directory.errors import NotFound
from directory.services import sync

blp = Blueprint("sync", __name__, url_prefix="/v1", description="Full resync in several requests")

SESSION_ID = {
    "in": "path",
    "name": "session_id",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}


def _session_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(
            f"no sync session {value!r}", field="session_id", details={"location": "path"}
        ) from None


@blp.route("/sync-sessions")
class SyncSessions(MethodView):
    @blp.response(201, SyncSessionSchema, headers=LOCATION_HEADER)
    @blp.alt_response(
        409,
        schema=ErrorSchema,
        description="The portal has as many sync sessions open as it may (too_many_sync_sessions)",
    )
    @blp.doc(operationId="openSyncSession", security=BEARER_AUTH)
    def post(self):
        """Open a sync session for a full resync of the calling portal's ads

        Stage every ad with POST .../items (many requests if need be), then commit:
        the staged ads become the portal's complete set, at once. Nothing changes
        before the commit; abort with DELETE. The commit undoes the portal's other writes
        made while the session was open: an ad written by PUT or batch meanwhile is
        deleted unless staged, and takes its staged content if it was; so while
        resyncing, send changes to the session only.
        A portal has at most 5 sessions open at once by default
        (DIRECTORY_SYNC_SESSION_MAX_OPEN_PER_PORTAL): one more is refused (409
        too_many_sync_sessions, naming the open ones) until one is committed, aborted
        or expired."""
        with transaction() as session:
            portal = require_portal(session)
            opened = sync.open_session(
                session,
                portal_id=portal.id,
                ttl=wiring().sync_session_ttl,
                max_open=wiring().settings.sync_session_max_open_per_portal,
            )
        return opened, 201, location_of("sync.SyncSessionById", session_id=str(opened.id))


@blp.route("/sync-sessions/<string:session_id>", parameters=[SESSION_ID])
class SyncSessionById(MethodView):
    @blp.response(200, SyncSessionSchema)
    @blp.doc(operationId="getSyncSession", security=BEARER_AUTH)
    def get(self, session_id: str):
        """Read a sync session's state and counts"""
        with transaction() as session:
            portal = require_portal(session)
            return sync.get_session(
                session, portal_id=portal.id, session_id=_session_id(session_id)
            )

    @blp.response(204)
    @blp.doc(operationId="abortSyncSession", security=BEARER_AUTH)
    def delete(self, session_id: str):
        """Abort a sync session: nothing it staged is applied"""
        with transaction() as session:
            portal = require_portal(session)
            sync.abort(session, portal_id=portal.id, session_id=_session_id(session_id))


@blp.route("/sync-sessions/<string:session_id>/items", parameters=[SESSION_ID])
class SyncSessionItems(MethodView):
    @blp.arguments(StageSchema)
    @blp.response(200, StageResultSchema)
    @blp.alt_response(
        409,
        schema=ErrorSchema,
        description="The session is closed or expired, or would hold more ads than a "
        "session may (sync_session_full), or stage more ads than the portal may store, "
        "and more than it stores (too_many_ads)",
    )
    @blp.doc(operationId="stageSyncItems", security=BEARER_AUTH)
    def post(self, body, session_id: str):
        """Stage up to 1,000 ads in an open sync session

        Each ad is checked now and reported as staged or rejected (with its code, `error`,
        and its errors); a rejected ad is kept as it is at commit. An item without a valid
        `external_id` refuses the whole request (400): its ad could be neither staged nor
        kept, and would be deleted.
        A session holds at most 100,000 ads by default (DIRECTORY_SYNC_SESSION_MAX_ITEMS):
        a request that would take it past them stages nothing (409 sync_session_full);
        nor does one that would make it stage more ads than the portal may store, and
        more than it stores (409 too_many_ads: see the profile's `ads`): some would be
        new, and their commit would be refused."""
        items = [
            (item.external_id, item.messages)
            if isinstance(item, ItemErrors)
            else (item["external_id"], item["ad"])
            for item in body["items"]
        ]
        with transaction() as session:
            portal = require_portal(session)
            sid = _session_id(session_id)
            results, summary = sync.stage_items(
                session,
                portal_id=portal.id,
                session_id=sid,
                items=items,
                lifetimes=wiring().lifetimes,
                max_items=wiring().settings.sync_session_max_items,
                max_ads=wiring().settings.portal_max_ads,
            )
        return {"results": result_rows(results), "session": summary}


@blp.route("/sync-sessions/<string:session_id>/commit", parameters=[SESSION_ID])
class SyncSessionCommit(MethodView):
    # Every field has a default: a POST without a body commits as before.
    @blp.arguments(CommitSchema, required=False)
    @blp.response(200, CommitResultSchema)
    @blp.alt_response(
        409,
        schema=ErrorSchema,
        description="The session was aborted or has expired, or the resync would create ads "
        "and leave the portal more than it may store (too_many_ads: nothing changed, and "
        "the session stays open), or nothing was staged while the portal has ads and "
        "delete_all was not sent (empty_resync: nothing changed, and the session stays open)",
    )
    @blp.doc(operationId="commitSyncSession", security=BEARER_AUTH)
    def post(self, options, session_id: str):
        """Commit: the staged ads replace all of the portal's ads, in one transaction

        Sent again once committed (its answer was lost), it answers as the commit did
        and changes nothing. A commit that creates ads and would leave the portal more
        than it may store (the staged ones and those of rejected items it keeps) is
        refused whole (409 too_many_ads); the session stays open, to commit again once
        the limit is raised, or to abort. One that creates none is never refused: a
        portal above a lowered limit still resyncs the ads it has. A session in which
        nothing was staged deletes all of the portal's ads: it is committed only with
        `delete_all` (else 409 empty_resync, and the session stays open)."""
        with transaction() as session:
            portal = require_portal(session)
            result = sync.commit(
                session,
                portal_id=portal.id,
                session_id=_session_id(session_id),
                lifetimes=wiring().lifetimes,
                max_ads=wiring().settings.portal_max_ads,
                delete_all=options["delete_all"],
            )
        return {
            "session": result.summary,
            "created": result.created,
            "updated": result.updated,
            "unchanged": result.unchanged,
            "deleted": result.deleted,
            "kept_rejected": result.kept_rejected,
            "rejected_items": result_rows(result.rejected_items),
        }
