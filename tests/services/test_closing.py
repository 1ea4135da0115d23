"""Closing a portal (services/closing.py): a community leaving the directory for good."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from directory.api.ads.schemas import AdPutSchema
from directory.db import unit_of_work
from directory.errors import Conflict, Forbidden, NotFound
from directory.models import PortalStatus
from directory.services import ads, closing, portals, websites
from tests.factories import ad_payload
from tests.waits import send_aside

LEAVING_MEMBER = "m-leaving-4410"
STAYING_MEMBER = "m-stays"


@pytest.fixture
def leaving(make_portal, client, wiring):
    portal = make_portal(slug="sel-closing", name="SEL qui ferme")
    changed = client.patch(
        "/v1/portals/me",
        json={
            "website": "https://sel-closing.example.org",
            "contact": "bureau@sel-closing.example.org",
            "description": "Our little exchange",
        },
        headers=portal.headers,
    )
    assert changed.status_code == 200, changed.json
    with unit_of_work(wiring.session_factory) as session:
        # As PATCH sets it where the host resolves: the tests resolve no public name.
        session.execute(
            text("UPDATE portals SET webhook_url = :url WHERE id = :id"),
            {"url": "https://hooks.sel-closing.example.org/in", "id": portal.id},
        )
    return portal


@pytest.fixture
def staying(make_portal):
    return make_portal(slug="lets-stays", name="LETS that stays")


def close(wiring, slug):
    with unit_of_work(wiring.session_factory) as session:
        return closing.close_portal(session, portal_slug=slug, lifetimes=wiring.lifetimes)


def suspend(wiring, slug):
    with unit_of_work(wiring.session_factory) as session:
        portals.set_status(session, portal_slug=slug, status=PortalStatus.SUSPENDED)


def publish(client, portal, external_id, member):
    response = client.put(
        f"/v1/ads/{external_id}", json=ad_payload(member=member), headers=portal.headers
    )
    assert response.status_code == 201, response.json
    return response.json["id"]


def contact(client, portal, ad_id, member, body):
    response = client.post(
        f"/v1/ads/{ad_id}/contact",
        json={"member": member, "name": "Camille", "body": body},
        headers=portal.headers,
    )
    assert response.status_code == 201, response.json
    return response.json["conversation"]["id"]


def test_closing_a_portal_keeps_only_its_name_and_slug(client, wiring, leaving, staying):
    own_ad = publish(client, leaving, "a-1", LEAVING_MEMBER)
    publish(client, leaving, "a-2", LEAVING_MEMBER)
    their_ad = publish(client, staying, "b-1", STAYING_MEMBER)
    # Conversations both ways: its member wrote, and was written to.
    wrote = contact(client, leaving, their_ad, LEAVING_MEMBER, "Written by the leaver")
    written_to = contact(client, staying, own_ad, STAYING_MEMBER, "Written to the leaver")
    session_id = client.post("/v1/sync-sessions", headers=leaving.headers).json["id"]
    suspend(wiring, "sel-closing")

    closed = close(wiring, "sel-closing")

    assert closed == closing.Closure(
        ads_deleted=2, conversations_ended=2, messages_deleted=2, keys_revoked=1
    )
    with wiring.engine.connect() as connection:
        row = connection.execute(
            text(
                "SELECT status, name, website, contact, description, webhook_url, ledger_url"
                " FROM portals WHERE slug = 'sel-closing'"
            )
        ).one()
        assert tuple(row) == ("closed", "SEL qui ferme", None, None, None, None, None)
        for table in ("ads", "sync_sessions", "deliveries"):
            left = connection.scalar(
                text(f"SELECT count(*) FROM {table} WHERE portal_id = :id"), {"id": leaving.id}
            )
            assert left == 0, table
        assert connection.scalar(text("SELECT count(*) FROM messages")) == 0
        for value in (LEAVING_MEMBER, "Written by the leaver", "Written to the leaver"):
            assert not connection.scalar(
                text("SELECT count(*) FROM conversations c WHERE c::text LIKE :value"),
                {"value": f"%{value}%"},
            ), value
    assert client.get(f"/v1/sync-sessions/{session_id}", headers=leaving.headers).status_code == 401
    # The other side reads both conversations ended, with the community they were with.
    for conversation_id in (wrote, written_to):
        seen = client.get(f"/v1/conversations/{conversation_id}", headers=staying.headers).json
        gone = (
            seen["initiator"]
            if seen["initiator"]["portal"]["slug"] == "sel-closing"
            else (seen["recipient"])
        )
        assert gone["erased"] is True
        assert gone["portal"] == {"slug": "sel-closing", "name": "SEL qui ferme"}
        assert seen["messages"] == []
        refused = client.post(
            f"/v1/conversations/{conversation_id}/messages",
            json={"member": STAYING_MEMBER, "body": "Still there?"},
            headers=staying.headers,
        )
        assert refused.status_code == 409, refused.json
    # The other portal's own ad is untouched.
    assert client.get(f"/v1/ads/{their_ad}").status_code == 200


def test_a_closed_portals_key_is_refused_and_it_cannot_be_reactivated(client, wiring, leaving):
    suspend(wiring, "sel-closing")
    close(wiring, "sel-closing")

    response = client.get("/v1/portals/me", headers=leaving.headers)
    assert response.status_code == 401, response.json
    assert response.json["error"] == "key_revoked"
    for status in (PortalStatus.ACTIVE, PortalStatus.SUSPENDED):
        with unit_of_work(wiring.session_factory) as session, pytest.raises(Conflict) as refused:
            portals.set_status(session, portal_slug="sel-closing", status=status)
        assert refused.value.code == "portal_closed"


def test_only_a_suspended_portal_is_closed(wiring, leaving):
    with pytest.raises(Conflict) as refused:
        close(wiring, "sel-closing")
    assert refused.value.code == "portal_not_suspended"
    assert "suspend it first" in str(refused.value)
    with unit_of_work(wiring.session_factory) as session:
        assert (
            session.scalar(text("SELECT status FROM portals WHERE slug = 'sel-closing'"))
            == "active"
        )
    with pytest.raises(NotFound):
        close(wiring, "no-such-portal")


def test_closing_twice_changes_nothing_the_second_time(wiring, leaving):
    suspend(wiring, "sel-closing")
    close(wiring, "sel-closing")
    assert close(wiring, "sel-closing") == closing.Closure(0, 0, 0, 0, already_closed=True)


def test_its_website_is_free_for_another_portal_to_verify(client, wiring, leaving, make_portal):
    with unit_of_work(wiring.session_factory) as session:
        websites.trust_website(session, portal_id=leaving.id)
    successor = make_portal(slug="sel-successor", name="SEL, again")
    changed = client.patch(
        "/v1/portals/me",
        json={"website": "https://sel-closing.example.org"},
        headers=successor.headers,
    )
    assert changed.status_code == 200, changed.json
    with unit_of_work(wiring.session_factory) as session, pytest.raises(Conflict):
        websites.trust_website(session, portal_id=successor.id)  # taken
    suspend(wiring, "sel-closing")

    close(wiring, "sel-closing")

    with unit_of_work(wiring.session_factory) as session:
        assert websites.trust_website(session, portal_id=successor.id).website_verified_at


def test_no_key_is_issued_to_a_closed_portal(wiring, leaving):
    suspend(wiring, "sel-closing")
    close(wiring, "sel-closing")

    with unit_of_work(wiring.session_factory) as session, pytest.raises(Conflict) as refused:
        portals.issue_key(session, portal_slug="sel-closing", label="the new treasurer")
    assert refused.value.code == "portal_closed"
    with wiring.engine.connect() as connection:
        assert (
            connection.scalar(text("SELECT count(*) FROM portal_keys WHERE revoked_at IS NULL"))
            == 0
        )


def test_a_closed_portals_keys_keep_no_label(wiring, make_portal):
    # A label says whose key it was ("Odile's laptop"): the key's digest and dates are
    # enough to refuse it as revoked.
    make_portal(slug="sel-closing", name="SEL qui ferme")
    with unit_of_work(wiring.session_factory) as session:
        portals.issue_key(session, portal_slug="sel-closing", label="Odile Martin, treasurer")
    suspend(wiring, "sel-closing")

    assert close(wiring, "sel-closing").keys_revoked == 2

    with wiring.engine.connect() as connection:
        assert (
            connection.scalar(text("SELECT count(*) FROM portal_keys WHERE label IS NOT NULL")) == 0
        )


def test_a_profile_change_under_way_since_before_the_suspension_changes_nothing(wiring, leaving):
    # Its key was checked at the request's start; the portal's row, locked, says since.
    suspend(wiring, "sel-closing")
    close(wiring, "sel-closing")
    changes = (
        lambda session: portals.update_profile(
            session, portal_id=leaving.id, changes={"contact": "back@example.org"}
        ),
        lambda session: portals.rotate_webhook_secret(
            session, portal_id=leaving.id, overlap=timedelta(hours=1), idempotency_key=None
        ),
    )
    for change in changes:
        with unit_of_work(wiring.session_factory) as session, pytest.raises(Forbidden) as refused:
            change(session)
        assert refused.value.code == "portal_suspended"
        assert "is closed" in str(refused.value)
    with wiring.engine.connect() as connection:
        assert (
            connection.scalar(
                text("SELECT contact FROM portals WHERE id = :id"), {"id": leaving.id}
            )
            is None
        )


def test_an_ad_write_under_way_when_the_portal_is_closed_ends_first_and_goes_with_the_rest(
    wiring, leaving
):
    # The write's key was checked before the suspension. It holds the portal's write
    # lock (shared) and has yet to insert, which locks the portal's row for its key:
    # the closing waits for the write, and must not hold that row against it meanwhile.
    suspend(wiring, "sel-closing")
    with unit_of_work(wiring.session_factory) as writing:
        ads.lock_portal_writes(writing, leaving.id, exclusive=False)
        closure = send_aside(wiring, lambda: close(wiring, "sel-closing"), what="the closing")
        ads.upsert_ad(
            writing,
            portal_id=leaving.id,
            external_id="late-piano",
            ad=AdPutSchema().load(ad_payload(member=LEAVING_MEMBER)),
            lifetimes=wiring.lifetimes,
            max_ads=wiring.settings.portal_max_ads,
        )
    assert closure().ads_deleted == 1
    with wiring.engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM ads")) == 0
