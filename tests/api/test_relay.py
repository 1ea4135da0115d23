"""The contact relay through the API: conversations, messages, blocking, limits, the
inbox, and what each portal may see of the other party."""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import OperationalError

from directory import build_wiring, cursors
from directory.db import unit_of_work
from directory.models import (
    Ad,
    Conversation,
    Delivery,
    DeliveryState,
    Message,
    PortalStatus,
    Role,
)
from directory.models.relay import MAX_MESSAGE_CHARS
from directory.services import portals, relay
from directory.worker import housekeeping, purge_old_messages
from tests.apps import app_with
from tests.factories import ad_payload
from tests.waits import send_aside, wait_for_a_lock_wait

ADVERTISER = "m-ad-owner"
WRITER = "m-writer"
# For the service called directly, where a test does not reach any limit.
LIMITS = relay.RelayLimits(
    conversations_per_member_per_hour=100,
    conversations_per_portal_per_hour=100,
    conversations_with_one_member_per_hour=100,
    unanswered_messages=10,
)


def publish(client, portal, external_id="ad-1", **overrides) -> str:
    response = client.put(
        f"/v1/ads/{external_id}",
        json=ad_payload(member=overrides.pop("member", ADVERTISER), **overrides),
        headers=portal.headers,
    )
    assert response.status_code in (200, 201), response.json
    return response.json["id"]


@pytest.fixture
def ad_id(client, advertiser) -> str:
    return publish(client, advertiser)


def contact(client, portal, ad_id, *, member=WRITER, name="Anna", body="Is it still on?", **extra):
    return client.post(
        f"/v1/ads/{ad_id}/contact",
        json={"member": member, "name": name, "body": body, **extra},
        headers=portal.headers,
    )


def reply(client, portal, conversation_id, *, member=ADVERTISER, body="Yes, come by!", **extra):
    return client.post(
        f"/v1/conversations/{conversation_id}/messages",
        json={"member": member, "body": body, **extra},
        headers=portal.headers,
    )


# --- opening and writing -----------------------------------------------------------------


def test_a_member_opens_a_conversation_about_an_ad(client, advertiser, writer_portal, ad_id):
    response = contact(client, writer_portal, ad_id)
    assert response.status_code == 201, response.json
    conversation = response.json["conversation"]
    message = response.json["message"]
    assert conversation["ad"] == {"id": ad_id, "title": "Bicycle repairs"}
    assert conversation["your_roles"] == ["initiator"]
    assert conversation["initiator"]["member"] == WRITER  # the writer's own portal sees it
    assert conversation["initiator"]["name"] == "Anna"
    assert conversation["recipient"]["member"] is None  # the advertiser's handle: never
    assert conversation["recipient"]["portal"] == {"slug": "sel-lyon", "name": "SEL de Lyon"}
    assert conversation["initiator"]["alias"] != conversation["recipient"]["alias"]
    assert message["seq"] == 1
    assert message["sender"] == "initiator"
    assert message["body"] == "Is it still on?"
    assert message["delivery"]["state"] == "pending"


def test_the_advertisers_portal_sees_its_member_and_only_an_alias_of_the_writer(
    client, advertiser, writer_portal, ad_id
):
    conversation_id = contact(client, writer_portal, ad_id).json["conversation"]["id"]
    seen = client.get(f"/v1/conversations/{conversation_id}", headers=advertiser.headers).json
    assert seen["your_roles"] == ["recipient"]
    assert seen["recipient"]["member"] == ADVERTISER
    assert seen["initiator"]["member"] is None
    assert seen["initiator"]["portal"] == {"slug": "lets-bristol", "name": "Bristol LETS"}
    assert [message["body"] for message in seen["messages"]] == ["Is it still on?"]
    assert WRITER not in json.dumps(seen)


def test_replies_thread_back_in_order(client, advertiser, writer_portal, ad_id):
    conversation_id = contact(client, writer_portal, ad_id).json["conversation"]["id"]
    first = reply(client, advertiser, conversation_id, name="Luc")
    assert first.status_code == 201, first.json
    assert first.json["message"]["seq"] == 2
    assert first.json["message"]["sender"] == "recipient"
    second = reply(client, writer_portal, conversation_id, member=WRITER, body="Saturday?")
    assert second.json["message"]["seq"] == 3
    seen = client.get(f"/v1/conversations/{conversation_id}", headers=writer_portal.headers).json
    assert [(m["seq"], m["sender"]) for m in seen["messages"]] == [
        (1, "initiator"),
        (2, "recipient"),
        (3, "initiator"),
    ]
    assert seen["recipient"]["name"] == "Luc"
    assert seen["message_count"] == 3
    assert ADVERTISER not in json.dumps(seen)


def test_a_reply_reaches_the_writers_portal_for_its_member_in_the_same_conversation(
    client, advertiser, writer_portal, ad_id
):
    opened = contact(client, writer_portal, ad_id).json["conversation"]
    reply(client, advertiser, opened["id"], name="Luc", body="Yes, come by!")
    (event,) = client.get("/v1/inbox", headers=writer_portal.headers).json["events"]
    data = event["data"]
    assert data["conversation"]["id"] == opened["id"]
    assert data["conversation"]["ad"] == {"id": ad_id, "title": "Bicycle repairs"}
    assert data["message"]["seq"] == 2
    assert data["message"]["body"] == "Yes, come by!"
    # For the writer's own member, under the alias the advertiser's side knows them by.
    assert data["to"] == {
        "role": "initiator",
        "member": WRITER,
        "alias": opened["initiator"]["alias"],
    }
    assert data["from"] == {
        "role": "recipient",
        "alias": opened["recipient"]["alias"],
        "name": "Luc",
        "portal": {"slug": "sel-lyon", "name": "SEL de Lyon"},
    }
    assert ADVERTISER not in json.dumps(event)


def test_messages_page_by_seq(client, advertiser, writer_portal, ad_id):
    conversation_id = contact(client, writer_portal, ad_id).json["conversation"]["id"]
    for number in range(4):
        reply(client, advertiser, conversation_id, body=f"reply {number}")
    path = f"/v1/conversations/{conversation_id}"
    page = client.get(path + "?limit=2", headers=advertiser.headers).json
    assert [m["seq"] for m in page["messages"]] == [1, 2]
    assert page["next_after"] == 2
    rest = client.get(path + "?after=2&limit=10", headers=advertiser.headers).json
    assert [m["seq"] for m in rest["messages"]] == [3, 4, 5]
    assert rest["next_after"] is None


@pytest.mark.parametrize("after", ["2147483648", "99999999999999999999999"])
def test_an_after_beyond_any_seq_is_refused(client, advertiser, writer_portal, ad_id, after):
    # seq is a 32-bit integer column: a larger number is refused here, not by PostgreSQL.
    conversation_id = contact(client, writer_portal, ad_id).json["conversation"]["id"]
    path = f"/v1/conversations/{conversation_id}"
    response = client.get(path, query_string={"after": after}, headers=advertiser.headers)
    assert response.status_code == 400, response.json
    assert "after" in response.json["errors"]["query"]
    largest = client.get(path, query_string={"after": 2**31 - 1}, headers=advertiser.headers)
    assert (largest.status_code, largest.json["messages"]) == (200, [])


def test_two_conversations_of_one_member_cannot_be_linked(client, advertiser, writer_portal):
    first_ad = publish(client, advertiser, "ad-1")
    second_ad = publish(client, advertiser, "ad-2", title="Ladder to lend")
    one = contact(client, writer_portal, first_ad).json["conversation"]
    two = contact(client, writer_portal, second_ad).json["conversation"]
    assert one["initiator"]["alias"] != two["initiator"]["alias"]
    seen = [
        client.get(f"/v1/conversations/{c['id']}", headers=advertiser.headers).json
        for c in (one, two)
    ]
    assert seen[0]["initiator"]["alias"] != seen[1]["initiator"]["alias"]


def test_the_advertiser_cannot_be_linked_across_its_ads_conversations_either(
    client, advertiser, writer_portal
):
    # The writer's side sees the advertiser under an alias of each conversation: the
    # same member's two ads, talked about with one writer, do not name them as one.
    first_ad = publish(client, advertiser, "ad-1")
    second_ad = publish(client, advertiser, "ad-2", title="Ladder to lend")
    opened = [
        contact(client, writer_portal, ad).json["conversation"] for ad in (first_ad, second_ad)
    ]
    for conversation in opened:
        reply(client, advertiser, conversation["id"], name="Luc")
    seen = [
        client.get(f"/v1/conversations/{c['id']}", headers=writer_portal.headers).json
        for c in opened
    ]
    assert seen[0]["recipient"]["alias"] != seen[1]["recipient"]["alias"]
    replies = client.get("/v1/inbox", headers=writer_portal.headers).json["events"]
    aliases = [event["data"]["from"]["alias"] for event in replies]
    assert aliases == [seen[0]["recipient"]["alias"], seen[1]["recipient"]["alias"]]
    assert ADVERTISER not in json.dumps(seen) + json.dumps(replies)


