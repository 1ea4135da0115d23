"""Webhook URL safety: a portal chooses where its webhooks go, so without these checks it
could make the directory send requests into the directory's own network (server-side
request forgery): to a database admin page, to the cloud metadata service, to localhost.

A URL is checked when a portal sets it and again at every delivery, and the delivery
connects to the very addresses that were checked: a DNS answer that changes between the
check and the connection (DNS rebinding) gains nothing.

A portal's ledger URL gets the same checks when it is set: the directory itself never
calls it, but it sends members' payment clients there, and must not be the way to point
them at addresses inside their own networks. So does a portal's website when the directory
fetches its verification file (directory.webhooks.fetch), with plain http allowed there.

An ad's image links are loaded by every app that shows the ad, on its users' devices, so
they must not name a loopback or private address either (an image "at" a home router's
admin page is a request to it from each viewer), nor carry credentials, which the
directory would publish. Only what the link itself says is checked (`link_problem`): the
directory never loads images, and a name's addresses are the app's to look up."""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import re
import socket
import threading
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2048
# The longest wait for a name's addresses. The system's resolver may wait far longer on a
# name whose servers answer slowly (glibc: 5 s a try, 2 tries a server, up to 3 servers),
# and a portal choosing such a name must not hold an API process or a worker's thread.
RESOLVE_TIMEOUT_S = 5
# What does not depend on DNS (a URL's syntax, what kind of address an address is) is
# remembered: the worker checks every delivery, and parsing took a sixth of its time. A
# name is resolved again at each check, always.
REMEMBERED = 4096
DEFAULT_PORTS = {"https": 443, "http": 80}
LOOPBACK_NAMES = {"localhost", "localhost."}
# Domain names in their ASCII form (international names as xn--…); "_" occurs in real names.
DOMAIN_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")

# Shared address space of carrier-grade NAT: not public, yet not "private" to ipaddress.
CARRIER_GRADE_NAT = ipaddress.IPv4Network("100.64.0.0/10")
# IANA's IETF protocol assignments, not globally reachable (some clouds' metadata services
# answer at 192.0.0.192). Named here: Python 3.11.7's ipaddress counts 192.0.0.8 and up
# as global, and later versions changed that table.
IETF_PROTOCOL_ASSIGNMENTS = ipaddress.IPv4Network("192.0.0.0/24")
# IPv6 prefixes that carry an IPv4 address in their last 32 bits, routed to it by NAT64
# gateways or, for the deprecated IPv4-compatible form, by the host itself.
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


class UnsafeUrl(ValueError):
    """The URL must not be called; the message says why, naming the field (`webhook_url`
    unless told otherwise)."""


@dataclass(frozen=True)
class WebhookTarget:
    """Where one webhook goes: the URL's parts, and the checked addresses to connect to."""

    scheme: str
    hostname: str
    port: int
    path_and_query: str
    addresses: tuple[str, ...]

    @property
    def host_header(self) -> str:
        """The Host header the URL implies (we connect to an address, not to the name)."""
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def check_webhook_url(url: str, *, allow_loopback: bool, field: str = "webhook_url") -> None:
    """Raise UnsafeUrl unless webhooks may go to `url`: https to a host whose every
    address is public; http only to loopback, and loopback only when `allow_loopback`."""
    resolve_webhook_target(url, allow_loopback=allow_loopback, field=field)


def resolve_webhook_target(
    url: str, *, allow_loopback: bool, field: str = "webhook_url", allow_http: bool = False
) -> WebhookTarget:
    """Check `url` as check_webhook_url does and return where to connect. `allow_http`:
    plain http to public addresses too (a website's verification file, fetched as ACME's
    http-01 challenge is: many community sites have no https)."""
    parts = _parse(url, allow_loopback=allow_loopback, field=field, allow_http=allow_http)
    hostname = parts.hostname or ""
    port = parts.port or DEFAULT_PORTS[parts.scheme]
    literal = _ip_literal(hostname)
    addresses = [literal] if literal is not None else _resolve(hostname, port, field=field)
    for address in addresses:
        where = (
            f"{field} points to {address}"
            if literal is not None
            else f"{field} host {hostname!r} resolves to {address}"
        )
        if parts.scheme == "http" and not allow_http and not _is_loopback(address):
            raise UnsafeUrl(f"{where}: http is allowed only to loopback addresses; use https")
        reason = _why_not_public(address, allow_loopback=allow_loopback)
        if reason and literal is None:
            raise _no_public_address(field, hostname)
        if reason:
            raise UnsafeUrl(f"{where}, {reason}")
    path = parts.path or "/"
    return WebhookTarget(
        scheme=parts.scheme,
        hostname=hostname,
        port=port,
        path_and_query=f"{path}?{parts.query}" if parts.query else path,
        addresses=tuple(dict.fromkeys(str(address) for address in addresses)),
    )


@functools.lru_cache(maxsize=REMEMBERED)
def link_problem(url: str) -> str | None:
    """What makes `url` (an absolute http(s) URL, parsed already) unfit to publish as a link
    that others' devices load, or None: a user name or password, or a host that is
    localhost or an address that is not public."""
    try:
        parts = urlsplit(url)
        hostname = parts.hostname or ""
    except ValueError:
        return "is not a valid URL"
    if "@" in parts.netloc:
        return "must not contain a user name or password"
    if hostname in LOOPBACK_NAMES or hostname.rstrip(".").endswith(".localhost"):
        return "must not point to localhost"
    literal = _ip_literal(hostname)
    if literal is not None and (reason := _why_not_public(literal, allow_loopback=False)):
        return f"must not point to {hostname}, {reason}"
    return None


