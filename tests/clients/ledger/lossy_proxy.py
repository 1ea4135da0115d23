"""A real TCP proxy on 127.0.0.1 in front of a ledger node that loses answers on purpose:
it forwards a chosen request, lets the node act on it, and never passes the answer back,
so that the client times out not knowing what happened. It can then go down entirely,
answer in the node's place (a node that fails after acting), or drip an answer that never
ends (a byte now and then: each of the client's reads is answered in time).

One request per connection, as the reference node (php -S, Connection: close) works."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

IO_TIMEOUT_S = 10.0
# How long a lost answer keeps the client's connection open without a word: well past
# the client's timeout, so the client is the one that gives up.
HOLD_LOST_ANSWER_S = 5.0
# A dripped answer: its head, then a space every DRIP_PAUSE_S until the client leaves or
# the proxy goes down.
DRIPPED_HEAD = (
    b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
)
DRIP_PAUSE_S = 0.1


@dataclass
class LoseAnswer:
    method: str
    path_prefix: str
    go_down_after: bool = False  # refuse every connection once the answer is lost
    # Called with the request's path once the node has acted on it, before the client
    # hears anything: what someone else does on the node meanwhile.
    then: Callable[[str], None] | None = None
    # Sent instead of the node's answer (the node acted), rather than nothing.
    replacement: bytes | None = None
    drip: bool = False  # DRIPPED_HEAD and spaces without end, rather than nothing


@dataclass
class Forwarded:
    method: str
    path: str
    answer_lost: bool


@dataclass
class LossyProxy:
    upstream_port: int
    forwarded: list[Forwarded] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rules: list[LoseAnswer] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._threads: list[threading.Thread] = []
        self._down = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def lose_next_answer(
        self,
        method: str,
        path_prefix: str,
        *,
        go_down_after: bool = False,
        then: Callable[[str], None] | None = None,
    ) -> None:
        with self._lock:
            self._rules.append(LoseAnswer(method, path_prefix, go_down_after, then))

    def replace_next_answer(self, method: str, path_prefix: str, answer: bytes) -> None:
        """Forward the next such request, then answer `answer` (raw HTTP) in the node's
        place: a node that fails after it has acted."""
        with self._lock:
            self._rules.append(LoseAnswer(method, path_prefix, replacement=answer))

    def drip_next_answer(self, method: str, path_prefix: str) -> None:
        """Forward the next such request, then send a head and a body a space at a time,
        without end, in the node's place."""
        with self._lock:
            self._rules.append(LoseAnswer(method, path_prefix, drip=True))

    def go_down(self) -> None:
        """Stop listening: from now on connections are refused."""
        self._down.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()

    def close(self) -> None:
        if not self._down.is_set():
            self.go_down()
        self._acceptor.join(IO_TIMEOUT_S)
        for thread in self._threads:
            thread.join(IO_TIMEOUT_S + HOLD_LOST_ANSWER_S)

    def __enter__(self) -> LossyProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._down.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            client.settimeout(IO_TIMEOUT_S)
            request = _read_request(client)
            if request is None:
                return
            method, path = request.split(b" ", 2)[:2]
            method_text, path_text = method.decode(), path.decode()
            rule = self._take_rule(method_text, path_text)
            with socket.create_connection(
                ("127.0.0.1", self.upstream_port), IO_TIMEOUT_S
            ) as upstream:
                upstream.sendall(request)
                answer = _read_until_closed(upstream)
            self.forwarded.append(Forwarded(method_text, path_text, answer_lost=rule is not None))
            if rule is None:
                client.sendall(answer)
                return
            if rule.then is not None:
                rule.then(path_text)
            if rule.replacement is not None:
                client.sendall(rule.replacement)
                return
            if rule.drip:
                with contextlib.suppress(OSError):  # until the client gives up
                    client.sendall(DRIPPED_HEAD)
                    while not self._down.wait(DRIP_PAUSE_S):
                        client.sendall(b" ")
                return
            if rule.go_down_after:
                self.go_down()
            # Say nothing until the client gives up (it reads EOF) or the hold ends.
            client.settimeout(HOLD_LOST_ANSWER_S)
            with contextlib.suppress(OSError):
                while client.recv(4096):
                    pass

    def _take_rule(self, method: str, path: str) -> LoseAnswer | None:
        with self._lock:
            for rule in self._rules:
                if rule.method == method and path.startswith(rule.path_prefix):
                    self._rules.remove(rule)
                    return rule
        return None


def _read_request(connection: socket.socket) -> bytes | None:
    """One whole HTTP request (head and Content-Length body), as raw bytes."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = connection.recv(65536)
        if not piece:
            return None
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        piece = connection.recv(65536)
        if not piece:
            return None
        body += piece
    # Ask the node to close after answering, so its answer ends where the stream ends.
    head = b"\r\n".join(
        line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")
    )
    return head + b"\r\nConnection: close\r\n\r\n" + body


def _read_until_closed(connection: socket.socket) -> bytes:
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)
