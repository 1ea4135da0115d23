"""Rate limits on search, counted in a store every worker process shares (Redis).

Anonymous searches are limited per client address, a portal's searches per portal
(a higher limit). A refused request costs one Redis round trip and no database work,
so a client flooding the API spends its own budget, not the others' capacity.

Each limit is one Redis round trip per search, which is why the defaults are one
limit each and why successful searches carry no X-RateLimit-* headers (reading the
window for them is one more round trip); a refused search says when to come back in
Retry-After."""

from __future__ import annotations

import math
import time

from flask import Flask, Response, request
from flask_limiter import Limiter, RequestLimit

from directory.api.db import wiring
from directory.api.errors import envelope
from directory.settings import Settings


def install_rate_limits(app: Flask, settings: Settings, *, search_blueprint) -> Limiter:
    limiter = Limiter(
        key_func=_client,
        app=app,
        storage_uri=settings.rate_limit_storage_url,
        # A sliding window: no doubled burst at the edge of a fixed window, and only
        # two counters per client in Redis.
        strategy="sliding-window-counter",
        headers_enabled=False,
        # Redis down: count in each process's memory for a while rather than fail searches.
        swallow_errors=True,
        in_memory_fallback_enabled=True,
        key_prefix="directory",
    )
    limiter.limit(_limit_for_client, key_func=_client, on_breach=_refuse)(search_blueprint)
    return limiter


def _client() -> str:
    from directory.api.search.routes import search_viewer

    viewer = search_viewer()
    if viewer is not None:
        return f"portal:{viewer.id}"
    return f"address:{request.remote_addr}"


def _limit_for_client() -> str:
    from directory.api.search.routes import search_viewer

    settings = wiring().settings
    if search_viewer() is not None:
        return settings.search_rate_limit_portal
    return settings.search_rate_limit_anonymous


def _refuse(limit: RequestLimit) -> Response:
    # The window's own reset time: RequestLimit.reset_at rounds up and adds a second.
    reset_time, _remaining = limit.window
    retry_after = min(max(1, math.ceil(reset_time - time.time())), limit.limit.get_expiry())
    response = envelope(
        429,
        error="rate_limited",
        message=f"Too many searches from this client (at most {limit.limit}); try again "
        f"in {retry_after} s, as the Retry-After header says.",
    )
    response.headers["Retry-After"] = str(retry_after)
    return response
