"""The HTTP layer: the Api, its blueprints and the rules every request goes through."""

from __future__ import annotations

import functools
import json
import logging
import re
import secrets
import time

import flask_smorest
from flask import Flask, current_app, g, request
from werkzeug.exceptions import BadRequest, UnsupportedMediaType

from directory.api import errors
from directory.api.auth import SECURITY_SCHEMES, require_portal
from directory.api.db import transaction
from directory.api.ratelimit import install_rate_limits
from directory.api.spec import require_answer_fields
from directory.services.portals import KEY_PREFIX

API_TITLE = "Commons Directory"
API_VERSION = "1.0.0"
OPENAPI_VERSION = "3.1.0"
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
# What a key looks like wherever it is written by mistake (a path segment, a header).
KEY_LIKE = re.compile(re.escape(KEY_PREFIX) + r"[A-Za-z0-9]*")
REDACTED_KEY = KEY_PREFIX + "[redacted]"
# Query parameter names under which clients commonly (and wrongly) send keys.
KEY_PARAMETER_NAMES = {"key", "api_key", "apikey", "access_token", "token", "auth"}
BODY_METHODS = {"POST", "PUT", "PATCH"}
# Bodies above this are read only once their key is known (_key_before_large_bodies).
# A relay message, an ad or a profile is well below it.
LARGE_BODY_BYTES = 64 * 1024
# Methods that change something: a precondition sent with one must hold, or stop it.
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
PRECONDITION_HEADERS = ("If-Match", "If-None-Match", "If-Unmodified-Since")

access_log = logging.getLogger("directory.access")


class Api(flask_smorest.Api):
    ERROR_SCHEMA = errors.ErrorSchema


def create_api(app: Flask) -> Api:
    app.config.update(
        API_TITLE=API_TITLE,
        API_VERSION=API_VERSION,
        OPENAPI_VERSION=OPENAPI_VERSION,
        API_SPEC_OPTIONS={
            "info": {
                "description": "The global, geolocated offers-and-wants directory for "
                "mutual-credit communities. Portals publish their members' ads with a portal "
                "key; anyone reads public ads. Every error has the same JSON envelope "
                "(code, status, error, message, errors by location and field).",
                "license": {"name": "AGPL-3.0-or-later"},
            },
            "servers": [{"url": "/"}],
        },
        # The spec at /openapi.json (OPENAPI_JSON_PATH's default); no UI is served, as
        # none of OPENAPI_{REDOC,SWAGGER_UI,RAPIDOC}_PATH is set.
        OPENAPI_URL_PREFIX="/",
    )
    # First, before any hook that may answer (a rate limit, a wrong key): every answer
    # carries its request id, and its log line a duration.
    app.before_request(_start_request)
    app.after_request(_log_request)
    api = Api(app)
    for name, scheme in SECURITY_SCHEMES.items():
        api.spec.components.security_scheme(name, scheme)
    from directory.api.ads.routes import blp as ads_blp
    from directory.api.categories.routes import blp as categories_blp
    from directory.api.currencies.routes import blp as currencies_blp
    from directory.api.feed.routes import blp as feed_blp
    from directory.api.health import blp as health_blp
    from directory.api.members.routes import blp as members_blp
    from directory.api.metrics import blp as metrics_blp
    from directory.api.portal_blocks.routes import blp as portal_blocks_blp
    from directory.api.portals.routes import blp as portals_blp
    from directory.api.relay.routes import blp as relay_blp
    from directory.api.search.routes import blp as search_blp
    from directory.api.sync.routes import blp as sync_blp

    for blueprint in (
        health_blp,
        metrics_blp,
        portals_blp,
        ads_blp,
        search_blp,
        sync_blp,
        relay_blp,
        members_blp,
        portal_blocks_blp,
        feed_blp,
        currencies_blp,
        categories_blp,
    ):
        api.register_blueprint(blueprint)
    require_answer_fields(api.spec)
    install_rate_limits(app, app.extensions["directory"].settings)
    errors.register_error_handlers(app)
    app.before_request(_refuse_keys_in_query)
    app.before_request(_key_before_large_bodies)
    app.before_request(_require_json_body)
    app.before_request(_refuse_unchecked_preconditions)
    app.before_request(_refuse_unknown_query_parameters)
    return api


def _start_request() -> None:
    g.request_id = _request_id()
    g.started = time.perf_counter()


def _request_id() -> str:
    """The client's own X-Request-Id if it is a sane one, else a new one. Not one holding
    a key (a client sending its key in the wrong header): the id is logged and sent back."""
    incoming = request.headers.get("X-Request-Id", "")
    if REQUEST_ID.fullmatch(incoming) and KEY_PREFIX not in incoming:
        return incoming
    # secrets rather than uuid4().hex: the same 32 hex digits, a third of the time.
    return secrets.token_hex(16)


def _refuse_keys_in_query() -> None:
    for name, value in request.args.items(multi=True):
        # Anywhere in a value ("q=bike cdir_..."), or as a name ("?cdir_..."), which the
        # answer then names by the prefix alone: it must not send the key back.
        if name.lower() in KEY_PARAMETER_NAMES or KEY_PREFIX in value or KEY_PREFIX in name:
            field = f"{KEY_PREFIX}…" if KEY_PREFIX in name else name
            error = BadRequest()
            error.data = {
                "error": "key_in_query",
                "message": "API keys must never be sent in the query string (it ends up in "
                "logs and browser history); use the header Authorization: Bearer <key>",
                "messages": {"query": {field: ["API keys are refused here."]}},
            }
            raise error