def test_members_of_one_portal_can_talk_too(client, advertiser, ad_id):
    response = contact(client, advertiser, ad_id, member="m-neighbour")
    assert response.status_code == 201
    conversation = response.json["conversation"]
    assert conversation["your_roles"] == ["initiator", "recipient"]
    # Both are the portal's own members: it sees both handles.
    assert conversation["initiator"]["member"] == "m-neighbour"
    assert conversation["recipient"]["member"] == ADVERTISER
    answer = reply(client, advertiser, conversation["id"], member=ADVERTISER)
    assert answer.json["message"]["sender"] == "recipient"


def test_a_portal_only_ad_can_be_contacted_by_its_own_portals_members_only(
    client, advertiser, writer_portal
):
    ad_id = publish(client, advertiser, "ad-private", visibility="portal")
    assert contact(client, writer_portal, ad_id).status_code == 404
    assert contact(client, advertiser, ad_id, member="m-neighbour").status_code == 201


# --- refusals ---------------------------------------------------------------------------


def test_an_expired_ad_cannot_be_contacted(client, advertiser, writer_portal, ad_id):
    client.post("/v1/ads/ad-1/expire", headers=advertiser.headers)
    response = contact(client, writer_portal, ad_id)
    assert response.status_code == 404
    assert response.json["error"] == "ad_not_found"


def test_a_deleted_ad_cannot_be_contacted(client, advertiser, writer_portal, ad_id):
    client.delete("/v1/ads/ad-1", headers=advertiser.headers)
    assert contact(client, writer_portal, ad_id).status_code == 404


def test_a_conversation_goes_on_after_its_ad_is_deleted(client, advertiser, writer_portal, ad_id):
    conversation_id = contact(client, writer_portal, ad_id).json["conversation"]["id"]
    assert client.delete("/v1/ads/ad-1", headers=advertiser.headers).status_code == 204
    answered = reply(client, advertiser, conversation_id)
    assert answered.status_code == 201, answered.json
    assert answered.json["conversation"]["ad"] == {"id": None, "title": "Bicycle repairs"}
    assert reply(client, writer_portal, conversation_id, member=WRITER).status_code == 201


def test_an_unknown_or_malformed_ad_id_is_not_found(client, writer_portal):
    assert contact(client, writer_portal, uuid.uuid4()).status_code == 404
    response = contact(client, writer_portal, "not-a-uuid")
    assert response.status_code == 404
    assert "ad_id" in response.json["errors"]["path"]


@pytest.mark.parametrize("malformed", ["not-a-uuid", "12345"])
def test_a_malformed_id_is_not_found_with_the_code_of_an_unknown_one(
    client, advertiser, writer_portal, ad_id, malformed
):
    # A portal tells "no such conversation" by its code: a malformed id is one too.
    unknown, bad = (contact(client, writer_portal, ad) for ad in (str(uuid.uuid4()), malformed))
    assert (bad.status_code, bad.json["error"]) == (404, unknown.json["error"])
    assert unknown.json["error"] == "ad_not_found"
    for method, path, payload in [
        ("get", "/v1/conversations/{}", None),
        ("post", "/v1/conversations/{}/messages", {"member": ADVERTISER, "body": "Hi"}),
        ("post", "/v1/conversations/{}/block", {"member": ADVERTISER}),
    ]:
        unknown, bad = (
            getattr(client, method)(path.format(id_), json=payload, headers=advertiser.headers)
            for id_ in (str(uuid.uuid4()), malformed)
        )
        assert (bad.status_code, bad.json["error"]) == (404, unknown.json["error"]), path
        assert unknown.json["error"] == "conversation_not_found"
        assert "conversation_id" in bad.json["errors"]["path"]


def test_an_ad_deleted_while_it_is_contacted_is_not_found(
    app, client, wiring, advertiser, writer_portal, ad_id
):
    # Found just before the deletion committed, it made the conversation's insert fail
    # its foreign key: 409 constraint_violation rather than the ad's own 404.
    answers = []
    with unit_of_work(wiring.session_factory) as deleting:
        deleting.execute(text("DELETE FROM ads WHERE id = :id"), {"id": ad_id})
        writer = threading.Thread(
            target=lambda: answers.append(contact(app.test_client(), writer_portal, ad_id))
        )
        writer.start()
        wait_for_a_lock_wait(wiring, what="the contact")
    writer.join(30)
    (answer,) = answers
    assert answer.status_code == 404, answer.json
    assert answer.json["error"] == "ad_not_found"


def test_an_ad_with_contact_turned_off_cannot_be_contacted(
    client, wiring, advertiser, writer_portal, ad_id
):
    with unit_of_work(wiring.session_factory) as session:
        session.execute(update(Ad).where(Ad.id == uuid.UUID(ad_id)).values(accepts_contact=False))
    response = contact(client, writer_portal, ad_id)
    assert response.status_code == 409
    assert response.json["error"] == "contact_disabled"


def test_the_advertiser_turns_contact_off_and_on_again_with_the_ad(
    client, advertiser, writer_portal, ad_id
):
    closed = client.put(
        "/v1/ads/ad-1",
        json=ad_payload(member=ADVERTISER, accepts_contact=False),
        headers=advertiser.headers,
    )
    assert closed.status_code == 200, closed.json
    assert client.get(f"/v1/ads/{ad_id}").json["accepts_contact"] is False
    refused = contact(client, writer_portal, ad_id)
    assert refused.status_code == 409, refused.json
    assert refused.json["error"] == "contact_disabled"
    assert "turned contact off" in refused.json["message"]
    assert client.get("/v1/conversations", headers=advertiser.headers).json["conversations"] == []
    client.put("/v1/ads/ad-1", json=ad_payload(member=ADVERTISER), headers=advertiser.headers)
    assert contact(client, writer_portal, ad_id).status_code == 201


def suspend(wiring, portal) -> None:
    with unit_of_work(wiring.session_factory) as session:
        portals.set_status(session, portal_slug=portal.slug, status=PortalStatus.SUSPENDED)


def test_an_ad_of_a_suspended_portal_cannot_be_contacted(
    client, wiring, advertiser, writer_portal, ad_id
):
    suspend(wiring, advertiser)
    assert contact(client, writer_portal, ad_id).status_code == 404


def test_no_one_can_write_to_a_member_of_a_suspended_portal(
    client, wiring, advertiser, writer_portal, ad_id
):
    conversation_id = contact(client, writer_portal, ad_id).json["conversation"]["id"]
    suspend(wiring, advertiser)
    response = reply(client, writer_portal, conversation_id, member=WRITER, body="Still on?")
    assert response.status_code == 409, response.json
    assert response.json["error"] == "recipient_portal_suspended"
    assert "suspended" in response.json["message"]
    # Nothing was stored, and the writer's side of the conversation can still be read.
    seen = client.get(f"/v1/conversations/{conversation_id}", headers=writer_portal.headers)
    assert seen.status_code == 200
    assert seen.json["message_count"] == 1
    assert [message["body"] for message in seen.json["messages"]] == ["Is it still on?"]
    with unit_of_work(wiring.session_factory) as session:
        stored = session.execute(
            text("SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM deliveries)")
        ).one()
    assert tuple(stored) == (1, 1)


def test_a_member_cannot_contact_their_own_ad(client, advertiser, ad_id):
    response = contact(client, advertiser, ad_id, member=ADVERTISER)
    assert response.status_code == 400
    assert "member" in response.json["errors"]["json"]


