"""A portal's webhook: where it goes (checked against SSRF), its signing secrets and
their rotation, and the endpoint disabled by a 410 and enabled again."""

from __future__ import annotations

import socket
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

from directory.db import unit_of_work
from directory.models import Delivery
from directory.services import deliveries
from tests.apps import app_with
from tests.factories import ad_payload

LOOPBACK_HOOK = "http://127.0.0.1:9/hook"
# A host whose name the tests' resolver answers only when a test lets it.
SLOW_HOST = "hooks.slow-dns.example"


def set_webhook(client, portal, url):
    return client.patch("/v1/portals/me", json={"webhook_url": url}, headers=portal.headers)


def test_a_loopback_webhook_is_accepted_where_allowed(client, portal):
    response = set_webhook(client, portal, LOOPBACK_HOOK)
    assert response.status_code == 200, response.json
    assert response.json["webhook_url"] == LOOPBACK_HOOK
    assert response.json["webhook_disabled_at"] is None


@pytest.mark.parametrize(
    "url",
    [
        "https://10.0.0.5/hook",
        "https://192.168.1.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "https://[fd00:ec2::254]/",
        "https://100.64.0.1/",
        "https://192.0.0.192/latest/",  # 192.0.0.0/24: Oracle Cloud's metadata service
        "https://0.0.0.0/",
        "https://user:secret@127.0.0.1/hook",
        "http://[::ffff:10.0.0.1]/",
    ],
)
def test_webhooks_into_private_networks_are_refused(client, portal, url):
    response = set_webhook(client, portal, url)
    assert response.status_code == 400, response.json
    # Refused by our SSRF check, or earlier by the URL field itself (IPv6 forms).
    assert response.json["error"] in ("unsafe_webhook_url", "validation_error")
    assert "webhook_url" in response.json["errors"]["json"]


def test_loopback_is_refused_unless_allowed(migrated, make_portal):
    portal = make_portal()
    with app_with(migrated, webhook_allow_loopback=False) as app:
        response = set_webhook(app.test_client(), portal, LOOPBACK_HOOK)
    assert response.status_code == 400
    assert "webhook_url" in response.json["errors"]["json"]


def test_each_portal_has_its_own_signing_secret(client, portal, other_portal):
    mine = client.get("/v1/portals/me/webhook-secret", headers=portal.headers).json
    theirs = client.get("/v1/portals/me/webhook-secret", headers=other_portal.headers).json
    assert mine["secret"].startswith("whsec_")
    assert mine["secret"] != theirs["secret"]
    assert mine["previous_secret"] is None


def test_a_rotated_secret_keeps_the_old_one_signing_for_the_overlap(client, portal):
    before = client.get("/v1/portals/me/webhook-secret", headers=portal.headers).json["secret"]
    rotated = client.post(
        "/v1/portals/me/webhook-secret", json={"overlap_hours": 2}, headers=portal.headers
    ).json
    assert rotated["secret"] != before
    assert rotated["previous_secret"] == before
    expires = datetime.fromisoformat(rotated["previous_secret_expires_at"])
    assert timedelta(hours=1.9) < expires - datetime.now(UTC) <= timedelta(hours=2)
    immediate = client.post(
        "/v1/portals/me/webhook-secret", json={"overlap_hours": 0}, headers=portal.headers
    ).json
    assert immediate["previous_secret"] is None
    assert immediate["secret"] not in (before, rotated["secret"])


def test_a_rotation_without_a_body_keeps_the_old_secret_signing_for_a_day(client, portal):
    before = client.get("/v1/portals/me/webhook-secret", headers=portal.headers).json["secret"]

    response = client.post("/v1/portals/me/webhook-secret", headers=portal.headers)

    assert response.status_code == 200, response.json
    assert response.json["secret"] != before
    assert response.json["previous_secret"] == before
    expires = datetime.fromisoformat(response.json["previous_secret_expires_at"])
    assert timedelta(hours=23.9) < expires - datetime.now(UTC) <= timedelta(hours=24)


def test_a_rotation_sent_again_with_its_idempotency_key_rotates_once(client, portal):
    before = client.get("/v1/portals/me/webhook-secret", headers=portal.headers).json["secret"]
    body = {"overlap_hours": 2, "idempotency_key": "rotation-1"}

    first = client.post("/v1/portals/me/webhook-secret", json=body, headers=portal.headers)
    again = client.post("/v1/portals/me/webhook-secret", json=body, headers=portal.headers)

    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json == first.json
    assert first.json["previous_secret"] == before  # still signing: the portal's receiver has it
    now = client.get("/v1/portals/me/webhook-secret", headers=portal.headers).json
    assert now == first.json


