"""Sending one webhook and saying what happened, so that the worker knows whether to mark
it delivered, retry it later, or disable the portal's endpoint.

Delivery is at least once: a webhook whose answer was lost is sent again with the same
webhook-id, and receivers deduplicate on it. Hence nothing here retries on its own: every
failure becomes RETRY, and the worker's backoff decides when."""

from __future__ import annotations

import enum
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from directory.text import SINGLE_LINE_REFUSED
from directory.webhooks.urls import UnsafeUrl, WebhookTarget, resolve_webhook_target

CONNECT_TIMEOUT_S = 3
# The longest wait for any one read of the answer...
READ_TIMEOUT_S = 10
# ...and for the whole exchange, connection to last byte: a receiver that trickles its
# answer must not hold a worker thread for long. (The status line and headers, whose size
# http.client limits, are bounded per read only; resolving the name, by the system's resolver.)
TOTAL_TIMEOUT_S = 15
# Portals answer with a status; a body is only read to show the portal its own error.
MAX_RESPONSE_BYTES = 64 * 1024
# A Retry-After further away than this is taken as this: the portal's messages should not
# wait days because of one header.
MAX_RETRY_AFTER_S = 24 * 3600
# How much of a response body an error message quotes.
ERROR_BODY_CHARS = 200
# Receivers whose idle connections are kept, and idle connections kept per receiver: the
# busiest portals get a warm connection per worker thread.
MAX_POOLS = 256
CONNECTIONS_PER_POOL = 8
USER_AGENT = "commons-directory-webhooks/1"


class Outcome(enum.StrEnum):
    """What the worker does next with a webhook."""

    DELIVERED = "delivered"  # 2xx: the portal has the webhook
    GONE = "gone"  # 410: the portal says this endpoint is gone for good
    RETRY = "retry"  # anything else: try again later


@dataclass(frozen=True)
class DeliveryResult:
    """One attempt, as the worker records it and the portal sees it."""

    outcome: Outcome
    status: int | None  # None when no answer came
    # Short, for logs and for the portal's view of its deliveries; None when delivered.
    error: str | None
    retry_after_s: float | None  # what a 429 or 503 asked for, capped at MAX_RETRY_AFTER_S
    duration_ms: float


PoolKey = tuple[str, str, int, str]  # scheme, address, port, hostname


class WebhookSender:
    """Sends webhooks over kept-alive connections, one pool per (address, host name).

    Safe to share between threads: the worker delivers from a thread pool."""

    def __init__(
        self,
        *,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
        total_timeout_s: float = TOTAL_TIMEOUT_S,
        max_pools: int = MAX_POOLS,
        connections_per_pool: int = CONNECTIONS_PER_POOL,
        ca_certs: str | None = None,
    ) -> None:
        """`ca_certs`: a PEM file of the certificate authorities to trust instead of the
        system's (tests with their own authority)."""
        self._timeout = urllib3.Timeout(
            connect=connect_timeout_s, read=read_timeout_s, total=total_timeout_s
        )
        self._read_timeout_s = read_timeout_s
        self._total_timeout_s = total_timeout_s
        self._max_pools = max_pools
        self._connections_per_pool = connections_per_pool
        self._ca_certs = ca_certs
        self._pools: OrderedDict[PoolKey, urllib3.HTTPConnectionPool] = OrderedDict()
        self._lock = threading.Lock()

    def send(
        self, url: str, *, headers: dict[str, str], body: bytes, allow_loopback: bool
    ) -> DeliveryResult:
        """POST `body` to `url`; never raises for what the network or the receiver does."""
        started = time.monotonic()
        try:
            # Checked again at each delivery: the name may point elsewhere since it was set.
            target = resolve_webhook_target(url, allow_loopback=allow_loopback)
        except UnsafeUrl as error:
            return _result(Outcome.RETRY, started, error=f"unsafe webhook URL: {error}")
        request_headers = {
            "user-agent": USER_AGENT,
            **{name.lower(): value for name, value in headers.items()},
            "host": target.host_header,
        }
        last_error = "no address to connect to"
        for address in target.addresses:
            pool = self._pool(target, address)
            try:
                response = pool.urlopen(
                    "POST",
                    target.path_and_query,
                    body=body,
                    headers=request_headers,
                    redirect=False,
                    retries=False,
                    timeout=self._timeout,
                    preload_content=False,
                    decode_content=False,
                )
            except ConnectTimeoutError as error:  # NewConnectionError too
                last_error = _describe(error, address=address, target=target)
                continue  # nothing was sent: another address of the host may answer
            except (HTTPError, OSError) as error:
                return _result(
                    Outcome.RETRY, started, error=_describe(error, address=address, target=target)
                )
            return self._classify(response, started)
        return _result(Outcome.RETRY, started, error=last_error)

    def close(self) -> None:
        """Close every kept-alive connection (the sender stays usable)."""
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            pool.close()

    def _pool(self, target: WebhookTarget, address: str) -> urllib3.HTTPConnectionPool:
        key = (target.scheme, address, target.port, target.hostname)
        with self._lock:
            pool = self._pools.get(key)
            if pool is not None:
                self._pools.move_to_end(key)
                return pool
            common = {
                "port": target.port,
                "maxsize": self._connections_per_pool,
                # More threads than kept connections open extra ones rather than wait.
                "block": False,
                "timeout": self._timeout,
                "retries": False,
            }
            if target.scheme == "https":
                pool = urllib3.HTTPSConnectionPool(
                    address,
                    # SNI and certificate checks against the URL's name, not the address.
                    server_hostname=target.hostname,
                    assert_hostname=target.hostname,
                    cert_reqs="CERT_REQUIRED",
                    ca_certs=self._ca_certs,
                    **common,
                )
            else:
                pool = urllib3.HTTPConnectionPool(address, **common)
            self._pools[key] = pool
            evicted = (
                self._pools.popitem(last=False)[1] if len(self._pools) > self._max_pools else None
            )
        if evicted is not None:
            evicted.close()  # connections in use close when they come back
        return pool

    def _classify(self, response: urllib3.BaseHTTPResponse, started: float) -> DeliveryResult:
        status = response.status
        try:
            content, problem = self._read_capped(response, started)
        finally:
            response.release_conn()
        if 200 <= status < 300:
            # The portal said yes; what its body did afterwards does not change that.
            return _result(Outcome.DELIVERED, started, status=status)
        if 300 <= status < 400:
            location = _quote(response.headers.get("location", ""))
            error = f"HTTP {status}: redirect to {location!r} not followed; update the webhook URL"
        else:
            error = f"HTTP {status}"
            if content:
                error += f": {_quote(content.decode('utf-8', errors='replace'))}"
            if problem:
                error += f" ({problem})"
        retry_after_s = (
            _retry_after_s(response.headers.get("retry-after")) if status in (429, 503) else None
        )
        outcome = Outcome.GONE if status == 410 else Outcome.RETRY
        return _result(outcome, started, status=status, error=error, retry_after_s=retry_after_s)

    def _read_capped(
        self, response: urllib3.BaseHTTPResponse, started: float
    ) -> tuple[bytes, str | None]:
        """At most MAX_RESPONSE_BYTES of the body, and None if that was all of it, else
        why not. A body not read to its end leaves the connection unusable: it closes."""
        deadline = started + self._total_timeout_s
        late = f"answer not complete within {self._total_timeout_s} s"
        content = bytearray()
        problem = f"answer longer than {MAX_RESPONSE_BYTES} bytes"
        try:
            while len(content) <= MAX_RESPONSE_BYTES:
                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0:
                    problem = late
                    break
                # Each read waits at most until the deadline: the whole exchange is bounded.
                sock = getattr(response.connection, "sock", None)
                if sock is not None:
                    sock.settimeout(min(self._read_timeout_s, remaining_s))
                piece = response.read1(MAX_RESPONSE_BYTES + 1 - len(content))
                if not piece:
                    return bytes(content), None
                content += piece
        except ReadTimeoutError:
            stalled = time.monotonic() < deadline
            problem = f"answer stalled for {self._read_timeout_s} s" if stalled else late
        except (HTTPError, OSError) as error:
            problem = f"answer cut short: {_cause(error)}"
        response.close()
        return bytes(content[:MAX_RESPONSE_BYTES]), problem