def test_contact_needs_a_portal_key(client, ad_id):
    response = client.post(
        f"/v1/ads/{ad_id}/contact", json={"member": WRITER, "name": "Anna", "body": "Hi"}
    )
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param({"member": "anna@example.org"}, "member", id="member-email"),
        pytest.param({"member": "+33 6 12 34 56 78"}, "member", id="member-phone"),
        pytest.param({"member": ""}, "member", id="member-empty"),
        pytest.param({"member": None}, "member", id="member-null"),
        pytest.param({"name": "anna@example.org"}, "name", id="name-email"),
        pytest.param({"name": "Anna 06 12 34 56 78"}, "name", id="name-phone"),
        pytest.param({"name": "anna\uff20example.org"}, "name", id="name-email-full-width"),
        pytest.param({"name": "anna\u200b@\u200bexample.org"}, "name", id="name-email-split"),
        pytest.param({"name": "anna @ example.org"}, "name", id="name-email-spaced"),
        pytest.param({"name": "Anna \uff10\uff16 12 34 56 78"}, "name", id="name-phone-full-width"),
        pytest.param(
            {"name": "Anna 06\u200b12\u200b34\u200b56\u200b78"}, "name", id="name-phone-split"
        ),
        pytest.param({"name": ""}, "name", id="name-empty"),
        pytest.param({"name": " "}, "name", id="name-blank"),
        pytest.param({"name": "\u200b\u200b"}, "name", id="name-zero-width"),
        pytest.param({"name": "x" * 81}, "name", id="name-long"),
        pytest.param({"name": "An\nna"}, "name", id="name-newline"),
        pytest.param({"body": ""}, "body", id="body-empty"),
        pytest.param({"body": "x" * 8001}, "body", id="body-long"),
        pytest.param({"body": "a\u0000b"}, "body", id="body-nul"),
        pytest.param({"body": 5}, "body", id="body-number"),
        pytest.param({"idempotency_key": "has space"}, "idempotency_key", id="key-space"),
        pytest.param({"idempotency_key": "k" * 129}, "idempotency_key", id="key-long"),
        pytest.param({"email": "anna@example.org"}, "email", id="unknown-field"),
    ],
)
def test_bad_contacts_are_refused_naming_the_field(
    client, advertiser, writer_portal, ad_id, change, field
):
    body = {"member": WRITER, "name": "Anna", "body": "Hello", **change}
    response = client.post(f"/v1/ads/{ad_id}/contact", json=body, headers=writer_portal.headers)
    assert response.status_code == 400, response.json
    assert field in response.json["errors"]["json"]


@pytest.mark.parametrize("key", ["has space", "k" * 129, "k\n", ""])
def test_a_bad_idempotency_key_is_refused_saying_what_a_key_is(
    client, advertiser, writer_portal, ad_id, key
):
    response = contact(client, writer_portal, ad_id, idempotency_key=key)
    assert response.status_code == 400, response.json
    assert response.json["errors"]["json"]["idempotency_key"] == [
        "Must be 1 to 128 letters, digits, '.', '_', ':' or '-'."
    ]


@pytest.mark.parametrize("name", ["Anna @ Lyon market", "Anna (Lyon)", "Jo Smith-Brown"])
def test_names_that_hold_no_address_are_taken(client, advertiser, writer_portal, ad_id, name):
    assert contact(client, writer_portal, ad_id, name=name).status_code == 201


def test_an_opened_conversation_is_where_its_location_says(
    client, advertiser, writer_portal, ad_id
):
    opened = contact(client, writer_portal, ad_id)
    conversation_id = opened.json["conversation"]["id"]
    assert opened.headers["Location"] == f"/v1/conversations/{conversation_id}"
    seen = client.get(opened.headers["Location"], headers=writer_portal.headers)
    assert seen.json["id"] == conversation_id
    replied = client.post(
        f"{opened.headers['Location']}/messages",
        json={"member": WRITER, "body": "Still there?"},
        headers=writer_portal.headers,
    )
    assert replied.status_code == 201, replied.json
    assert "Location" not in replied.headers  # a message has no address of its own


def test_a_message_body_passes_unchanged(client, advertiser, writer_portal, ad_id):
    words = "Bonjour ! Écrivez-moi : anna@example.org\n\n  — Anna  "
    conversation_id = contact(client, writer_portal, ad_id, body=words).json["conversation"]["id"]
    seen = client.get(f"/v1/conversations/{conversation_id}", headers=advertiser.headers).json
    assert seen["messages"][0]["body"] == words


# Each character as the member typed it: nothing normalised (e + combining accent stays two
# code points), trimmed or folded; emoji beyond the BMP, a joined family, a byte-order mark,
# the Unicode line separator, CR LF and tabs; blanks at both ends.
UNUSUAL_WORDS = "\ufeff  Grüße e\u0301 👋🏽 👩\u200d👩\u200d👧 « ok »\u2028\r\n\tfin\t  "


def longest_body(words: str) -> str:
    """`words`, then filler up to the largest body taken, counted in characters (code
    points), as the API and the database count them."""
    return words + "ß" * (MAX_MESSAGE_CHARS - len(words))


def test_a_message_at_the_size_limit_passes_unchanged_every_way(
    client, advertiser, writer_portal, ad_id
):
    first = longest_body(UNUSUAL_WORDS)
    second = longest_body("Réponse " + UNUSUAL_WORDS)
    assert len(first) == len(second) == MAX_MESSAGE_CHARS
    opened = contact(client, writer_portal, ad_id, body=first)
    assert opened.status_code == 201, opened.json
    assert opened.json["message"]["body"] == first
    conversation_id = opened.json["conversation"]["id"]
    answered = reply(client, advertiser, conversation_id, body=second)
    assert answered.status_code == 201, answered.json
    assert answered.json["message"]["body"] == second
    for portal in (advertiser, writer_portal):
        seen = client.get(f"/v1/conversations/{conversation_id}", headers=portal.headers).json
        assert [message["body"] for message in seen["messages"]] == [first, second]
    (to_advertiser,) = client.get("/v1/inbox", headers=advertiser.headers).json["events"]
    (to_writer,) = client.get("/v1/inbox", headers=writer_portal.headers).json["events"]
    assert to_advertiser["data"]["message"]["body"] == first
    assert to_writer["data"]["message"]["body"] == second


def test_a_reply_over_the_size_limit_is_refused_and_nothing_is_stored(
    client, wiring, advertiser, writer_portal, ad_id
):
    conversation_id = contact(client, writer_portal, ad_id).json["conversation"]["id"]
    response = reply(client, advertiser, conversation_id, body=longest_body("Too long") + "!")
    assert response.status_code == 400, response.json
    assert "body" in response.json["errors"]["json"]
    with unit_of_work(wiring.session_factory) as session:
        assert session.scalar(text("SELECT count(*) FROM messages")) == 1


def test_a_portal_not_party_to_a_conversation_cannot_see_or_write_in_it(
    client, make_portal, advertiser, writer_portal, ad_id
):
    stranger = make_portal(slug="stranger")
    conversation_id = contact(client, writer_portal, ad_id).json["conversation"]["id"]
    assert (
        client.get(f"/v1/conversations/{conversation_id}", headers=stranger.headers).status_code
        == 404
    )
    assert reply(client, stranger, conversation_id, member="m-x").status_code == 404
    assert (
        client.get(f"/v1/conversations/{uuid.uuid4()}", headers=advertiser.headers).status_code
        == 404
    )


@pytest.mark.parametrize("action", ["write", "block"])
def test_a_portal_not_party_is_answered_without_waiting_for_the_partys_lock(
    client, wiring, make_portal, writer_portal, ad_id, action
):
    # Held up by a party's lock, a stranger's 404 would come late for a real conversation
    # and at once for a made-up id: a way to learn that it exists, and to hold it up.
    stranger = make_portal(slug="stranger")
    conversation_id = contact(client, writer_portal, ad_id).json["conversation"]["id"]
    answers = []

    def stranger_acts():
        if action == "write":
            answers.append(reply(client, stranger, conversation_id, member="m-x"))
        else:
            answers.append(
                client.post(
                    f"/v1/conversations/{conversation_id}/block",
                    json={"member": "m-x"},
                    headers=stranger.headers,
                )
            )

    with unit_of_work(wiring.session_factory) as party:
        party.execute(
            select(Conversation).where(Conversation.id == conversation_id).with_for_update()
        )
        stranger_thread = threading.Thread(target=stranger_acts)
        stranger_thread.start()
        stranger_thread.join(20)
        answered_while_locked = not stranger_thread.is_alive()
    stranger_thread.join(20)
    assert answered_while_locked
    (answer,) = answers
    assert answer.status_code == 404, answer.json
    assert answer.json["error"] == "conversation_not_found"


def test_only_a_party_member_can_write(client, advertiser, writer_portal, ad_id):
    conversation_id = contact(client, writer_portal, ad_id).json["conversation"]["id"]
    response = reply(client, advertiser, conversation_id, member="m-someone-else")
    assert response.status_code == 403
    assert response.json["error"] == "not_a_party"
    assert "member" in response.json["errors"]["json"]


# --- blocking ---------------------------------------------------------------------------


def test_a_blocked_conversation_refuses_further_messages(
    client, wiring, advertiser, writer_portal, ad_id
):
    conversation_id = contact(client, writer_portal, ad_id).json["conversation"]["id"]
    blocked = client.post(
        f"/v1/conversations/{conversation_id}/block",
        json={"member": ADVERTISER},
        headers=advertiser.headers,
    )
    assert blocked.status_code == 200
    assert blocked.json["blocked_by"] == "recipient"
    for portal, member, by in (
        (writer_portal, WRITER, "the other party"),
        (advertiser, ADVERTISER, "you"),
    ):
        response = reply(client, portal, conversation_id, member=member)
        assert response.status_code == 409
        assert response.json["error"] == "conversation_blocked"
        assert response.json["message"] == (
            f"this conversation was blocked by {by}; no more messages can be sent in it"
        )
    with unit_of_work(wiring.session_factory) as session:
        assert session.scalar(text("SELECT count(*) FROM messages")) == 1
    again = client.post(
        f"/v1/conversations/{conversation_id}/block",
        json={"member": WRITER},
        headers=writer_portal.headers,
    )
    assert again.json["blocked_by"] == "recipient"  # the first block stands


