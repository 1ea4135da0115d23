"""What sending a webhook (delivery.py) and fetching a portal's website (fetch.py) share:
connecting to an address that was checked (never to the name again: DNS rebinding gains
nothing), reading an answer bounded in size and time, and saying in one short line what
went wrong."""

from __future__ import annotations

import http.client
import io
import socket
import time
from collections.abc import Callable
from contextvars import ContextVar

import urllib3
import urllib3.connection
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from directory.text import SINGLE_LINE_REFUSED
from directory.webhooks.urls import WebhookTarget

# How much of a text from elsewhere (an answer's body, an error) a message quotes.
ERROR_BODY_CHARS = 200


class RequestFailed(Exception):
    """No answer came; the message says why, naming the address tried. `logged`: the
    same without what the peer sent, for logs (describe_failure)."""

    def __init__(self, message: str, *, logged: str | None = None) -> None:
        super().__init__(message)
        self.logged = message if logged is None else logged


# The deadline (time.monotonic()) of the exchange this thread is sending, for the answer
# it makes (_DeadlineResponse): urllib3 bounds each wait for a read, not their sum.
_DEADLINE: ContextVar[float | None] = ContextVar("outbound_deadline", default=None)


class _DeadlineReader(io.RawIOBase):
    """A socket's reads, none waiting past `deadline`; one asked for after it fails as a
    read timeout does. http.client reads the status line and headers (and skips any
    number of 1xx answers) as bytes come: a peer sending a byte within each read timeout
    held the thread for as long as it liked."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        # As http.client's own file: the socket stays open until this closes too.
        self._raw = sock.makefile("rb", buffering=0)
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int | None:
        remaining_s = self._deadline - time.monotonic()
        if remaining_s <= 0:
            raise TimeoutError("the exchange's deadline has passed")
        timeout_s = self._sock.gettimeout()
        self._sock.settimeout(remaining_s if timeout_s is None else min(timeout_s, remaining_s))
        try:
            return self._raw.readinto(buffer)
        finally:
            self._sock.settimeout(timeout_s)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineResponse(http.client.HTTPResponse):
    """An answer read within the deadline of the exchange that asked for it."""

    def __init__(self, sock: socket.socket, *args, **kwargs) -> None:
        super().__init__(sock, *args, **kwargs)
        deadline = _DEADLINE.get()
        if deadline is not None:
            self.fp.close()
            self.fp = io.BufferedReader(_DeadlineReader(sock, deadline))


class _HTTPConnection(urllib3.connection.HTTPConnection):
    response_class = _DeadlineResponse


class _HTTPSConnection(urllib3.connection.HTTPSConnection):
    response_class = _DeadlineResponse


class _HTTPConnectionPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSConnectionPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


def connection_pool(
    target: WebhookTarget,
    address: str,
    *,
    timeout: urllib3.Timeout,
    maxsize: int,
    ca_certs: str | None,
) -> urllib3.HTTPConnectionPool:
    """Connections to `address`, one of the checked addresses of `target`, speaking to
    it as `target.hostname`. `ca_certs`: a PEM file of the certificate authorities to
    trust instead of the system's (tests with their own authority)."""
    common = {
        "port": target.port,
        "maxsize": maxsize,
        # More threads than kept connections open extra ones rather than wait.
        "block": False,
        "timeout": timeout,
        "retries": False,
    }
    if target.scheme == "https":
        return _HTTPSConnectionPool(
            address,
            # SNI and certificate checks against the URL's name, not the address.
            server_hostname=target.hostname,
            assert_hostname=target.hostname,
            cert_reqs="CERT_REQUIRED",
            ca_certs=ca_certs,
            **common,
        )
    return _HTTPConnectionPool(address, **common)


def send_request(
    target: WebhookTarget,
    method: str,
    *,
    pool_for: Callable[[str], urllib3.HTTPConnectionPool],
    headers: dict[str, str],
    connect_timeout_s: float,
    read_timeout_s: float,
    deadline: float,
    body: bytes | None = None,
) -> urllib3.BaseHTTPResponse:
    """The answer of the first of `target`'s checked addresses that takes the connection
    (through `pool_for(address)`), its body left to read. No wait goes past `deadline`
    (time.monotonic()), and no other address is tried after it: a host may have dozens
    of addresses that never answer. Redirects are answers like any other."""
    last_error = None
    for address in target.addresses:
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            break
        token = _DEADLINE.set(deadline)
        try:
            return pool_for(address).urlopen(
                method,
                target.path_and_query,
                body=body,
                headers=headers,
                redirect=False,
                retries=False,
                timeout=urllib3.Timeout(
                    connect=connect_timeout_s, read=read_timeout_s, total=remaining_s
                ),
                preload_content=False,
                decode_content=False,
            )
        except ConnectTimeoutError as error:  # NewConnectionError too
            # Nothing was sent: another address of the host may answer.
            last_error = describe_failure(error, address=address, target=target)
        except (HTTPError, OSError) as error:
            late = time.monotonic() >= deadline
            raise RequestFailed(
                describe_failure(error, address=address, target=target, late=late),
                logged=describe_failure(
                    error, address=address, target=target, late=late, quoting_peer=False
                ),
            ) from None
        finally:
            _DEADLINE.reset(token)
    raise RequestFailed(last_error or "no time left to connect")


