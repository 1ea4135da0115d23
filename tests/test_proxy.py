"""The API behind nginx as deploy/nginx.conf.template sets it up (docker-compose.yml's
`proxy`): the real `directory serve` (gunicorn's sync workers) on 127.0.0.1, the real
nginx of the Debian package in front of it, with the template as it is.

What nginx is there for: gunicorn's sync workers read one request at a time each, so a
few clients sending their requests slowly stop the whole API; nginx reads requests whole
before passing them on. Also checked: its refusals are the API's JSON, and the client
address the API sees (rate limits count by it) cannot be made up by the client."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
import requests

from directory.localdb import free_port

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "deploy" / "nginx.conf.template"
STARTUP_S = 30.0
API_WORKERS = 2
# Connections that send part of a request and then nothing: more than the API has
# processes, many times over.
SLOW_CLIENTS = 20
# How long a request through the proxy may wait for its answer while they hang on.
PROMPT_S = 5.0

pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
    reason="nginx is not installed (make test installs it)",
)


def _nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def _wait_for(url: str, process: subprocess.Popen, what: str, *, any_answer=False) -> None:
    """Until `url` answers 200 (or anything at all, with `any_answer`)."""
    deadline = time.monotonic() + STARTUP_S
    while True:
        assert process.poll() is None, f"{what} exited"
        with contextlib.suppress(requests.RequestException):
            status = requests.get(url, timeout=1).status_code
            if any_answer or status == 200:
                return
        assert time.monotonic() < deadline, f"{what} did not start in {STARTUP_S:g} s"
        time.sleep(0.1)


@contextmanager
def directory_serve(env: dict[str, str], folder: Path) -> Iterator[str]:
    """`directory serve` as in production, on a free port; yields its address."""
    address = f"127.0.0.1:{free_port()}"
    with (folder / "serve.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "directory", "serve", "--bind", address,
             "--workers", str(API_WORKERS)],
            env={**os.environ, **env},
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            _wait_for(f"http://{address}/healthz", process, "directory serve")
            yield address
        finally:
            process.terminate()
            process.wait(timeout=30)


@contextmanager
def nginx(upstream: str, folder: Path) -> Iterator[str]:
    """nginx with deploy/nginx.conf.template in front of `upstream`; yields its URL."""
    port = free_port()
    site = TEMPLATE.read_text()
    site = site.replace("${DIRECTORY_UPSTREAM}", upstream).replace("${PROXY_PORT}", str(port))
    # The image's log file (its stdout), here in `folder`.
    site = site.replace("/var/log/nginx/access.log", f"{folder}/access.log")
    (folder / "site.conf").write_text(site)
    # What the official image's own nginx.conf provides around conf.d/*.conf, in `folder`.
    user = "user root;" if os.geteuid() == 0 else ""  # its workers must write in `folder`
    (folder / "nginx.conf").write_text(
        f"""{user}
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log;
events {{ worker_connections 512; }}
http {{
    access_log {folder}/access.log;
    client_body_temp_path {folder}/client_body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    include {folder}/site.conf;
}}
"""
    )
    with (folder / "nginx.stderr").open("w") as log:
        process = subprocess.Popen(
            [_nginx_binary(), "-p", str(folder), "-c", str(folder / "nginx.conf"),
             "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_for(url + "/healthz", process, "nginx", any_answer=True)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


@pytest.fixture
def api_env(migrated, redis_url) -> dict[str, str]:
    # A Redis database of its own, emptied: the rate-limit test counts from zero.
    limits_url = redis_url.rsplit("/", 1)[0] + "/7"
    redis.Redis.from_url(limits_url).flushdb()
    return {
        "DIRECTORY_ENVIRONMENT": "test",
        "DIRECTORY_DATABASE_URL": migrated.database_url,
        "DIRECTORY_RATE_LIMIT_STORAGE_URL": limits_url,
        "DIRECTORY_SEARCH_RATE_LIMIT_ANONYMOUS": "3 per minute",
        "DIRECTORY_TRUSTED_PROXIES": "1",
        "DIRECTORY_LOG_LEVEL": "WARNING",
    }


@pytest.fixture
def api(api_env, tmp_path) -> Iterator[str]:
    with directory_serve(api_env, tmp_path) as address:
        yield address


@pytest.fixture
def proxy(api, tmp_path) -> Iterator[str]:
    folder = tmp_path / "nginx"
    folder.mkdir()
    with nginx(api, folder) as url:
        yield url


@contextmanager
def slow_clients(address: str, count: int) -> Iterator[None]:
    """`count` connections, each sending the start of a request and then nothing: half of
    them stop in the headers, half in the body."""
    host, port = address.removeprefix("http://").rsplit(":", 1)
    connections = []
    try:
        for number in range(count):
            connection = socket.create_connection((host, int(port)), timeout=5)
            connections.append(connection)
            if number % 2:
                connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: directory\r\n")
            else:
                connection.sendall(
                    b"PUT /v1/ads/slow HTTP/1.1\r\nHost: directory\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
                )
        time.sleep(0.5)  # for every one of them to reach whoever reads it
        yield
    finally:
        for connection in connections:
            connection.close()


def test_without_the_proxy_a_few_slow_clients_stop_the_api(api):
    with slow_clients(api, API_WORKERS + 1), pytest.raises(requests.Timeout):
        requests.get(f"http://{api}/healthz", timeout=3)


def test_behind_the_proxy_slow_clients_hold_nothing(proxy):
    with slow_clients(proxy, SLOW_CLIENTS):
        for _ in range(5):  # each in time (without the proxy, never: the test above)
            answer = requests.get(f"{proxy}/v1/categories", timeout=PROMPT_S)
            assert answer.status_code == 200


def test_a_body_beyond_the_apis_limit_is_refused_in_the_apis_json(proxy, portal):
    for size_mib in (17, 21):  # the API's own refusal, then the proxy's
        answer = requests.put(
            f"{proxy}/v1/ads/too-large",
            data=b" " * (size_mib * 1024 * 1024),
            headers={"Content-Type": "application/json", **portal.headers},
            timeout=30,
        )
        assert answer.status_code == 413, size_mib
        assert answer.headers["Content-Type"] == "application/json"
        assert answer.json()["error"] == "request_too_large", size_mib


def test_the_api_down_is_a_json_503_to_retry(tmp_path):
    with nginx(f"127.0.0.1:{free_port()}", tmp_path) as url:  # nothing listens there
        answer = requests.get(f"{url}/v1/categories", timeout=10)

    assert answer.status_code == 503
    assert answer.json()["error"] == "unavailable"
    assert answer.headers["Retry-After"] == "5"


def test_the_client_address_is_the_one_nginx_saw_whatever_the_client_claims(proxy):
    """The API believes one proxy's X-Forwarded-For (DIRECTORY_TRUSTED_PROXIES=1): nginx
    appends the address it saw, so a made-up one earlier in the header changes nothing.
    Anonymous searches are limited per address (3 a minute here)."""
    statuses = [
        requests.get(
            f"{proxy}/v1/search?q=bike",
            headers={"X-Forwarded-For": f"203.0.113.{number}"},
            timeout=10,
        ).status_code
        for number in range(4)
    ]

    assert statuses == [200, 200, 200, 429]


@pytest.mark.parametrize(
    ("length", "status", "error"),
    [
        (6_000, 400, "validation_error"),  # the API's; gunicorn's default refused it in HTML
        (9_000, 414, "request_line_too_long"),  # nginx's refusal
    ],
)
def test_a_long_request_line_is_answered_in_json(proxy, length, status, error):
    answer = requests.get(f"{proxy}/v1/categories?x={'a' * length}", timeout=10)

    assert answer.status_code == status
    assert answer.json()["error"] == error


def test_a_header_too_large_is_refused_in_json(proxy):
    answer = requests.get(f"{proxy}/v1/categories", headers={"X-Big": "a" * 9_000}, timeout=10)

    assert answer.status_code == 431
    assert answer.json()["error"] == "request_header_too_large"


def test_a_request_that_is_not_http_is_refused_in_json(proxy):
    host, port = proxy.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert json.loads(body)["error"] == "bad_request"


@pytest.mark.parametrize(
    ("count", "status"),
    [
        (150, 200),  # gunicorn's default of 100 fields refused them in HTML
        (5_000, 431),  # beyond nginx's buffers: its refusal, in the API's JSON
    ],
)
def test_many_headers_are_taken_or_refused_in_json(proxy, count, status):
    headers = {f"X-Extra-{number}": "1" for number in range(count)}
    answer = requests.get(f"{proxy}/v1/categories", headers=headers, timeout=10)

    assert answer.status_code == status
    assert answer.headers["Content-Type"] == "application/json"
    if status != 200:
        assert answer.json()["error"] == "request_header_too_large"


def test_the_proxys_log_has_no_query_string_and_names_the_apis_request_id(proxy, portal, tmp_path):
    # nginx's default log line is the request line as sent: it wrote down the key of a
    # client sending it in the query string (which the API refuses so that it reaches no
    # log), the member handles of conversation filters and every search's words.
    refused = requests.get(f"{proxy}/v1/portals/me?api_key={portal.key}", timeout=10)
    # And a key pasted as a path segment: the API writes it down as cdir_[redacted] too.
    in_path = requests.get(f"{proxy}/v1/ads/{portal.key}", timeout=10)
    listed = requests.get(
        f"{proxy}/v1/conversations?member=m-secret-4242", headers=portal.headers, timeout=10
    )
    assert (refused.status_code, in_path.status_code, listed.status_code) == (400, 404, 200)

    log = tmp_path / "nginx" / "access.log"

    def lines() -> list[dict]:  # but the probes of nginx starting
        return [json.loads(line) for line in log.read_text().splitlines()][-3:]

    deadline = time.monotonic() + STARTUP_S
    while [line["path"] for line in lines()][-1:] != ["/v1/conversations"]:  # written once
        assert time.monotonic() < deadline, log.read_text()  # the answer is sent
        time.sleep(0.05)
    assert portal.key[:20] not in log.read_text()
    assert "m-secret-4242" not in log.read_text()
    assert [(line["path"], line["status"], line["request_id"]) for line in lines()] == [
        ("/v1/portals/me", 400, refused.headers["X-Request-Id"]),
        ("/v1/ads/cdir_[redacted]", 404, in_path.headers["X-Request-Id"]),
        ("/v1/conversations", 200, listed.headers["X-Request-Id"]),
    ]