def test_only_a_party_can_block(client, advertiser, writer_portal, ad_id):
    conversation_id = contact(client, writer_portal, ad_id).json["conversation"]["id"]
    response = client.post(
        f"/v1/conversations/{conversation_id}/block",
        json={"member": "m-nobody"},
        headers=advertiser.headers,
    )
    assert response.status_code == 403


def block(client, portal, conversation_id, member):
    response = client.post(
        f"/v1/conversations/{conversation_id}/block",
        json={"member": member},
        headers=portal.headers,
    )
    assert response.status_code == 200, response.json
    return response.json


def test_a_member_the_advertiser_blocked_opens_no_new_conversation_with_them(
    client, advertiser, writer_portal, ad_id
):
    """Else a block would hold nobody back: the member would write again at once, about
    another of the advertiser's ads, under a new alias."""
    other_ad = publish(client, advertiser, "ad-2")
    someone_elses_ad = publish(client, advertiser, "ad-3", member="m-neighbour")
    conversation_id = contact(client, writer_portal, ad_id).json["conversation"]["id"]
    block(client, advertiser, conversation_id, ADVERTISER)

    for ad in (ad_id, other_ad):
        refused = contact(client, writer_portal, ad)
        assert refused.status_code == 409, refused.json
        assert refused.json["error"] == "blocked_by_advertiser"
        assert "member" in refused.json["errors"]["json"]
    # Other members of the community, and other advertisers, are not concerned.
    assert contact(client, writer_portal, ad_id, member="m-other-writer").status_code == 201
    assert contact(client, writer_portal, someone_elses_ad).status_code == 201


def test_a_member_blocked_by_the_advertiser_in_a_conversation_the_advertiser_opened(
    client, advertiser, writer_portal, ad_id
):
    # The writer advertises too; the advertiser wrote to them, then blocked them.
    writers_ad = publish(client, writer_portal, "w-ad", member=WRITER)
    opened = contact(client, advertiser, writers_ad, member=ADVERTISER)
    assert opened.status_code == 201, opened.json
    block(client, advertiser, opened.json["conversation"]["id"], ADVERTISER)

    refused = contact(client, writer_portal, ad_id)

    assert (refused.status_code, refused.json["error"]) == (409, "blocked_by_advertiser")


def test_a_member_who_blocked_may_write_to_the_one_they_blocked_again(
    client, advertiser, writer_portal, ad_id
):
    """Their own block is theirs to go back on: it refuses the other one only."""
    conversation_id = contact(client, writer_portal, ad_id).json["conversation"]["id"]
    block(client, writer_portal, conversation_id, WRITER)

    again = contact(client, writer_portal, ad_id)

    assert again.status_code == 201, again.json


# --- idempotency ---------------------------------------------------------------------------


def test_a_retried_contact_with_its_key_makes_no_second_conversation(
    client, advertiser, writer_portal, ad_id
):
    first = contact(client, writer_portal, ad_id, idempotency_key="send-1")
    again = contact(client, writer_portal, ad_id, idempotency_key="send-1")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json["message"]["id"] == first.json["message"]["id"]
    listed = client.get("/v1/conversations", headers=writer_portal.headers).json
    assert len(listed["conversations"]) == 1


def test_a_retried_reply_with_its_key_is_sent_once(client, advertiser, writer_portal, ad_id):
    conversation_id = contact(client, writer_portal, ad_id).json["conversation"]["id"]
    first = reply(client, advertiser, conversation_id, idempotency_key="r-1")
    again = reply(client, advertiser, conversation_id, idempotency_key="r-1")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json["message"]["seq"] == 2
    seen = client.get(f"/v1/conversations/{conversation_id}", headers=advertiser.headers).json
    assert seen["message_count"] == 2


def test_a_retried_contact_finds_its_message_after_the_ad_was_deleted(
    client, advertiser, writer_portal, ad_id
):
    # The advertiser deleted the ad between the first try and its retry: the message was
    # sent all the same, and the retry must say so, not that the key went to another one.
    first = contact(client, writer_portal, ad_id, idempotency_key="send-1")
    assert client.delete("/v1/ads/ad-1", headers=advertiser.headers).status_code == 204
    again = contact(client, writer_portal, ad_id, idempotency_key="send-1")
    assert (first.status_code, again.status_code) == (201, 200), again.json
    assert again.json["message"]["id"] == first.json["message"]["id"]
    assert again.json["conversation"]["ad"] == {"id": None, "title": "Bicycle repairs"}
    # Other words under the key are still another message.
    other = contact(client, writer_portal, ad_id, idempotency_key="send-1", body="Other")
    assert other.status_code == 409, other.json
    assert other.json["error"] == "idempotency_key_reused"


def test_a_key_reused_for_another_message_is_refused(client, advertiser, writer_portal, ad_id):
    conversation_id = contact(client, writer_portal, ad_id).json["conversation"]["id"]
    reply(client, advertiser, conversation_id, idempotency_key="r-1")
    response = reply(client, advertiser, conversation_id, idempotency_key="r-1", body="Other")
    assert response.status_code == 409
    assert response.json["error"] == "idempotency_key_reused"
    assert "idempotency_key" in response.json["errors"]["json"]


def test_a_key_reused_under_another_name_is_refused(client, advertiser, writer_portal, ad_id):
    # The replay would answer 200 while the name sent with it went nowhere.
    opened = contact(client, writer_portal, ad_id, name="Anna", idempotency_key="k-1")
    conversation_id = opened.json["conversation"]["id"]
    again = contact(client, writer_portal, ad_id, name="Bob", idempotency_key="k-1")
    assert again.status_code == 409, again.json
    assert again.json["error"] == "idempotency_key_reused"
    reply(client, advertiser, conversation_id, name="Carla", idempotency_key="r-1")
    renamed = reply(client, advertiser, conversation_id, name="Dora", idempotency_key="r-1")
    assert renamed.status_code == 409, renamed.json
    # Sent again as it was, or without a name (none to set), it is the same message.
    for name in ("Carla", None):
        extra = {} if name is None else {"name": name}
        assert (
            reply(client, advertiser, conversation_id, idempotency_key="r-1", **extra).status_code
            == 200
        )
    seen = client.get(f"/v1/conversations/{conversation_id}", headers=writer_portal.headers).json
    assert (seen["initiator"]["name"], seen["recipient"]["name"]) == ("Anna", "Carla")


def test_a_key_reused_by_another_member_of_the_portal_is_refused_on_opening(
    client, advertiser, writer_portal, ad_id
):
    # Keys are the portal's: another member's message, even in the same words, is not a
    # retry of the first member's and must not be dropped as one.
    first = contact(client, writer_portal, ad_id, member="m-one", idempotency_key="k-1")
    again = contact(client, writer_portal, ad_id, member="m-two", idempotency_key="k-1")
    assert (first.status_code, again.status_code) == (201, 409), again.json
    assert again.json["error"] == "idempotency_key_reused"
    assert "idempotency_key" in again.json["errors"]["json"]
    listed = client.get("/v1/conversations?member=m-two", headers=writer_portal.headers).json
    assert listed["conversations"] == []


def test_a_key_reused_by_another_member_of_the_portal_is_refused_on_replying(
    client, advertiser, ad_id
):
    # Both parties are members of one portal, so they write with the same portal's keys.
    opened = contact(client, advertiser, ad_id, member="m-neighbour")
    conversation_id = opened.json["conversation"]["id"]
    first = reply(client, advertiser, conversation_id, member=ADVERTISER, idempotency_key="r-1")
    again = reply(client, advertiser, conversation_id, member="m-neighbour", idempotency_key="r-1")
    assert (first.status_code, again.status_code) == (201, 409), again.json
    assert again.json["error"] == "idempotency_key_reused"
    seen = client.get(f"/v1/conversations/{conversation_id}", headers=advertiser.headers).json
    assert [message["sender"] for message in seen["messages"]] == ["initiator", "recipient"]


# --- limits -------------------------------------------------------------------------------


def test_a_conversation_is_opened_when_its_first_message_is_sent(
    client, wiring, advertiser, writer_portal, ad_id
):
    # Opened at its transaction's start, an opening that waited for the member's earlier
    # one (their openings take turns) would show the wait to the recipient, and with it
    # which conversations are the same member's.
    started = []

    def second_opening():
        started.append(contact(client, writer_portal, ad_id, body="Second"))

    with unit_of_work(wiring.session_factory) as first:
        relay.open_conversation(
            first,
            sender=portals.authenticate(first, key=writer_portal.key),
            ad_id=uuid.UUID(ad_id),
            member=WRITER,
            name="Anna",
            body="First",
            idempotency_key=None,
            limits=LIMITS,
        )
        opener = threading.Thread(target=second_opening)
        opener.start()
        wait_for_a_lock_wait(wiring, what="the second opening", wait_event="advisory")
    opener.join(30)
    (response,) = started
    assert response.status_code == 201, response.json
    conversation = client.get(
        f"/v1/conversations/{response.json['conversation']['id']}", headers=advertiser.headers
    ).json
    assert conversation["created_at"] == conversation["messages"][0]["sent_at"]


