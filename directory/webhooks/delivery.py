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

from directory.webhooks.connections import (
    RequestFailed,
    connection_pool,
    quote,
    read_capped,
    send_request,
)
from directory.webhooks.urls import UnsafeUrl, WebhookTarget, resolve_webhook_target

CONNECT_TIMEOUT_S = 3
# The longest wait for any one read of the answer...
READ_TIMEOUT_S = 10
# ...and for the whole exchange, connection to last byte, status line and headers
# included: a receiver that trickles its answer must not hold a worker thread for long.
# Resolving the name counts too (and gives up after urls.RESOLVE_TIMEOUT_S).
TOTAL_TIMEOUT_S = 15
# Portals answer with a status; a body is only read to show the portal its own error.
MAX_RESPONSE_BYTES = 64 * 1024
# A Retry-After further away than this is taken as this: the portal's messages should not
# wait days because of one header.
MAX_RETRY_AFTER_S = 24 * 3600
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
    # Short, for the portal's view of its deliveries (the start of its answer included);
    # None when delivered.
    error: str | None
    # The error without what the portal answered: its body, a redirect's target or a
    # first line that is no HTTP may echo the event, a member's words and handle, into
    # logs that outlive an erasure and that more people read than the portal's own view
    # of its deliveries. Its status, or our own account of the network or of the URL.
    reason_to_log: str | None
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
        self._connect_timeout_s = connect_timeout_s
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
            reason = f"unsafe webhook URL: {error}"
            return _result(Outcome.RETRY, started, error=reason, reason_to_log=reason)
        request_headers = {
            "user-agent": USER_AGENT,
            **{name.lower(): value for name, value in headers.items()},
            "host": target.host_header,
        }
        try:
            response = send_request(
                target,
                "POST",
                pool_for=lambda address: self._pool(target, address),
                headers=request_headers,
                body=body,
                connect_timeout_s=self._connect_timeout_s,
                read_timeout_s=self._read_timeout_s,
                deadline=started + self._total_timeout_s,
            )
        except RequestFailed as error:
            return _result(Outcome.RETRY, started, error=str(error), reason_to_log=error.logged)
        return self._classify(response, started)

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
            pool = connection_pool(
                target,
                address,
                timeout=self._timeout,
                maxsize=self._connections_per_pool,
                ca_certs=self._ca_certs,
            )
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
            content, problem = read_capped(
                response,
                max_bytes=MAX_RESPONSE_BYTES,
                deadline=started + self._total_timeout_s,
                read_timeout_s=self._read_timeout_s,
                total_timeout_s=self._total_timeout_s,
            )
        finally:
            response.release_conn()
        if 200 <= status < 300:
            # The portal said yes; what its body did afterwards does not change that.
            return _result(Outcome.DELIVERED, started, status=status)
        if 300 <= status < 400:
            location = quote(response.headers.get("location", ""))
            error = f"HTTP {status}: redirect to {location!r} not followed; update the webhook URL"
        else:
            error = f"HTTP {status}"
            if content:
                error += f": {quote(content.decode('utf-8', errors='replace'))}"
            if problem:
                error += f" ({problem})"
        retry_after_s = (
            _retry_after_s(response.headers.get("retry-after")) if status in (429, 503) else None
        )
        outcome = Outcome.GONE if status == 410 else Outcome.RETRY
        return _result(
            outcome,
            started,
            status=status,
            error=error,
            reason_to_log=f"HTTP {status}",
            retry_after_s=retry_after_s,
        )


def _result(
    outcome: Outcome,
    started: float,
    *,
    status: int | None = None,
    error: str | None = None,
    reason_to_log: str | None = None,
    retry_after_s: float | None = None,
) -> DeliveryResult:
    return DeliveryResult(
        outcome=outcome,
        status=status,
        error=error,
        reason_to_log=reason_to_log,
        retry_after_s=retry_after_s,
        duration_ms=(time.monotonic() - started) * 1000,
    )


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
