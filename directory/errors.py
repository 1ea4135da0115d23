"""Domain errors: each carries its HTTP status, a stable machine code and, where it
concerns one input, the field it is about. Services raise them; the API maps them once."""

from __future__ import annotations

# The code of input that fails the API's schemas (a field's type, range or pattern, an
# unknown field): a request is answered 422 with it, and an item of a batch or a sync
# session that fails them is rejected with it (the other items go on).
VALIDATION_ERROR = "validation_error"


class DirectoryError(Exception):
    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: str | None = None,
        details: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details or {}
        if code:
            self.code = code

    def by_field(self, *, within: str | None = None) -> dict:
        """The message by field path, as the API's schemas report errors: `price.currency`
        becomes {"price": {"currency": [...]}}, nested `within` a batch item's part (its
        "ad"); one without a field is the item's own (`_schema`)."""
        path = [within] if within else []
        path += (self.field or "_schema").split(".")
        errors: dict = {path[-1]: [self.message]}
        for part in reversed(path[:-1]):
            errors = {part: errors}
        return errors


class InvalidInput(DirectoryError):
    """Input that is well-formed but breaks a rule only the domain knows (unknown code...)."""

    status = 400
    code = "invalid_input"


class Unauthenticated(DirectoryError):
    status = 401
    code = "unauthenticated"


class Forbidden(DirectoryError):
    status = 403
    code = "forbidden"


class NotFound(DirectoryError):
    status = 404
    code = "not_found"


class NotAcceptable(DirectoryError):
    status = 406
    code = "not_acceptable"


class Conflict(DirectoryError):
    status = 409
    code = "conflict"


class PreconditionFailed(DirectoryError):
    status = 412
    code = "precondition_failed"


class Gone(DirectoryError):
    status = 410
    code = "gone"


class TooManyRequests(DirectoryError):
    """A rate limit was reached; the API says when to retry (Retry-After)."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.retry_after_s = retry_after_s
