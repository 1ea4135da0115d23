"""Every attempt of the Python client, to a directory or to a ledger, ends by its deadline
(`timeout_s`), however slowly the peer sends, and an answer is read up to MAX_ANSWER_BYTES:
against real servers on 127.0.0.1 that send their answer a few bytes at a time, or without
end."""

from __future__ import annotations

import gzip
import itertools
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from directory_client.client import DirectoryClient
from directory_client.errors import AnswerNotUnderstood, DirectoryUnavailable
from directory_client.federation import FederatedSearch, Outcome
from directory_client.ledger import CreditCommonsLedger, LedgerUnavailable
from directory_client.transport import MAX_ANSWER_BYTES, NO_RETRIES, RetryPolicy

from tests.peers import Trickling

# How long a test waits for a call that should end by its deadline before declaring it
# stuck (the call then goes on in a daemon thread until the server stops).
STUCK_S = 8.0
JSON_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
CHUNKED_HEAD = JSON_HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
EMPTY_PAGE = b'{"hits":[],"next_cursor":null,"facets":null}'


def dripping_body() -> Trickling:
    """200 and its headers at once, then a JSON body one space a chunk, without end."""
    return Trickling(CHUNKED_HEAD, lambda: itertools.repeat(b"1\r\n \r\n"), pause_s=0.1)


def dripping_headers() -> Trickling:
    """The status line and headers a byte at a time, without end."""
    head = b"HTTP/1.1 200 OK\r\nX-Padding: "
    pieces = itertools.chain((bytes([byte]) for byte in head), itertools.repeat(b"a"))
    return Trickling(b"", lambda: pieces, pause_s=0.1)


