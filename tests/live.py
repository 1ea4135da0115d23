"""The test app served over real HTTP on 127.0.0.1, for clients that speak HTTP."""

from __future__ import annotations

import threading

from flask import Flask
from werkzeug.serving import make_server


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
