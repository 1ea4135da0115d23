"""Fetching a small file from a portal's website (its verification file, for
services.websites), as carefully as a webhook is sent (delivery.py): a portal chooses the
URL, so this must not become a way into the directory's own network.

- Every URL, the first and each redirect's, gets the webhook URL checks (urls.py: public
  addresses only, after DNS too), with plain http allowed: ACME's http-01 challenge is
  fetched over http as well, and many community sites have no https.
- The connection goes to the addresses that were checked: DNS rebinding gains nothing.
- Redirects are followed MAX_REDIRECTS times at most, and only within the website's host:
  to the same host name, by the same scheme and port or from http up to https.
- Bounded: CONNECT_TIMEOUT_S to connect, READ_TIMEOUT_S for any one read, TOTAL_TIMEOUT_S
  for everything (redirects included), MAX_BODY_BYTES of body."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urldefrag, urljoin, urlsplit

import urllib3

from directory.webhooks.connections import (
    RequestFailed,
    connection_pool,
    quote,
    read_capped,
    send_request,
)
from directory.webhooks.urls import DEFAULT_PORTS, UnsafeUrl, WebhookTarget, resolve_webhook_target

CONNECT_TIMEOUT_S = 3
READ_TIMEOUT_S = 5
TOTAL_TIMEOUT_S = 10
MAX_BODY_BYTES = 64 * 1024
MAX_REDIRECTS = 3
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "commons-directory-verification/1"


class FetchFailed(Exception):
    """The file could not be fetched; the message says why, for the portal's people."""


@dataclass(frozen=True)
class FetchedFile:
    url: str  # where it was found, after any redirects
    content_type: str | None  # quoted: on one line, printable, short
    body: bytes


def fetch_file(url: str, *, allow_loopback: bool, ca_certs: str | None = None) -> FetchedFile:
    """GET `url` as the module's rules say; raises FetchFailed unless it answers 2xx with
    a body of at most MAX_BODY_BYTES. `allow_loopback`: settings.webhook_allow_loopback.
    `ca_certs`: a PEM file of certificate authorities to trust instead of the system's."""
    deadline = time.monotonic() + TOTAL_TIMEOUT_S
    for redirects in range(MAX_REDIRECTS + 1):
        target = _checked_target(url, allow_loopback=allow_loopback)
        with _get(target, url=url, deadline=deadline, ca_certs=ca_certs) as response:
            if response.status in REDIRECT_STATUSES:
                if redirects == MAX_REDIRECTS:
                    raise FetchFailed(
                        f"{url} redirects again after {MAX_REDIRECTS} redirects; at most "
                        f"{MAX_REDIRECTS} are followed"
                    )
                url = _redirect_target(url, target, response.headers.get("location"))
                continue
            if not 200 <= response.status < 300:
                raise FetchFailed(f"{url} answered HTTP {response.status}")
            body, problem = read_capped(
                response,
                max_bytes=MAX_BODY_BYTES,
                deadline=deadline,
                read_timeout_s=READ_TIMEOUT_S,
                total_timeout_s=TOTAL_TIMEOUT_S,
            )
            if problem:
                raise FetchFailed(f"{url}: {problem}")
            content_type = response.headers.get("content-type")
            return FetchedFile(
                url=url, content_type=content_type and quote(content_type), body=body
            )
    raise AssertionError("unreachable: the last round returns or raises")


def _checked_target(url: str, *, allow_loopback: bool) -> WebhookTarget:
    try:
        return resolve_webhook_target(
            url, allow_loopback=allow_loopback, field="website", allow_http=True
        )
    except UnsafeUrl as error:
        raise FetchFailed(f"refused to fetch {url}: {error}") from None


@contextmanager
def _get(
    target: WebhookTarget, *, url: str, deadline: float, ca_certs: str | None
) -> Iterator[urllib3.BaseHTTPResponse]:
    """The answer to a GET of `target`; its connections are closed afterwards (a
    verification is a one-off)."""
    remaining_s = deadline - time.monotonic()
    if remaining_s <= 0:
        raise FetchFailed(f"cannot fetch {url}: no time left within {TOTAL_TIMEOUT_S} s")
    timeout = urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S, total=remaining_s)
    pools: list[urllib3.HTTPConnectionPool] = []

    def pool_for(address: str) -> urllib3.HTTPConnectionPool:
        pools.append(
            connection_pool(target, address, timeout=timeout, maxsize=1, ca_certs=ca_certs)
        )
        return pools[-1]

    try:
        try:
            response = send_request(
                target,
                "GET",
                pool_for=pool_for,
                headers={
                    "user-agent": USER_AGENT,
                    "accept": "text/plain",
                    "accept-encoding": "identity",
                    "host": target.host_header,
                },
                connect_timeout_s=CONNECT_TIMEOUT_S,
                read_timeout_s=READ_TIMEOUT_S,
                deadline=deadline,
            )
        except RequestFailed as error:
            raise FetchFailed(f"cannot fetch {url}: {error}") from None
        try:
            yield response
        finally:
            response.release_conn()
    finally:
        for pool in pools:
            pool.close()


def _redirect_target(url: str, target: WebhookTarget, location: str | None) -> str:
    """Where a redirect from `url` leads, if it stays within the website's host."""
    if not location:
        raise FetchFailed(f"{url} answered a redirect without a Location")
    next_url = urldefrag(urljoin(url, location.strip())).url
    try:
        parts = urlsplit(next_url)
        port = parts.port
    except ValueError:
        parts, port = None, None
    scheme = parts.scheme.lower() if parts else ""
    same_host = parts is not None and parts.hostname == target.hostname
    same_origin = scheme == target.scheme and (port or DEFAULT_PORTS.get(scheme)) == target.port
    upgrade = target.scheme == "http" and scheme == "https"
    if not (same_host and (same_origin or upgrade)):
        raise FetchFailed(
            f"{url} redirects to {quote(next_url)}, which is not followed: redirects are "
            f"followed within {target.hostname} only (same scheme and port, or from http "
            "to https)"
        )
    return next_url
