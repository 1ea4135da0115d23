"""Outside peers as real servers on 127.0.0.1, for tests and benchmarks.

WebhookReceiver plays a portal's webhook endpoint: it verifies signatures with the reference
Standard Webhooks package, records every request, answers as scripted (failures, delays,
redirects, huge bodies), and can go down and come back on the same port. Website plays a
portal's website, answering GET with the page set for each path. Trickling answers with
bytes of its choosing, a piece at a time: a peer that sends slowly, or without end."""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Self

from standardwebhooks import Webhook, WebhookVerificationError

WAIT_TIMEOUT_S = 10.0
# A client that keeps a connection open without a word is dropped after this long.
IDLE_CONNECTION_TIMEOUT_S = 30.0
WRITE_PIECE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Reply:
    """How the receiver answers one request."""

    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # waited before answering (cut short when the receiver stops)
    body: bytes = b""
    # A body written piece by piece, pausing between pieces: a receiver that trickles.
    body_piece_bytes: int = WRITE_PIECE_BYTES
    pause_between_pieces_s: float = 0.0


@dataclass
class ReceivedWebhook:
    """One request as the receiver saw it. Appended on arrival; the last two fields are
    filled in once the answer has been written (or the client has gone)."""

    webhook_id: str | None
    timestamp: int | None
    headers: dict[str, str]  # names in lower case
    path: str
    raw_body: bytes
    body: object  # the parsed JSON; None when the body is not JSON
    verified: bool
    duplicate: bool  # an id this receiver had already accepted
    received_at: float  # time.monotonic()
    client_port: int  # the same port for requests over one kept-alive connection
    reply: Reply  # chosen once the rest is known: a responder sees the default here
    answered_at: float | None = None
    reply_bytes_sent: int = 0


Responder = Callable[[ReceivedWebhook], Reply]