def test_a_member_opens_a_limited_number_of_conversations_an_hour(
    strict_client, client, advertiser, writer_portal
):
    ads = [publish(client, advertiser, f"ad-{number}") for number in range(3)]
    statuses = [contact(strict_client, writer_portal, ad).status_code for ad in ads]
    assert statuses == [201, 201, 429]
    refused = contact(strict_client, writer_portal, ads[2])
    assert refused.json["error"] == "too_many_conversations"
    assert "opened 2 conversations in the last hour" in refused.json["message"]
    assert 3500 < int(refused.headers["Retry-After"]) <= 3601
    assert "member" in refused.json["errors"]["json"]
    # Another member of the portal still may, up to the portal's own limit.
    assert contact(strict_client, writer_portal, ads[2], member="m-other").status_code == 201
    refused = contact(strict_client, writer_portal, ads[2], member="m-third")
    assert refused.status_code == 429
    assert refused.json["error"] == "too_many_conversations"
    # Counted up to the limit, and no further: the message gives the limit.
    assert "opened 3 conversations in the last hour" in refused.json["message"]
    assert 3500 < int(refused.headers["Retry-After"]) <= 3601


def test_openings_at_once_by_one_member_cannot_both_pass_its_limit(
    strict_client, client, wiring, advertiser, writer_portal
):
    ads = [publish(client, advertiser, f"ad-{number}") for number in range(3)]
    assert contact(strict_client, writer_portal, ads[0]).status_code == 201
    answers = []
    with unit_of_work(wiring.session_factory) as first:
        # The member's second opening, not committed yet, and a third racing it.
        relay.open_conversation(
            first,
            sender=portals.authenticate(first, key=writer_portal.key),
            ad_id=uuid.UUID(ads[1]),
            member=WRITER,
            name="Anna",
            body="Second",
            idempotency_key=None,
            limits=dataclasses.replace(
                LIMITS, conversations_per_member_per_hour=2, conversations_per_portal_per_hour=3
            ),
        )
        racer = threading.Thread(
            target=lambda: answers.append(contact(strict_client, writer_portal, ads[2]))
        )
        racer.start()
        wait_for_a_lock_wait(wiring, what="the racing opening", wait_event="advisory")
    racer.join(30)
    (answer,) = answers
    assert answer.status_code == 429, answer.json
    assert answer.json["error"] == "too_many_conversations"
    with unit_of_work(wiring.session_factory) as session:
        assert session.scalar(text("SELECT count(*) FROM conversations")) == 2


def test_the_limit_counts_only_the_last_hour(
    strict_client, client, wiring, advertiser, writer_portal
):
    ads = [publish(client, advertiser, f"ad-{number}") for number in range(3)]
    for ad in ads[:2]:
        contact(strict_client, writer_portal, ad)
    with unit_of_work(wiring.session_factory) as session:
        session.execute(
            update(Conversation).values(created_at=datetime.now(UTC) - timedelta(minutes=61))
        )
    assert contact(strict_client, writer_portal, ads[2]).status_code == 201


@pytest.fixture
def two_with_one_member(migrated):
    """A client of a directory where one portal's members may open 2 conversations an
    hour with one member."""
    with app_with(migrated, relay_conversations_with_one_member_per_hour=2) as app:
        yield app.test_client()


def test_one_portals_members_open_a_limited_number_of_conversations_with_one_member(
    two_with_one_member, client, wiring, advertiser, writer_portal, other_portal
):
    limited = two_with_one_member
    ads = [publish(client, advertiser, f"ad-{number}") for number in range(3)]
    # Made-up handles, each opening one conversation with the same advertiser.
    statuses = [
        contact(limited, writer_portal, ad, member=f"m-made-up-{number}").status_code
        for number, ad in enumerate(ads)
    ]
    assert statuses == [201, 201, 429]
    refused = contact(limited, writer_portal, ads[0], member="m-made-up-9")
    assert refused.status_code == 429
    assert refused.json["error"] == "too_many_conversations"
    assert refused.json["message"] == (
        "this portal's members opened 2 conversations with this advertiser in the last hour, "
        "the most allowed with one member"
    )
    assert 3500 < int(refused.headers["Retry-After"]) <= 3601
    # Another member of the advertiser's portal may still be contacted, and the advertiser
    # by another portal's members.
    other_ad = publish(client, advertiser, "ad-other", member="m-other-advertiser")
    assert contact(limited, writer_portal, other_ad, member="m-made-up-9").status_code == 201
    assert contact(limited, other_portal, ads[0], member="m-elsewhere").status_code == 201
    # An hour later, the portal's members may again.
    with unit_of_work(wiring.session_factory) as session:
        session.execute(
            update(Conversation).values(created_at=datetime.now(UTC) - timedelta(minutes=61))
        )
    assert contact(limited, writer_portal, ads[2], member="m-made-up-9").status_code == 201


def test_openings_at_once_by_two_members_cannot_both_pass_the_limit_with_one_member(
    two_with_one_member, client, wiring, advertiser, writer_portal
):
    # The limit is against a portal making up handles, which sends its openings at once:
    # each under its own member's lock, they all read the count before any committed.
    ads = [publish(client, advertiser, f"ad-{number}") for number in range(3)]
    assert contact(two_with_one_member, writer_portal, ads[0], member="m-1").status_code == 201
    answers = []
    with unit_of_work(wiring.session_factory) as first:
        relay.open_conversation(
            first,
            sender=portals.authenticate(first, key=writer_portal.key),
            ad_id=uuid.UUID(ads[1]),
            member="m-2",
            name="Anna",
            body="Second",
            idempotency_key=None,
            limits=dataclasses.replace(LIMITS, conversations_with_one_member_per_hour=2),
        )
        racer = threading.Thread(
            target=lambda: answers.append(
                contact(two_with_one_member, writer_portal, ads[2], member="m-3")
            )
        )
        racer.start()
        wait_for_a_lock_wait(wiring, what="the racing opening", wait_event="advisory")
    racer.join(30)
    (answer,) = answers
    assert answer.status_code == 429, answer.json
    assert answer.json["error"] == "too_many_conversations"
    with unit_of_work(wiring.session_factory) as session:
        assert session.scalar(text("SELECT count(*) FROM conversations")) == 2


@pytest.fixture
def three_in_a_row(migrated):
    """A client of a directory where a party may send 3 messages in a row."""
    with app_with(migrated, relay_unanswered_messages=3) as app:
        yield app.test_client()


def stored_messages(wiring) -> list[tuple[int, str]]:
    with unit_of_work(wiring.session_factory) as session:
        rows = session.execute(select(Message.seq, Message.body).order_by(Message.seq))
        return [tuple(row) for row in rows]


def test_a_party_sends_only_so_many_messages_before_the_other_answers(
    three_in_a_row, wiring, advertiser, writer_portal, ad_id
):
    client = three_in_a_row
    conversation_id = contact(client, writer_portal, ad_id, body="1").json["conversation"]["id"]
    for body in ("2", "3"):
        sent = reply(client, writer_portal, conversation_id, member=WRITER, body=body)
        assert sent.status_code == 201, sent.json
    refused = reply(client, writer_portal, conversation_id, member=WRITER, body="4")
    assert refused.status_code == 409
    assert refused.json["error"] == "awaiting_reply"
    assert refused.json["message"] == (
        "you have sent 3 messages in a row in this conversation; the other party must "
        "answer before you write again"
    )
    assert "member" in refused.json["errors"]["json"]
    assert stored_messages(wiring) == [(1, "1"), (2, "2"), (3, "3")]  # nothing of the 4th
    # Once answered, the writer may send as many in a row again; the other party too.
    assert reply(client, advertiser, conversation_id, body="A").status_code == 201
    for body in ("4", "5", "6"):
        assert (
            reply(client, writer_portal, conversation_id, member=WRITER, body=body).status_code
            == 201
        )
    assert reply(client, writer_portal, conversation_id, member=WRITER, body="7").status_code == 409
    for body in ("B", "C", "D"):
        assert reply(client, advertiser, conversation_id, body=body).status_code == 201
    refused = reply(client, advertiser, conversation_id, body="E")
    assert refused.status_code == 409
    assert refused.json["error"] == "awaiting_reply"
    assert [body for _, body in stored_messages(wiring)] == list("123A456BCD")