def _parse(url: str, *, allow_loopback: bool, field: str, allow_http: bool) -> SplitResult:
    """The syntactic checks, before any name is resolved."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeUrl(f"{field} must be at most {MAX_URL_LENGTH} characters")
    # urlsplit would silently drop tabs and newlines; we refuse rather than guess.
    if not url.isascii() or any(not char.isprintable() or char.isspace() for char in url):
        raise UnsafeUrl(
            f"{field} must be ASCII without spaces or control characters "
            "(international domain names in their xn-- form, the path percent-encoded)"
        )
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        port = parts.port
    except ValueError:  # unbalanced IPv6 brackets, a port that is no number or too large
        raise UnsafeUrl(
            f"{field} is not a valid URL (check the host's brackets and the port)"
        ) from None
    scheme = parts.scheme.lower()
    if scheme != "https" and not (scheme == "http" and (allow_loopback or allow_http)):
        raise UnsafeUrl(
            f"{field} must use {'http or https' if allow_http else 'https'}, not {scheme}"
            if scheme
            else f"{field} must be an absolute {'http(s)' if allow_http else 'https'}:// URL"
        )
    if "@" in parts.netloc:
        raise UnsafeUrl(f"{field} must not contain a user name or password")
    if "#" in url:
        raise UnsafeUrl(f"{field} must not contain a fragment (#…)")
    if parts.path.startswith("//"):
        # urllib3 would send it as another path ("//hook" as "/hook"), not as written.
        raise UnsafeUrl(f"{field} path must not begin with // (write it with one /)")
    if not hostname:
        raise UnsafeUrl(f"{field} must name a host")
    literal = _ip_literal(hostname)
    if literal is None and not DOMAIN_NAME.fullmatch(hostname):
        raise UnsafeUrl(f"{field} host {hostname!r} must be a domain name or an IP address")
    if port == 0:
        raise UnsafeUrl(f"{field} port must be a number from 1 to 65535")
    if (
        scheme == "http"
        and not allow_http
        and not (hostname in LOOPBACK_NAMES or _is_loopback(literal))
    ):
        raise UnsafeUrl(
            f"{field} must use https: http is allowed only to localhost and loopback addresses"
        )
    return parts._replace(scheme=scheme)


@functools.lru_cache(maxsize=REMEMBERED)
def _ip_literal(hostname: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(hostname)
    except ValueError:
        return None


def _resolve(hostname: str, port: int, *, field: str) -> list[IPAddress]:
    """Every address the name has, IPv4 and IPv6: any of them may be the one connected to."""
    answers = _look_up(hostname, port, timeout_s=RESOLVE_TIMEOUT_S)
    if answers is None:
        raise UnsafeUrl(f"{field} host {hostname!r} did not resolve within {RESOLVE_TIMEOUT_S} s")
    addresses = [ipaddress.ip_address(answer[4][0]) for answer in answers]
    if not addresses:
        raise _no_public_address(field, hostname)
    return addresses


def _look_up(hostname: str, port: int, *, timeout_s: float) -> list | None:
    """getaddrinfo's answers ([] when it fails), or None when it takes longer than
    `timeout_s`: the lookup then goes on in its own thread until the resolver gives up
    (the system's resolver cannot be interrupted)."""
    answers = []

    def look_up() -> None:
        # gaierror; UnicodeError: a label over 63 characters
        with contextlib.suppress(OSError, UnicodeError):
            answers.extend(socket.getaddrinfo(hostname, port, type=socket.SOCK_STREAM))

    lookup = threading.Thread(target=look_up, name="resolve", daemon=True)
    lookup.start()
    lookup.join(timeout_s)
    return None if lookup.is_alive() else answers


def _no_public_address(field: str, hostname: str) -> UnsafeUrl:
    """The refusal of a name without an answer or with an address that is not public, the
    same for both: the resolver knows the names of the directory's own network, and a
    portal must not learn which of them exist, nor where they lead. (An address written in
    the URL is named with its kind: the portal knows it already.)"""
    return UnsafeUrl(
        f"{field} host {hostname!r} does not resolve, or resolves to an address that is not public"
    )


def _is_loopback(address: IPAddress | None) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and (embedded := _embedded_ipv4(address)):
        return embedded.is_loopback
    return address is not None and address.is_loopback


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address leads to (mapped, 6to4, NAT64, IPv4-compatible)."""
    if address.ipv4_mapped:
        return address.ipv4_mapped
    if address.sixtofour:
        return address.sixtofour
    compatible = address in IPV4_COMPATIBLE and not (address.is_unspecified or address.is_loopback)
    if address in NAT64 or compatible:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


@functools.lru_cache(maxsize=REMEMBERED)
def _why_not_public(address: IPAddress, *, allow_loopback: bool) -> str | None:
    """None if webhooks may go to `address`, else what kind of address it is."""
    if isinstance(address, ipaddress.IPv6Address) and (embedded := _embedded_ipv4(address)):
        reason = _why_not_public(embedded, allow_loopback=allow_loopback)
        return f"which leads to {embedded}, {reason}" if reason else None
    # Order matters: the first matching kind is the most telling name for the address.
    if address.is_loopback:
        return None if allow_loopback else "a loopback address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_link_local:
        return "a link-local address (where cloud metadata services answer)"
    if address in CARRIER_GRADE_NAT:
        return "a carrier-grade NAT address"
    if address in IETF_PROTOCOL_ASSIGNMENTS:
        return "an IETF protocol assignment address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "a site-local address"
    if not address.is_global:
        return "not a public address"
    return None
