"""Relay messages reach portals' webhooks through the worker: signed, retried, and
each delivered under one id however often it is sent."""

from __future__ import annotations

import dataclasses
import json
import logging
import socketserver
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from directory_client.webhooks import verify_webhook
from sqlalchemy import func, select, update
from sqlalchemy import text as sql
from standardwebhooks import Webhook, WebhookVerificationError

from directory import build_wiring, create_app, worker
from directory.db import unit_of_work
from directory.models import Delivery, DeliveryState, Portal, PortalStatus
from directory.models.relay import MAX_MESSAGE_CHARS
from directory.services import deliveries, portals
from directory.services.deliveries import RETRY_JITTER
from directory.webhooks.delivery import Outcome, WebhookSender
from directory.webhooks.signing import signed_headers
from directory.worker import DELIVERY_THREADS, Deliverer
from tests.credit_commons import free_port
from tests.factories import ad_payload
from tests.peers import Peer, Reply, WebhookReceiver

READ_TIMEOUT_S = 0.5


@pytest.fixture
def fast(migrated):
    """The API and a deliverer with retries in tenths of a second, and a sender that
    gives up on an answer after half a second."""
    settings = dataclasses.replace(
        migrated,
        delivery_first_retry_s=0.1,
        delivery_max_retry_s=0.5,
        delivery_lease_s=5,
    )
    app = create_app(settings)
    wiring = build_wiring(settings)
    stop = threading.Event()
    sender = WebhookSender(read_timeout_s=READ_TIMEOUT_S, total_timeout_s=1)
    deliverer = Deliverer(wiring, stop, sender=sender)
    deliverer.start()
    yield app.test_client(), wiring
    stop.set()
    deliverer.join()
    wiring.close()
    app.extensions["directory"].close()


@pytest.fixture
def deliver_one_round(wiring):
    """One round of the deliverer at a time, as `directory worker --once` runs it: claim
    what is due, send it, record the outcomes in one transaction. Nothing runs between
    rounds, so a test knows which deliveries shared one."""
    sender = WebhookSender(read_timeout_s=READ_TIMEOUT_S, total_timeout_s=1)
    deliverer = Deliverer(wiring, threading.Event(), sender=sender)
    yield deliverer.deliver_due
    deliverer.join()


def secret_of(client, portal) -> str:
    return client.get("/v1/portals/me/webhook-secret", headers=portal.headers).json["secret"]


def open_conversation(client, advertiser, writer, body="Hello there"):
    ad = client.put("/v1/ads/ad-1", json=ad_payload(member="m-owner"), headers=advertiser.headers)
    return client.post(
        f"/v1/ads/{ad.json['id']}/contact",
        json={"member": "m-writer", "name": "Anna", "body": body},
        headers=writer.headers,
    ).json


def test_a_message_reaches_the_portals_webhook_signed(fast, portal, other_portal):
    client, _ = fast
    with WebhookReceiver([secret_of(client, portal)]) as receiver:
        client.patch("/v1/portals/me", json={"webhook_url": receiver.url}, headers=portal.headers)
        sent = open_conversation(client, portal, other_portal)
        receiver.wait_for(1)
        (received,) = receiver.deliveries
        assert received.verified
        assert received.webhook_id == "msg_" + sent["message"]["id"].replace("-", "")
        assert received.body["type"] == "message.created"
        data = received.body["data"]
        assert data["message"]["body"] == "Hello there"
        assert data["to"]["member"] == "m-owner"
        assert data["from"]["alias"] == sent["conversation"]["initiator"]["alias"]
        assert "m-writer" not in received.raw_body.decode()
    # The worker records the outcome once the receiver has answered.
    path = f"/v1/conversations/{sent['conversation']['id']}"
    conversation = _wait_for(
        lambda: client.get(path, headers=portal.headers).json,
        lambda seen: seen["messages"][0]["delivery"]["state"] != "pending",
    )
    delivery = conversation["messages"][0]["delivery"]
    assert delivery["state"] == "delivered"
    assert delivery["delivered_via"] == "webhook"
    assert delivery["attempts"] == 1
    # The sender's portal learns that it arrived, and the minute, not how or the instant.
    delivered_at = datetime.fromisoformat(delivery["delivered_at"])
    as_sent = client.get(path, headers=other_portal.headers).json["messages"][0]["delivery"]
    assert as_sent == {
        "state": "delivered",
        "delivered_at": delivered_at.replace(second=0, microsecond=0).isoformat(),
        "attempts": None,
        "delivered_via": None,
        "last_error": None,
    }
    # Delivered: no longer in the inbox.
    assert client.get("/v1/inbox", headers=portal.headers).json["events"] == []


def test_a_failing_endpoint_is_retried_under_the_same_id(fast, portal, other_portal):
    client, _ = fast
    with WebhookReceiver([secret_of(client, portal)]) as receiver:
        receiver.fail_next(2, status=500)
        client.patch("/v1/portals/me", json={"webhook_url": receiver.url}, headers=portal.headers)
        open_conversation(client, portal, other_portal)
        receiver.wait_for(3)
        statuses = [d.reply.status for d in receiver.deliveries]
        assert statuses == [500, 500, 204]
        assert len(receiver.unique_ids()) == 1


def test_the_end_of_a_conversation_reaches_the_other_portals_webhook_signed(
    fast, portal, other_portal
):
    client, _ = fast
    secret = secret_of(client, other_portal)
    with WebhookReceiver([secret]) as receiver:
        receiver.fail_next(1, status=500)
        client.patch(
            "/v1/portals/me", json={"webhook_url": receiver.url}, headers=other_portal.headers
        )
        sent = open_conversation(client, portal, other_portal)
        conversation_id = sent["conversation"]["id"]
        client.post(
            f"/v1/conversations/{conversation_id}/block",
            json={"member": "m-owner"},
            headers=portal.headers,
        )
        receiver.wait_for(2)
        first, second = receiver.deliveries
        assert first.webhook_id == second.webhook_id == "end_" + conversation_id.replace("-", "")
        assert [first.reply.status, second.reply.status] == [500, 204]
        assert second.verified
        # The portal's own check, with the client library it would use.
        event = verify_webhook(second.raw_body, second.headers, secrets=[secret])
        assert event.type == "conversation.ended"
        assert event.id == second.webhook_id
        assert event.data["to"]["member"] == "m-writer"
        assert event.data["ended"]["reason"] == "blocked"
        assert event.data["ended"]["by"]["alias"] == sent["conversation"]["recipient"]["alias"]
        assert "m-owner" not in second.raw_body.decode()
    # Delivered: no longer in the inbox.
    assert (
        _wait_for(
            lambda: client.get("/v1/inbox", headers=other_portal.headers).json["events"],
            lambda events: events == [],
        )
        == []
    )


