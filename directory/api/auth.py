"""Portal authentication: `Authorization: Bearer <key>`, checked on every request."""

from __future__ import annotations

from flask import g, request
from sqlalchemy.orm import Session

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


def optional_portal(session: Session) -> AuthenticatedPortal | None:
    if "Authorization" not in request.headers:
        return None
    return require_portal(session)
