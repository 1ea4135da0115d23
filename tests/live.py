"""The test app served over real HTTP on 127.0.0.1, for clients that speak HTTP."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask
from werkzeug.serving import make_server

from directory.settings import Settings
from tests.apps import app_with


class LiveDirectory:
    """Serves `app` from a thread, one thread per request, until stopped."""

    def __init__(self, app: Flask):
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="live-directory", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def __enter__(self) -> LiveDirectory:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@contextmanager
def live_directory(settings: Settings) -> Iterator[LiveDirectory]:
    """An app of its own on `settings` (the test database with other limits, say),
    served live; its connections are closed afterwards."""
    with app_with(settings) as app, LiveDirectory(app) as server:
        yield server