class Peer:
    """A server on 127.0.0.1 answering with `handler`: start()/stop(), or a context manager.
    A handler that waits (a slow peer) waits on `self.server.stopping`, which stop() sets.
    `tls_certificate`: a PEM file holding a certificate for "localhost" and its key; the
    peer then speaks https."""

    def __init__(self, *, port: int | None = None, tls_certificate: Path | None = None) -> None:
        self.port = port
        self._tls: ssl.SSLContext | None = None
        if tls_certificate is not None:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(tls_certificate)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        """Listen (again): on the port given, or on the one chosen at the first start."""
        if self._server is not None:
            raise RuntimeError("the peer is running already")
        self._server = _Server(("127.0.0.1", self.port or 0), self, self._tls, self.handler())
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop open connections, as a portal that goes down would."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
        server.shutdown()
        server.drop_connections()
        server.server_close()  # waits for the request threads
        thread.join()

    def handler(self) -> type[socketserver.BaseRequestHandler]:
        """How the peer answers requests (an HTTP handler, or a raw one for a peer that
        writes its own bytes)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        if self.port is None:
            raise RuntimeError("start the peer first: its port is chosen then")
        if self._tls is not None:
            return f"https://localhost:{self.port}"
        return f"http://127.0.0.1:{self.port}"


class WebhookReceiver(Peer):
    """A portal's webhook endpoint at `url`. Use as a context manager, or start()/stop().

    Answers, in this order of precedence: 401 to a request no secret verifies; 200 to an id
    already accepted (as a deduplicating portal would; the repeat is still recorded, with
    duplicate=True); the next queued reply (reply_next, fail_next); `responder`, if set;
    else 204. `secrets` may be replaced at any time (secret rotation)."""

    def __init__(
        self,
        secrets: Sequence[str],
        *,
        port: int | None = None,
        responder: Responder | None = None,
        deduplicate: bool = True,
        tls_certificate: Path | None = None,
    ) -> None:
        """`tls_certificate`: see Peer; `url` then names localhost."""
        super().__init__(port=port, tls_certificate=tls_certificate)
        self.secrets = list(secrets)
        self.responder = responder
        self.deduplicate = deduplicate
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._deliveries: list[ReceivedWebhook] = []
        self._accepted_ids: set[str] = set()
        self._queued: deque[Reply] = deque()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        return _WebhookHandler

    @property
    def url(self) -> str:
        return f"{self.origin}/hook"

    # --- scripting the answers ---

    def reply_next(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, in order."""
        with self._lock:
            self._queued.extend(replies)

    def fail_next(
        self, count: int, *, status: int = 500, headers: dict[str, str] | None = None
    ) -> None:
        """Answer the next `count` requests with `status` (and these headers)."""
        self.reply_next(*[Reply(status=status, headers=headers or {})] * count)

    def respond_gone(self) -> None:
        """From now on, answer 410: the endpoint is gone for good."""
        self.responder = lambda _request: Reply(status=410)

    # --- what was received ---

    @property
    def deliveries(self) -> list[ReceivedWebhook]:
        """Every request so far, in order of arrival (a copy)."""
        with self._lock:
            return list(self._deliveries)

    def unique_ids(self) -> list[str]:
        """The webhook ids received, each once, in order of first arrival."""
        return list(self.by_id())

    def by_id(self) -> dict[str, list[ReceivedWebhook]]:
        grouped: dict[str, list[ReceivedWebhook]] = {}
        for delivery in self.deliveries:
            if delivery.webhook_id is not None:
                grouped.setdefault(delivery.webhook_id, []).append(delivery)
        return grouped

    def wait_for(
        self,
        until: int | Callable[[list[ReceivedWebhook]], bool],
        timeout_s: float = WAIT_TIMEOUT_S,
    ) -> list[ReceivedWebhook]:
        """Wait until `until` requests have arrived, or until `until(deliveries)` is true
        (checked at each arrival and answer); return the deliveries. Fails the test after
        `timeout_s`."""
        if isinstance(until, int):
            count = until

            def satisfied(deliveries: list[ReceivedWebhook]) -> bool:
                return len(deliveries) >= count
        else:
            satisfied = until
        with self._changed:
            if self._changed.wait_for(lambda: satisfied(list(self._deliveries)), timeout_s):
                return list(self._deliveries)
            received = len(self._deliveries)
        raise AssertionError(f"still waiting after {timeout_s} s; {received} requests received")

    # --- called by the request handler ---

    def _record(
        self, *, path: str, headers: dict[str, str], raw_body: bytes, client_port: int
    ) -> ReceivedWebhook:
        received_at = time.monotonic()
        verified, body = _verify(raw_body, headers, self.secrets)
        webhook_id = headers.get("webhook-id")
        with self._changed:
            delivery = ReceivedWebhook(
                webhook_id=webhook_id,
                timestamp=_int_or_none(headers.get("webhook-timestamp")),
                headers=headers,
                path=path,
                raw_body=raw_body,
                body=body,
                verified=verified,
                duplicate=webhook_id in self._accepted_ids,
                received_at=received_at,
                client_port=client_port,
                reply=Reply(),
            )
            if not verified:
                delivery.reply = Reply(status=401)
            elif delivery.duplicate and self.deduplicate:
                delivery.reply = Reply(status=200)
            elif self._queued:
                delivery.reply = self._queued.popleft()
            elif self.responder is not None:
                delivery.reply = self.responder(delivery)
            if verified and webhook_id and 200 <= delivery.reply.status < 300:
                self._accepted_ids.add(webhook_id)
            self._deliveries.append(delivery)
            self._changed.notify_all()
        return delivery

    def _answered(self, delivery: ReceivedWebhook, bytes_sent: int) -> None:
        with self._changed:
            delivery.reply_bytes_sent = bytes_sent
            delivery.answered_at = time.monotonic()
            self._changed.notify_all()


def _verify(
    raw_body: bytes, headers: dict[str, str], secrets: Iterable[str]
) -> tuple[bool, object]:
    for secret in list(secrets):
        try:
            return True, Webhook(secret).verify(raw_body, headers)
        except (WebhookVerificationError, ValueError):  # ValueError: bad base64, not UTF-8
            continue
    try:
        return False, json.loads(raw_body)
    except ValueError:
        return False, None


class Website(Peer):
    """A portal's website: answers GET with the reply set in `pages` for the path asked
    (404 elsewhere), and records the paths asked, in order, in `requests`."""

    def __init__(
        self,
        pages: dict[str, Reply] | None = None,
        *,
        port: int | None = None,
        tls_certificate: Path | None = None,
    ) -> None:
        """`tls_certificate`: see Peer; `url` then names localhost."""
        super().__init__(port=port, tls_certificate=tls_certificate)
        self.pages = dict(pages or {})
        self._lock = threading.Lock()
        self._requests: list[str] = []

    def handler(self) -> type[BaseHTTPRequestHandler]:
        return _WebsiteHandler

    @property
    def url(self) -> str:
        """The website, as a portal gives it."""
        return self.origin

    @property
    def requests(self) -> list[str]:
        with self._lock:
            return list(self._requests)

    def _answer(self, path: str) -> Reply:
        with self._lock:
            self._requests.append(path)
            return self.pages.get(path, Reply(status=404, body=b"not found"))