def test_a_receiver_too_slow_to_answer_gets_the_message_again_under_the_same_id(
    fast, portal, other_portal
):
    client, _ = fast
    with WebhookReceiver([secret_of(client, portal)], deduplicate=False) as receiver:
        receiver.reply_next(Reply(delay_s=READ_TIMEOUT_S * 3))
        client.patch("/v1/portals/me", json={"webhook_url": receiver.url}, headers=portal.headers)
        sent = open_conversation(client, portal, other_portal)
        receiver.wait_for(2)
        first, second = receiver.deliveries[:2]
        assert first.webhook_id == second.webhook_id
        assert second.received_at - first.received_at >= READ_TIMEOUT_S
    seen = _wait_for(
        lambda: (
            client.get(
                f"/v1/conversations/{sent['conversation']['id']}", headers=portal.headers
            ).json
        ),
        lambda view: view["messages"][0]["delivery"]["state"] == "delivered",
    )
    assert seen["messages"][0]["delivery"]["attempts"] == 2


def test_a_410_disables_the_webhook_and_the_message_waits_in_the_inbox(fast, portal, other_portal):
    client, _ = fast
    with WebhookReceiver([secret_of(client, portal)]) as receiver:
        receiver.reply_next(Reply(status=410))
        client.patch("/v1/portals/me", json={"webhook_url": receiver.url}, headers=portal.headers)
        open_conversation(client, portal, other_portal)
        receiver.wait_for(1)
        profile = _wait_for_profile(client, portal, lambda p: p["webhook_disabled_at"])
        assert "410" in profile["webhook_disabled_reason"]
        assert len(client.get("/v1/inbox", headers=portal.headers).json["events"]) == 1
        # The portal fixes its endpoint and sets the URL again: the message goes out.
        client.patch("/v1/portals/me", json={"webhook_url": receiver.url}, headers=portal.headers)
        receiver.wait_for(2)
        assert receiver.deliveries[-1].reply.status == 204


def test_during_a_rotation_both_secrets_sign(fast, portal, other_portal):
    client, _ = fast
    old = secret_of(client, portal)
    new = client.post(
        "/v1/portals/me/webhook-secret", json={"overlap_hours": 1}, headers=portal.headers
    ).json["secret"]
    with WebhookReceiver([old]) as old_receiver:
        client.patch(
            "/v1/portals/me", json={"webhook_url": old_receiver.url}, headers=portal.headers
        )
        open_conversation(client, portal, other_portal)
        old_receiver.wait_for(1)
        assert old_receiver.deliveries[0].verified
        signatures = old_receiver.deliveries[0].headers["webhook-signature"].split(" ")
        assert len(signatures) == 2
    # A receiver already switched to the new secret verifies the same request.
    received = old_receiver.deliveries[0]
    Webhook(new).verify(received.raw_body, received.headers)


def _wait_for_profile(client, portal, predicate):
    return _wait_for(lambda: client.get("/v1/portals/me", headers=portal.headers).json, predicate)


