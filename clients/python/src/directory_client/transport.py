"""HTTP for the directory client: timeouts on every call, a user agent with the client's
version, and retries with backoff and jitter where repeating is safe.

Written here rather than taken from a retry library: which failures may be retried
depends on the API's own semantics (a 429 was refused before anything was done; a lost
answer to a POST may have been applied), which is the whole of the logic; the waiting
itself is three lines."""

from __future__ import annotations

import email.utils
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from directory_client import __version__
from directory_client.errors import ClientMisconfigured, DirectoryUnavailable

USER_AGENT = f"commons-directory-client/{__version__} (python; httpx/{httpx.__version__})"
DEFAULT_TIMEOUT_S = 10.0
# What an Authorization header can carry of a key: visible ASCII, no spaces (a portal key
# is cdir_ and letters and digits). Checked before anything is sent, because httpx refuses
# any other value with an error that quotes the whole header, the key with it.
KEY_CHARACTERS = re.compile(r"[\x21-\x7e]+")
SCHEMES = frozenset({"http", "https"})
# Repeating these changes nothing more than doing them once (PUT and DELETE by HTTP's
# definition, which the directory's PUT /v1/ads and DELETE honour).
REPEATABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# A write carrying one of these is never repeated once it may have been applied: the
# repeat would meet its own change (a new ETag, an ad that now exists or is gone) and
# fail with 412, reporting as refused a change that was made.
CONDITIONAL_HEADERS = frozenset({"if-match", "if-none-match"})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a request is tried.

    Retried: 429 (always: the directory refused before doing anything), and for requests
    that are safe to repeat also 503, a connection lost after sending and an answer
    garbled in transit (a bad Content-Encoding); a connection that could not be made at
    all is retried for any request (nothing was sent). A write with If-Match or
    If-None-Match is not safe to repeat (see CONDITIONAL_HEADERS). Waits double from
    `backoff_s` up to `max_backoff_s`, each drawn at random below that bound (full jitter,
    so that many clients do not retry in step), or are what Retry-After says. A
    Retry-After longer than `max_retry_after_s` is not waited for: the error is raised at
    once with its `retry_after`."""

    attempts: int = 4  # in all, the first included
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 120.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if self.backoff_s < 0 or self.max_backoff_s < 0 or self.max_retry_after_s < 0:
            raise ValueError("waits must not be negative")

    def backoff(self, retry: int) -> float:
        """The wait before retry number `retry` (1 for the first)."""
        return random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2 ** (retry - 1)))


DEFAULT_RETRY = RetryPolicy()
NO_RETRIES = RetryPolicy(attempts=1)


def retry_after_s(response: httpx.Response) -> float | None:
    """Retry-After in seconds: a number of seconds or an HTTP date."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


class Transport:
    def __init__(
        self,
        base_url: str,
        *,
        key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy = DEFAULT_RETRY,
        http_transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        _check_base_url(base_url)
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if key is not None:
            _check_key(key)
            headers["Authorization"] = f"Bearer {key}"
        self.base_url = base_url.rstrip("/")
        self.retry = retry
        self._key = key
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=timeout_s,
            transport=http_transport,
        )

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        repeatable: bool | None = None,
    ) -> httpx.Response:
        """Send, retrying as the policy says; the last answer is returned whatever its
        status (the caller turns errors into exceptions). `repeatable` overrides what the
        method implies (a POST carrying an idempotency key is repeatable), but a write
        with a precondition header is never repeatable.

        Raises DirectoryUnavailable when no answer could be had (retries spent, or a
        request that may not be repeated lost its answer), and ClientMisconfigured, at
        once, for a request that cannot be sent at all (a header value that is none)."""
        if repeatable is None:
            repeatable = method in REPEATABLE_METHODS
        request_headers = dict(headers or {})
        if method not in SAFE_METHODS and any(
            name.lower() in CONDITIONAL_HEADERS for name in request_headers
        ):
            repeatable = False
        if content is not None:
            request_headers.setdefault("Content-Type", "application/json")
        attempts = self.retry.attempts
        for attempt in range(1, attempts + 1):
            last = attempt == attempts
            try:
                response = self._http.request(
                    method, path, params=params, content=content, headers=request_headers
                )
            except (
                httpx.UnsupportedProtocol,
                httpx.LocalProtocolError,
                UnicodeEncodeError,
            ) as error:
                # Nothing could be sent, and sending again changes nothing. Not chained:
                # the error may quote a header, and the message below shows it redacted.
                raise ClientMisconfigured(
                    f"{method} {self.base_url}{path} cannot be sent: "
                    f"{self._redacted(f'{type(error).__name__}: {error}')}; nothing was sent"
                ) from None
            except (httpx.ConnectError, httpx.ConnectTimeout) as error:
                if last:
                    raise self._unavailable(
                        method, path, error, attempt, sent=False, repeatable=repeatable
                    ) from error
                self._sleep(self.retry.backoff(attempt))
                continue
            except (httpx.TransportError, httpx.DecodingError) as error:
                # DecodingError: the answer came garbled (bad Content-Encoding), as if lost.
                if last or not repeatable:
                    raise self._unavailable(
                        method, path, error, attempt, sent=True, repeatable=repeatable
                    ) from error
                self._sleep(self.retry.backoff(attempt))
                continue
            retried = response.status_code == 429 or (response.status_code == 503 and repeatable)
            if not retried or last:
                return response
            wait = retry_after_s(response)
            if wait is None:
                wait = self.retry.backoff(attempt)
            elif wait > self.retry.max_retry_after_s:
                return response
            response.close()
            self._sleep(wait)
        raise AssertionError("unreachable")

    def _unavailable(
        self,
        method: str,
        path: str,
        error: Exception,
        attempts: int,
        *,
        sent: bool,
        repeatable: bool,
    ) -> DirectoryUnavailable:
        outcome = (
            "it may or may not have been applied"
            if sent and not repeatable
            else "nothing was changed"
            if not sent
            else "it is safe to repeat"
        )
        return DirectoryUnavailable(
            f"{method} {self.base_url}{path} failed after {attempts} "
            f"attempt{'s' if attempts > 1 else ''}: {self._redacted(repr(error))}; {outcome}"
        )

    def _redacted(self, text: str) -> str:
        """`text` without the key in it, should an error ever quote it."""
        return text if not self._key else text.replace(self._key, "[key]")


def _check_base_url(base_url: str) -> None:
    url = httpx.URL(base_url) if isinstance(base_url, str) else None
    if url is None or url.scheme not in SCHEMES or not url.host:
        shown = "a URL with credentials, not shown" if "@" in str(base_url) else repr(base_url)
        raise ClientMisconfigured(
            "the directory's URL must start with http:// or https:// and name a host, such "
            f"as https://directory.example.org, not {shown}"
        )


def _check_key(key: str) -> None:
    if not isinstance(key, str) or KEY_CHARACTERS.fullmatch(key) is None:
        raise ClientMisconfigured(
            "key must be a portal key (cdir_ and letters and digits), without spaces, line "
            "breaks or characters beyond visible ASCII (a key read from a file may end with "
            "a line break); leave it out to call anonymously. The value is not shown: it is "
            "a secret"
        )


def query(params: Mapping[str, Any]) -> dict[str, str]:
    """Query parameters as the API reads them: lists as comma lists, booleans as
    true/false, datetimes in ISO 8601; None leaves the parameter out."""
    encoded = {}
    for name, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, datetime):
            text = value.isoformat()
        elif isinstance(value, list | tuple | set | frozenset):
            text = ",".join(str(item) for item in value)
        else:
            text = str(value)
        encoded[name] = text
    return encoded
