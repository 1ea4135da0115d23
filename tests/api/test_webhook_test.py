"""A portal tests its webhook (POST /v1/portals/me/webhook/test): a signed webhook.test
event sent now, as the relay's events are, to a real receiver on loopback that checks
signatures with the reference Standard Webhooks package; and what it answers."""

from __future__ import annotations

from contextlib import contextmanager

from sqlalchemy import func, select, text

from directory.db import WEBHOOK_TEST_LOCK_NAMESPACE, unit_of_work
from directory.models import Delivery
from directory.services import webhook_tests
from directory.webhooks.delivery import TOTAL_TIMEOUT_S
from tests.peers import Reply, WebhookReceiver

TEST = "/v1/portals/me/webhook/test"


def secret_of(client, portal) -> str:
    return client.get("/v1/portals/me/webhook-secret", headers=portal.headers).json["secret"]


def set_webhook(client, portal, url) -> None:
    response = client.patch("/v1/portals/me", json={"webhook_url": url}, headers=portal.headers)
    assert response.status_code == 200, response.json


def as_if_long_ago(wiring, portal) -> None:
    """The portal's last test moved back past its interval: its turn again."""
    with unit_of_work(wiring.session_factory) as session:
        session.execute(
            text(
                "UPDATE portals SET webhook_tested_at = webhook_tested_at - interval '1 hour' "
                "WHERE id = :id"
            ),
            {"id": portal.id},
        )


def test_the_event_is_signed_and_sent_as_the_relays_are(client, portal):
    with WebhookReceiver([secret_of(client, portal)]) as receiver:
        set_webhook(client, portal, receiver.url)
        answer = client.post(TEST, headers=portal.headers)
        (received,) = receiver.deliveries

    assert answer.status_code == 200, answer.json
    assert received.verified  # by the reference package, with the portal's secret
    assert received.webhook_id == answer.json["webhook_id"]
    assert answer.json["webhook_id"].startswith("test_")
    assert received.body["type"] == "webhook.test"
    assert received.body["data"] == {"portal": portal.slug}
    assert answer.json["url"] == receiver.url
    assert answer.json["delivered"] is True
    assert answer.json["status"] == 204
    assert answer.json["error"] is None
    assert answer.json["duration_ms"] >= 0
    assert answer.json["webhook_disabled_at"] is None


def test_each_test_has_an_id_of_its_own(client, wiring, portal):
    with WebhookReceiver([secret_of(client, portal)]) as receiver:
        set_webhook(client, portal, receiver.url)
        first = client.post(TEST, headers=portal.headers).json
        as_if_long_ago(wiring, portal)
        second = client.post(TEST, headers=portal.headers).json

    assert first["webhook_id"] != second["webhook_id"]
    assert receiver.unique_ids() == [first["webhook_id"], second["webhook_id"]]


def test_during_a_rotation_a_receiver_with_the_old_secret_still_verifies_it(client, portal):
    old = secret_of(client, portal)
    rotated = client.post(
        "/v1/portals/me/webhook-secret", json={"overlap_hours": 1}, headers=portal.headers
    )
    assert rotated.status_code == 200, rotated.json
    with WebhookReceiver([old]) as receiver:
        set_webhook(client, portal, receiver.url)
        assert client.post(TEST, headers=portal.headers).json["delivered"] is True
        (received,) = receiver.deliveries
    assert received.verified


def test_an_endpoint_that_fails_is_reported_with_its_answer(client, portal):
    with WebhookReceiver([secret_of(client, portal)]) as receiver:
        set_webhook(client, portal, receiver.url)
        receiver.reply_next(Reply(status=500, body=b"signature check failed"))
        answer = client.post(TEST, headers=portal.headers)

    assert answer.status_code == 200, answer.json
    assert answer.json["delivered"] is False
    assert answer.json["status"] == 500
    assert answer.json["error"] == "HTTP 500: signature check failed"


def test_an_endpoint_that_is_down_is_reported(client, portal):
    with WebhookReceiver([secret_of(client, portal)]) as receiver:
        set_webhook(client, portal, receiver.url)
    # Stopped: nothing listens on its port any more.
    answer = client.post(TEST, headers=portal.headers)

    assert answer.status_code == 200, answer.json
    assert answer.json["delivered"] is False
    assert answer.json["status"] is None
    assert "cannot connect" in answer.json["error"]


def test_a_410_from_a_test_disables_nothing_and_nothing_is_stored(client, wiring, portal):
    with WebhookReceiver([secret_of(client, portal)]) as receiver:
        set_webhook(client, portal, receiver.url)
        receiver.respond_gone()
        answer = client.post(TEST, headers=portal.headers)

    assert (answer.json["delivered"], answer.json["status"]) == (False, 410)
    profile = client.get("/v1/portals/me", headers=portal.headers).json
    assert profile["webhook_url"] == receiver.url
    assert profile["webhook_disabled_at"] is None
    with unit_of_work(wiring.session_factory) as session:
        assert session.scalar(select(func.count()).select_from(Delivery)) == 0
    assert client.get("/v1/inbox", headers=portal.headers).json["events"] == []