def _wait_for(read, predicate, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if predicate(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_nothing_the_other_party_receives_reveals_the_sender(fast, make_portal):
    """A whole exchange, both ways: every webhook and every response a portal gets about
    the other party holds no member handle of theirs, no internal id, no address."""
    client, _ = fast
    lyon = make_portal(slug="sel-lyon")
    bristol = make_portal(slug="lets-bristol")
    with (
        WebhookReceiver([secret_of(client, lyon)]) as lyon_hook,
        WebhookReceiver([secret_of(client, bristol)]) as bristol_hook,
    ):
        for portal, hook in ((lyon, lyon_hook), (bristol, bristol_hook)):
            client.patch("/v1/portals/me", json={"webhook_url": hook.url}, headers=portal.headers)
        # m-writer of Bristol writes about Lyon's ad; each portal names its message with
        # an idempotency key of its own, and Lyon its ad with its own id.
        ad = client.put(
            "/v1/ads/lyon-ad-5521", json=ad_payload(member="m-owner"), headers=lyon.headers
        )
        sent = client.post(
            f"/v1/ads/{ad.json['id']}/contact",
            json={
                "member": "m-writer",
                "name": "Anna",
                "body": "Hello there",
                "idempotency_key": "bristol-key-7f3a",
            },
            headers=bristol.headers,
        ).json
        conversation_id = sent["conversation"]["id"]
        client.post(
            f"/v1/conversations/{conversation_id}/messages",
            json={
                "member": "m-owner",
                "name": "Luc",
                "body": "Yes",
                "idempotency_key": "lyon-key-9c2e",
            },
            headers=lyon.headers,
        )
        # And ends it: Bristol is told.
        client.post(
            f"/v1/conversations/{conversation_id}/block",
            json={"member": "m-owner"},
            headers=lyon.headers,
        )
        lyon_hook.wait_for(1)
        bristol_hook.wait_for(2)
        # In either order: the worker may send both at once, on two threads.
        assert sorted(d.body["type"] for d in bristol_hook.deliveries) == [
            "conversation.ended",
            "message.created",
        ]
        seen_by_lyon = [_as_received(delivery) for delivery in lyon_hook.deliveries]
        seen_by_bristol = [_as_received(delivery) for delivery in bristol_hook.deliveries]
    for path in (f"/v1/conversations/{conversation_id}", "/v1/conversations", "/v1/inbox"):
        seen_by_lyon.append(client.get(path, headers=lyon.headers).text)
        seen_by_bristol.append(client.get(path, headers=bristol.headers).text)
    secrets = {"lyon": secret_of(client, lyon), "bristol": secret_of(client, bristol)}
    for text, other_member, other_secret, other_ids in (
        ("\n".join(seen_by_lyon), "m-writer", secrets["bristol"], ["bristol-key-7f3a"]),
        ("\n".join(seen_by_bristol), "m-owner", secrets["lyon"], ["lyon-key-9c2e", "lyon-ad-5521"]),
    ):
        assert other_member not in text
        assert other_secret not in text
        for internal_id in other_ids:
            assert internal_id not in text
        for leak in ("portal_id", "127.0.0.1", "localhost", "@", "webhook_url", "/hook"):
            assert leak not in text, leak


def _as_received(delivery) -> str:
    # The Host header names the receiver itself, which its portal knows.
    headers = {name: value for name, value in delivery.headers.items() if name != "host"}
    return delivery.raw_body.decode() + json.dumps(headers)


def test_an_error_body_with_a_nul_byte_is_recorded_with_the_rest_of_its_round(
    client, deliver_one_round, portal, other_portal
):
    # PostgreSQL's text cannot hold NUL: stored as received, the receiver's words would
    # roll back the round's one transaction, every outcome in it with them.
    with (
        WebhookReceiver([secret_of(client, portal)]) as broken,
        WebhookReceiver([secret_of(client, other_portal)]) as working,
    ):
        broken.reply_next(Reply(status=500, body=b"internal error\x00oops"))
        for hooked, receiver in ((portal, broken), (other_portal, working)):
            client.patch(
                "/v1/portals/me", json={"webhook_url": receiver.url}, headers=hooked.headers
            )
        conversation_id = open_conversation(client, portal, other_portal)["conversation"]["id"]
        client.post(
            f"/v1/conversations/{conversation_id}/messages",
            json={"member": "m-owner", "body": "Yes"},
            headers=portal.headers,
        )
        deliver_one_round()
        assert (len(broken.deliveries), len(working.deliveries)) == (1, 1)
    path = f"/v1/conversations/{conversation_id}"
    # Each portal sees the delivery to itself in full (last_error is about its endpoint).
    to_broken = client.get(path, headers=portal.headers).json["messages"][0]["delivery"]
    assert to_broken["state"] == "pending"
    assert to_broken["attempts"] == 1
    assert to_broken["last_error"] == "HTTP 500: internal error\ufffdoops"
    to_working = client.get(path, headers=other_portal.headers).json["messages"][1]["delivery"]
    assert to_working["state"] == "delivered"
    assert to_working["delivered_via"] == "webhook"


# What a member wrote, as an endpoint may echo it.
WORDS = "Meet-me-at-the-old-mill-on-Saturday"


def send_words_to(client, portal, other_portal, webhook_url) -> str:
    """`portal`'s member answers `other_portal`'s with WORDS, for its webhook at
    `webhook_url`: the conversation's id."""
    client.patch("/v1/portals/me", json={"webhook_url": webhook_url}, headers=other_portal.headers)
    conversation_id = open_conversation(client, portal, other_portal)["conversation"]["id"]
    client.post(
        f"/v1/conversations/{conversation_id}/messages",
        json={"member": "m-owner", "body": WORDS},
        headers=portal.headers,
    )
    return conversation_id


def webhook_logged(caplog) -> str:
    """The worker's one line about a webhook."""
    (logged,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("webhook ")]
    return logged


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(
            lambda words: Reply(status=500, body=f"could not store: {words}".encode()),
            id="an-error-page-echoing-the-event",
        ),
        pytest.param(
            lambda words: Reply(status=302, headers={"Location": f"/why?{words}"}),
            id="a-redirect-naming-it",
        ),
    ],
)
def test_the_worker_logs_how_a_webhook_failed_but_not_what_the_portal_answered(
    client, deliver_one_round, portal, other_portal, caplog, answer
):
    """The answer may echo the event: a member's words, in logs that outlive erasure."""
    caplog.set_level(logging.INFO, logger=worker.log.name)
    with WebhookReceiver([secret_of(client, other_portal)]) as receiver:
        receiver.reply_next(answer(WORDS))
        conversation_id = send_words_to(client, portal, other_portal, receiver.url)
        deliver_one_round()
        assert len(receiver.deliveries) == 1
    logged = webhook_logged(caplog)
    assert f"(HTTP {answer(WORDS).status})" in logged
    assert WORDS not in logged
    # The portal itself still reads how its endpoint answered.
    seen = client.get(f"/v1/conversations/{conversation_id}", headers=other_portal.headers)
    assert WORDS in seen.json["messages"][1]["delivery"]["last_error"]


def test_an_endpoint_failing_for_a_day_is_still_retried_within_the_longest_delay(
    client, wiring, deliver_one_round, portal, other_portal
):
    longest = timedelta(seconds=wiring.settings.delivery_max_retry_s)
    with WebhookReceiver([secret_of(client, portal)]) as receiver:
        receiver.reply_next(Reply(status=503))
        client.patch("/v1/portals/me", json={"webhook_url": receiver.url}, headers=portal.headers)
        open_conversation(client, portal, other_portal)
        # Down for a day: about 9 attempts to reach the longest delay, then one every 30 to
        # 60 minutes. The doubled first delay no longer fits in a timedelta by then.
        with unit_of_work(wiring.session_factory) as session:
            session.execute(update(Delivery).values(attempts=44))
        before = datetime.now(UTC)
        deliver_one_round()
        after = datetime.now(UTC)
        assert [delivery.reply.status for delivery in receiver.deliveries] == [503]
    with unit_of_work(wiring.session_factory) as session:
        delivery = session.scalars(select(Delivery)).one()
    assert (delivery.state, delivery.attempts, delivery.last_status) == (
        DeliveryState.PENDING,
        45,
        503,
    )
    # The longest delay, less its jitter: neither at once nor later than the longest.
    assert before + longest * (1 - RETRY_JITTER) <= delivery.next_attempt_at <= after + longest


def set_status(wiring, portal, status: PortalStatus) -> None:
    with unit_of_work(wiring.session_factory) as session:
        portals.set_status(session, portal_slug=portal.slug, status=status)


