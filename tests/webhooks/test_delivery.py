"""Delivering one webhook to a real receiver on 127.0.0.1, and how each answer (or its
absence) is classified."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from directory.webhooks.delivery import (
    MAX_RESPONSE_BYTES,
    MAX_RETRY_AFTER_S,
    DeliveryResult,
    Outcome,
    WebhookSender,
)
from directory.webhooks.signing import new_secret, signed_headers
from tests.peers import Reply, WebhookReceiver


@pytest.fixture
def secret() -> str:
    return new_secret()


@pytest.fixture
def receiver(secret):
    with WebhookReceiver([secret]) as receiver:
        yield receiver


@pytest.fixture
def sender():
    sender = WebhookSender(connect_timeout_s=2, read_timeout_s=2, total_timeout_s=4)
    yield sender
    sender.close()


def deliver(
    sender: WebhookSender,
    url: str,
    *,
    secrets: list[str],
    webhook_id: str = "msg_1",
    allow_loopback: bool = True,
) -> DeliveryResult:
    body = json.dumps({"type": "message.created", "id": webhook_id, "text": "Hallo"}).encode()
    headers = signed_headers(
        secrets=secrets, webhook_id=webhook_id, timestamp=int(time.time()), body=body
    )
    return sender.send(url, headers=headers, body=body, allow_loopback=allow_loopback)


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def unanswered_addresses(count: int) -> Iterator[tuple[list[str], int]]:
    """`count` loopback addresses and a port where a connection is never taken: each
    listens with its backlog full, so a new connection's SYN goes unanswered, as with a
    host that drops packets."""
    addresses = [f"127.0.0.{number}" for number in range(2, 2 + count)]
    with contextlib.ExitStack() as stack:
        port = 0
        for address in addresses:
            listener = stack.enter_context(socket.socket())
            listener.bind((address, port))
            listener.listen(0)
            port = listener.getsockname()[1]
            filler = stack.enter_context(socket.socket())
            filler.connect((address, port))  # the one connection the backlog holds
        yield addresses, port


def resolve_localhost_to(monkeypatch, addresses: list[str]) -> None:
    """ "localhost" resolves to `addresses`, in this order; other names as they did."""
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host != "localhost":
            return real_getaddrinfo(host, port, *args, **kwargs)
        return [
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))
            for address in addresses
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_2xx_is_delivered_and_the_receiver_verifies_the_signature(sender, receiver, secret):
    result = deliver(sender, receiver.url, secrets=[secret])

    assert (result.outcome, result.status, result.error) == (Outcome.DELIVERED, 204, None)
    assert result.duration_ms > 0
    [delivery] = receiver.deliveries
    assert delivery.verified
    assert delivery.body == {"type": "message.created", "id": "msg_1", "text": "Hallo"}
    assert delivery.headers["host"] == f"127.0.0.1:{receiver.port}"
    assert delivery.path == "/hook"


def test_webhooks_to_one_receiver_reuse_a_kept_alive_connection(sender, receiver, secret):
    for number in range(3):
        deliver(sender, receiver.url, secrets=[secret], webhook_id=f"msg_{number}")

    assert len({delivery.client_port for delivery in receiver.deliveries}) == 1


def test_server_error_is_retried_and_quoted(sender, receiver, secret):
    receiver.reply_next(Reply(status=500, body=b"database\n  unavailable"))

    result = deliver(sender, receiver.url, secrets=[secret])

    assert (result.outcome, result.status) == (Outcome.RETRY, 500)
    assert result.error == "HTTP 500: database unavailable"
    assert result.retry_after_s is None


def test_a_long_error_body_is_quoted_short(sender, receiver, secret):
    receiver.reply_next(Reply(status=422, body=b"x" * 10_000))

    result = deliver(sender, receiver.url, secrets=[secret])

    assert result.outcome == Outcome.RETRY
    assert len(result.error) < 220
    assert result.error.endswith("…")


def test_410_means_the_endpoint_is_gone(sender, receiver, secret):
    receiver.respond_gone()

    result = deliver(sender, receiver.url, secrets=[secret])

    assert (result.outcome, result.status) == (Outcome.GONE, 410)


def in_a_minute() -> str:
    return format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)


@pytest.mark.parametrize(
    ("status", "retry_after", "expected_s"),
    [
        (429, "7", 7),
        (503, "120", 120),
        (429, "9999999", MAX_RETRY_AFTER_S),
        (429, in_a_minute, pytest.approx(60, abs=3)),  # made when the test runs
        (429, "Wed, 21 Oct 2015 07:28:00 GMT", 0),
        (429, "soon", None),
        (500, "7", None),  # Retry-After only means something on 429 and 503
    ],
)
def test_retry_after_is_read_from_429_and_503(
    sender, receiver, secret, status, retry_after, expected_s
):
    if callable(retry_after):
        retry_after = retry_after()
    receiver.fail_next(1, status=status, headers={"Retry-After": retry_after})

    result = deliver(sender, receiver.url, secrets=[secret])

    assert (result.outcome, result.status) == (Outcome.RETRY, status)
    assert result.retry_after_s == expected_s


def test_a_redirect_is_not_followed(sender, receiver, secret):
    elsewhere = receiver.url.replace("/hook", "/elsewhere")
    receiver.fail_next(1, status=302, headers={"Location": elsewhere})

    result = deliver(sender, receiver.url, secrets=[secret])

    assert (result.outcome, result.status) == (Outcome.RETRY, 302)
    assert f"redirect to '{elsewhere}' not followed" in result.error
    assert [delivery.path for delivery in receiver.deliveries] == ["/hook"]


def test_a_receiver_slower_than_the_read_timeout_is_retried(receiver, secret):
    receiver.reply_next(Reply(delay_s=5))
    sender = WebhookSender(read_timeout_s=0.3)
    try:
        result = deliver(sender, receiver.url, secrets=[secret])
    finally:
        sender.close()

    assert (result.outcome, result.status) == (Outcome.RETRY, None)
    assert "no answer from 127.0.0.1" in result.error
    assert "within the read timeout" in result.error
    assert result.duration_ms < 2000


def test_a_receiver_trickling_its_answer_is_cut_off_at_the_total_timeout(receiver, secret):
    receiver.reply_next(
        Reply(status=500, body=b"x" * 2000, body_piece_bytes=100, pause_between_pieces_s=0.1)
    )
    sender = WebhookSender(read_timeout_s=0.3, total_timeout_s=0.5)
    try:
        result = deliver(sender, receiver.url, secrets=[secret])
    finally:
        sender.close()

    assert (result.outcome, result.status) == (Outcome.RETRY, 500)
    assert result.error.startswith("HTTP 500: xxx")
    assert result.error.endswith("(answer not complete within 0.5 s)")
    assert result.duration_ms < 1000


@pytest.mark.timeout(10)
def test_an_answer_whose_head_never_ends_is_cut_off_at_the_total_timeout(endless_head, secret):
    # Each read comes within the read timeout: only the exchange's deadline can end it.
    sender = WebhookSender(read_timeout_s=0.3, total_timeout_s=0.5)
    try:
        result = deliver(sender, f"{endless_head.origin}/hook", secrets=[secret])
    finally:
        sender.close()

    assert (result.outcome, result.status) == (Outcome.RETRY, None)
    assert result.error == (
        f"no complete answer from 127.0.0.1 port {endless_head.port} within the total timeout"
    )
    assert result.duration_ms < 1000


def test_nothing_listening_is_a_connection_error(sender, secret):
    result = deliver(sender, f"http://127.0.0.1:{unused_port()}/hook", secrets=[secret])

    assert (result.outcome, result.status) == (Outcome.RETRY, None)
    assert result.error.startswith("cannot connect to 127.0.0.1 port")
    assert "refused" in result.error


def test_an_unsafe_url_is_refused_at_delivery_and_nothing_is_sent(sender, receiver, secret):
    result = deliver(sender, receiver.url, secrets=[secret], allow_loopback=False)

    assert (result.outcome, result.status) == (Outcome.RETRY, None)
    assert result.error == "unsafe webhook URL: webhook_url must use https, not http"
    assert receiver.deliveries == []


@pytest.mark.parametrize(("status", "outcome"), [(200, Outcome.DELIVERED), (500, Outcome.RETRY)])
def test_a_huge_answer_is_not_read_beyond_the_cap(sender, receiver, secret, status, outcome):
    huge = b"x" * (64 * 1024 * 1024)
    receiver.reply_next(Reply(status=status, body=huge))

    result = deliver(sender, receiver.url, secrets=[secret])

    assert (result.outcome, result.status) == (outcome, status)
    if outcome == Outcome.RETRY:
        assert f"answer longer than {MAX_RESPONSE_BYTES} bytes" in result.error
    [delivery] = receiver.wait_for(lambda deliveries: deliveries[0].answered_at is not None)
    assert delivery.reply_bytes_sent < len(huge)


def test_a_receiver_down_for_a_while_gets_the_retry(sender, receiver, secret):
    assert deliver(sender, receiver.url, secrets=[secret]).outcome == Outcome.DELIVERED
    receiver.stop()

    down = deliver(sender, receiver.url, secrets=[secret], webhook_id="msg_2")
    receiver.start()
    back = deliver(sender, receiver.url, secrets=[secret], webhook_id="msg_2")

    assert down.outcome == Outcome.RETRY
    assert "refused" in down.error
    assert back.outcome == Outcome.DELIVERED
    assert receiver.unique_ids() == ["msg_1", "msg_2"]


def test_the_next_address_is_tried_when_one_refuses(sender, receiver, secret, monkeypatch):
    resolve_localhost_to(monkeypatch, ["127.0.0.2", "127.0.0.1"])  # none listens on .2
    url = f"http://localhost:{receiver.port}/hook"

    result = deliver(sender, url, secrets=[secret])

    assert result.outcome == Outcome.DELIVERED
    assert receiver.deliveries[0].headers["host"] == f"localhost:{receiver.port}"


def test_a_host_of_many_silent_addresses_is_given_up_at_the_total_timeout(secret, monkeypatch):
    # Each address waited on for the connect timeout in turn would hold the worker's
    # thread for 5 x 0.4 s; the whole exchange has 1 s.
    sender = WebhookSender(connect_timeout_s=0.4, read_timeout_s=0.4, total_timeout_s=1)
    try:
        with unanswered_addresses(5) as (addresses, port):
            resolve_localhost_to(monkeypatch, addresses)
            result = deliver(sender, f"http://localhost:{port}/hook", secrets=[secret])
    finally:
        sender.close()

    assert (result.outcome, result.status) == (Outcome.RETRY, None)
    assert "no connection to 127.0.0." in result.error
    assert result.duration_ms < 1300


def test_one_sender_serves_many_threads(sender, receiver, secret):
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(
            pool.map(
                lambda number: deliver(
                    sender, receiver.url, secrets=[secret], webhook_id=f"msg_{number}"
                ),
                range(40),
            )
        )

    assert {result.outcome for result in results} == {Outcome.DELIVERED}
    assert sorted(receiver.unique_ids()) == sorted(f"msg_{number}" for number in range(40))


def test_a_sender_keeping_one_pool_still_reaches_every_receiver(receiver, secret):
    sender = WebhookSender(max_pools=1)
    try:
        with WebhookReceiver([secret]) as other:
            outcomes = [
                deliver(sender, url, secrets=[secret], webhook_id=f"msg_{number}").outcome
                for number, url in enumerate([receiver.url, other.url] * 2)
            ]
    finally:
        sender.close()

    assert outcomes == [Outcome.DELIVERED] * 4


def test_a_repeated_id_is_acknowledged_by_a_deduplicating_receiver(sender, receiver, secret):
    deliver(sender, receiver.url, secrets=[secret])
    receiver.fail_next(1)  # would fail a new webhook, not one the portal already has

    again = deliver(sender, receiver.url, secrets=[secret])

    assert (again.outcome, again.status) == (Outcome.DELIVERED, 200)
    assert [delivery.duplicate for delivery in receiver.by_id()["msg_1"]] == [False, True]


def test_during_rotation_receivers_with_either_secret_accept(sender, receiver, secret):
    new = new_secret()
    results = [deliver(sender, receiver.url, secrets=[new, secret], webhook_id="msg_old")]
    receiver.secrets = [new]
    results.append(deliver(sender, receiver.url, secrets=[new, secret], webhook_id="msg_new"))

    assert [result.outcome for result in results] == [Outcome.DELIVERED] * 2
    assert all(delivery.verified for delivery in receiver.deliveries)


def test_a_signature_the_receiver_cannot_verify_is_retried(sender, receiver):
    result = deliver(sender, receiver.url, secrets=[new_secret()])

    assert (result.outcome, result.status) == (Outcome.RETRY, 401)
    assert not receiver.deliveries[0].verified


# --- https: the connection goes to a checked address, the certificate is checked against
# the URL's host name.


@pytest.mark.parametrize(
    ("served", "trusted", "outcome", "error"),
    [
        ("localhost", "localhost", Outcome.DELIVERED, None),
        ("other.example", "other.example", Outcome.RETRY, "'localhost' doesn't match"),
        ("localhost", None, Outcome.RETRY, "certificate verify failed"),
    ],
    ids=["trusted-certificate-for-the-url-host", "certificate-for-another-host", "untrusted"],
)
def test_https_checks_the_certificate_against_the_url_host(
    certificates, secret, served, trusted, outcome, error
):
    sender = WebhookSender(ca_certs=str(certificates[trusted]) if trusted else None)
    try:
        with WebhookReceiver([secret], tls_certificate=certificates[served]) as receiver:
            result = deliver(sender, receiver.url, secrets=[secret])
    finally:
        sender.close()

    assert result.outcome == outcome
    if error is None:
        assert result.error is None
        assert receiver.deliveries[0].headers["host"] == f"localhost:{receiver.port}"
    else:
        assert error in result.error
        assert receiver.deliveries == []
