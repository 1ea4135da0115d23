"""Fetching a file from a portal's website (directory.webhooks.fetch) where the API tests
(tests/api/test_website_verification.py) cannot reach: https, redirects between http and
https on one host, and answers that never end. The websites are real servers on 127.0.0.1."""

from __future__ import annotations

import time

import pytest

from directory.webhooks.fetch import TOTAL_TIMEOUT_S, FetchFailed, fetch_file
from tests.peers import Reply, Website

FILE = "/.well-known/commons-directory"


def test_an_https_website_is_fetched_with_its_certificate_checked(certificates):
    with Website(
        {FILE: Reply(status=200, body=b"token")}, tls_certificate=certificates["localhost"]
    ) as site:
        fetched = fetch_file(
            f"{site.url}{FILE}", allow_loopback=True, ca_certs=str(certificates["localhost"])
        )
        with pytest.raises(FetchFailed, match="certificate verify failed"):
            fetch_file(f"{site.url}{FILE}", allow_loopback=True)

    assert (fetched.url, fetched.body) == (f"{site.url}{FILE}", b"token")


def test_a_redirect_from_http_up_to_https_on_the_same_host_is_followed(certificates):
    with (
        Website(tls_certificate=certificates["localhost"]) as secure,
        Website() as plain,
    ):
        secure.pages[FILE] = Reply(status=200, body=b"token")
        plain.pages[FILE] = Reply(status=301, headers={"location": f"{secure.url}{FILE}"})

        fetched = fetch_file(
            f"http://localhost:{plain.port}{FILE}",
            allow_loopback=True,
            ca_certs=str(certificates["localhost"]),
        )

    assert (fetched.url, fetched.body) == (f"https://localhost:{secure.port}{FILE}", b"token")


def test_a_redirect_from_https_down_to_http_is_refused(certificates):
    with (
        Website(tls_certificate=certificates["localhost"]) as secure,
        Website() as plain,
    ):
        plain.pages[FILE] = Reply(status=200, body=b"token")
        downgrade = f"http://localhost:{plain.port}{FILE}"
        secure.pages[FILE] = Reply(status=301, headers={"location": downgrade})

        with pytest.raises(FetchFailed, match="which is not followed") as refused:
            fetch_file(
                f"{secure.url}{FILE}",
                allow_loopback=True,
                ca_certs=str(certificates["localhost"]),
            )

    assert f"redirects to {downgrade}" in str(refused.value)
    assert plain.requests == []


@pytest.mark.timeout(20)
def test_a_website_whose_answer_head_never_ends_is_given_up_at_the_total_timeout(endless_head):
    # Each read comes within the read timeout: only the fetch's deadline can end it.
    started = time.monotonic()
    with pytest.raises(FetchFailed) as failed:
        fetch_file(f"{endless_head.origin}{FILE}", allow_loopback=True)
    took_s = time.monotonic() - started

    assert str(failed.value) == (
        f"cannot fetch {endless_head.origin}{FILE}: no complete answer from 127.0.0.1 port "
        f"{endless_head.port} within the total timeout"
    )
    assert TOTAL_TIMEOUT_S <= took_s < TOTAL_TIMEOUT_S + 1