def test_nothing_is_sent_to_a_suspended_portal_until_it_is_reactivated(
    client, wiring, deliver_one_round, portal, other_portal
):
    with WebhookReceiver([secret_of(client, portal)]) as receiver:
        client.patch("/v1/portals/me", json={"webhook_url": receiver.url}, headers=portal.headers)
        open_conversation(client, portal, other_portal)
        set_status(wiring, portal, PortalStatus.SUSPENDED)
        deliver_one_round()
        assert receiver.deliveries == []
        with unit_of_work(wiring.session_factory) as session:
            held = session.scalars(select(Delivery)).one()
        # Not an attempt: a suspension says nothing of the portal's endpoint.
        assert (held.state, held.attempts) == (DeliveryState.PENDING, 0)
        set_status(wiring, portal, PortalStatus.ACTIVE)
        deliver_one_round()
        assert [delivery.reply.status for delivery in receiver.deliveries] == [204]
    with unit_of_work(wiring.session_factory) as session:
        delivered = session.scalars(select(Delivery)).one()
    assert (delivered.state, delivered.attempts) == (DeliveryState.DELIVERED, 1)


def test_a_suspended_portals_backlog_holds_up_no_other_portal(
    client, wiring, deliver_one_round, make_portal
):
    suspended, active, writer = (make_portal(slug=slug) for slug in ("lyon", "lille", "bristol"))
    with (
        WebhookReceiver([secret_of(client, suspended)]) as suspended_hook,
        WebhookReceiver([secret_of(client, active)]) as active_hook,
    ):
        for portal, hook in ((suspended, suspended_hook), (active, active_hook)):
            client.patch("/v1/portals/me", json={"webhook_url": hook.url}, headers=portal.headers)
        # More messages for the suspended portal, and older, than a round claims: each
        # the first of a conversation of its own, as a party may send only so many in a
        # row before the other answers.
        ad = client.put(
            "/v1/ads/ad-1", json=ad_payload(member="m-owner"), headers=suspended.headers
        )
        for number in range(DELIVERY_THREADS + 1):
            sent = client.post(
                f"/v1/ads/{ad.json['id']}/contact",
                json={"member": f"m-writer-{number}", "name": "Anna", "body": f"Message {number}"},
                headers=writer.headers,
            )
            assert sent.status_code == 201, sent.json
        set_status(wiring, suspended, PortalStatus.SUSPENDED)
        open_conversation(client, active, writer)
        more_due = deliver_one_round()
        assert (len(suspended_hook.deliveries), len(active_hook.deliveries)) == (0, 1)
    # The round took what it could and says nothing more is due: the deliverer waits for
    # a wake-up rather than claiming again at once, round after round.
    assert more_due is False


# --- outcomes that come late ------------------------------------------------------------------

POLICY = deliveries.DeliveryPolicy(
    first_retry=timedelta(seconds=10),
    max_retry=timedelta(hours=1),
    give_up_after=timedelta(hours=72),
    lease=timedelta(minutes=1),
)


def claimed_delivery(client, wiring, portal, other_portal, receiver) -> deliveries.Claim:
    """A message to `portal`'s webhook, claimed by a worker that is now sending it."""
    client.patch("/v1/portals/me", json={"webhook_url": receiver.url}, headers=portal.headers)
    open_conversation(client, portal, other_portal)
    with unit_of_work(wiring.session_factory) as session:
        (claim,) = deliveries.claim_due(session, limit=10, lease=POLICY.lease)
    return claim


def late_outcome(wiring, claim, outcome: Outcome, *, status: int, error: str | None):
    """The worker records what the claimed attempt came to; returns the delivery's state."""
    with unit_of_work(wiring.session_factory) as session:
        return deliveries.record_outcome(
            session,
            delivery_id=claim.event.delivery_id,
            url=claim.url,
            outcome=outcome,
            status=status,
            error=error,
            retry_after=None,
            policy=POLICY,
        )


def the_delivery(wiring) -> Delivery:
    with unit_of_work(wiring.session_factory) as session:
        return session.scalars(select(Delivery)).one()


def period_ends_meanwhile(wiring) -> int:
    """The delivery period ends while the last attempt is on its way: housekeeping runs."""
    with unit_of_work(wiring.session_factory) as session:
        session.execute(update(Delivery).values(created_at=datetime.now(UTC) - timedelta(hours=73)))
        return deliveries.fail_expired(session, give_up_after=POLICY.give_up_after)


@pytest.mark.parametrize("recorded_by", ["the round", "its own outcome"])
def test_a_last_attempt_that_succeeds_after_the_period_ended_is_delivered_after_all(
    client, wiring, portal, other_portal, recorded_by
):
    # Left failed, the sender's portal would be told its message never arrived, and the
    # recipient's inbox would hold it for good.
    with WebhookReceiver([secret_of(client, portal)]) as receiver:
        claim = claimed_delivery(client, wiring, portal, other_portal, receiver)
    assert period_ends_meanwhile(wiring) == 1
    if recorded_by == "the round":
        with unit_of_work(wiring.session_factory) as session:
            deliveries.record_delivered(session, delivered=[(claim.event.delivery_id, 204)])
    else:
        state = late_outcome(wiring, claim, Outcome.DELIVERED, status=204, error=None)
        assert state is DeliveryState.DELIVERED
    delivery = the_delivery(wiring)
    assert (delivery.state, delivery.delivered_via.value) == (DeliveryState.DELIVERED, "webhook")
    assert client.get("/v1/inbox", headers=portal.headers).json["events"] == []


def test_a_last_attempt_that_fails_after_the_period_ended_stays_failed_with_its_reason(
    client, wiring, portal, other_portal
):
    with WebhookReceiver([secret_of(client, portal)]) as receiver:
        claim = claimed_delivery(client, wiring, portal, other_portal, receiver)
    period_ends_meanwhile(wiring)
    state = late_outcome(wiring, claim, Outcome.RETRY, status=503, error="HTTP 503")
    assert state is DeliveryState.FAILED
    delivery = the_delivery(wiring)
    assert (delivery.state, delivery.last_status) == (DeliveryState.FAILED, 503)