def within(limit_s: float, call: Callable[[], Any]) -> tuple[BaseException | None, float]:
    """What `call` raised (None if it returned) and how long it took; fails the test
    if it is still running after `limit_s`."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as error:  # handed to the test
            outcome.append(error)
        else:
            outcome.append(None)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit_s)
    assert outcome, f"the call was still waiting after {limit_s:g} s"
    return outcome[0], time.monotonic() - started


@pytest.mark.parametrize("server", [dripping_body, dripping_headers], ids=["body", "headers"])
def test_an_answer_dripped_a_byte_at_a_time_ends_at_the_deadline(server):
    with server() as slow, DirectoryClient(slow.origin, timeout_s=1, retry=NO_RETRIES) as directory:
        error, took = within(STUCK_S, lambda: directory.search_ads(q="bike"))

    assert isinstance(error, DirectoryUnavailable), error
    assert isinstance(error.__cause__, httpx.TimeoutException)
    assert "failed after 1 attempt:" in str(error)
    assert 0.9 <= took < 2.5


def test_each_attempt_has_its_own_deadline():
    retry = RetryPolicy(attempts=2, backoff_s=0, max_backoff_s=0)
    with (
        dripping_body() as slow,
        DirectoryClient(slow.origin, timeout_s=0.7, retry=retry) as directory,
    ):
        error, took = within(STUCK_S, lambda: directory.search_ads(q="bike"))

    assert isinstance(error, DirectoryUnavailable) and "failed after 2 attempts" in str(error)
    assert slow.answered == 2
    assert 1.3 <= took < 3


def test_the_deadline_holds_with_a_transport_of_the_callers():
    with (
        dripping_body() as slow,
        DirectoryClient(
            slow.origin, timeout_s=1, retry=NO_RETRIES, http_transport=httpx.HTTPTransport()
        ) as directory,
    ):
        error, took = within(STUCK_S, lambda: directory.search_ads(q="bike"))

    assert isinstance(error, DirectoryUnavailable), error
    assert isinstance(error.__cause__, httpx.TimeoutException)
    assert took < 2.5


def test_the_deadline_holds_through_a_proxy_set_in_the_environment(monkeypatch):
    for name in ["http_proxy", "https_proxy", "all_proxy", "no_proxy"]:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    with dripping_body() as slow_proxy:
        monkeypatch.setenv("HTTP_PROXY", slow_proxy.origin)
        with DirectoryClient("http://directory.invalid", timeout_s=1, retry=NO_RETRIES) as dc:
            error, took = within(STUCK_S, lambda: dc.search_ads(q="bike"))

    assert slow_proxy.answered == 1  # through the proxy
    assert isinstance(error, DirectoryUnavailable) and took < 2.5


def test_an_answer_that_arrives_slowly_but_within_the_deadline_is_read():
    pieces = [EMPTY_PAGE[index : index + 8] for index in range(0, len(EMPTY_PAGE), 8)]
    head = JSON_HEAD + f"Content-Length: {len(EMPTY_PAGE)}\r\n\r\n".encode()
    with (
        Trickling(head, lambda: pieces, pause_s=0.05) as slow,
        DirectoryClient(slow.origin, timeout_s=3, retry=NO_RETRIES) as directory,
    ):
        page = directory.search_ads(q="bike")  # 6 pieces, 0.3 s in all

    assert page.hits == [] and page.next_cursor is None


def test_a_ledger_that_drips_its_answer_is_unavailable_by_the_timeout():
    with (
        dripping_body() as slow,
        CreditCommonsLedger(slow.origin, timeout_s=1, api_version="0.2", read_attempts=1) as cc,
    ):
        error, took = within(STUCK_S, lambda: cc.balance("alice", user="alice", auth="k"))

    assert isinstance(error, LedgerUnavailable), error
    assert isinstance(error.__cause__, httpx.TimeoutException)
    assert 0.9 <= took < 2.5


def test_a_ledgers_answer_is_read_up_to_the_cap():
    bomb = gzip.compress(b" " * (MAX_ANSWER_BYTES + 1), compresslevel=9)
    head = JSON_HEAD + f"Content-Encoding: gzip\r\nContent-Length: {len(bomb)}\r\n\r\n".encode()
    with (
        Trickling(head, lambda: [bomb], pause_s=0) as packed,
        CreditCommonsLedger(packed.origin, api_version="0.2", read_attempts=1) as cc,
        pytest.raises(LedgerUnavailable, match=f"longer than {MAX_ANSWER_BYTES} bytes"),
    ):
        cc.balance("alice", user="alice", auth="k")


def test_an_answer_far_longer_than_the_cap_is_read_up_to_the_cap():
    megabyte = b"100000\r\n" + b" " * 0x100000 + b"\r\n"  # chunks of 1 MiB of spaces
    # A quarter more than the cap, then the connection closes, so that a client without
    # a cap fails otherwise instead of filling the memory.
    chunks = MAX_ANSWER_BYTES // 0x100000 * 5 // 4
    with (
        Trickling(CHUNKED_HEAD, lambda: itertools.repeat(megabyte, chunks), pause_s=0) as long,
        DirectoryClient(long.origin, timeout_s=30, retry=NO_RETRIES) as directory,
        pytest.raises(AnswerNotUnderstood, match=f"longer than {MAX_ANSWER_BYTES} bytes"),
    ):
        directory.search_ads(q="bike")


def test_a_compressed_answer_is_capped_as_it_is_unpacked():
    bomb = gzip.compress(b" " * (MAX_ANSWER_BYTES + 1), compresslevel=9)  # about 64 kB
    head = JSON_HEAD + f"Content-Encoding: gzip\r\nContent-Length: {len(bomb)}\r\n\r\n".encode()
    with (
        Trickling(head, lambda: [bomb], pause_s=0) as packed,
        DirectoryClient(packed.origin, timeout_s=30, retry=NO_RETRIES) as directory,
        pytest.raises(AnswerNotUnderstood, match="longer than"),
    ):
        directory.search_ads(q="bike")
    assert len(bomb) < MAX_ANSWER_BYTES // 100


def test_a_compressed_answer_within_the_cap_is_unpacked():
    packed_page = gzip.compress(EMPTY_PAGE)
    head = (
        JSON_HEAD + f"Content-Encoding: gzip\r\nContent-Length: {len(packed_page)}\r\n\r\n".encode()
    )
    with (
        Trickling(head, lambda: [packed_page], pause_s=0) as packed,
        DirectoryClient(packed.origin, retry=NO_RETRIES) as directory,
    ):
        assert directory.search_ads(q="bike").hits == []


def federated_search_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("federated")]


def test_a_federated_search_leaves_no_thread_behind_on_a_dripping_directory():
    healthy_head = JSON_HEAD + f"Content-Length: {len(EMPTY_PAGE)}\r\n\r\n".encode()
    with (
        Trickling(healthy_head, lambda: [EMPTY_PAGE], pause_s=0) as healthy,
        dripping_body() as slow,
        FederatedSearch([healthy.origin, slow.origin], timeout_s=1) as both,
    ):
        for _ in range(3):
            page = both.search(q="bike")
            assert [status.outcome for status in page.directories] == [
                Outcome.OK,
                Outcome.TIMED_OUT,
            ]
        # The requests the page gave up on end by their own deadline, a second at most.
        deadline = time.monotonic() + 3
        while federated_search_threads() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert federated_search_threads() == []


def test_a_server_that_never_answers_is_a_timeout_too():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts connections (the kernel does) but never reads or answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with DirectoryClient(url, timeout_s=0.5, retry=NO_RETRIES) as directory:
            error, took = within(STUCK_S, directory.healthz)

    assert isinstance(error, DirectoryUnavailable)
    assert isinstance(error.__cause__, httpx.TimeoutException)
    assert took < 1.5