def _has_body() -> bool:
    return (request.content_length or 0) > 0 or bool(request.headers.get("Transfer-Encoding"))


def _key_before_large_bodies() -> None:
    """Every operation that takes a body needs a portal key; a large body is read only
    once the key is known. Reading (and refusing) 16 MiB costs the API about a second,
    which anyone could otherwise make it spend at will. Small bodies skip this: their
    key is checked by their view, in its own transaction, and one more lookup would cost
    the relay's hot path."""
    if request.routing_exception is not None or request.method not in BODY_METHODS:
        return
    length = request.content_length  # None for a chunked body: it counts as large
    if not _has_body() or (length is not None and length <= LARGE_BODY_BYTES):
        return
    with transaction() as session:
        require_portal(session)


def _require_json_body() -> None:
    # A request no route takes is answered 404 or 405 first, whatever its body.
    if request.routing_exception is not None:
        return
    if not _has_body():
        return
    if request.method in BODY_METHODS:
        if not request.is_json:
            error = UnsupportedMediaType()
            error.data = {
                "error": "unsupported_media_type",
                "message": f"The body must be JSON (Content-Type: application/json), "
                f"not {request.mimetype or 'untyped'}",
                "messages": {"headers": {"Content-Type": ["Must be application/json."]}},
            }
            raise error
        view = current_app.view_functions.get(request.endpoint or "")
        if view is None or "json" in _declared_locations(view, request.method):
            return
    # An operation without a body (a GET or DELETE never has one) would ignore one, and
    # what it asks for with it (a condition, say); an empty object asks for nothing.
    if request.get_data(cache=True).strip() not in (b"", b"{}"):
        error = BadRequest()
        error.data = {
            "error": "body_not_taken",
            "message": "This operation takes no body: leave it out.",
            "messages": {"json": {"_schema": ["This operation takes no body."]}},
        }
        raise error


def _refuse_unchecked_preconditions() -> None:
    """A change sent with a precondition the operation does not check (only the ads'
    take If-Match and If-None-Match) is refused: made anyway, it would be made in
    exactly the case the client asked it not to be."""
    if request.method not in UNSAFE_METHODS or request.routing_exception is not None:
        return
    view = current_app.view_functions.get(request.endpoint or "")
    if view is None:
        return
    checked = _declared_headers(view, request.method)
    unchecked = [
        name for name in PRECONDITION_HEADERS if name in request.headers and name not in checked
    ]
    if unchecked:
        error = BadRequest()
        error.data = {
            "error": "precondition_not_supported",
            "message": f"This operation does not check {', '.join(unchecked)}: send the "
            "request without it (only the ads' own operations take conditions).",
            "messages": {"headers": {name: ["Not checked here."] for name in unchecked}},
        }
        raise error


def _apidoc(view_function, method: str) -> dict:
    """What flask-smorest's decorators recorded of the operation (its documentation)."""
    view_class = getattr(view_function, "view_class", None)
    handler = getattr(view_class, method.lower(), None) if view_class else view_function
    return getattr(handler, "_apidoc", {})


@functools.cache  # views are made once, with the app
def _declared_headers(view_function, method: str) -> frozenset[str]:
    """The headers the operation's documentation says it takes (If-Match...)."""
    parameters = _apidoc(view_function, method).get("manual_doc", {}).get("parameters", [])
    return frozenset(
        parameter["name"]
        for parameter in parameters
        if isinstance(parameter, dict) and parameter.get("in") == "header"
    )


@functools.cache  # views are made once, with the app
def _declared_locations(view_function, method: str) -> frozenset[str]:
    """Where the operation takes arguments: "query", "json"."""
    parameters = _apidoc(view_function, method).get("arguments", {}).get("parameters", [])
    return frozenset(parameter.get("in") for parameter in parameters if isinstance(parameter, dict))


def _refuse_unknown_query_parameters() -> None:
    """Routes with a query schema refuse unknown parameters through it; the others take
    none at all, and say so rather than ignore them."""
    if not request.args or request.endpoint is None:
        return
    # HEAD is answered by GET and takes its parameters; OPTIONS is Flask's, and ignores them.
    method = "GET" if request.method == "HEAD" else request.method
    view = current_app.view_functions.get(request.endpoint)
    if view is None or method == "OPTIONS" or "query" in _declared_locations(view, method):
        return
    if request.endpoint in ("api-docs.openapi_json",):
        return
    error = BadRequest()
    error.data = {
        "message": "This operation takes no query parameters.",
        "messages": {"query": {name: ["Unknown field."] for name in request.args}},
    }
    raise error


def _log_request(response):
    # Never the Authorization header, the query string's values or any body.
    if "request_id" not in g:  # answered before _start_request, the first hook, ran
        g.request_id = _request_id()
    response.headers["X-Request-Id"] = g.request_id
    if not access_log.isEnabledFor(logging.INFO):
        return response  # the line would be dropped: spare building it
    started = g.get("started")
    # None rather than a made-up figure for a request that was never started.
    duration_ms = None if started is None else round((time.perf_counter() - started) * 1000, 2)
    access_log.info(
        json.dumps(
            {
                "event": "request",
                "request_id": g.request_id,
                "method": request.method,
                # A key sent as a path segment by mistake is not written down.
                "path": KEY_LIKE.sub(REDACTED_KEY, request.path),
                "status": response.status_code,
                "duration_ms": duration_ms,
                "portal": g.get("portal_slug"),
                "bytes_in": request.content_length or 0,
            }
        )
    )
    return response
