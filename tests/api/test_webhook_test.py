"""A portal tests its webhook (POST /v1/portals/me/webhook/test): a signed webhook.test
event sent now, as the relay's events are, to a real receiver on loopback that checks
signatures with the reference Standard Webhooks package; and what it answers."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text

from directory.db import WEBHOOK_TEST_LOCK_NAMESPACE, unit_of_work
from directory.models import Delivery
from tests.apps import app_with
from tests.peers import Reply, WebhookReceiver

TEST = "/v1/portals/me/webhook/test"


@pytest.fixture
def client(migrated):
    """An app of its own, counting in its own memory: the rate limit starts afresh (the
    portals' ids repeat from test to test)."""
    with app_with(migrated, rate_limit_storage_url="memory://") as app:
        yield app.test_client()


def secret_of(client, portal) -> str:
    return client.get("/v1/portals/me/webhook-secret", headers=portal.headers).json["secret"]


def set_webhook(client, portal, url) -> None:
    response = client.patch("/v1/portals/me", json={"webhook_url": url}, headers=portal.headers)
    assert response.status_code == 200, response.json


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


def test_each_test_has_an_id_of_its_own(client, portal):
    with WebhookReceiver([secret_of(client, portal)]) as receiver:
        set_webhook(client, portal, receiver.url)
        first = client.post(TEST, headers=portal.headers).json
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


def test_a_portal_tests_at_most_six_times_a_minute(client, portal, other_portal):
    with WebhookReceiver([secret_of(client, portal)]) as receiver:
        set_webhook(client, portal, receiver.url)
        for _ in range(6):
            assert client.post(TEST, headers=portal.headers).status_code == 200
        refused = client.post(TEST, headers=portal.headers)
        assert len(receiver.deliveries) == 6  # the seventh was not sent

    assert refused.status_code == 429
    assert refused.json["error"] == "webhook_tested_recently"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # Another portal's budget is its own.
    with WebhookReceiver([secret_of(client, other_portal)]) as receiver:
        set_webhook(client, other_portal, receiver.url)
        assert client.post(TEST, headers=other_portal.headers).json["delivered"] is True


def test_while_another_test_runs_the_next_is_told_to_come_back(client, wiring, portal):
    """A test holds an API process for as long as the endpoint takes: the directory runs
    one at a time, and refuses the others at once rather than queue them."""
    with WebhookReceiver([secret_of(client, portal)]) as receiver:
        set_webhook(client, portal, receiver.url)
        # The slot is taken, as by a test running in another process.
        with wiring.engine.connect() as holder:
            holder.execute(
                text("SELECT pg_advisory_lock(:namespace, 0)"),
                {"namespace": WEBHOOK_TEST_LOCK_NAMESPACE},
            )
            refused = client.post(TEST, headers=portal.headers)
            holder.execute(
                text("SELECT pg_advisory_unlock(:namespace, 0)"),
                {"namespace": WEBHOOK_TEST_LOCK_NAMESPACE},
            )
        assert receiver.deliveries == []
        # Refused as busy, it cost none of the portal's six a minute.
        for _ in range(6):
            assert client.post(TEST, headers=portal.headers).json["delivered"] is True

    assert refused.status_code == 429
    assert refused.json["error"] == "webhook_tests_busy"
    assert refused.headers["Retry-After"] == "2"


def test_a_portal_at_its_limit_is_told_so_even_while_another_test_runs(client, wiring, portal):
    """Not to come back in 2 s, over and over, taking the directory's one slot from the
    others each time, only to hear then that it must wait most of a minute."""
    with WebhookReceiver([secret_of(client, portal)]) as receiver:
        set_webhook(client, portal, receiver.url)
        for _ in range(6):
            assert client.post(TEST, headers=portal.headers).status_code == 200
        with wiring.engine.connect() as holder:
            holder.execute(
                text("SELECT pg_advisory_lock(:namespace, 0)"),
                {"namespace": WEBHOOK_TEST_LOCK_NAMESPACE},
            )
            refused = client.post(TEST, headers=portal.headers)
            holder.execute(
                text("SELECT pg_advisory_unlock(:namespace, 0)"),
                {"namespace": WEBHOOK_TEST_LOCK_NAMESPACE},
            )

    assert refused.status_code == 429
    assert refused.json["error"] == "webhook_tested_recently"


def test_a_portal_at_its_limit_is_refused_while_the_rate_limit_store_is_down(migrated, portal):
    """Counted in the process's own memory meanwhile, as searches are."""
    with app_with(migrated, rate_limit_storage_url="redis://127.0.0.1:1") as app:
        client = app.test_client()
        with WebhookReceiver([secret_of(client, portal)]) as receiver:
            set_webhook(client, portal, receiver.url)
            for _ in range(6):
                assert client.post(TEST, headers=portal.headers).json["delivered"] is True
            refused = client.post(TEST, headers=portal.headers)

    assert refused.status_code == 429
    assert refused.json["error"] == "webhook_tested_recently"
