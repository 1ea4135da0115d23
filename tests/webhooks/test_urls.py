"""Webhook URL safety. Literal addresses need no DNS; names other than localhost are
answered by a stand-in resolver (`dns`), since DNS is an outside peer."""

from __future__ import annotations

import ipaddress
import socket
import time

import pytest

from directory.webhooks import urls
from directory.webhooks.urls import (
    MAX_URL_LENGTH,
    UnsafeUrl,
    check_webhook_url,
    resolve_webhook_target,
)

# What a refusal says of a name that has no public address, whatever the reason: a name
# of the directory's own network must not be told apart from one that does not exist.
NOT_PUBLIC = "does not resolve, or resolves to an address that is not public"


def refusal(url: str, *, allow_loopback: bool = False) -> str:
    """The message UnsafeUrl gives for `url`; fails the test if it is accepted."""
    with pytest.raises(UnsafeUrl) as refused:
        check_webhook_url(url, allow_loopback=allow_loopback)
    message = str(refused.value)
    assert message.startswith("webhook_url")
    return message


@pytest.fixture
def dns(monkeypatch) -> dict[str, list[str]]:
    """Names to addresses, answered by socket.getaddrinfo; other names do not resolve."""
    answers: dict[str, list[str]] = {}

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (
                socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET,
                socket.SOCK_STREAM,
                socket.IPPROTO_TCP,
                "",
                (address, port),
            )
            for address in answers[host]
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


@pytest.mark.parametrize(
    "url",
    [
        "https://93.184.215.14/hook",
        "https://8.8.8.8:8443/hooks/in?portal=7",
        "https://[2606:4700::1111]/hook",
        "HTTPS://8.8.8.8/hook",
        # IPv6 forms that lead to a public IPv4 address are as public as it is.
        "https://[::ffff:8.8.8.8]/hook",
        "https://[64:ff9b::808:808]/hook",
        "https://[2002:808:808::1]/hook",
    ],
)
def test_https_to_a_public_address_is_accepted(url):
    check_webhook_url(url, allow_loopback=False)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://8.8.8.8/hook", "must use https, not http"),
        ("ftp://8.8.8.8/hook", "must use https, not ftp"),
        ("8.8.8.8/hook", "must be an absolute https:// URL"),
        ("https://user:secret@8.8.8.8/hook", "must not contain a user name or password"),
        ("https://user@8.8.8.8/hook", "must not contain a user name or password"),
        ("https://8.8.8.8/hook#part", "must not contain a fragment"),
        ("https://8.8.8.8//hook", "path must not begin with //"),
        ("https://8.8.8.8//hook/x?a=1", "path must not begin with //"),
        ("https:///hook", "must name a host"),
        ("https://8.8.8.8:0/hook", "port must be a number from 1 to 65535"),
        ("https://8.8.8.8:99999/hook", "not a valid URL"),
        ("https://8.8.8.8:https/hook", "not a valid URL"),
        ("https://[::1/hook", "not a valid URL"),
        ("https://portal.example/ hook", "without spaces or control characters"),
        ("https://portal.example/hook\n", "without spaces or control characters"),
        ("https://bücher.example/hook", "must be ASCII"),
        ("https://portal$.example/hook", "must be a domain name or an IP address"),
        ("https://8.8.8.8/" + "a" * MAX_URL_LENGTH, f"at most {MAX_URL_LENGTH} characters"),
        ("https://127.0.0.1/hook", "points to 127.0.0.1, a loopback address"),
        ("https://127.8.9.10/hook", "a loopback address"),
        ("https://[::1]/hook", "points to ::1, a loopback address"),
        ("https://0.0.0.0/hook", "the unspecified address"),
        ("https://[::]/hook", "the unspecified address"),
        ("https://10.1.2.3/hook", "a private address"),
        ("https://172.16.0.1/hook", "a private address"),
        ("https://192.168.1.1/hook", "a private address"),
        ("https://169.254.169.254/latest/meta-data/", "a link-local address"),
        ("https://[fe80::1]/hook", "a link-local address"),
        ("https://100.64.0.1/hook", "a carrier-grade NAT address"),
        ("https://192.0.0.8/hook", "an IETF protocol assignment address"),
        ("https://192.0.0.192/latest/", "an IETF protocol assignment address"),
        ("https://[::ffff:192.0.0.192]/hook", "leads to 192.0.0.192, an IETF protocol"),
        ("https://224.0.0.1/hook", "a multicast address"),
        ("https://[ff02::1]/hook", "a multicast address"),
        ("https://240.0.0.1/hook", "a reserved address"),
        ("https://255.255.255.255/hook", "a reserved address"),
        ("https://192.0.2.1/hook", "a private address"),  # documentation range
        ("https://[fc00::1]/hook", "a private address"),
        ("https://[fd00:ec2::254]/hook", "a private address"),  # AWS metadata over IPv6
        ("https://[fec0::1]/hook", "a site-local address"),
        ("https://[2001:db8::1]/hook", "a private address"),
        ("https://[::ffff:10.0.0.1]/hook", "which leads to 10.0.0.1, a private address"),
        ("https://[::ffff:169.254.169.254]/hook", "leads to 169.254.169.254, a link-local"),
        ("https://[::ffff:127.0.0.1]/hook", "leads to 127.0.0.1, a loopback address"),
        ("https://[::7f00:1]/hook", "leads to 127.0.0.1, a loopback address"),
        ("https://[64:ff9b::a9fe:a9fe]/hook", "leads to 169.254.169.254, a link-local"),
        ("https://[64:ff9b:1::a00:1]/hook", "a reserved address"),  # local-use NAT64
        ("https://[2002:a00:1::1]/hook", "which leads to 10.0.0.1, a private address"),
        ("https://[2002:7f00:1::1]/hook", "leads to 127.0.0.1, a loopback address"),
        # Numeric host forms the resolver reads as addresses without asking DNS.
        ("https://2130706433/hook", f"host '2130706433' {NOT_PUBLIC}"),
        ("https://0x7f.1/hook", f"host '0x7f.1' {NOT_PUBLIC}"),
        ("https://0177.0.0.1/hook", f"host '0177.0.0.1' {NOT_PUBLIC}"),
        ("https://127.1/hook", f"host '127.1' {NOT_PUBLIC}"),
        ("https://localhost/hook", f"host 'localhost' {NOT_PUBLIC}"),
    ],
)
def test_unsafe_url_is_refused_with_the_reason(url, message):
    assert message in refusal(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost:8080/hook",
        "http://[::1]:8080/hook",
        "https://127.0.0.1/hook",
        "https://localhost/hook",
    ],
)
def test_loopback_is_accepted_when_allowed(url):
    check_webhook_url(url, allow_loopback=True)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://8.8.8.8/hook", "http is allowed only to localhost and loopback addresses"),
        ("http://10.0.0.1/hook", "http is allowed only to localhost and loopback addresses"),
        ("http://portal.example/hook", "http is allowed only to localhost and loopback"),
        ("https://10.0.0.1/hook", "a private address"),
        ("https://169.254.169.254/hook", "a link-local address"),
    ],
)
def test_allowing_loopback_allows_nothing_else(url, message):
    assert message in refusal(url, allow_loopback=True)


