"""Errors of the directory client, built from the API's error envelope
`{code, status, error, message, errors}`; `errors` keeps the field paths by location,
e.g. {"json": {"location": {"lat": ["Must be ..."]}}}."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class DirectoryError(Exception):
    """Base of the directory client's errors."""


class DirectoryUnavailable(DirectoryError):
    """The directory could not be reached (refused, timed out, dropped) or its answer not
    read (garbled in transit), retries spent."""


class ClientMisconfigured(DirectoryError, ValueError):
    """What the client was given cannot be sent at all (a portal key that is no valid
    header value, a directory URL without http(s)): nothing was sent, and trying again
    changes nothing. The message never shows the key."""


NOT_UNDERSTOOD = "answer not understood (another version of the API?)"


class AnswerNotUnderstood(DirectoryError):
    """The directory answered, but not as this client's version of the API expects
    (another version of the API, or not the directory at all)."""


class ApiError(DirectoryError):
    """The directory answered with an error. `code` is the envelope's stable `error`
    (e.g. `validation_error`, `invalid_cursor`); `errors` keeps the field paths."""

    status: int = 0

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        errors: Mapping[str, Any] | None = None,
        *,
        request_id: str | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = dict(errors or {})
        self.request_id = request_id

    @property
    def field_errors(self) -> dict[str, list[str]]:
        """Messages by field path, flattened: {"location.lat": [...], "radius_km": [...]}
        (the location, json or query, left out)."""
        flat: dict[str, list[str]] = {}
        for location in self.errors.values():
            for path, messages in flatten_field_errors(location).items():
                flat.setdefault(path, []).extend(messages)
        return flat


def flatten_field_errors(errors: Mapping[str, Any]) -> dict[str, list[str]]:
    """Errors nested by field, by dotted path instead:
    {"location": {"lat": ["Must be ..."]}} -> {"location.lat": ["Must be ..."]}."""
    flat: dict[str, list[str]] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list) and all(isinstance(item, str) for item in node):
            flat.setdefault(path or "_schema", []).extend(node)
        else:
            flat.setdefault(path or "_schema", []).append(str(node))

    walk(errors, "")
    return flat


class BadRequest(ApiError):
    status = 400


class Unauthenticated(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class Gone(ApiError):
    status = 410


class PreconditionFailed(ApiError):
    """412: the `if_match` or `if_none_match` of a write did not hold for the ad as it
    is; nothing was changed."""

    status = 412


class RateLimited(ApiError):
    """429: `retry_after` says in how many seconds to try again."""

    status = 429

    def __init__(self, *args: Any, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


class ServiceUnavailable(ApiError):
    status = 503


class ServerError(ApiError):
    """Any other 5xx."""


ERRORS_BY_STATUS: dict[int, type[ApiError]] = {
    error.status: error
    for error in (
        BadRequest,
        Unauthenticated,
        Forbidden,
        NotFound,
        Conflict,
        Gone,
        PreconditionFailed,
        RateLimited,
        ServiceUnavailable,
    )
}


def error_class(status: int) -> type[ApiError]:
    if status in ERRORS_BY_STATUS:
        return ERRORS_BY_STATUS[status]
    return ServerError if status >= 500 else ApiError
