"""A portal tests its webhook: a signed `webhook.test` event, sent now to its URL, and
how the endpoint answered. So a portal sets up its receiver (the signature check, the
answer) before its members' messages depend on it.

The event is signed as the worker signs events (the current secret, and the previous
one during a rotation's overlap), and sent by the worker's sender, with the same checks
of the URL (public addresses only, also after name resolution; no redirects) and the
same timeouts. It has an id of its own (`test_...`), is stored nowhere and never
retried, and its answer changes nothing: a 410 disables the webhook only when a
delivery gets it."""

from __future__ import annotations

import secrets
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from directory.db import WEBHOOK_TEST_LOCK_NAMESPACE
from directory.errors import Conflict
from directory.models import Portal
from directory.services.deliveries import signing_secrets
from directory.services.slots import held as held_slot
from directory.services.slots import take_turn as take_portal_turn
from directory.webhooks.delivery import TOTAL_TIMEOUT_S, Outcome, WebhookSender
from directory.webhooks.signing import signed_headers

EVENT_TYPE = "webhook.test"
# A portal tests at most once in this long, from the start of its last test, so one at a
# time; and twice as long as a test may last (the sender's TOTAL_TIMEOUT_S), as its
# website is checked: the directory tests one webhook at a time, and a portal whose
# endpoint kept each test waiting the whole timeout, testing again the moment it ended,
# held that slot for good, every other portal's tests refused as busy. So it leaves the
# slot free at least as long as it held it.
TEST_INTERVAL = timedelta(seconds=2 * TOTAL_TIMEOUT_S)
# Tests held at once, directory-wide: each holds an API process for up to the sender's
# 15 s, so that a few portals with slow endpoints cannot hold every process in turn.
TESTS_AT_ONCE = 1


@dataclass(frozen=True)
class WebhookTest:
    webhook_id: str
    url: str
    secrets: list[str]
    body: bytes
    webhook_disabled_at: datetime | None  # by a 410: the relay sends it nothing meanwhile


@dataclass(frozen=True)
class WebhookTestResult:
    webhook_id: str
    url: str
    delivered: bool  # the endpoint answered 2xx
    status: int | None  # None when no answer came
    error: str | None  # as a delivery's last_error would say it; None when delivered
    duration_ms: int
    webhook_disabled_at: datetime | None


def prepare(session: Session, *, portal_id: int) -> WebhookTest:
    """The test event for the portal's webhook; Conflict `no_webhook` when it has none."""
    portal = session.get_one(Portal, portal_id)
    if portal.webhook_url is None:
        raise Conflict(
            "the portal has no webhook_url to test: set one first (PATCH /v1/portals/me)",
            field="webhook_url",
            code="no_webhook",
        )
    now = datetime.now(UTC)
    payload = {"type": EVENT_TYPE, "timestamp": now.isoformat(), "data": {"portal": portal.slug}}
    return WebhookTest(
        webhook_id="test_" + secrets.token_hex(16),
        url=portal.webhook_url,
        secrets=signing_secrets(portal, now),
        body=orjson.dumps(payload),
        webhook_disabled_at=portal.webhook_disabled_at,
    )


def take_turn(session: Session, *, portal_id: int) -> None:
    """The portal's turn to test: TooManyRequests `webhook_tested_recently` within
    TEST_INTERVAL of its last test (or while one runs)."""
    take_portal_turn(
        session,
        portal_id=portal_id,
        taken_at=Portal.webhook_tested_at,
        interval=TEST_INTERVAL,
        code="webhook_tested_recently",
        refusal=f"the webhook was tested less than {TEST_INTERVAL.seconds} s ago (or is being "
        "tested now); try again when Retry-After says",
    )


def slot(engine: Engine) -> AbstractContextManager[None]:
    """One of the directory's TESTS_AT_ONCE slots, for as long as the block runs;
    TooManyRequests `webhook_tests_busy` when all are taken."""
    return held_slot(
        engine,
        namespace=WEBHOOK_TEST_LOCK_NAMESPACE,
        slots=TESTS_AT_ONCE,
        code="webhook_tests_busy",
        refusal="other portals are testing their webhooks right now; try again when "
        "Retry-After says",
    )


def send(test: WebhookTest, *, allow_loopback: bool) -> WebhookTestResult:
    """Sends the test now, outside any transaction (the endpoint may take seconds)."""
    headers = signed_headers(
        secrets=test.secrets, webhook_id=test.webhook_id, timestamp=int(time.time()), body=test.body
    )
    sender = WebhookSender()
    try:
        result = sender.send(
            test.url, headers=headers, body=test.body, allow_loopback=allow_loopback
        )
    finally:
        sender.close()
    return WebhookTestResult(
        webhook_id=test.webhook_id,
        url=test.url,
        delivered=result.outcome is Outcome.DELIVERED,
        status=result.status,
        error=result.error,
        duration_ms=round(result.duration_ms),
        webhook_disabled_at=test.webhook_disabled_at,
    )
