"""HTTP for the directory client: a deadline on every attempt, a user agent with the
client's version, and retries with backoff and jitter where repeating is safe.

Written here rather than taken from a retry library: which failures may be retried
depends on the API's own semantics (a 429 was refused before anything was done; a lost
answer to a POST may have been applied), which is the whole of the logic; the waiting
itself is three lines.

`timeout_s` bounds each attempt as a whole, from connecting to the answer's last byte.
httpx's timeouts bound each wait for the network alone, so a peer that sends a byte now
and then (a broken proxy, a hostile directory of a federation) could hold a call for
ever. The default transport therefore gives every connect, read and write of an attempt
only the time left before its deadline (`_DeadlineBackend`, under httpcore's own
connection pool). With an `http_transport` of the caller's, or proxies set in the
environment (HTTP_PROXY and the like, which httpx honours only with its own transport),
the deadline is checked between the chunks of the answer instead. Either way an attempt
past its deadline fails as a read timeout does. The ledger adapters send through the same
`send_within`."""

from __future__ import annotations

import contextlib
import email.utils
import math
import random
import re
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpcore
import httpx

from directory_client import __version__
from directory_client.errors import (
    NOT_UNDERSTOOD,
    AnswerNotUnderstood,
    ClientMisconfigured,
    DirectoryUnavailable,
)

USER_AGENT = f"commons-directory-client/{__version__} (python; httpx/{httpx.__version__})"
DEFAULT_TIMEOUT_S = 10.0  # per attempt, from connecting to the answer's last byte
# The longest answer read. The directory's largest, a page of 1,000 of a portal's own ads,
# is a few MB; a peer that sends more is not the directory, and is not kept in memory.
MAX_ANSWER_BYTES = 64 * 1024 * 1024
# What an Authorization header can carry of a key: visible ASCII, no spaces (a portal key
# is cdir_ and letters and digits). Checked before anything is sent, because httpx refuses
# any other value with an error that quotes the whole header, the key with it.
KEY_CHARACTERS = re.compile(r"[\x21-\x7e]+")
SCHEMES = frozenset({"http", "https"})
# httpx's own defaults for its transport, which the default transport keeps.
MAX_CONNECTIONS = 100
MAX_KEEPALIVE_CONNECTIONS = 20
KEEPALIVE_EXPIRY_S = 5.0
# Repeating these changes nothing more than doing them once (PUT and DELETE by HTTP's
# definition, which the directory's PUT /v1/ads and DELETE honour).
REPEATABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# A write carrying one of these is never repeated once it may have been applied: the
# repeat would meet its own change (a new ETag, an ad that now exists or is gone) and
# fail with 412, reporting as refused a change that was made.
CONDITIONAL_HEADERS = frozenset({"if-match", "if-none-match"})
# No answer from the directory: it is unavailable (503), or a proxy or load balancer in
# front of it could not reach it or gave up waiting (502, 504; during a deploy, say). The
# request may have been applied all the same, so only a repeatable one is tried again.
UNANSWERED_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a request is tried.

    Retried: 429 (always: the directory refused before doing anything), and for requests
    that are safe to repeat also 502, 503 and 504 (UNANSWERED_STATUSES), a connection lost
    after sending and an answer
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