def read_capped(
    response: urllib3.BaseHTTPResponse,
    *,
    max_bytes: int,
    deadline: float,
    read_timeout_s: float,
    total_timeout_s: float,
) -> tuple[bytes, str | None]:
    """At most `max_bytes` of the body, and None if that was all of it, else why not. Each
    read waits at most `read_timeout_s`, and none goes past `deadline`, the one given to
    send_request (`total_timeout_s` after the exchange began). A body not read to its end
    leaves the connection unusable: it closes."""
    late = f"answer not complete within {total_timeout_s} s"
    content = bytearray()
    problem = f"answer longer than {max_bytes} bytes"
    try:
        while len(content) <= max_bytes:
            if time.monotonic() >= deadline:
                problem = late
                break
            # Each read waits at most until the exchange's deadline (_DeadlineReader).
            piece = response.read1(max_bytes + 1 - len(content))
            if not piece:
                return bytes(content), None
            content += piece
    except ReadTimeoutError:
        stalled = time.monotonic() < deadline
        problem = f"answer stalled for {read_timeout_s} s" if stalled else late
    except (HTTPError, OSError) as error:
        problem = f"answer cut short: {cause(error)}"
    response.close()
    return bytes(content[:max_bytes]), problem


def describe_failure(
    error: Exception,
    *,
    address: str,
    target: WebhookTarget,
    late: bool = False,
    quoting_peer: bool = True,
) -> str:
    """A short account of a network failure, naming the address tried. `late`: it came
    once the exchange's deadline had passed. Not `quoting_peer`: without what the peer
    sent, where that is the reason (an answer that is no HTTP: its first line, which may
    echo the request, a member's words, into logs that outlive an erasure), only the
    kind of failure."""
    where = f"{address} port {target.port}"
    if isinstance(error, NewConnectionError):
        return f"cannot connect to {where}: {cause(error)}"
    if isinstance(error, ConnectTimeoutError):
        return f"no connection to {where} within the connect timeout"
    if isinstance(error, ReadTimeoutError) and late:
        return f"no complete answer from {where} within the total timeout"
    if isinstance(error, ReadTimeoutError):
        return f"no answer from {where} within the read timeout"
    if isinstance(error, SSLError):
        return f"TLS error with {where} ({target.hostname}): {cause(error)}"
    reason = cause(error) if quoting_peer else type(_innermost(error)).__name__
    if isinstance(error, ProtocolError):
        return f"connection to {where} broken: {reason}"
    return f"request to {where} failed: {reason}"


def _innermost(error: BaseException) -> BaseException:
    """The exception that `error` was raised from, in the end; for urllib3's ProtocolError,
    the one it wraps (http.client's BadStatusLine, say)."""
    while error.__cause__ is not None:
        error = error.__cause__
    wrapped = error.args[1] if isinstance(error, ProtocolError) and len(error.args) > 1 else None
    return wrapped if isinstance(wrapped, BaseException) else error


def cause(error: BaseException) -> str:
    """The innermost reason, without urllib3's repetitions of the pool and URL."""
    while error.__cause__ is not None:
        error = error.__cause__
    if isinstance(error, OSError) and error.strerror:
        return quote(error.strerror)
    if isinstance(error, ProtocolError) and len(error.args) > 1:
        return quote(str(error.args[1]) or type(error.args[1]).__name__)
    return quote(str(error) or type(error).__name__)


def quote(text: str) -> str:
    """Text from elsewhere, on one line, printable and at most ERROR_BODY_CHARS long."""
    # PostgreSQL's text cannot hold NUL: one would roll back the whole round's outcomes.
    text = SINGLE_LINE_REFUSED.sub("\ufffd", " ".join(text.split()))
    return text if len(text) <= ERROR_BODY_CHARS else text[: ERROR_BODY_CHARS - 1] + "…"