def test_a_disabled_webhook_can_be_tested_before_its_url_is_set_again(client, wiring, portal):
    with WebhookReceiver([secret_of(client, portal)]) as receiver:
        set_webhook(client, portal, receiver.url)
        with unit_of_work(wiring.session_factory) as session:
            session.execute(
                text("UPDATE portals SET webhook_disabled_at = now() WHERE id = :id"),
                {"id": portal.id},
            )
        answer = client.post(TEST, headers=portal.headers)

    assert answer.json["delivered"] is True
    # Taken, yet the relay sends it nothing until its URL is set again: the answer says so.
    assert answer.json["webhook_disabled_at"] is not None


def test_a_portal_without_a_webhook_is_told_to_set_one(client, portal):
    answer = client.post(TEST, headers=portal.headers)

    assert answer.status_code == 409
    assert answer.json["error"] == "no_webhook"
    assert "webhook_url" in answer.json["errors"]["json"]


def test_a_test_needs_a_portal_key(client):
    assert client.post(TEST).status_code == 401
    assert client.post(TEST, headers={"Authorization": "Bearer nope"}).status_code == 401


def test_a_body_is_refused(client, portal):
    answer = client.post(TEST, json={"url": "https://elsewhere.example"}, headers=portal.headers)

    assert answer.status_code == 400, answer.json


def test_a_portal_tests_once_every_30_seconds(client, wiring, portal, other_portal):
    with WebhookReceiver([secret_of(client, portal)]) as receiver:
        set_webhook(client, portal, receiver.url)
        assert client.post(TEST, headers=portal.headers).json["delivered"] is True
        refused = client.post(TEST, headers=portal.headers)
        assert len(receiver.deliveries) == 1  # the second was not sent
        as_if_long_ago(wiring, portal)
        assert client.post(TEST, headers=portal.headers).json["delivered"] is True

    assert refused.status_code == 429
    assert refused.json["error"] == "webhook_tested_recently"
    assert 1 <= int(refused.headers["Retry-After"]) <= webhook_tests.TEST_INTERVAL.seconds == 30
    # Another portal's turn is its own.
    with WebhookReceiver([secret_of(client, other_portal)]) as receiver:
        set_webhook(client, other_portal, receiver.url)
        assert client.post(TEST, headers=other_portal.headers).json["delivered"] is True


def test_a_portal_whose_tests_last_the_whole_timeout_leaves_the_slot_free_as_long(
    client, wiring, portal
):
    """The directory tests one webhook at a time: a portal whose endpoint kept each test
    waiting the sender's whole timeout, testing again the moment it ended, held that
    slot for good, and every other portal's tests were refused as busy."""
    with WebhookReceiver([secret_of(client, portal)]) as receiver:
        set_webhook(client, portal, receiver.url)
        assert client.post(TEST, headers=portal.headers).json["delivered"] is True
        # As if that test had begun the whole timeout ago, and ended only now.
        with unit_of_work(wiring.session_factory) as session:
            session.execute(
                text(
                    "UPDATE portals SET webhook_tested_at = webhook_tested_at "
                    "- make_interval(secs => :timeout_s) WHERE id = :id"
                ),
                {"timeout_s": TOTAL_TIMEOUT_S, "id": portal.id},
            )

        again = client.post(TEST, headers=portal.headers)

        assert len(receiver.deliveries) == 1
    assert again.status_code == 429, again.json
    assert again.json["error"] == "webhook_tested_recently"


@contextmanager
def the_slot_held(wiring):
    """The directory's one slot taken, as by a test running in another process."""
    lock = {"namespace": WEBHOOK_TEST_LOCK_NAMESPACE}
    with wiring.engine.connect() as holder:
        holder.execute(text("SELECT pg_advisory_lock(:namespace, 0)"), lock)
        try:
            yield
        finally:
            holder.execute(text("SELECT pg_advisory_unlock(:namespace, 0)"), lock)


def test_while_another_test_runs_the_next_is_told_to_come_back(client, wiring, portal):
    """A test holds an API process for as long as the endpoint takes: the directory runs
    one at a time, and refuses the others at once rather than queue them."""
    with WebhookReceiver([secret_of(client, portal)]) as receiver:
        set_webhook(client, portal, receiver.url)
        with the_slot_held(wiring):
            refused = client.post(TEST, headers=portal.headers)
        assert receiver.deliveries == []
        # Refused as busy, it did not take the portal's turn.
        assert client.post(TEST, headers=portal.headers).json["delivered"] is True

    assert refused.status_code == 429
    assert refused.json["error"] == "webhook_tests_busy"
    assert refused.headers["Retry-After"] == "2"