def require_timeout(timeout_s: object) -> None:
    """Refuses, naming it, a timeout that is no positive, finite number of seconds: nan
    timed every request out at once, inf failed deep in httpx, and a string or a bool
    failed elsewhere without a word of the argument."""
    if not (
        isinstance(timeout_s, int | float)
        and not isinstance(timeout_s, bool)
        and math.isfinite(timeout_s)
        and timeout_s > 0
    ):
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")


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
        require_timeout(timeout_s)
        _check_base_url(base_url)
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if key is not None:
            _check_key(key)
            headers["Authorization"] = f"Bearer {key}"
        self.base_url = base_url.rstrip("/")
        self.timeout_s = float(timeout_s)
        self.retry = retry
        self._key = key
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=timeout_s,
            transport=default_transport() if http_transport is None else http_transport,
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
        min_timeout_s: float | None = None,
    ) -> httpx.Response:
        """Send, retrying as the policy says; the last answer is returned, read whole,
        whatever its status (the caller turns errors into exceptions). `repeatable`
        overrides what the method implies (a POST carrying an idempotency key is
        repeatable), but a write with a precondition header is never repeatable.
        `min_timeout_s`: each attempt has at least this long, for an operation the
        directory may spend that long on (`timeout_s` when that is longer).

        Raises DirectoryUnavailable when no answer could be had (retries spent, or a
        request that may not be repeated lost its answer), AnswerNotUnderstood for an
        answer longer than MAX_ANSWER_BYTES, and ClientMisconfigured, at once, for a
        request that cannot be sent at all (a header value that is no header value)."""
        if repeatable is None:
            repeatable = method in REPEATABLE_METHODS
        request_headers = dict(headers or {})
        if method not in SAFE_METHODS and any(
            name.lower() in CONDITIONAL_HEADERS for name in request_headers
        ):
            repeatable = False
        if content is not None:
            request_headers.setdefault("Content-Type", "application/json")
        timeout_s = max(self.timeout_s, min_timeout_s or 0)
        attempts = self.retry.attempts
        for attempt in range(1, attempts + 1):
            last = attempt == attempts
            try:
                response = self._attempt(
                    method, path, params, content, request_headers, timeout_s=timeout_s
                )
            except (httpx.UnsupportedProtocol, httpx.LocalProtocolError) as error:
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
            retried = response.status_code == 429 or (
                response.status_code in UNANSWERED_STATUSES and repeatable
            )
            if not retried or last:
                return response
            wait = retry_after_s(response)
            if wait is None:
                wait = self.retry.backoff(attempt)
            elif wait > self.retry.max_retry_after_s:
                return response
            self._sleep(wait)
        raise AssertionError("unreachable")

    def _attempt(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        content: bytes | None,
        headers: Mapping[str, str],
        *,
        timeout_s: float,
    ) -> httpx.Response:
        """One try, its answer read whole within `timeout_s`."""
        try:
            request = self._http.build_request(
                method, path, params=params, content=content, headers=headers, timeout=timeout_s
            )
        except UnicodeEncodeError:  # a header value beyond ASCII: httpx cannot send it
            raise httpx.LocalProtocolError("a header value is not ASCII") from None
        try:
            return send_within(self._http, request, timeout_s)
        except AnswerTooLong as error:
            raise AnswerNotUnderstood(
                f"{method} {self.base_url}{path}: {NOT_UNDERSTOOD}: {error}"
            ) from None

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
    try:
        url = httpx.URL(base_url) if isinstance(base_url, str) else None
    except httpx.InvalidURL:  # not chained: its message quotes the URL, credentials too
        url = None
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


class AnswerTooLong(httpx.RemoteProtocolError):
    """An answer longer than MAX_ANSWER_BYTES: read no further, and to a caller that does
    not look for it, a broken answer like any other."""


def send_within(http: httpx.Client, request: httpx.Request, timeout_s: float) -> httpx.Response:
    """`request` sent on `http` and its answer read whole, all within `timeout_s` (an
    httpx.ReadTimeout or the like once it has passed; see the module's docstring), and at
    most MAX_ANSWER_BYTES of it (AnswerTooLong). Shared by the directory's client and the
    ledger's, so that no peer can hold either for longer than its timeout."""
    deadline = time.monotonic() + timeout_s
    token = _DEADLINE.set(deadline)
    try:
        response = http.send(request, stream=True)
        try:
            response.stream = _CheckedStream(response.stream, deadline, request)
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    raise AnswerTooLong(f"longer than {MAX_ANSWER_BYTES} bytes", request=request)
        finally:
            response.close()
        return _read_answer(response, bytes(body))
    finally:
        _DEADLINE.reset(token)


