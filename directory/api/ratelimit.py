"""Rate limits on the anonymous reads that cost the most, search and the change feed,
counted in a store every worker process shares (Redis).

Anonymous requests are limited per client address (an IPv6 client per /64 network, the
block one subscriber gets: counted per address, it would have 2^64 budgets), a portal's
(sent with its key) per portal, at a higher limit; searches and feed pages each have a budget of their own, of
the same size. A refused request costs one Redis round trip and no database work, so a
client flooding the API spends its own budget, not the others' capacity.

Built on `limits`, the library under Flask-Limiter (same maintainers: its storages and
its sliding-window counter, one Redis script call per search). Flask-Limiter itself
spent 0.25 ms a search resolving decorators, exemptions and request look-ups, a quarter
of the API's own time per search, for one check that is a few lines here.

Successful searches carry no X-RateLimit-* headers (reading the window for them would be
one more round trip); a refused search says when to come back in Retry-After."""

from __future__ import annotations

import functools
import ipaddress
import logging
import math
import time

import redis
from flask import Flask, Response, request
from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

from directory.api.auth import calling_portal
from directory.api.errors import envelope
from directory.settings import Settings

log = logging.getLogger(__name__)

# The limited blueprints, by name: where their counters are kept, and what a refusal
# calls their requests.
LIMITED = {"search": ("directory-search", "searches"), "feed": ("directory-feed", "feed pages")}
# A store that fails is left alone this long (each process counts in its own memory
# meanwhile), so that a Redis outage costs one failed call per interval, not per search.
RETRY_SHARED_STORE_AFTER_S = 30.0
STORE_TIMEOUT_S = 0.5  # a hung Redis must not hold searches up
# An IPv6 client is counted by its network: RFC 6177 gives a subscriber a /64 at the
# least (a home line, a VPS), and every one of its 2^64 addresses is theirs to send from.
IPV6_CLIENT_PREFIX = 64


@functools.lru_cache(maxsize=4096)
def client_of_address(remote_addr: str | None) -> str:
    """The anonymous client an address counts as: an IPv4 address (also written as an
    IPv4-mapped IPv6 one, as a dual-stack socket gives it), or an IPv6 address's /64."""
    try:
        address = ipaddress.ip_address((remote_addr or "").partition("%")[0])
    except ValueError:
        return f"address:{remote_addr}"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return f"address:{address.ipv4_mapped}"
        network = ipaddress.IPv6Network((address, IPV6_CLIENT_PREFIX), strict=False)
        return f"network:{network}"
    return f"address:{address}"


class RateLimits:
    def __init__(self, settings: Settings):
        url = settings.rate_limit_storage_url
        self._pool = None
        options: dict = {"wrap_exceptions": True}
        if url.startswith(("redis://", "rediss://")):
            # Our own pool, to close it with the app (and with timeouts of our choosing).
            self._pool = redis.ConnectionPool.from_url(
                url, socket_timeout=STORE_TIMEOUT_S, socket_connect_timeout=STORE_TIMEOUT_S
            )
            options["connection_pool"] = self._pool
        self._shared = SlidingWindowCounterRateLimiter(storage_from_string(url, **options))
        self._local = SlidingWindowCounterRateLimiter(MemoryStorage())
        self._shared_failed_at: float | None = None
        # Several limits may be given ("10 per second; 120 per minute"): each is one
        # round trip, and a search must pass them all.
        self.anonymous = parse_many(settings.search_rate_limit_anonymous)
        self.portal = parse_many(settings.search_rate_limit_portal)

    def refusal(
        self, limits: list[RateLimitItem], client: str, *, namespace: str
    ) -> tuple[RateLimitItem, int] | None:
        """Counts one request of `client`: None if allowed, else the limit it broke and
        the seconds to wait."""
        limiter = self._limiter()
        try:
            for limit in limits:
                if not limiter.hit(limit, namespace, client):
                    reset_time, _remaining = limiter.get_window_stats(limit, namespace, client)
                    # The window's own reset time, never beyond the window itself.
                    wait = math.ceil(reset_time - time.time())
                    return limit, min(max(1, wait), limit.get_expiry())
        except StorageError:
            log.warning("rate limit store unavailable; counting in this process for now")
            self._shared_failed_at = time.monotonic()
            return self.refusal(limits, client, namespace=namespace)
        return None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.disconnect()

    def _limiter(self) -> SlidingWindowCounterRateLimiter:
        failed_at = self._shared_failed_at
        if failed_at is not None and time.monotonic() - failed_at < RETRY_SHARED_STORE_AFTER_S:
            return self._local
        return self._shared


def install_rate_limits(app: Flask, settings: Settings) -> None:
    rate_limits = RateLimits(settings)
    app.extensions["rate_limits"] = rate_limits

    @app.before_request
    def limit_costly_reads() -> Response | None:
        limited = LIMITED.get(request.blueprint or "")
        if limited is None:
            return None
        namespace, what = limited
        viewer = calling_portal()  # a wrong key is refused here, before any counting
        if viewer is None:
            limits, client = rate_limits.anonymous, client_of_address(request.remote_addr)
        else:
            limits, client = rate_limits.portal, f"portal:{viewer.id}"
        refusal = rate_limits.refusal(limits, client, namespace=namespace)
        if refusal is None:
            return None
        limit, retry_after = refusal
        response = envelope(
            429,
            error="rate_limited",
            message=f"Too many {what} from this client (at most {limit}); try again "
            f"in {retry_after} s, as the Retry-After header says.",
        )
        response.headers["Retry-After"] = str(retry_after)
        return response