def test_a_webhook_failing_after_the_inbox_took_the_message_leaves_it_as_delivered(
    client, wiring, portal, other_portal
):
    with WebhookReceiver([secret_of(client, portal)]) as receiver:
        claim = claimed_delivery(client, wiring, portal, other_portal, receiver)
    acked = client.post(
        "/v1/inbox/ack", json={"ids": [claim.event.webhook_id]}, headers=portal.headers
    )
    assert acked.json == {"acknowledged": 1}
    late_outcome(wiring, claim, Outcome.RETRY, status=500, error="boom")
    delivery = the_delivery(wiring)
    assert (delivery.state, delivery.delivered_via.value) == (DeliveryState.DELIVERED, "inbox")
    assert (delivery.last_status, delivery.last_error) == (None, None)


@pytest.mark.parametrize("old_answer", [410, 500])
def test_a_failure_at_the_url_the_portal_replaced_meanwhile_holds_nothing_up(
    client, wiring, portal, other_portal, old_answer
):
    # The portal moves its endpoint while a webhook is on its way to the old one, which
    # answers 410 (gone: it was moved) or fails. That says nothing of the new URL: it is
    # not disabled, and the message goes there at once, as setting a URL promises.
    secret = secret_of(client, portal)
    with WebhookReceiver([secret]) as old, WebhookReceiver([secret]) as new:
        old.fail_next(1, status=old_answer)
        claim = claimed_delivery(client, wiring, portal, other_portal, old)
        moved = client.patch(
            "/v1/portals/me", json={"webhook_url": new.url}, headers=portal.headers
        )
        assert moved.status_code == 200
        deliverer = Deliverer(wiring, threading.Event(), sender=WebhookSender(total_timeout_s=1))
        try:
            # The attempt claimed before the move reaches the old URL; the worker's next
            # round records its outcome and claims what is due.
            deliverer.finished.put(
                (
                    claim,
                    deliverer.sender.send(
                        claim.url,
                        headers=signed_headers(
                            secrets=claim.secrets,
                            webhook_id=claim.event.webhook_id,
                            timestamp=int(time.time()),
                            body=claim.event.body(),
                        ),
                        body=claim.event.body(),
                        allow_loopback=True,
                    ),
                )
            )
            deliverer.deliver_due()
        finally:
            deliverer.join()
        assert [delivery.reply.status for delivery in old.deliveries] == [old_answer]
        assert new.unique_ids() == [claim.event.webhook_id]
    profile = client.get("/v1/portals/me", headers=portal.headers).json
    assert (profile["webhook_url"], profile["webhook_disabled_at"]) == (new.url, None)
    assert the_delivery(wiring).state is DeliveryState.DELIVERED


# --- the inbox and the webhook: delivered once either succeeded --------------------------------


def make_due(wiring) -> None:
    """The retry's time has come (rather than waiting for the backoff)."""
    with unit_of_work(wiring.session_factory) as session:
        session.execute(
            update(Delivery)
            .where(Delivery.state == DeliveryState.PENDING)
            .values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))
        )


def test_a_message_acknowledged_in_the_inbox_is_not_sent_by_webhook_again(
    client, wiring, deliver_one_round, portal, other_portal
):
    with WebhookReceiver([secret_of(client, portal)]) as receiver:
        receiver.fail_next(1, status=500)
        client.patch("/v1/portals/me", json={"webhook_url": receiver.url}, headers=portal.headers)
        open_conversation(client, portal, other_portal)
        deliver_one_round()
        # Waiting for its retry, the message is in the inbox too: the portal takes it there.
        (event,) = client.get("/v1/inbox", headers=portal.headers).json["events"]
        assert event["delivery"] == {"state": "pending", "attempts": 1}
        acked = client.post("/v1/inbox/ack", json={"ids": [event["id"]]}, headers=portal.headers)
        assert acked.json == {"acknowledged": 1}
        make_due(wiring)
        deliver_one_round()
        assert [delivery.reply.status for delivery in receiver.deliveries] == [500]
    delivery = the_delivery(wiring)
    assert (delivery.state, delivery.delivered_via.value, delivery.attempts) == (
        DeliveryState.DELIVERED,
        "inbox",
        1,
    )


def test_a_message_delivered_by_webhook_leaves_the_inbox_and_its_acknowledgement_is_a_repeat(
    client, wiring, deliver_one_round, portal, other_portal
):
    with WebhookReceiver([secret_of(client, portal)]) as receiver:
        client.patch("/v1/portals/me", json={"webhook_url": receiver.url}, headers=portal.headers)
        open_conversation(client, portal, other_portal)
        (event,) = client.get("/v1/inbox", headers=portal.headers).json["events"]
        deliver_one_round()
        assert receiver.unique_ids() == [event["id"]]
    assert client.get("/v1/inbox", headers=portal.headers).json["events"] == []
    acked = client.post("/v1/inbox/ack", json={"ids": [event["id"]]}, headers=portal.headers)
    assert acked.json == {"acknowledged": 0}
    delivery = the_delivery(wiring)
    assert (delivery.state, delivery.delivered_via.value) == (DeliveryState.DELIVERED, "webhook")


def test_a_webhook_succeeding_after_the_inbox_took_the_message_leaves_the_inbox_first(
    client, wiring, portal, other_portal
):
    with WebhookReceiver([secret_of(client, portal)]) as receiver:
        claim = claimed_delivery(client, wiring, portal, other_portal, receiver)
    client.post("/v1/inbox/ack", json={"ids": [claim.event.webhook_id]}, headers=portal.headers)
    acknowledged_at = the_delivery(wiring).delivered_at
    with unit_of_work(wiring.session_factory) as session:
        deliveries.record_delivered(session, delivered=[(claim.event.delivery_id, 204)])
    delivery = the_delivery(wiring)
    assert (delivery.delivered_via.value, delivery.delivered_at) == ("inbox", acknowledged_at)


# --- the body, the secrets --------------------------------------------------------------------


def test_a_message_at_the_size_limit_reaches_the_webhook_unchanged(
    client, deliver_one_round, portal, other_portal
):
    words = "\ufeff  Grüße e\u0301 👋🏽 👩\u200d👩\u200d👧\u2028\r\n\tfin\t  "
    body = words + "ß" * (MAX_MESSAGE_CHARS - len(words))
    with WebhookReceiver([secret_of(client, portal)]) as receiver:
        client.patch("/v1/portals/me", json={"webhook_url": receiver.url}, headers=portal.headers)
        open_conversation(client, portal, other_portal, body=body)
        deliver_one_round()
        (received,) = receiver.deliveries
    assert received.verified
    assert received.body["data"]["message"]["body"] == body