def test_the_limit_on_messages_in_a_row_holds_between_members_of_one_portal(
    three_in_a_row, advertiser
):
    client = three_in_a_row
    ad_id = publish(client, advertiser)
    conversation_id = contact(client, advertiser, ad_id, member="m-neighbour").json["conversation"][
        "id"
    ]
    for _ in range(2):
        assert reply(client, advertiser, conversation_id, member="m-neighbour").status_code == 201
    assert reply(client, advertiser, conversation_id, member="m-neighbour").status_code == 409
    # The advertiser, a member of the same portal, is the other party: it may answer.
    assert reply(client, advertiser, conversation_id, member=ADVERTISER).status_code == 201
    assert reply(client, advertiser, conversation_id, member="m-neighbour").status_code == 201


def test_a_retry_of_the_last_message_allowed_in_a_row_is_answered_as_sent(
    three_in_a_row, wiring, advertiser, writer_portal, ad_id
):
    client = three_in_a_row
    conversation_id = contact(client, writer_portal, ad_id).json["conversation"]["id"]
    reply(client, writer_portal, conversation_id, member=WRITER, body="2")
    third = reply(
        client, writer_portal, conversation_id, member=WRITER, body="3", idempotency_key="k3"
    )
    assert third.status_code == 201
    again = reply(
        client, writer_portal, conversation_id, member=WRITER, body="3", idempotency_key="k3"
    )
    assert again.status_code == 200, again.json
    assert again.json["message"]["id"] == third.json["message"]["id"]
    assert len(stored_messages(wiring)) == 3


def test_messages_racing_for_the_last_place_in_a_row_cannot_both_pass(
    three_in_a_row, wiring, advertiser, writer_portal, ad_id
):
    client = three_in_a_row
    conversation_id = contact(client, writer_portal, ad_id).json["conversation"]["id"]
    assert reply(client, writer_portal, conversation_id, member=WRITER, body="2").status_code == 201
    with unit_of_work(wiring.session_factory) as first:
        # The third message, not committed yet, and a fourth racing it.
        relay.post_message(
            first,
            sender=portals.authenticate(first, key=writer_portal.key),
            conversation_id=uuid.UUID(conversation_id),
            member=WRITER,
            name=None,
            body="3",
            idempotency_key=None,
            limits=dataclasses.replace(LIMITS, unanswered_messages=3),
        )
        fourth = send_aside(
            wiring,
            lambda: reply(client, writer_portal, conversation_id, member=WRITER, body="4"),
            what="the racing message",
        )
    answer = fourth()
    assert answer.status_code == 409, answer.json
    assert answer.json["error"] == "awaiting_reply"
    assert [body for _, body in stored_messages(wiring)] == ["Is it still on?", "2", "3"]


def test_the_count_in_a_row_is_stored_with_the_conversation(
    client, wiring, advertiser, writer_portal, ad_id
):
    conversation_id = contact(client, writer_portal, ad_id).json["conversation"]["id"]
    reply(client, writer_portal, conversation_id, member=WRITER)

    def stored() -> tuple:
        with unit_of_work(wiring.session_factory) as session:
            conversation = session.get(Conversation, uuid.UUID(conversation_id))
            return conversation.last_sender, conversation.unanswered_messages

    assert stored() == (Role.INITIATOR, 2)
    reply(client, advertiser, conversation_id)
    assert stored() == (Role.RECIPIENT, 1)


# --- listing --------------------------------------------------------------------------------


def test_conversations_list_newest_activity_first_and_by_member(client, advertiser, writer_portal):
    ads = [publish(client, advertiser, f"ad-{number}") for number in range(3)]
    ids = [
        contact(client, writer_portal, ad, member=f"m-{number}").json["conversation"]["id"]
        for number, ad in enumerate(ads)
    ]
    reply(client, advertiser, ids[0])  # the oldest becomes the most recent
    page = client.get("/v1/conversations?limit=2", headers=advertiser.headers).json
    assert [c["id"] for c in page["conversations"]] == [ids[0], ids[2]]
    rest = client.get(
        f"/v1/conversations?limit=2&cursor={page['next_cursor']}", headers=advertiser.headers
    ).json
    assert [c["id"] for c in rest["conversations"]] == [ids[1]]
    assert rest["next_cursor"] is None
    mine = client.get("/v1/conversations?member=m-1", headers=writer_portal.headers).json
    assert [c["id"] for c in mine["conversations"]] == [ids[1]]


def test_conversations_list_by_ad(client, advertiser, writer_portal, other_portal):
    bikes, piano = publish(client, advertiser, "bikes"), publish(client, advertiser, "piano")
    about_bikes = [
        contact(client, portal, bikes, member=f"m-{number}").json["conversation"]["id"]
        for number, portal in enumerate((writer_portal, other_portal))
    ]
    contact(client, writer_portal, piano)
    # The advertiser's portal sees everyone's; each other portal only its own.
    listed, _ = conversation_ids(client, advertiser, ad_id=bikes)
    assert listed == about_bikes[::-1]
    assert conversation_ids(client, writer_portal, ad_id=bikes)[0] == [about_bikes[0]]
    assert conversation_ids(client, other_portal, ad_id=bikes, member="m-1")[0] == [about_bikes[1]]
    # An ad with no conversation (or of which nothing is known) lists none.
    assert conversation_ids(client, advertiser, ad_id=str(uuid.uuid4()))[0] == []
    # Once the ad is deleted its conversations go on, no longer about an id.
    client.delete("/v1/ads/bikes", headers=advertiser.headers)
    assert conversation_ids(client, advertiser, ad_id=bikes)[0] == []
    assert len(conversation_ids(client, advertiser)[0]) == 3


def conversation_ids(client, portal, **query) -> tuple[list[str], str | None]:
    response = client.get("/v1/conversations", query_string=query, headers=portal.headers)
    assert response.status_code == 200, response.json
    return [c["id"] for c in response.json["conversations"]], response.json["next_cursor"]


def test_paging_while_conversations_move_up_repeats_none_and_skips_none_that_stayed(
    client, advertiser, writer_portal
):
    ads = [publish(client, advertiser, f"ad-{number}") for number in range(5)]
    ids = [
        contact(client, writer_portal, ad, member=f"m-{number}").json["conversation"]["id"]
        for number, ad in enumerate(ads)
    ]
    first, cursor = conversation_ids(client, advertiser, limit=2)
    assert first == [ids[4], ids[3]]
    # Meanwhile the page's last conversation and one not yet read get new messages: both
    # move to the top, past where the reader stands.
    reply(client, advertiser, ids[3])
    reply(client, advertiser, ids[1])
    pages = [first]
    while cursor is not None:
        page, cursor = conversation_ids(client, advertiser, limit=2, cursor=cursor)
        pages.append(page)
    read = [conversation for page in pages for conversation in page]
    assert len(read) == len(set(read))  # none twice
    assert read == [ids[4], ids[3], ids[2], ids[0]]  # each that stayed put, in order
    # What moved up is at the top of the next read from the start.
    assert conversation_ids(client, advertiser, limit=5)[0] == [
        ids[1],
        ids[3],
        ids[4],
        ids[2],
        ids[0],
    ]


@pytest.mark.parametrize(
    "query",
    [
        "cursor=garbage",
        "cursor=c1.bm90LWpzb24",
        "limit=0",
        "limit=101",
        "member=a@b.org",
        "x=1",
        "ad_id=not-a-uuid",
        "ad_id=",
    ],
)
def test_bad_list_queries_are_refused(client, advertiser, query):
    response = client.get(f"/v1/conversations?{query}", headers=advertiser.headers)
    assert response.status_code == 400
    assert query.split("=")[0] in response.json["errors"]["query"]


@pytest.mark.parametrize(
    "inside",
    [
        pytest.param(["2024-01-01T00:00:00+00:00", 5], id="id-number"),
        pytest.param(["2024-01-01T00:00:00+00:00", ["x"]], id="id-list"),
        pytest.param(["2024-01-01T00:00:00+00:00", {"a": 1}], id="id-object"),
        pytest.param(["2024-01-01T00:00:00", str(uuid.UUID(int=1))], id="time-without-zone"),
    ],
)
def test_a_tampered_list_cursor_is_refused(client, advertiser, inside):
    # Valid base64 of valid JSON, with the wrong things inside: what a client editing a
    # cursor sends. It is refused as a cursor rather than reaching the query.
    cursor = cursors.encode(relay.CURSOR_PREFIX, json.dumps(inside).encode())
    response = client.get(
        "/v1/conversations", query_string={"cursor": cursor}, headers=advertiser.headers
    )
    assert response.status_code == 400, response.json
    assert "cursor" in response.json["errors"]["query"]


# --- the inbox -------------------------------------------------------------------------------