def test_a_rotations_key_sent_again_with_another_overlap_is_refused_and_rotates_nothing(
    client, portal
):
    first = client.post(
        "/v1/portals/me/webhook-secret",
        json={"overlap_hours": 2, "idempotency_key": "rotation-1"},
        headers=portal.headers,
    )
    other = client.post(
        "/v1/portals/me/webhook-secret",
        json={"overlap_hours": 48, "idempotency_key": "rotation-1"},
        headers=portal.headers,
    )
    defaulted = client.post(  # overlap_hours left out: its default, 24, is another
        "/v1/portals/me/webhook-secret",
        json={"idempotency_key": "rotation-1"},
        headers=portal.headers,
    )

    for refused in (other, defaulted):
        assert refused.status_code == 409, refused.json
        assert refused.json["error"] == "idempotency_key_reused"
        assert "idempotency_key" in refused.json["errors"]["json"]
        assert "made with overlap_hours 2" in refused.json["message"]
    now = client.get("/v1/portals/me/webhook-secret", headers=portal.headers).json
    assert now == first.json  # neither rotated nor changed the overlap


def test_a_rotation_made_before_overlaps_were_kept_is_taken_again_whatever_its_overlap(
    client, portal, wiring
):
    first = client.post(
        "/v1/portals/me/webhook-secret",
        json={"overlap_hours": 2, "idempotency_key": "rotation-1"},
        headers=portal.headers,
    )
    with unit_of_work(wiring.session_factory) as session:  # as the previous release left it
        session.execute(
            text("UPDATE portals SET webhook_rotation_overlap_hours = NULL WHERE id = :id"),
            {"id": portal.id},
        )

    again = client.post(
        "/v1/portals/me/webhook-secret",
        json={"overlap_hours": 5, "idempotency_key": "rotation-1"},
        headers=portal.headers,
    )

    assert (again.status_code, again.json) == (200, first.json)


def test_a_rotation_with_another_idempotency_key_rotates_again(client, portal):
    def rotate(key: str) -> dict:
        return client.post(
            "/v1/portals/me/webhook-secret", json={"idempotency_key": key}, headers=portal.headers
        ).json

    first = rotate("rotation-1")
    second = rotate("rotation-2")

    assert second["previous_secret"] == first["secret"]
    assert second["secret"] not in (first["secret"], first["previous_secret"])