def test_once_the_overlap_ends_only_the_new_secret_signs(
    client, wiring, deliver_one_round, portal, other_portal
):
    old = secret_of(client, portal)
    new = client.post(
        "/v1/portals/me/webhook-secret", json={"overlap_hours": 1}, headers=portal.headers
    ).json["secret"]
    with unit_of_work(wiring.session_factory) as session:
        session.execute(
            update(Portal)
            .where(Portal.id == portal.id)
            .values(webhook_previous_secret_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    with WebhookReceiver([new]) as receiver:
        client.patch("/v1/portals/me", json={"webhook_url": receiver.url}, headers=portal.headers)
        open_conversation(client, portal, other_portal)
        deliver_one_round()
        (received,) = receiver.deliveries
    assert received.verified
    assert len(received.headers["webhook-signature"].split(" ")) == 1
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(received.raw_body, received.headers)


# --- backoff, and giving up -------------------------------------------------------------------


def retry_delay(wiring, claim, *, attempts: int) -> timedelta:
    """The delay record_outcome sets after a failed attempt, the `attempts`th."""
    with unit_of_work(wiring.session_factory) as session:
        session.execute(update(Delivery).values(attempts=attempts, state=DeliveryState.PENDING))
    before = datetime.now(UTC)
    assert late_outcome(wiring, claim, Outcome.RETRY, status=500, error="HTTP 500") is (
        DeliveryState.PENDING
    )
    return the_delivery(wiring).next_attempt_at - before


def test_retries_back_off_exponentially_with_jitter_up_to_the_longest_delay(
    client, wiring, portal, other_portal
):
    with WebhookReceiver([secret_of(client, portal)]) as receiver:
        claim = claimed_delivery(client, wiring, portal, other_portal, receiver)
    slack = timedelta(seconds=2)  # the time the test itself takes
    for attempts in (1, 2, 3, 4, 9, 20):
        full = min(POLICY.first_retry * 2 ** (attempts - 1), POLICY.max_retry)
        delays = [retry_delay(wiring, claim, attempts=attempts) for _ in range(8)]
        for delay in delays:
            assert full * (1 - RETRY_JITTER) - slack <= delay <= full + slack, (attempts, delay)
        # Left partly to chance: endpoints failing together do not all come back at once.
        assert len(set(delays)) > 1, attempts


def test_a_delivery_is_retried_until_three_days_are_over_the_last_try_at_their_end(
    client, wiring, portal, other_portal
):
    with WebhookReceiver([secret_of(client, portal)]) as receiver:
        claim = claimed_delivery(client, wiring, portal, other_portal, receiver)
    end = datetime.now(UTC) + timedelta(seconds=30)
    with unit_of_work(wiring.session_factory) as session:
        session.execute(update(Delivery).values(created_at=end - POLICY.give_up_after))
    retry_delay(wiring, claim, attempts=30)  # an hour's delay would pass the end
    assert the_delivery(wiring).next_attempt_at == end


def test_a_delivery_failing_after_three_days_is_failed_and_shown_so_to_both_portals(
    client, wiring, deliver_one_round, portal, other_portal
):
    with WebhookReceiver([secret_of(client, portal)]) as receiver:
        claim = claimed_delivery(client, wiring, portal, other_portal, receiver)
    with unit_of_work(wiring.session_factory) as session:
        session.execute(
            update(Delivery).values(
                created_at=datetime.now(UTC) - POLICY.give_up_after - timedelta(seconds=1)
            )
        )
    state = late_outcome(wiring, claim, Outcome.RETRY, status=503, error="HTTP 503: busy")
    assert state is DeliveryState.FAILED
    # Not tried again...
    make_due(wiring)
    with unit_of_work(wiring.session_factory) as session:
        assert deliveries.claim_due(session, limit=10, lease=POLICY.lease) == []
    # ...and visible: to the recipient's portal with why, in its inbox, and to the sender's.
    conversation_id = client.get("/v1/conversations", headers=portal.headers).json["conversations"][
        0
    ]["id"]
    path = f"/v1/conversations/{conversation_id}"
    to_recipient = client.get(path, headers=portal.headers).json["messages"][0]["delivery"]
    assert (to_recipient["state"], to_recipient["last_error"]) == ("failed", "HTTP 503: busy")
    (event,) = client.get("/v1/inbox", headers=portal.headers).json["events"]
    assert event["delivery"]["state"] == "failed"
    to_sender = client.get(path, headers=other_portal.headers).json["messages"][0]["delivery"]
    assert to_sender["state"] == "failed"
    # Taken from the inbox after all, it is delivered: the sender's portal learns so.
    acked = client.post("/v1/inbox/ack", json={"ids": [event["id"]]}, headers=portal.headers)
    assert acked.json == {"acknowledged": 1}
    to_sender = client.get(path, headers=other_portal.headers).json["messages"][0]["delivery"]
    assert to_sender["state"] == "delivered"


# --- the database away -------------------------------------------------------------------


def test_the_deliverer_tries_the_database_again_within_half_a_minute_however_long_it_was_away():
    # Doubling up to five minutes, it let messages wait up to five minutes after an
    # outage of a few: the relay's own latency is about a second.
    waits = [worker.delivery_backoff_s(failures) for failures in range(1, 200)]
    assert max(waits) <= worker.DELIVERY_MAX_BACKOFF_S * 1.25
    assert waits[0] < waits[4]  # it does back off


def test_the_deliverer_says_in_one_line_that_the_database_is_away(migrated, caplog):
    # A traceback at every try filled the log with about 900 lines in 100 s of outage.
    settings = dataclasses.replace(
        migrated, database_url=f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none"
    )
    wiring = build_wiring(settings)
    stop = threading.Event()
    deliverer = Deliverer(wiring, stop)
    caplog.set_level(logging.WARNING, logger=worker.log.name)
    try:
        deliverer.start()
        deadline = time.monotonic() + 30
        while not any("claiming" in record.getMessage() for record in caplog.records):
            assert time.monotonic() < deadline, "the deliverer never said it failed"
            time.sleep(0.05)
        claiming = next(record for record in caplog.records if "claiming" in record.getMessage())
        # The worker's other jobs alike.
        caplog.clear()
        worker.Job("housekeeping", 60, worker.housekeeping).run_if_due(wiring, 0)
        (housekeeping,) = [r for r in caplog.records if r.getMessage().startswith("housekeeping")]
    finally:
        stop.set()
        deliverer.join()
        wiring.close()
    for record in (claiming, housekeeping):
        assert record.levelno == logging.WARNING
        assert record.exc_info is None
        assert "the database is unavailable" in record.getMessage()
        assert "\n" not in record.getMessage()


class NotHttp(Peer):
    """A loopback server that reads each request whole, then answers `line`, no HTTP."""

    def __init__(self, line: bytes) -> None:
        super().__init__()
        self.line = line
        self.answered = 0

    def handler(self) -> type[socketserver.BaseRequestHandler]:
        peer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                length = 0
                while (header := self.rfile.readline()) not in (b"\r\n", b""):
                    name, _, value = header.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                self.rfile.read(length)
                peer.answered += 1
                self.wfile.write(peer.line)

        return Handler


def test_the_worker_logs_no_words_of_an_endpoint_that_does_not_answer_in_http(
    client, deliver_one_round, portal, other_portal, caplog
):
    """An answer that is no HTTP has no status, and its first line (here the event's
    words, as a misconfigured endpoint may echo them) is no account of ours either."""
    caplog.set_level(logging.INFO, logger=worker.log.name)
    with NotHttp(f"{WORDS}\r\n".encode()) as endpoint:
        conversation_id = send_words_to(client, portal, other_portal, f"{endpoint.origin}/hook")
        deliver_one_round()
        assert endpoint.answered == 1
    logged = webhook_logged(caplog)
    assert f"127.0.0.1 port {endpoint.port}" in logged  # how it failed, and where
    assert WORDS not in logged
    # The portal itself still reads how its endpoint answered.
    seen = client.get(f"/v1/conversations/{conversation_id}", headers=other_portal.headers)
    assert WORDS in seen.json["messages"][1]["delivery"]["last_error"]


def test_a_portal_whose_endpoint_stalls_holds_a_few_threads_and_the_others_webhooks_go_on(
    migrated, make_portal
):
    """A portal's endpoint that keeps every request waiting (a firewall dropping packets
    looks the same), with more messages due than the worker has threads: it gets
    deliveries.PER_PORTAL_IN_FLIGHT of them at once, and another portal's webhook is sent
    meanwhile, not once the stalled ones have timed out."""
    settings = dataclasses.replace(migrated, delivery_lease_s=120)
    app = create_app(settings)
    wiring = build_wiring(settings)
    client = app.test_client()
    stalled, prompt, writers = (make_portal() for _ in range(3))
    stop = threading.Event()
    sender = WebhookSender(read_timeout_s=60, total_timeout_s=60)
    deliverer = Deliverer(wiring, stop, sender=sender)
    hold = Reply(status=204, delay_s=60)  # cut short when the receiver stops
    try:
        with (
            WebhookReceiver(
                [secret_of(client, stalled)], responder=lambda _request: hold
            ) as stalled_receiver,
            WebhookReceiver([secret_of(client, prompt)]) as prompt_receiver,
        ):
            for portal, receiver in ((stalled, stalled_receiver), (prompt, prompt_receiver)):
                client.patch(
                    "/v1/portals/me", json={"webhook_url": receiver.url}, headers=portal.headers
                )
            ad = client.put(
                "/v1/ads/ad-1", json=ad_payload(member="m-owner"), headers=stalled.headers
            )
            for n in range(DELIVERY_THREADS + 4):
                response = client.post(
                    f"/v1/ads/{ad.json['id']}/contact",
                    json={"member": f"m-writer-{n}", "name": "Anna", "body": "Still there?"},
                    headers=writers.headers,
                )
                assert response.status_code == 201, response.json
            deliverer.start()
            stalled_receiver.wait_for(deliveries.PER_PORTAL_IN_FLIGHT)
            open_conversation(client, prompt, writers)

            (arrived,) = prompt_receiver.wait_for(1)

            assert arrived.verified
            held = stalled_receiver.deliveries
            assert len(held) == deliveries.PER_PORTAL_IN_FLIGHT  # no more while they wait
            assert all(request.answered_at is None for request in held)
    finally:
        stop.set()
        deliverer.join()
        wiring.close()
        app.extensions["directory"].close()


def test_a_claim_gives_each_portal_no_more_than_its_room_the_oldest_first(
    client, wiring, make_portal
):
    """Six messages due to one portal, which has one webhook in flight already, then two
    to another: a claim of ten with room for four each takes the first portal's three
    oldest and the other's two; the first portal's others wait for its next room."""
    crowded, quiet, writers = (make_portal() for _ in range(3))
    for portal in (crowded, quiet):
        client.patch(
            "/v1/portals/me",
            json={"webhook_url": "http://127.0.0.1:9/hook"},
            headers=portal.headers,
        )
    sent = {}
    for portal, count in ((crowded, 6), (quiet, 2)):
        ad = client.put("/v1/ads/ad-1", json=ad_payload(member="m-owner"), headers=portal.headers)
        sent[portal.id] = [
            client.post(
                f"/v1/ads/{ad.json['id']}/contact",
                json={"member": f"m-writer-{n}", "name": "Anna", "body": "Hello"},
                headers=writers.headers,
            ).json["message"]["id"]
            for n in range(count)
        ]

    with unit_of_work(wiring.session_factory) as session:
        claims = deliveries.claim_due(
            session, limit=10, lease=POLICY.lease, per_portal=4, in_flight={crowded.id: 1}
        )
        busy = deliveries.claim_due(
            session, limit=10, lease=POLICY.lease, per_portal=4, in_flight={crowded.id: 4}
        )

    def message_ids(portal):
        return ["msg_" + message_id.replace("-", "") for message_id in sent[portal.id]]

    taken = [claim.event.webhook_id for claim in claims]
    assert taken == message_ids(crowded)[:3] + message_ids(quiet)
    assert [claim.event.webhook_id for claim in busy] == []  # the rest: the crowded one's


def test_a_delivery_at_the_most_attempts_counted_is_still_claimed_with_the_others(
    client, wiring, deliver_one_round, make_portal
):
    # The count is a smallint: one claim past its top failed the whole claim statement,
    # and no portal received anything again, round after round (an endpoint failing long
    # enough under short retries, or a delivery whose sending keeps failing each lease).
    stuck, other, writer = (make_portal(slug=slug) for slug in ("lyon", "lille", "bristol"))
    with (
        WebhookReceiver([secret_of(client, stuck)]) as stuck_hook,
        WebhookReceiver([secret_of(client, other)]) as other_hook,
    ):
        for portal, hook in ((stuck, stuck_hook), (other, other_hook)):
            client.patch("/v1/portals/me", json={"webhook_url": hook.url}, headers=portal.headers)
        open_conversation(client, stuck, writer)
        with unit_of_work(wiring.session_factory) as session:
            session.execute(update(Delivery).values(attempts=32767))
        open_conversation(client, other, writer)
        deliver_one_round()
        assert (len(stuck_hook.deliveries), len(other_hook.deliveries)) == (1, 1)
    with unit_of_work(wiring.session_factory) as session:
        counted = sorted(session.scalars(select(Delivery.attempts)))
    assert counted == [1, 32767]


def test_two_workers_hearing_410_from_one_portal_at_once_both_record_it(
    client, wiring, make_portal
):
    # Each worker's round locks its delivery, then disables the webhook (the portal's
    # row), then parks the portal's pending deliveries: the first waited on the second's
    # delivery, the second on the first's portal row, and PostgreSQL ended one round,
    # whose every outcome was lost (all of them sent again, to every portal in it).
    portal, writer = make_portal(slug="lyon"), make_portal(slug="bristol")
    with WebhookReceiver([secret_of(client, portal)]) as receiver:
        client.patch("/v1/portals/me", json={"webhook_url": receiver.url}, headers=portal.headers)
        ad = client.put("/v1/ads/ad-1", json=ad_payload(member="m-owner"), headers=portal.headers)
        for number in range(2):
            sent = client.post(
                f"/v1/ads/{ad.json['id']}/contact",
                json={"member": f"m-writer-{number}", "name": "Anna", "body": "Hello"},
                headers=writer.headers,
            )
            assert sent.status_code == 201, sent.json
        with unit_of_work(wiring.session_factory) as session:
            first, second = deliveries.claim_due(session, limit=10, lease=POLICY.lease)

    def gone(session, claim) -> DeliveryState | None:
        return deliveries.record_outcome(
            session,
            delivery_id=claim.event.delivery_id,
            url=claim.url,
            outcome=Outcome.GONE,
            status=410,
            error="HTTP 410",
            retry_after=None,
            policy=POLICY,
        )

    def first_round() -> DeliveryState | None:
        with unit_of_work(wiring.session_factory) as session:
            return gone(session, first)

    with unit_of_work(wiring.session_factory) as second_round:
        # The second worker's round has locked its delivery, as record_outcome does first.
        second_round.execute(
            select(Delivery.id).where(Delivery.id == second.event.delivery_id).with_for_update()
        )
        rounds = ThreadPoolExecutor(1)
        recorded = rounds.submit(first_round)
        while not recorded.done() and not _waits_on_a_lock(wiring):
            time.sleep(0.01)
        assert gone(second_round, second) is DeliveryState.PENDING
    assert recorded.result(timeout=30) is DeliveryState.PENDING
    rounds.shutdown()
    with unit_of_work(wiring.session_factory) as session:
        disabled = session.scalar(select(Portal.webhook_disabled_at).where(Portal.id == portal.id))
        waiting = session.scalars(select(Delivery.next_attempt_at)).all()
    assert disabled is not None
    # Both wait in the inbox only.
    assert waiting == [deliveries.PARKED, deliveries.PARKED]


def _waits_on_a_lock(wiring) -> bool:
    with wiring.engine.connect() as connection:
        return bool(
            connection.scalar(
                sql(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
        )


def test_overdue_deliveries_are_failed_a_batch_at_a_time_past_one_a_round_holds(
    client, migrated, wiring, make_portal
):
    # One statement failed every overdue delivery: after a long suspension or a worker
    # away, a backlog to outlast the statement timeout at every round, and one that
    # waited on (or deadlocked with) a round holding a delivery it was recording.
    portal, writer = make_portal(slug="lyon"), make_portal(slug="bristol")
    ad = client.put("/v1/ads/ad-1", json=ad_payload(member="m-owner"), headers=portal.headers)
    for number in range(5):
        sent = client.post(
            f"/v1/ads/{ad.json['id']}/contact",
            json={"member": f"m-writer-{number}", "name": "Anna", "body": "Hello"},
            headers=writer.headers,
        )
        assert sent.status_code == 201, sent.json
    with unit_of_work(wiring.session_factory) as session:
        session.execute(update(Delivery).values(created_at=datetime.now(UTC) - timedelta(hours=73)))
    with unit_of_work(wiring.session_factory) as session:
        assert deliveries.fail_expired(session, give_up_after=POLICY.give_up_after, limit=2) == 2
        held_id = session.scalar(
            select(func.min(Delivery.id)).where(Delivery.state == DeliveryState.PENDING)
        )
    worker_wiring = build_wiring(dataclasses.replace(migrated, db_statement_timeout_ms=300))
    try:
        with unit_of_work(wiring.session_factory) as round_:
            round_.execute(select(Delivery.id).where(Delivery.id == held_id).with_for_update())
            worker.housekeeping(worker_wiring)
            with unit_of_work(wiring.session_factory) as session:
                states = dict(session.execute(select(Delivery.id, Delivery.state)).all())
    finally:
        worker_wiring.close()
    assert states.pop(held_id) is DeliveryState.PENDING  # the round holding it settles it
    assert set(states.values()) == {DeliveryState.FAILED}
