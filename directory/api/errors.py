"""One error envelope for the whole API, mapped in one place:
{"code": 400, "status": "Bad Request", "error": "invalid_input", "message": "...",
 "errors": {"json": {"location": {"lat": ["Must be between -90 and 90."]}}}}"""

from __future__ import annotations

import logging

from flask import jsonify
from marshmallow import Schema, fields
from psycopg import errors as pg_errors
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from werkzeug.exceptions import HTTPException, InternalServerError, ServiceUnavailable
from werkzeug.wrappers import Response

from directory.db import constraint_name
from directory.errors import VALIDATION_ERROR, DirectoryError, TooManyRequests

log = logging.getLogger("directory.api")

# Where a domain error's field lives, for the `errors` map.
DEFAULT_LOCATION = "json"

# Machine codes for plain HTTP errors, when nothing more specific was given.
HTTP_ERROR_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    412: "precondition_failed",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: VALIDATION_ERROR,
    428: "precondition_required",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


# Documents the header every 429 carries.
RETRY_AFTER_HEADER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again",
        "schema": {"type": "integer", "minimum": 1},
    }
}


class ErrorSchema(Schema):
    code = fields.Integer(metadata={"description": "HTTP status code"})
    status = fields.String(metadata={"description": "HTTP status name"})
    error = fields.String(
        metadata={"description": "Stable machine-readable error code, e.g. unknown_currency"}
    )
    message = fields.String(metadata={"description": "What went wrong, for a person"})
    errors = fields.Dict(
        metadata={
            "description": "Problems by location (json, query, path, headers), then by field "
            "path, each a list of messages"
        }
    )


def envelope(status: int, *, error: str, message: str, errors: dict | None = None, name=None):
    from http import HTTPStatus

    body = {
        "code": status,
        "status": name or HTTPStatus(status).phrase,
        "error": error,
        "message": message,
        "errors": errors or {},
    }
    response = jsonify(body)
    response.status_code = status
    return response


def _field_errors(location: str, field: str | None, message: str) -> dict | None:
    if not field:
        return None
    node: dict = {}
    cursor = node
    parts = field.split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = [message]
    return {location: node}


def handle_directory_error(error: DirectoryError):
    location = error.details.get("location", DEFAULT_LOCATION)
    response = envelope(
        error.status,
        error=error.code,
        message=error.message,
        errors=_field_errors(location, error.field, error.message),
    )
    if error.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="directory"'
    if isinstance(error, TooManyRequests):
        response.headers["Retry-After"] = str(error.retry_after_s)
    return response


def handle_http_exception(error: HTTPException):
    if isinstance(error.response, Response):
        return error.response  # a response made by whoever raised (werkzeug.abort(response))
    data = getattr(error, "data", None) or {}
    status = error.code or 500
    errors = data.get("messages") or data.get("errors")
    message = data.get("message")
    if message is None:
        if status == 422 or (status == 400 and errors):
            message = "The request has invalid fields; see errors."
        elif isinstance(error, InternalServerError):
            message = "Internal error."
        else:
            message = error.description or error.name
    code = data.get("error")
    if code is None:
        code = VALIDATION_ERROR if errors else HTTP_ERROR_CODES.get(status, "error")
    response = envelope(status, error=code, message=message, errors=errors, name=error.name)
    for header, value in (data.get("headers") or {}).items():
        response.headers[header] = value
    if hasattr(error, "get_headers"):
        for header, value in error.get_headers():
            if header.lower() not in ("content-type",):
                response.headers.setdefault(header, value)
    return response


def handle_integrity_error(error: IntegrityError):
    constraint = constraint_name(error)
    log.info("integrity error on %s", constraint)
    return envelope(
        409,
        error="constraint_violation",
        message=f"the change conflicts with existing data (constraint {constraint}); "
        "if two requests raced, retry",
        errors={"constraint": constraint} if constraint else None,
    )


def handle_data_error(error: DataError):
    """A value the database refused (too long, out of range): the input's doing, though
    validation should have caught it first, hence logged in full to be fixed there."""
    log.exception("a value reached the database that validation let through")
    problem = getattr(getattr(error.orig, "diag", None), "message_primary", None)
    return envelope(
        400,
        error="invalid_value",
        message=f"a value was refused by the database: {problem or 'out of range'}",
    )


def handle_operational_error(error: OperationalError):
    if isinstance(error.orig, pg_errors.QueryCanceled | pg_errors.LockNotAvailable):
        return envelope(503, error="busy", message="the database is busy; retry shortly")
    if isinstance(
        error.orig,
        pg_errors.DeadlockDetected | pg_errors.SerializationFailure | pg_errors.TransactionRollback,
    ):
        # A deadlock (or a serialization failure): the database rolled this transaction
        # back so that another could go on, and nothing of it was written. The database
        # is up: not an outage, but a deadlock is two lock orders to make one.
        log.warning("the database rolled a request back: %s", error.orig.sqlstate)
        return envelope(
            503,
            error="busy",
            message="the database rolled this request back to let a concurrent one "
            "through; nothing of it was written; retry",
        )
    log.exception("database unavailable")
    return handle_http_exception(ServiceUnavailable("the database is unavailable; retry shortly"))


def handle_unexpected(error: Exception):
    log.exception("unhandled error")
    return handle_http_exception(InternalServerError())


def register_error_handlers(app) -> None:
    app.register_error_handler(DirectoryError, handle_directory_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(IntegrityError, handle_integrity_error)
    app.register_error_handler(DataError, handle_data_error)
    app.register_error_handler(OperationalError, handle_operational_error)
    app.register_error_handler(Exception, handle_unexpected)
