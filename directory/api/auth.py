"""Portal authentication: `Authorization: Bearer <key>`, checked on every request."""

from __future__ import annotations

from flask import g, request
from sqlalchemy.orm import Session

from directory.api.db import transaction
from directory.services import portals
from directory.services.portals import AuthenticatedPortal

BEARER_AUTH = [{"PortalKey": []}]
SECURITY_SCHEMES = {
    "PortalKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "A portal key (cdir_...), issued by `directory portals create` or "
        "`directory portals rotate-key`.",
    },
    "MetricsToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "The operator's DIRECTORY_METRICS_TOKEN, for GET /metrics only.",
    },
}


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def require_portal(session: Session) -> AuthenticatedPortal:
    portal = portals.authenticate(session, key=bearer_token())
    g.portal_slug = portal.slug  # for the request log
    return portal


def calling_portal() -> AuthenticatedPortal | None:
    """The portal whose key came with a request that anyone may make, if any (a wrong
    key is refused with 401, never taken as anonymous), looked up once per request: the
    rate limiter asks first, to count the request against the portal, not the address."""
    if "calling_portal" not in g:
        viewer = None
        if "Authorization" in request.headers:
            with transaction() as session:
                viewer = optional_portal(session)
        g.calling_portal = viewer
    return g.calling_portal


def optional_portal(session: Session) -> AuthenticatedPortal | None:
    if "Authorization" not in request.headers:
        return None
    return require_portal(session)