class Trickling(Peer):
    """A loopback server answering each request with `head` at once, then each piece of
    `pieces()` `pause_s` after the one before, until they run out, the client leaves or
    the server stops. `answered` counts the requests that came."""

    def __init__(
        self, head: bytes, pieces: Callable[[], Iterable[bytes]], *, pause_s: float
    ) -> None:
        super().__init__()
        self.head = head
        self.pieces = pieces
        self.pause_s = pause_s
        self.answered = 0

    def handler(self) -> type[socketserver.BaseRequestHandler]:
        trickling = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.recv(65536)  # the request: these tests send small ones
                trickling.answered += 1
                try:
                    self.request.sendall(trickling.head)
                    for piece in trickling.pieces():
                        if self.server.stopping.wait(trickling.pause_s):
                            return
                        self.request.sendall(piece)
                except OSError:  # the client gave up
                    return

        return Handler


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class _Server(ThreadingHTTPServer):
    # Request threads are joined on close, so that a stopped receiver is really quiet.
    daemon_threads = False
    # socketserver's backlog of 5 resets connections of a burst before they are accepted;
    # a portal's real server takes one (nginx: 511).
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        peer: Peer,
        tls: ssl.SSLContext | None,
        handler: type[socketserver.BaseRequestHandler],
    ) -> None:
        self.peer = peer
        self.tls = tls
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer's own would look the address up in DNS (getfqdn) for nothing.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        connection, client_address = super().get_request()
        if self.tls is not None:
            # The handshake happens in the request's thread (see _Handler.setup).
            connection = self.tls.wrap_socket(
                connection, server_side=True, do_handshake_on_connect=False
            )
        return connection, client_address

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            if self.stopping.is_set():
                _shut(connection)
            else:
                self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def drop_connections(self) -> None:
        """Close kept-alive connections and cut delays short: their threads then end."""
        with self._connections_lock:
            self.stopping.set()
            connections = list(self._connections)
        for connection in connections:
            _shut(connection)

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients that give up (timeouts, capped reads) and refused TLS handshakes are
        # what these tests provoke; anything else is a bug in the receiver and is shown.
        error = sys.exc_info()[1]
        if not isinstance(error, ConnectionError | ssl.SSLError | TimeoutError):
            super().handle_error(request, client_address)


def _shut(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the client
        connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the sender's connection pools expect
    timeout = IDLE_CONNECTION_TIMEOUT_S
    server: _Server

    def setup(self) -> None:
        self.server.track(self.request)
        try:
            super().setup()
            if isinstance(self.request, ssl.SSLSocket):
                self.request.do_handshake()
        except BaseException:
            self.server.untrack(self.request)  # finish() is not called after a failed setup
            raise

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.request)

    def write_reply(self, reply: Reply) -> None:
        """Answer as `reply` says, counting the body's bytes sent in `bytes_sent`."""
        self.bytes_sent = 0
        if reply.delay_s:
            self.server.stopping.wait(reply.delay_s)
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(reply.body)))
        self.end_headers()
        for start in range(0, len(reply.body), reply.body_piece_bytes):
            if start and reply.pause_between_pieces_s:
                self.server.stopping.wait(reply.pause_between_pieces_s)
            piece = reply.body[start : start + reply.body_piece_bytes]
            self.wfile.write(piece)
            self.bytes_sent += len(piece)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: tests look at what the peer recorded, not at an access log."""


class _WebhookHandler(_Handler):
    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw_body = self.rfile.read(length)
        receiver = self.server.peer
        delivery = receiver._record(
            path=self.path,
            headers={name.lower(): value for name, value in self.headers.items()},
            raw_body=raw_body,
            client_port=self.client_address[1],
        )
        try:
            self.write_reply(delivery.reply)
        finally:
            receiver._answered(delivery, self.bytes_sent)


class _WebsiteHandler(_Handler):
    def do_GET(self) -> None:
        self.write_reply(self.server.peer._answer(self.path))