def _read_answer(response: httpx.Response, body: bytes) -> httpx.Response:
    """The answer with its body read and decoded, as httpx's `read()` leaves it: built
    anew from public parts, without the Content-Encoding that was already undone."""
    headers = [
        (name, value)
        for name, value in response.headers.multi_items()
        if name.lower() != "content-encoding"
    ]
    return httpx.Response(
        response.status_code,
        headers=headers,
        content=body,
        request=response.request,
        extensions=response.extensions,
    )


# --- the deadline -----------------------------------------------------------------------

# When the attempt under way in this thread must be over (time.monotonic()).
_DEADLINE: ContextVar[float | None] = ContextVar("directory_client_deadline", default=None)


def _time_left(timeout: float | None, late: type[Exception]) -> float | None:
    """`timeout`, shortened to the time left before the attempt's deadline; `late` is
    raised once that has passed."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise late("the attempt's deadline (timeout_s) has passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every wait ends at the deadline of the attempt using it."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _time_left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _time_left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(
            self._stream.start_tls(
                ssl_context, server_hostname, _time_left(timeout, httpcore.ConnectTimeout)
            )
        )

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's sockets, as _DeadlineStreams."""

    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._backend.connect_tcp(host, port, left, local_address, socket_options)
        )

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_unix_socket(path, left, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


# httpcore's errors as httpx names them, the most specific first (as httpx maps them).
_HTTPX_ERRORS: list[tuple[type[Exception], type[httpx.TransportError]]] = [
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProxyError, httpx.ProxyError),
]


@contextlib.contextmanager
def _as_httpx_errors(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except Exception as error:
        for cause, named in _HTTPX_ERRORS:
            if isinstance(error, cause):
                raise named(str(error), request=request) from error
        raise


class _CoreAnswer(httpx.SyncByteStream):
    """An answer's body from httpcore, its errors named as httpx names them."""

    def __init__(self, stream: Iterable[bytes], request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        with _as_httpx_errors(self._request):
            yield from self._stream

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            with _as_httpx_errors(self._request):
                close()


class _DeadlineTransport(httpx.BaseTransport):
    """httpx's HTTPTransport, in essence, over a connection pool on _DeadlineBackend:
    httpx does not let its own transport take another network backend."""

    def __init__(self) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=MAX_CONNECTIONS,
            max_keepalive_connections=MAX_KEEPALIVE_CONNECTIONS,
            keepalive_expiry=KEEPALIVE_EXPIRY_S,
            network_backend=_DeadlineBackend(),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors(request):
            answer = self._pool.handle_request(core_request)
        return httpx.Response(
            status_code=answer.status,
            headers=answer.headers,
            stream=_CoreAnswer(answer.stream, request),
            extensions=answer.extensions,
        )

    def close(self) -> None:
        self._pool.close()


def default_transport() -> httpx.BaseTransport | None:
    """_DeadlineTransport, or None (httpx's own) when the environment sets proxies: httpx
    reads HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY (as urllib does, the system's
    settings too) only when it makes its transport itself."""
    proxies = urllib.request.getproxies()
    if any(proxies.get(scheme) for scheme in ("http", "https", "all")):
        return None
    return _DeadlineTransport()


class _CheckedStream(httpx.SyncByteStream):
    """An answer's raw chunks, failing as a read timeout once the deadline has passed:
    the deadline for transports other than the default one, whose waits end with it."""

    def __init__(self, stream: httpx.SyncByteStream, deadline: float, request: httpx.Request):
        self._stream = stream
        self._deadline = deadline
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._stream:
            if time.monotonic() > self._deadline:
                raise httpx.ReadTimeout(
                    "the answer was still coming at the attempt's deadline (timeout_s)",
                    request=self._request,
                )
            yield chunk

    def close(self) -> None:
        self._stream.close()


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