@pytest.mark.parametrize(
    ("body", "content_type", "status", "error"),
    [
        ("overlap_hours=2", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        ('{"overlap_hours": 2', "application/json", 400, "malformed_json"),
    ],
    ids=["form", "malformed-json"],
)
def test_a_rotation_body_that_is_not_json_is_refused(
    client, portal, body, content_type, status, error
):
    before = client.get("/v1/portals/me/webhook-secret", headers=portal.headers).json

    response = client.post(
        "/v1/portals/me/webhook-secret",
        data=body,
        content_type=content_type,
        headers=portal.headers,
    )

    assert response.status_code == status
    assert response.json["error"] == error
    assert client.get("/v1/portals/me/webhook-secret", headers=portal.headers).json == before


@pytest.mark.parametrize(
    "body",
    [
        {"overlap_hours": -1},
        {"overlap_hours": 169},
        {"x": 1},
        {"idempotency_key": ""},
        {"idempotency_key": "a b"},
        {"idempotency_key": "k" * 129},
    ],
)
def test_bad_rotations_are_refused(client, portal, body):
    response = client.post("/v1/portals/me/webhook-secret", json=body, headers=portal.headers)
    assert response.status_code == 400
    assert next(iter(body)) in response.json["errors"]["json"]


@pytest.mark.parametrize("key", ["", "a b", "k" * 129, "clé"])
def test_a_bad_idempotency_key_is_refused_saying_what_a_key_is(client, portal, key):
    response = client.post(
        "/v1/portals/me/webhook-secret", json={"idempotency_key": key}, headers=portal.headers
    )

    assert response.status_code == 400
    assert response.json["errors"]["json"]["idempotency_key"] == [
        "Must be 1 to 128 letters, digits, '.', '_', ':' or '-'."
    ]


def test_setting_the_url_again_enables_a_disabled_webhook_and_resumes_its_deliveries(
    client, wiring, portal, other_portal
):
    set_webhook(client, portal, LOOPBACK_HOOK)
    ad = client.put("/v1/ads/ad-1", json=ad_payload(member="m-1"), headers=portal.headers).json
    client.post(
        f"/v1/ads/{ad['id']}/contact",
        json={"member": "m-2", "name": "Bo", "body": "Hello"},
        headers=other_portal.headers,
    )
    with unit_of_work(wiring.session_factory) as session:
        deliveries.disable_webhook(session, portal_id=portal.id, reason="410 Gone")
    profile = client.get("/v1/portals/me", headers=portal.headers).json
    assert profile["webhook_disabled_at"] is not None
    assert profile["webhook_disabled_reason"] == "410 Gone"
    with unit_of_work(wiring.session_factory) as session:
        parked = session.scalar(select(Delivery.next_attempt_at))
    assert parked == deliveries.PARKED
    set_webhook(client, portal, LOOPBACK_HOOK)
    profile = client.get("/v1/portals/me", headers=portal.headers).json
    assert profile["webhook_disabled_at"] is None
    with unit_of_work(wiring.session_factory) as session:
        due = session.scalar(select(Delivery.next_attempt_at))
    assert due <= datetime.now(UTC)


def test_messages_to_a_portal_without_webhook_wait_in_the_inbox_only(
    client, wiring, portal, other_portal
):
    ad = client.put("/v1/ads/ad-1", json=ad_payload(member="m-1"), headers=portal.headers).json
    client.post(
        f"/v1/ads/{ad['id']}/contact",
        json={"member": "m-2", "name": "Bo", "body": "Hello"},
        headers=other_portal.headers,
    )
    with unit_of_work(wiring.session_factory) as session:
        assert session.scalar(select(Delivery.next_attempt_at)) == deliveries.PARKED
        assert deliveries.claim_due(session, limit=10, lease=timedelta(seconds=30)) == []


@pytest.mark.parametrize("hours", [2.5, 1e-40, "24", True])
def test_overlap_must_be_a_whole_number_of_hours(client, portal, hours):
    response = client.post(
        "/v1/portals/me/webhook-secret", json={"overlap_hours": hours}, headers=portal.headers
    )
    assert response.status_code == 400
    assert "overlap_hours" in response.json["errors"]["json"]


@pytest.mark.parametrize(
    "changes",
    [
        {"webhook_url": f"https://{SLOW_HOST}/hook"},
        {"ledger": {"protocol": "credit-commons", "url": f"https://{SLOW_HOST}/", "node": "n"}},
    ],
    ids=["webhook_url", "ledger"],
)
def test_a_profile_change_waiting_for_dns_holds_up_no_write_to_the_portal(
    app, client, wiring, portal, monkeypatch, changes
):
    """A URL's host is resolved when it is set (up to RESOLVE_TIMEOUT_S, 5 s): under the
    portal's row lock, every write referring to the portal (a new ad, a message to one of
    its members) waited for it meanwhile, each holding an API process."""
    resolving, release = threading.Event(), threading.Event()
    resolve = socket.getaddrinfo

    def slow_resolver(host, *args, **kwargs):
        if host == SLOW_HOST:
            resolving.set()
            release.wait(30)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_resolver)
    answers = {}
    patching = threading.Thread(
        target=lambda: answers.update(
            patch=app.test_client().patch("/v1/portals/me", json=changes, headers=portal.headers)
        )
    )
    patching.start()
    try:
        assert resolving.wait(10), "the profile change never resolved the host"
        writing = threading.Thread(
            target=lambda: answers.update(
                put=app.test_client().put(
                    "/v1/ads/new-ad", json=ad_payload(), headers=portal.headers
                )
            )
        )
        writing.start()
        waited = False
        while writing.is_alive() and not waited:
            waited = _a_session_waits_on_a_lock(wiring)
            time.sleep(0.01)
    finally:
        release.set()
        patching.join(30)
    writing.join(30)

    assert not waited, "the ad write waited for the profile change's lock"
    assert answers["put"].status_code == 201, answers["put"].json
    assert answers["patch"].status_code == 400, answers["patch"].json


def _a_session_waits_on_a_lock(wiring) -> bool:
    with wiring.engine.connect() as connection:
        return bool(
            connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
        )