def test_messages_wait_in_the_inbox_until_acknowledged(client, advertiser, writer_portal, ad_id):
    conversation_id = contact(client, writer_portal, ad_id).json["conversation"]["id"]
    reply(client, writer_portal, conversation_id, member=WRITER, body="Second")
    inbox = client.get("/v1/inbox", headers=advertiser.headers).json
    assert [event["data"]["message"]["body"] for event in inbox["events"]] == [
        "Is it still on?",
        "Second",
    ]
    event = inbox["events"][0]
    assert event["type"] == "message.created"
    assert event["id"] == "msg_" + uuid.UUID(event["data"]["message"]["id"]).hex
    assert event["data"]["to"]["member"] == ADVERTISER
    assert event["data"]["from"]["portal"] == {"slug": "lets-bristol", "name": "Bristol LETS"}
    assert WRITER not in json.dumps(inbox)
    assert client.get("/v1/inbox", headers=writer_portal.headers).json["events"] == []
    acknowledged = client.post(
        "/v1/inbox/ack", json={"ids": [event["id"]]}, headers=advertiser.headers
    )
    assert acknowledged.json == {"acknowledged": 1}
    again = client.post("/v1/inbox/ack", json={"ids": [event["id"]]}, headers=advertiser.headers)
    assert again.json == {"acknowledged": 0}
    left = client.get("/v1/inbox", headers=advertiser.headers).json["events"]
    assert [e["data"]["message"]["body"] for e in left] == ["Second"]
    path = f"/v1/conversations/{conversation_id}"
    seen = client.get(path, headers=advertiser.headers).json
    assert seen["messages"][0]["delivery"]["state"] == "delivered"
    assert seen["messages"][0]["delivery"]["delivered_via"] == "inbox"
    # The writer's portal sees that it arrived, not how the other community takes messages.
    as_sent = client.get(path, headers=writer_portal.headers).json["messages"][0]["delivery"]
    assert (as_sent["state"], as_sent["delivered_via"]) == ("delivered", None)
    delivered_at = datetime.fromisoformat(as_sent["delivered_at"])
    assert (delivered_at.second, delivered_at.microsecond) == (0, 0)


def test_the_inbox_pages_with_since(client, advertiser, writer_portal, ad_id):
    conversation_id = contact(client, writer_portal, ad_id).json["conversation"]["id"]
    for number in range(4):
        reply(client, writer_portal, conversation_id, member=WRITER, body=f"m{number}")
    first = client.get("/v1/inbox?limit=2", headers=advertiser.headers).json
    assert len(first["events"]) == 2
    rest = client.get(f"/v1/inbox?since={first['next_since']}", headers=advertiser.headers).json
    assert [e["data"]["message"]["seq"] for e in rest["events"]] == [3, 4, 5]
    assert rest["next_since"] is None


def test_next_since_is_the_pages_last_event_not_a_count_of_everyones_messages(
    client, advertiser, writer_portal, ad_id
):
    conversation_id = contact(client, writer_portal, ad_id).json["conversation"]["id"]
    for number in range(3):
        reply(client, writer_portal, conversation_id, member=WRITER, body=f"m{number}")
        # Messages to another portal in between: a delivery id would show them.
        reply(client, advertiser, conversation_id, body=f"r{number}")
    page = client.get("/v1/inbox?limit=2", headers=advertiser.headers).json
    assert page["next_since"] == page["events"][-1]["id"]


def inbox_seqs(client, portal, **query) -> list[int]:
    response = client.get("/v1/inbox", query_string=query, headers=portal.headers)
    assert response.status_code == 200, response.json
    return [event["data"]["message"]["seq"] for event in response.json["events"]]


def test_the_inbox_reads_on_after_any_event_of_the_portal_even_acknowledged(
    client, advertiser, writer_portal, ad_id
):
    conversation_id = contact(client, writer_portal, ad_id).json["conversation"]["id"]
    for number in range(3):
        reply(client, writer_portal, conversation_id, member=WRITER, body=f"m{number}")
    second = client.get("/v1/inbox", headers=advertiser.headers).json["events"][1]["id"]
    assert inbox_seqs(client, advertiser, since=second) == [3, 4]
    client.post("/v1/inbox/ack", json={"ids": [second]}, headers=advertiser.headers)
    assert inbox_seqs(client, advertiser, since=second) == [3, 4]
    assert inbox_seqs(client, advertiser) == [1, 3, 4]


def test_a_since_naming_no_event_of_the_portal_reads_from_the_oldest(
    client, advertiser, writer_portal, ad_id
):
    conversation_id = contact(client, writer_portal, ad_id).json["conversation"]["id"]
    reply(client, writer_portal, conversation_id, member=WRITER, body="m")
    reply(client, advertiser, conversation_id, body="r")
    theirs = client.get("/v1/inbox", headers=writer_portal.headers).json["events"][0]["id"]
    unknown = "msg_" + uuid.uuid4().hex  # as if purged
    # Another portal's event is read as one not kept: nothing tells it apart.
    for since in (theirs, unknown):
        assert inbox_seqs(client, advertiser, since=since) == [1, 2]


def test_a_next_since_from_before_event_ids_reads_from_the_oldest(
    client, advertiser, writer_portal, ad_id
):
    # Reading after the delivery id it holds would tell a portal that tries numbers where
    # its own events stand among every portal's, and so how many messages others send.
    conversation_id = contact(client, writer_portal, ad_id).json["conversation"]["id"]
    reply(client, writer_portal, conversation_id, member=WRITER, body="m")
    for since in ("d0", "d1", "d2", "d9999999999"):
        assert inbox_seqs(client, advertiser, since=since) == [1, 2]


def test_a_portal_cannot_acknowledge_another_portals_messages(
    client, advertiser, writer_portal, ad_id
):
    contact(client, writer_portal, ad_id)
    event = client.get("/v1/inbox", headers=advertiser.headers).json["events"][0]
    response = client.post(
        "/v1/inbox/ack", json={"ids": [event["id"]]}, headers=writer_portal.headers
    )
    assert response.json == {"acknowledged": 0}
    assert len(client.get("/v1/inbox", headers=advertiser.headers).json["events"]) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"ids": []}, "ids"),
        ({"ids": ["nope"]}, "ids"),
        ({"ids": ["msg_" + "z" * 32]}, "ids"),
        ({"ids": ["msg_1"] * 1001}, "ids"),
        ({}, "ids"),
    ],
)
def test_bad_acknowledgements_are_refused(client, advertiser, body, field):
    response = client.post("/v1/inbox/ack", json=body, headers=advertiser.headers)
    assert response.status_code == 400
    assert field in response.json["errors"]["json"]


@pytest.mark.parametrize(
    "query",
    ["since=zz", "since=d", "since=msg_" + "z" * 32, "since=msg_123", "limit=0", "limit=501"],
)
def test_bad_inbox_queries_are_refused(client, advertiser, query):
    response = client.get(f"/v1/inbox?{query}", headers=advertiser.headers)
    assert response.status_code == 400
    assert query.split("=")[0] in response.json["errors"]["query"]


@pytest.mark.parametrize("since", ["d\u00b2", "d1\u00b9", "d\u2460"])
def test_an_inbox_since_with_other_than_ascii_digits_is_refused(client, advertiser, since):
    # str.isdigit() is true of superscripts and circled digits, which int() refuses.
    response = client.get("/v1/inbox", query_string={"since": since}, headers=advertiser.headers)
    assert response.status_code == 400, response.json
    assert "since" in response.json["errors"]["query"]


# --- retention ----------------------------------------------------------------------------


def test_old_messages_and_empty_conversations_are_purged(client, wiring, advertiser, writer_portal):
    ads = [publish(client, advertiser, f"ad-{number}") for number in range(2)]
    old = contact(client, writer_portal, ads[0]).json["conversation"]["id"]
    kept = contact(client, writer_portal, ads[1]).json["conversation"]["id"]
    reply(client, advertiser, kept)
    long_ago = datetime.now(UTC) - timedelta(days=400)
    with unit_of_work(wiring.session_factory) as session:
        session.execute(
            update(Message)
            .where(Message.conversation_id.in_([uuid.UUID(old), uuid.UUID(kept)]), Message.seq == 1)
            .values(created_at=long_ago)
        )
        session.execute(
            update(Conversation)
            .where(Conversation.id == uuid.UUID(old))
            .values(last_message_at=long_ago)
        )
        # Long delivered or given up by then (the delivery period is days).
        session.execute(update(Delivery).values(state=DeliveryState.FAILED))
    with unit_of_work(wiring.session_factory) as session:
        report = relay.purge_old_messages(session, retention=timedelta(days=365))
    assert report == relay.PurgeReport(messages=2, conversations=1)
    assert client.get(f"/v1/conversations/{old}", headers=advertiser.headers).status_code == 404
    seen = client.get(f"/v1/conversations/{kept}", headers=advertiser.headers).json
    assert [m["seq"] for m in seen["messages"]] == [2]
    with unit_of_work(wiring.session_factory) as session:
        assert session.scalar(text("SELECT count(*) FROM deliveries")) == 1