def test_a_name_resolving_to_a_private_address_is_refused(dns):
    dns["portal.example"] = ["10.0.0.7"]
    assert f"'portal.example' {NOT_PUBLIC}" in refusal(
        "https://portal.example/hook", allow_loopback=False
    )


@pytest.mark.parametrize(
    "addresses",
    [[], ["10.0.0.7"], ["127.0.0.1"], ["169.254.169.254"], ["8.8.8.8", "fd00:ec2::254"]],
    ids=["none", "private", "loopback", "link-local", "one-of-several"],
)
def test_a_refused_name_tells_nothing_of_the_directorys_network(dns, addresses):
    # Names are resolved by the directory's resolver, which knows its own network's
    # names (db.internal, the metadata service's): the refusal must not say which of them
    # exist, nor where they lead.
    if addresses:
        dns["db.internal"] = addresses
    message = refusal("https://db.internal/hook", allow_loopback=False)
    assert message == f"webhook_url host 'db.internal' {NOT_PUBLIC}"


def test_a_name_is_resolved_again_at_each_check(dns):
    # A URL's syntax and the kinds of addresses are remembered between checks, a name's
    # answer never: a name that turns private after a check (DNS rebinding) is refused.
    dns["portal.example"] = ["8.8.8.8"]
    target = resolve_webhook_target("https://portal.example/hook", allow_loopback=False)
    assert target.addresses == ("8.8.8.8",)
    dns["portal.example"] = ["10.0.0.7"]
    for _ in range(2):  # a refusal is not remembered as a pass either
        assert f"'portal.example' {NOT_PUBLIC}" in refusal(
            "https://portal.example/hook", allow_loopback=False
        )
    dns["portal.example"] = ["8.8.4.4"]
    target = resolve_webhook_target("https://portal.example/hook", allow_loopback=False)
    assert target.addresses == ("8.8.4.4",)


