"""Rate limits on search and the change feed, through gunicorn with several worker
processes sharing Redis."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from directory import create_app
from directory.localdb import free_port
from directory.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
ANONYMOUS_LIMIT = 6
PORTAL_LIMIT = 10
WORKERS = 3


@pytest.fixture(scope="module")
def gunicorn(migrated, redis_url, tmp_path_factory):
    # One server for the module (each test uses its own client addresses).
    """The API under gunicorn; the access log records which worker (pid) answered."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()  # counters of earlier tests
    port = free_port()
    folder = tmp_path_factory.mktemp("gunicorn")
    access_log = folder / "access.log"
    stderr = (folder / "stderr.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn",
            "--workers", str(WORKERS),
            "--bind", f"127.0.0.1:{port}",
            "--access-logfile", str(access_log),
            "--access-logformat", "%(p)s %(s)s %(U)s",
            "--no-control-socket",  # one path for every gunicorn of the user, unused
            "directory.wsgi:app",
        ],
        env={
            **os.environ,
            "DIRECTORY_ENVIRONMENT": "test",
            "DIRECTORY_DATABASE_URL": migrated.database_url,
            "DIRECTORY_RATE_LIMIT_STORAGE_URL": redis_url,
            "DIRECTORY_SEARCH_RATE_LIMIT_ANONYMOUS": f"{ANONYMOUS_LIMIT} per minute",
            "DIRECTORY_SEARCH_RATE_LIMIT_PORTAL": f"{PORTAL_LIMIT} per minute",
            "DIRECTORY_TRUSTED_PROXIES": "1",
            "DIRECTORY_LOG_LEVEL": "WARNING",
        },
        cwd=ROOT,
        stderr=stderr,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(base + "/healthz", timeout=1)
            break
        except requests.RequestException:
            assert process.poll() is None and time.monotonic() < deadline, "gunicorn did not start"
            time.sleep(0.1)
    try:
        yield base, access_log
    finally:
        process.terminate()
        process.wait(timeout=30)
        stderr.close()


def _search(base: str, *, address: str, headers: dict | None = None) -> requests.Response:
    # A new connection each time, so that the requests spread over the workers.
    return requests.get(
        base + "/v1/search",
        params={"limit": 1},
        headers={"X-Forwarded-For": address, "Connection": "close", **(headers or {})},
        timeout=10,
    )


def test_anonymous_limit_holds_across_worker_processes(gunicorn):
    base, access_log = gunicorn
    # Bursts of concurrent requests, until several worker processes have answered one
    # client: each burst, from its own address, must get exactly the limit through.
    for burst in range(10):
        addresses = [f"203.0.113.{burst + 1}"] * (ANONYMOUS_LIMIT + 6)
        with ThreadPoolExecutor(max_workers=WORKERS * 2) as pool:
            responses = list(pool.map(lambda address: _search(base, address=address), addresses))
        statuses = sorted(response.status_code for response in responses)
        # A Redis slower than STORE_TIMEOUT_S makes a worker count alone for a while:
        # its warning is in gunicorn's stderr.
        stderr = access_log.with_name("stderr.log").read_text()
        assert statuses == [200] * ANONYMOUS_LIMIT + [429] * 6, stderr
        time.sleep(0.2)  # gunicorn writes the access log after the response
        lines = access_log.read_text().splitlines()
        if len({line.split()[0] for line in lines if "/v1/search" in line}) >= 2:
            return
    pytest.fail("no burst was spread over several worker processes")


def test_refused_search_says_when_to_retry(gunicorn):
    base, _ = gunicorn
    for _ in range(ANONYMOUS_LIMIT):
        _search(base, address="203.0.113.50")  # not one of the bursts' 203.0.113.1-10
    response = _search(base, address="203.0.113.50")
    assert response.status_code == 429
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    body = response.json()
    assert body["code"] == 429
    assert body["error"] == "rate_limited"
    assert "Retry-After" in body["message"]


def test_one_flooding_client_does_not_use_up_another_clients_limit(gunicorn):
    base, _ = gunicorn
    for _ in range(ANONYMOUS_LIMIT + 3):
        _search(base, address="198.51.100.1")
    assert _search(base, address="198.51.100.1").status_code == 429
    assert _search(base, address="198.51.100.2").status_code == 200