def test_the_worker_purges_after_the_configured_retention(
    client, migrated, wiring, advertiser, writer_portal
):
    """DIRECTORY_RELAY_RETENTION_DAYS decides: a message 31 days old outlives the default
    year and goes under 30 days, with its delivery (a failed one: out of the inbox too)
    and its conversation."""
    conversation_id = contact(client, writer_portal, publish(client, advertiser)).json[
        "conversation"
    ]["id"]
    (event,) = client.get("/v1/inbox", headers=advertiser.headers).json["events"]
    month_ago = datetime.now(UTC) - timedelta(days=31)
    with unit_of_work(wiring.session_factory) as session:
        session.execute(update(Message).values(created_at=month_ago))
        session.execute(update(Conversation).values(last_message_at=month_ago))
        session.execute(update(Delivery).values(state=DeliveryState.FAILED))
    for retention_days, kept in ((365, True), (30, False)):
        settings = dataclasses.replace(migrated, relay_retention_days=retention_days)
        worker_wiring = build_wiring(settings)
        try:
            housekeeping(worker_wiring)
        finally:
            worker_wiring.close()
        seen = client.get(f"/v1/conversations/{conversation_id}", headers=advertiser.headers)
        assert seen.status_code == (200 if kept else 404), retention_days
        inbox = client.get("/v1/inbox", headers=advertiser.headers).json["events"]
        assert [e["id"] for e in inbox] == ([event["id"]] if kept else [])
    with unit_of_work(wiring.session_factory) as session:
        left = session.execute(
            text("SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM deliveries)")
        ).one()
    assert tuple(left) == (0, 0)
    # A since naming the purged event reads from the oldest, as for any event not kept.
    assert inbox_seqs(client, advertiser, since=event["id"]) == []


def test_a_long_backlog_is_purged_a_batch_a_transaction(
    client, migrated, wiring, advertiser, writer_portal
):
    ids = [
        contact(client, writer_portal, publish(client, advertiser, f"ad-{n}")).json["conversation"][
            "id"
        ]
        for n in range(5)
    ]
    long_ago = datetime.now(UTC) - timedelta(days=400)
    with unit_of_work(wiring.session_factory) as session:
        session.execute(update(Message).values(created_at=long_ago))
        session.execute(update(Conversation).values(last_message_at=long_ago))
        session.execute(update(Delivery).values(state=DeliveryState.FAILED))

    with unit_of_work(wiring.session_factory) as session:
        first = relay.purge_old_messages(session, retention=timedelta(days=365), limit=2)
    assert first == relay.PurgeReport(messages=2, conversations=2, more=True)
    worker_wiring = build_wiring(migrated)
    try:
        rest = purge_old_messages(worker_wiring, batch=2)
    finally:
        worker_wiring.close()

    assert rest == relay.PurgeReport(messages=3, conversations=3, more=False)
    for conversation_id in ids:
        gone = client.get(f"/v1/conversations/{conversation_id}", headers=advertiser.headers)
        assert gone.status_code == 404


def test_deliveries_are_failed_in_time_even_when_the_purge_cannot_finish(
    client, migrated, wiring, advertiser, writer_portal
):
    """The purge runs in transactions of its own: one outlasting the statement timeout
    (a long backlog, a lock) does not take the failing of overdue deliveries with it."""
    purged, overdue = (
        contact(client, writer_portal, publish(client, advertiser, f"ad-{n}")).json
        for n in range(2)
    )
    long_ago = datetime.now(UTC) - timedelta(days=400)
    with unit_of_work(wiring.session_factory) as session:
        session.execute(update(Message).values(created_at=long_ago))
        session.execute(update(Conversation).values(last_message_at=long_ago))
        session.execute(update(Delivery).values(created_at=long_ago))
        session.execute(
            update(Delivery)
            .where(Delivery.message_id == uuid.UUID(purged["message"]["id"]))
            .values(state=DeliveryState.FAILED)
        )
    worker_wiring = build_wiring(dataclasses.replace(migrated, db_statement_timeout_ms=300))
    try:
        with unit_of_work(wiring.session_factory) as holder:
            # Another transaction holds the message the purge would delete.
            holder.execute(
                select(Message.id)
                .where(Message.id == uuid.UUID(purged["message"]["id"]))
                .with_for_update()
            )
            with pytest.raises(OperationalError):
                housekeeping(worker_wiring)
    finally:
        worker_wiring.close()

    with unit_of_work(wiring.session_factory) as session:
        state = session.scalar(
            select(Delivery.state).where(Delivery.message_id == uuid.UUID(overdue["message"]["id"]))
        )
    assert state is DeliveryState.FAILED


def test_a_message_still_being_delivered_outlives_a_shorter_retention(
    client, wiring, advertiser, writer_portal
):
    conversation = contact(client, writer_portal, publish(client, advertiser, "ad-1")).json
    two_days_ago = datetime.now(UTC) - timedelta(days=2)
    with unit_of_work(wiring.session_factory) as session:
        session.execute(update(Message).values(created_at=two_days_ago))
        session.execute(update(Conversation).values(last_message_at=two_days_ago))
    with unit_of_work(wiring.session_factory) as session:
        report = relay.purge_old_messages(session, retention=timedelta(days=1))
    assert report == relay.PurgeReport(messages=0, conversations=0)
    # Still in the advertiser's inbox, and in its conversation.
    inbox = client.get("/v1/inbox", headers=advertiser.headers).json
    assert [event["data"]["message"]["body"] for event in inbox["events"]] == ["Is it still on?"]
    seen = client.get(
        f"/v1/conversations/{conversation['conversation']['id']}", headers=advertiser.headers
    )
    assert [m["seq"] for m in seen.json["messages"]] == [1]


@pytest.mark.parametrize("what", ["contact", "reply"])
def test_a_retry_racing_its_original_gets_the_same_message(
    app, advertiser, writer_portal, ad_id, what
):
    """Two requests with one idempotency key at the same moment (a portal retrying a
    send it timed out on): one message, and both answers name it."""
    setup = app.test_client()
    conversation_id = contact(setup, writer_portal, ad_id).json["conversation"]["id"]
    barrier = threading.Barrier(2)
    answers = []

    def send():
        client = app.test_client()
        barrier.wait()
        if what == "contact":
            answers.append(contact(client, writer_portal, ad_id, idempotency_key="same"))
        else:
            answers.append(reply(client, advertiser, conversation_id, idempotency_key="same"))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answer.status_code for answer in answers) == [200, 201]
    assert len({answer.json["message"]["id"] for answer in answers}) == 1


@pytest.mark.parametrize(
    ("member", "what", "status", "error"),
    [
        pytest.param("m-two", "reply", 409, "idempotency_key_reused", id="other-member-reply"),
        pytest.param("m-two", "contact", 409, "idempotency_key_reused", id="other-member-contact"),
        pytest.param("m-one", "reply", 200, None, id="same-member-retry"),
    ],
)
def test_racing_requests_with_one_key_get_the_sequential_answers(
    app, wiring, advertiser, writer_portal, ad_id, member, what, status, error
):
    """A request with the key of a message not yet committed waits for it, then answers
    as if it had come after: the replay of the same member's same message, else the
    key's reuse, not a bare unique-constraint violation."""
    setup = app.test_client()
    conversations = {
        writer: contact(setup, writer_portal, ad_id, member=writer).json["conversation"]["id"]
        for writer in ("m-one", "m-two")
    }
    answers = []

    def race():
        client = app.test_client()
        if what == "contact":
            answers.append(
                contact(client, writer_portal, ad_id, member=member, idempotency_key="k")
            )
        else:
            answers.append(
                reply(
                    client,
                    writer_portal,
                    conversations[member],
                    member=member,
                    body="Same words",
                    idempotency_key="k",
                )
            )

    with unit_of_work(wiring.session_factory) as first:
        sent = relay.post_message(
            first,
            sender=portals.authenticate(first, key=writer_portal.key),
            conversation_id=uuid.UUID(conversations["m-one"]),
            member="m-one",
            name=None,
            body="Same words",
            idempotency_key="k",
            limits=LIMITS,
        )
        racer = threading.Thread(target=race)
        racer.start()
        wait_for_a_lock_wait(wiring, what="the racing request")
    racer.join(30)

    (answer,) = answers
    assert answer.status_code == status, answer.json
    if error is None:
        assert answer.json["message"]["id"] == str(sent.message_id)
    else:
        assert answer.json["error"] == error
        assert "idempotency_key" in answer.json["errors"]["json"]
    with unit_of_work(wiring.session_factory) as session:
        keyed = session.scalar(text("SELECT count(*) FROM messages WHERE idempotency_key = 'k'"))
    assert keyed == 1