def _result(
    outcome: Outcome,
    started: float,
    *,
    status: int | None = None,
    error: str | None = None,
    retry_after_s: float | None = None,
) -> DeliveryResult:
    return DeliveryResult(
        outcome=outcome,
        status=status,
        error=error,
        retry_after_s=retry_after_s,
        duration_ms=(time.monotonic() - started) * 1000,
    )


def _describe(error: Exception, *, address: str, target: WebhookTarget) -> str:
    """A short account of a network failure, naming the address tried."""
    where = f"{address} port {target.port}"
    if isinstance(error, NewConnectionError):
        return f"cannot connect to {where}: {_cause(error)}"
    if isinstance(error, ConnectTimeoutError):
        return f"no connection to {where} within the connect timeout"
    if isinstance(error, ReadTimeoutError):
        return f"no answer from {where} within the read timeout"
    if isinstance(error, SSLError):
        return f"TLS error with {where} ({target.hostname}): {_cause(error)}"
    if isinstance(error, ProtocolError):
        return f"connection to {where} broken: {_cause(error)}"
    return f"request to {where} failed: {_cause(error)}"


def _cause(error: BaseException) -> str:
    """The innermost reason, without urllib3's repetitions of the pool and URL."""
    while error.__cause__ is not None:
        error = error.__cause__
    if isinstance(error, OSError) and error.strerror:
        return _quote(error.strerror)
    if isinstance(error, ProtocolError) and len(error.args) > 1:
        return _quote(str(error.args[1]) or type(error.args[1]).__name__)
    return _quote(str(error) or type(error).__name__)


def _quote(text: str) -> str:
    """Text from elsewhere, on one line, printable and at most ERROR_BODY_CHARS long."""
    # PostgreSQL's text cannot hold NUL: one would roll back the whole round's outcomes.
    text = SINGLE_LINE_REFUSED.sub("\ufffd", " ".join(text.split()))
    return text if len(text) <= ERROR_BODY_CHARS else text[: ERROR_BODY_CHARS - 1] + "…"


def _retry_after_s(value: str | None) -> float | None:
    """Retry-After in seconds, from either of its forms (seconds, or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # "-0000": UTC, as HTTP dates are
            when = when.replace(tzinfo=UTC)
        seconds = max(0.0, (when - datetime.now(UTC)).total_seconds())
    return float(min(seconds, MAX_RETRY_AFTER_S))