def test_portal_has_its_own_higher_limit(gunicorn, portal):
    base, _ = gunicorn
    for _ in range(ANONYMOUS_LIMIT + 1):
        _search(base, address="192.0.2.9")
    statuses = [
        _search(base, address="192.0.2.9", headers=portal.headers).status_code
        for _ in range(PORTAL_LIMIT + 2)
    ]
    assert statuses == [200] * PORTAL_LIMIT + [429] * 2


def _feed_page(base: str, *, address: str, headers: dict | None = None) -> requests.Response:
    return requests.get(
        base + "/v1/feed",
        params={"limit": 1},
        headers={"X-Forwarded-For": address, "Connection": "close", **(headers or {})},
        timeout=10,
    )


def test_feed_pages_are_limited_per_address_on_a_budget_apart_from_searches(gunicorn):
    base, _ = gunicorn
    address = "203.0.113.77"
    pages = [_feed_page(base, address=address) for _ in range(ANONYMOUS_LIMIT + 1)]

    assert [page.status_code for page in pages] == [200] * ANONYMOUS_LIMIT + [429]
    refused = pages[-1]
    assert refused.json()["error"] == "rate_limited"
    assert "feed pages" in refused.json()["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # Its searches are counted apart, and other addresses are not concerned.
    assert _search(base, address=address).status_code == 200
    assert _feed_page(base, address="203.0.113.78").status_code == 200


def test_a_portal_reading_the_feed_with_its_key_has_its_higher_limit(gunicorn, portal):
    base, _ = gunicorn
    statuses = [
        _feed_page(base, address="192.0.2.77", headers=portal.headers).status_code
        for _ in range(PORTAL_LIMIT + 1)
    ]
    assert statuses == [200] * PORTAL_LIMIT + [429]
    wrong_key = _feed_page(base, address="192.0.2.78", headers={"Authorization": "Bearer x"})
    assert wrong_key.status_code == 401


def test_wrong_key_is_refused_not_searched_anonymously(gunicorn):
    base, _ = gunicorn
    response = _search(base, address="192.0.2.10", headers={"Authorization": "Bearer cdir_wrong"})
    assert response.status_code == 401


def _in_one_window_of_the_clock(window_s: int, needed_s: float) -> None:
    """Counted in memory, a limit's windows follow the clock (an hour's runs from one
    o'clock to two), and one that turns between a test's requests lets one more through:
    what the window before counted is weighed by the share of it still within the
    limit's period, rounded down. Waits for the next window if this one ends within
    `needed_s`. (Redis starts each client's window at its first request.)"""
    left_s = window_s - time.time() % window_s
    if left_s < needed_s:
        time.sleep(left_s + 0.01)


def test_searches_go_on_when_the_rate_limit_store_is_down(migrated):
    settings = Settings(
        environment="test",
        database_url=migrated.database_url,
        rate_limit_storage_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens
        search_rate_limit_anonymous="2 per hour",
    )
    app = create_app(settings)
    try:
        client = app.test_client()
        _in_one_window_of_the_clock(3600, needed_s=10)
        statuses = [client.get("/v1/search?limit=1").status_code for _ in range(4)]
        # Counted in memory meanwhile: still limited, never failing.
        assert statuses == [200, 200, 429, 429]
    finally:
        app.extensions["directory"].close()


def test_rate_limited_search_keeps_its_request_id(migrated, redis_url, caplog):
    caplog.set_level(logging.INFO, logger="directory.access")
    settings = Settings(
        environment="test",
        database_url=migrated.database_url,
        rate_limit_storage_url=redis_url,  # where the window starts at the first search
        search_rate_limit_anonymous="1 per minute",
    )
    app = create_app(settings)
    try:
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = "192.0.2.201"  # its own counters
        client.get("/v1/search?limit=1")
        refused = client.get("/v1/search?limit=1", headers={"X-Request-Id": "edge-proxy.4f2a-91"})
    finally:
        app.extensions["directory"].close()
        app.extensions["rate_limits"].close()

    assert refused.status_code == 429
    assert refused.headers["X-Request-Id"] == "edge-proxy.4f2a-91"
    line = json.loads(caplog.records[-1].getMessage())
    assert line["status"] == 429
    assert line["request_id"] == "edge-proxy.4f2a-91"
    assert line["duration_ms"] >= 0


def test_several_limits_must_all_pass(migrated, redis_url):
    settings = Settings(
        environment="test",
        database_url=migrated.database_url,
        # In Redis the hour starts at the first search: counted in memory, it was the
        # clock's, and in its last minute Retry-After was rightly less than 60 s.
        rate_limit_storage_url=redis_url,
        search_rate_limit_anonymous="5 per minute; 2 per hour",
    )
    app = create_app(settings)
    try:
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = "192.0.2.202"  # its own counters
        responses = [client.get("/v1/search?limit=1") for _ in range(3)]
        assert [response.status_code for response in responses] == [200, 200, 429]
        refused = responses[-1]
        assert "at most 2 per 1 hour" in refused.json["message"]
        # The hour's wait, from the first search: not the minute's.
        assert 3000 < int(refused.headers["Retry-After"]) <= 3600
    finally:
        app.extensions["directory"].close()
        app.extensions["rate_limits"].close()


def test_searches_are_counted_in_the_shared_store_again_once_it_is_back(
    migrated, tmp_path, monkeypatch
):
    import redis

    from directory.api import ratelimit

    monkeypatch.setattr(ratelimit, "RETRY_SHARED_STORE_AFTER_S", 0.5)
    port = free_port()
    settings = Settings(
        environment="test",
        database_url=migrated.database_url,
        rate_limit_storage_url=f"redis://127.0.0.1:{port}/0",
    )
    app = create_app(settings)
    server = None
    try:
        client = app.test_client()
        assert client.get("/v1/search?limit=1").status_code == 200  # nothing listens yet
        server = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
             "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        store = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                store.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        time.sleep(0.6)  # past the pause after the failure
        assert client.get("/v1/search?limit=1").status_code == 200
        assert store.keys("*directory-search*"), "the search was not counted in Redis"
        store.close()
    finally:
        app.extensions["directory"].close()
        app.extensions["rate_limits"].close()
        if server is not None:
            server.terminate()
            server.wait(timeout=10)


def test_an_ipv6_client_is_counted_by_its_64_network_not_by_each_address(migrated, redis_url):
    # A subscriber gets a /64: counted per address, it had 2^64 budgets, one an address.
    settings = Settings(
        environment="test",
        database_url=migrated.database_url,
        rate_limit_storage_url=redis_url,  # a window from the first search
        search_rate_limit_anonymous="2 per minute",
    )
    network = f"2001:db8:{uuid.uuid4().int % 0xFFFF:x}:{uuid.uuid4().int % 0xFFFF:x}"
    app = create_app(settings)
    try:
        client = app.test_client()

        def search_from(address: str) -> int:
            client.environ_base["REMOTE_ADDR"] = address
            return client.get("/v1/search?limit=1").status_code

        statuses = [search_from(f"{network}::{n}") for n in range(1, 4)]
        assert statuses == [200, 200, 429]
        assert search_from(f"{network}:ffff:ffff:ffff:ffff") == 429  # the same /64
        assert search_from(f"{network[:-1]}{int(network[-1], 16) ^ 1:x}::1") == 200  # another
    finally:
        app.extensions["directory"].close()
        app.extensions["rate_limits"].close()


def test_an_ipv4_client_is_one_client_as_an_ipv4_mapped_ipv6_address_too(migrated, redis_url):
    # A dual-stack socket gives IPv4 clients as ::ffff:a.b.c.d.
    settings = Settings(
        environment="test",
        database_url=migrated.database_url,
        rate_limit_storage_url=redis_url,
        search_rate_limit_anonymous="1 per minute",
    )
    address = f"198.18.{uuid.uuid4().int % 256}.{uuid.uuid4().int % 256}"
    app = create_app(settings)
    try:
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = address
        assert client.get("/v1/search?limit=1").status_code == 200
        client.environ_base["REMOTE_ADDR"] = f"::ffff:{address}"
        assert client.get("/v1/search?limit=1").status_code == 429
    finally:
        app.extensions["directory"].close()
        app.extensions["rate_limits"].close()