def test_one_private_address_among_public_ones_is_enough_to_refuse(dns):
    dns["portal.example"] = ["8.8.8.8", "2606:4700::1111", "fd00:ec2::254"]
    assert NOT_PUBLIC in refusal("https://portal.example/hook", allow_loopback=False)


def test_localhost_resolving_elsewhere_gets_no_http(dns):
    dns["localhost"] = ["127.0.0.1", "8.8.8.8"]
    assert "resolves to 8.8.8.8: http is allowed only" in refusal(
        "http://localhost/hook", allow_loopback=True
    )


def test_a_name_that_does_not_resolve_is_refused(dns):
    assert f"host 'gone.example' {NOT_PUBLIC}" in refusal(
        "https://gone.example/hook", allow_loopback=False
    )


def test_a_name_whose_resolution_outlasts_the_resolve_timeout_is_refused(monkeypatch):
    # The system's resolver may wait 30 s and more on a name whose servers answer slowly
    # (glibc: 5 s a try, 2 tries a server): an API process or a worker's thread must not.
    def slow_getaddrinfo(host, port, *args, **kwargs):
        time.sleep(1)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("8.8.8.8", port))]

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)
    monkeypatch.setattr(urls, "RESOLVE_TIMEOUT_S", 0.2)
    started = time.monotonic()

    message = refusal("https://slow.example/hook", allow_loopback=False)

    assert message == "webhook_url host 'slow.example' did not resolve within 0.2 s"
    assert time.monotonic() - started < 0.5


def test_target_holds_every_checked_address_once_in_resolver_order(dns):
    dns["portal.example"] = ["2606:4700::1111", "8.8.8.8", "8.8.8.8"]
    target = resolve_webhook_target(
        "https://Portal.Example:8443/hooks/in?portal=7", allow_loopback=False
    )
    assert target.scheme == "https"
    assert target.hostname == "portal.example"
    assert target.port == 8443
    assert target.path_and_query == "/hooks/in?portal=7"
    assert target.addresses == ("2606:4700::1111", "8.8.8.8")
    assert target.host_header == "portal.example:8443"


@pytest.mark.parametrize(
    ("url", "path_and_query", "host_header"),
    [
        ("https://8.8.8.8", "/", "8.8.8.8"),
        ("https://8.8.8.8:443/hook?", "/hook", "8.8.8.8"),
        ("https://[2606:4700::1111]:8443/hook", "/hook", "[2606:4700::1111]:8443"),
        ("http://127.0.0.1:80/hook", "/hook", "127.0.0.1"),
    ],
)
def test_target_path_and_host_header(url, path_and_query, host_header):
    target = resolve_webhook_target(url, allow_loopback=True)
    assert (target.path_and_query, target.host_header) == (path_and_query, host_header)


# --- plain http, for fetching a portal's website (directory.webhooks.fetch) ---------------


def website_refusal(url: str) -> str:
    with pytest.raises(UnsafeUrl) as refused:
        resolve_webhook_target(url, allow_loopback=False, allow_http=True, field="website")
    return str(refused.value)


@pytest.mark.parametrize(
    "url", ["http://8.8.8.8/", "HTTP://8.8.8.8:8080/sel/", "https://8.8.8.8/sel"]
)
def test_plain_http_to_a_public_address_is_accepted_where_allowed(url):
    target = resolve_webhook_target(url, allow_loopback=False, allow_http=True, field="website")
    assert target.addresses == ("8.8.8.8",)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://10.1.2.3/", "website points to 10.1.2.3, a private address"),
        ("http://169.254.169.254/", "a link-local address"),
        ("http://127.0.0.1/", "website points to 127.0.0.1, a loopback address"),
        ("http://[::ffff:10.0.0.1]/", "which leads to 10.0.0.1, a private address"),
        ("ftp://8.8.8.8/", "website must use http or https, not ftp"),
        ("8.8.8.8/", "website must be an absolute http(s):// URL"),
    ],
)
def test_allowing_plain_http_allows_no_other_address(url, message):
    assert message in website_refusal(url)


def test_plain_http_to_a_name_resolving_to_a_private_address_is_refused(dns):
    dns["sel.example"] = ["8.8.8.8", "10.0.0.7"]
    assert f"website host 'sel.example' {NOT_PUBLIC}" in website_refusal("http://sel.example/")
