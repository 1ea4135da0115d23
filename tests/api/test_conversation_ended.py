"""conversation.ended: when a party blocks a conversation, or is erased by their
community (or their community closes), the other party's portal is told, in its inbox
and by webhook (tests/test_relay_delivery.py), once."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text, update

from directory.db import unit_of_work
from directory.models import Conversation, Delivery, PortalStatus
from directory.services import closing, portals
from directory.worker import purge_old_messages
from tests.api.test_relay import ADVERTISER, WRITER, block, contact, publish, reply

ERASURES = "/v1/portals/me/member-erasures"


def open_conversation(client, writer_portal, advertiser) -> str:
    ad_id = publish(client, advertiser)
    response = contact(client, writer_portal, ad_id)
    assert response.status_code == 201, response.json
    return response.json["conversation"]["id"]


def erase(client, portal, member):
    response = client.post(ERASURES, json={"member": member}, headers=portal.headers)
    assert response.status_code == 200, response.json
    return response.json


def inbox(client, portal, **query) -> list[dict]:
    response = client.get("/v1/inbox", query_string=query, headers=portal.headers)
    assert response.status_code == 200, response.json
    return response.json["events"]


def ends(client, portal) -> list[dict]:
    return [event for event in inbox(client, portal) if event["type"] == "conversation.ended"]


def end_id(conversation_id: str) -> str:
    return "end_" + uuid.UUID(conversation_id).hex


def test_the_other_party_is_told_when_a_conversation_is_blocked(client, advertiser, writer_portal):
    conversation_id = open_conversation(client, writer_portal, advertiser)
    blocked = block(client, advertiser, conversation_id, ADVERTISER)
    (event,) = ends(client, writer_portal)
    assert event["id"] == end_id(conversation_id)
    assert event["delivery"] == {"state": "pending", "attempts": 0}
    data = event["data"]
    assert data["conversation"]["id"] == conversation_id
    assert data["conversation"]["ad"] == blocked["ad"]
    assert data["to"] == {
        "role": "initiator",
        "member": WRITER,
        "alias": blocked["initiator"]["alias"],
    }
    assert data["ended"]["reason"] == "blocked"
    assert data["ended"]["by"] == {"role": "recipient", "alias": blocked["recipient"]["alias"]}
    ended_at = datetime.fromisoformat(data["ended"]["at"])
    assert abs(ended_at - datetime.fromisoformat(blocked["blocked_at"])) < timedelta(seconds=5)
    # Nothing of the blocker but their alias: not their handle, name or community's ids.
    assert ADVERTISER not in str(event)
    # The blocking portal is not told of its own member's block.
    assert ends(client, advertiser) == []


def test_blocking_again_tells_nothing_more(client, advertiser, writer_portal):
    conversation_id = open_conversation(client, writer_portal, advertiser)
    block(client, advertiser, conversation_id, ADVERTISER)
    block(client, advertiser, conversation_id, ADVERTISER)
    block(client, writer_portal, conversation_id, WRITER)  # the first block stands
    assert [event["id"] for event in ends(client, writer_portal)] == [end_id(conversation_id)]
    assert ends(client, advertiser) == []


def test_the_initiator_blocking_tells_the_advertisers_portal(client, advertiser, writer_portal):
    conversation_id = open_conversation(client, writer_portal, advertiser)
    block(client, writer_portal, conversation_id, WRITER)
    (event,) = ends(client, advertiser)
    assert event["data"]["to"]["member"] == ADVERTISER
    assert event["data"]["ended"]["by"]["role"] == "initiator"
    assert ends(client, writer_portal) == []


def test_members_of_one_portal_are_not_told_of_their_portals_own_doings(client, advertiser):
    ad_id = publish(client, advertiser)
    conversation_id = contact(client, advertiser, ad_id, member="m-neighbour").json["conversation"][
        "id"
    ]
    block(client, advertiser, conversation_id, ADVERTISER)
    erase(client, advertiser, "m-neighbour")
    assert ends(client, advertiser) == []


def test_the_other_party_is_told_when_a_party_is_erased(client, advertiser, writer_portal):
    conversation_id = open_conversation(client, writer_portal, advertiser)
    reply(client, advertiser, conversation_id, body="Yes, come by!")
    erase(client, advertiser, ADVERTISER)
    (event,) = ends(client, writer_portal)
    assert event["id"] == end_id(conversation_id)
    data = event["data"]
    assert data["ended"]["reason"] == "party_erased"
    assert data["ended"]["by"]["role"] == "recipient"
    # The erased advertiser's ad title went with them.
    assert data["conversation"]["ad"] == {"id": None, "title": None}
    assert data["to"]["member"] == WRITER
    assert ADVERTISER not in str(event)
    # The writer's portal had the reply in its inbox: it went with the erasure.
    assert [event["type"] for event in inbox(client, writer_portal)] == ["conversation.ended"]


def test_an_erasure_ends_only_conversations_not_over_already(client, advertiser, writer_portal):
    blocked_id = open_conversation(client, writer_portal, advertiser)
    block(client, writer_portal, blocked_id, WRITER)
    ongoing_id = contact(client, writer_portal, publish(client, advertiser, "ad-2")).json[
        "conversation"
    ]["id"]
    # The advertiser was told of the block; the erasure of its own member takes that
    # news with it (it names the member), and tells the writer's portal only of the
    # conversation that was still going on.
    assert [event["id"] for event in ends(client, advertiser)] == [end_id(blocked_id)]
    erase(client, advertiser, ADVERTISER)
    assert ends(client, advertiser) == []
    assert [event["id"] for event in ends(client, writer_portal)] == [end_id(ongoing_id)]


def test_the_news_of_a_block_reads_as_an_erasure_once_the_blocker_is_erased(
    client, advertiser, writer_portal
):
    conversation_id = open_conversation(client, writer_portal, advertiser)
    block(client, advertiser, conversation_id, ADVERTISER)
    erase(client, advertiser, ADVERTISER)
    (event,) = ends(client, writer_portal)
    assert event["data"]["ended"]["reason"] == "party_erased"
    assert ADVERTISER not in str(event)


def test_blocking_a_conversation_whose_other_party_was_erased_tells_no_one(
    client, advertiser, writer_portal
):
    conversation_id = open_conversation(client, writer_portal, advertiser)
    erase(client, writer_portal, WRITER)
    block(client, advertiser, conversation_id, ADVERTISER)
    (event,) = ends(client, advertiser)
    assert event["data"]["ended"]["reason"] == "party_erased"
    assert ends(client, writer_portal) == []


def test_closing_a_portal_tells_the_other_parties(client, wiring, advertiser, writer_portal):
    conversation_id = open_conversation(client, writer_portal, advertiser)
    with unit_of_work(wiring.session_factory) as session:
        portals.set_status(session, portal_slug="sel-lyon", status=PortalStatus.SUSPENDED)
    with unit_of_work(wiring.session_factory) as session:
        closing.close_portal(session, portal_slug="sel-lyon", lifetimes=wiring.lifetimes)
    (event,) = ends(client, writer_portal)
    assert event["id"] == end_id(conversation_id)
    assert event["data"]["ended"]["reason"] == "party_erased"


def test_an_end_is_acknowledged_and_paged_after_like_a_message(client, advertiser, writer_portal):
    first = open_conversation(client, writer_portal, advertiser)
    reply(client, advertiser, first)
    block(client, advertiser, first, ADVERTISER)
    # Another of the portal's members: the one blocked opens no new conversation there.
    second = contact(
        client, writer_portal, publish(client, advertiser, "ad-2"), member="m-other-writer"
    ).json["conversation"]["id"]
    reply(client, advertiser, second)
    events = inbox(client, writer_portal)
    assert [event["type"] for event in events] == [
        "message.created",
        "conversation.ended",
        "message.created",
    ]
    # Reading on after the end's id.
    after_end = inbox(client, writer_portal, since=end_id(first))
    assert [event["id"] for event in after_end] == [events[2]["id"]]
    acknowledged = client.post(
        "/v1/inbox/ack", json={"ids": [end_id(first), end_id(first)]}, headers=writer_portal.headers
    )
    assert acknowledged.json == {"acknowledged": 1}
    assert [event["id"] for event in inbox(client, writer_portal)] == [
        events[0]["id"],
        events[2]["id"],
    ]
    # Its id, acknowledged, still says where to read on from.
    assert [e["id"] for e in inbox(client, writer_portal, since=end_id(first))] == [events[2]["id"]]


def test_another_portals_end_reads_from_the_oldest_and_cannot_be_acknowledged(
    client, advertiser, writer_portal, other_portal
):
    conversation_id = open_conversation(client, writer_portal, advertiser)
    block(client, advertiser, conversation_id, ADVERTISER)
    foreign = end_id(conversation_id)
    assert inbox(client, other_portal, since=foreign) == []
    answer = client.post("/v1/inbox/ack", json={"ids": [foreign]}, headers=other_portal.headers)
    assert answer.json == {"acknowledged": 0}
    assert [event["id"] for event in ends(client, writer_portal)] == [foreign]


HEX = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    "bad",
    [
        "end_",
        "end_" + HEX[:-1],
        "end_" + HEX + "0",
        "end_" + HEX[:-1] + "g",
        "end_" + HEX[:-2] + "_1",  # int() takes underscores
        "end-" + HEX,
        "END_" + HEX,
        "end_" + HEX.upper(),  # the same event, spelt otherwise
        "end_{" + HEX[:-2] + "}",
        "end_" + HEX[:-1] + "\u0663",  # an Arabic-Indic digit
    ],
)
def test_malformed_end_ids_are_refused_naming_the_field(client, writer_portal, bad):
    answer = client.post("/v1/inbox/ack", json={"ids": [bad]}, headers=writer_portal.headers)
    assert answer.status_code == 400, answer.json
    assert "0" in answer.json["errors"]["json"]["ids"]
    answer = client.get("/v1/inbox", query_string={"since": bad}, headers=writer_portal.headers)
    assert answer.status_code == 400, answer.json
    assert "since" in answer.json["errors"]["query"]


def test_a_conversation_is_not_purged_while_its_end_is_being_told(
    client, wiring, advertiser, writer_portal
):
    # Ended by an erasure: a blocked one is kept while both parties remain (the block
    # holds), however old its messages.
    conversation_id = open_conversation(client, writer_portal, advertiser)
    reply(client, advertiser, conversation_id)
    erase(client, advertiser, ADVERTISER)
    long_ago = datetime.now(UTC) - timedelta(days=400)
    with unit_of_work(wiring.session_factory) as session:
        session.execute(text("UPDATE messages SET created_at = :at"), {"at": long_ago})
        session.execute(update(Conversation).values(last_message_at=long_ago))
        session.execute(
            update(Delivery)
            .values(state="delivered", delivered_at=long_ago, delivered_via="inbox")
            .where(Delivery.message_id.is_not(None))
        )
    purge_old_messages(wiring)
    assert [event["id"] for event in ends(client, writer_portal)] == [end_id(conversation_id)]
    client.post(
        "/v1/inbox/ack", json={"ids": [end_id(conversation_id)]}, headers=writer_portal.headers
    )
    purge_old_messages(wiring)
    with unit_of_work(wiring.session_factory) as session:
        assert session.scalar(select(Conversation.id)) is None
        assert session.scalar(select(Delivery.id)) is None
