"""A portal blocking another (services/portal_blocks.py): its list, and what the block
refuses in the relay, both ways, until it is lifted."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select, text

from directory.db import unit_of_work
from directory.models import PortalBlock, PortalStatus
from directory.services import closing, portal_blocks, portals, relay
from tests.api.test_relay import ADVERTISER, LIMITS, WRITER, contact, publish, reply
from tests.waits import send_aside

THEIR_BLOCK = "the advertiser's community does not accept contact from yours"


def own_block(slug: str) -> str:
    return (
        f"your community has blocked the advertiser's ({slug}); unblocking it lets its "
        "members and yours talk again"
    )


def block(client, portal, slug):
    return client.put(f"/v1/portals/me/blocked-portals/{slug}", headers=portal.headers)


def unblock(client, portal, slug):
    return client.delete(f"/v1/portals/me/blocked-portals/{slug}", headers=portal.headers)


def blocked_slugs(client, portal) -> list[str]:
    response = client.get("/v1/portals/me/blocked-portals", headers=portal.headers)
    assert response.status_code == 200, response.json
    return [entry["slug"] for entry in response.json["blocked_portals"]]


def stored(wiring, sql: str):
    with unit_of_work(wiring.session_factory) as session:
        return session.scalar(text(sql))


@pytest.fixture
def ad_id(client, advertiser) -> str:
    return publish(client, advertiser)


@pytest.fixture
def conversation_id(client, advertiser, writer_portal, ad_id) -> str:
    opened = contact(client, writer_portal, ad_id)
    assert opened.status_code == 201, opened.json
    return opened.json["conversation"]["id"]


# --- the list ----------------------------------------------------------------------------


def test_a_portal_blocks_another_lists_it_and_unblocks_it(client, advertiser, writer_portal):
    blocked = block(client, advertiser, writer_portal.slug)
    assert blocked.status_code == 200, blocked.json
    assert blocked.json["slug"] == "lets-bristol"
    assert blocked.json["name"] == "Bristol LETS"
    listed = client.get("/v1/portals/me/blocked-portals", headers=advertiser.headers).json
    assert listed == {"blocked_portals": [blocked.json]}
    unblocked = unblock(client, advertiser, writer_portal.slug)
    assert unblocked.status_code == 204
    assert blocked_slugs(client, advertiser) == []


def test_blocking_again_answers_the_first_block(client, advertiser, writer_portal):
    first = block(client, advertiser, writer_portal.slug)
    again = block(client, advertiser, writer_portal.slug)
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json == first.json  # blocked_at included: the first one's
    assert blocked_slugs(client, advertiser) == [writer_portal.slug]


def test_unblocking_a_portal_not_blocked_is_harmless(client, advertiser, writer_portal):
    assert unblock(client, advertiser, writer_portal.slug).status_code == 204
    block(client, advertiser, writer_portal.slug)
    assert unblock(client, advertiser, writer_portal.slug).status_code == 204
    assert unblock(client, advertiser, writer_portal.slug).status_code == 204


def test_the_list_shows_the_latest_blocked_first(client, make_portal, advertiser):
    others = [make_portal(slug=f"other-{number}") for number in range(3)]
    for other in others:
        block(client, advertiser, other.slug)
    block(client, advertiser, others[0].slug)  # again: it keeps its place
    assert blocked_slugs(client, advertiser) == ["other-2", "other-1", "other-0"]


def test_blocks_are_seen_by_their_blocker_only(client, advertiser, writer_portal, other_portal):
    block(client, advertiser, writer_portal.slug)
    assert blocked_slugs(client, writer_portal) == []
    assert blocked_slugs(client, other_portal) == []


@pytest.mark.parametrize("method", ["get", "put", "delete"])
def test_blocks_need_a_portal_key(client, writer_portal, method):
    path = "/v1/portals/me/blocked-portals"
    if method != "get":
        path += f"/{writer_portal.slug}"
    assert getattr(client, method)(path).status_code == 401


@pytest.mark.parametrize("method", ["put", "delete"])
def test_an_unknown_slug_is_not_found_naming_it(client, advertiser, method):
    response = getattr(client, method)(
        "/v1/portals/me/blocked-portals/no-such-portal", headers=advertiser.headers
    )
    assert response.status_code == 404, response.json
    assert response.json["message"] == "no portal with slug 'no-such-portal'"
    assert "slug" in response.json["errors"]["path"]


@pytest.mark.parametrize("method", ["put", "delete"])
@pytest.mark.parametrize(
    "slug",
    ["Sel-Lyon", "-sel", "sel-", "sel_lyon", "a" * 41, "s%C3%A9l", "sel%20lyon", "sel.lyon"],
)
def test_a_malformed_slug_is_refused_naming_the_field(client, advertiser, method, slug):
    response = getattr(client, method)(
        f"/v1/portals/me/blocked-portals/{slug}", headers=advertiser.headers
    )
    assert response.status_code == 400, response.json
    assert response.json["message"].startswith("slug must be a portal's slug")
    assert "slug" in response.json["errors"]["path"]


def test_a_portal_cannot_block_itself(client, advertiser):
    response = block(client, advertiser, advertiser.slug)
    assert response.status_code == 400, response.json
    assert response.json["message"] == "a portal cannot block itself"
    assert "slug" in response.json["errors"]["path"]
    assert blocked_slugs(client, advertiser) == []


def test_a_portal_blocks_a_limited_number_of_portals(client, make_portal, advertiser, monkeypatch):
    monkeypatch.setattr(portal_blocks, "MAX_BLOCKS_PER_PORTAL", 2)
    first, second, third = (make_portal(slug=f"other-{number}") for number in range(3))
    assert block(client, advertiser, first.slug).status_code == 200
    assert block(client, advertiser, second.slug).status_code == 200
    refused = block(client, advertiser, third.slug)
    assert refused.status_code == 409, refused.json
    assert refused.json["error"] == "too_many_blocks"
    assert refused.json["message"] == "a portal blocks at most 2 portals; unblock one first"
    # Blocking one of them again is no new block; unblocking one makes room.
    assert block(client, advertiser, first.slug).status_code == 200
    unblock(client, advertiser, second.slug)
    assert block(client, advertiser, third.slug).status_code == 200
    assert blocked_slugs(client, advertiser) == ["other-2", "other-0"]


def test_blocks_racing_for_the_last_place_cannot_both_pass(
    client, wiring, make_portal, advertiser, monkeypatch
):
    monkeypatch.setattr(portal_blocks, "MAX_BLOCKS_PER_PORTAL", 1)
    first, second = make_portal(slug="other-1"), make_portal(slug="other-2")
    with unit_of_work(wiring.session_factory) as session:
        portal_blocks.block_portal(
            session, portal=portals.authenticate(session, key=advertiser.key), slug=first.slug
        )
        racing = send_aside(
            wiring, lambda: block(client, advertiser, second.slug), what="the racing block"
        )
    answer = racing()
    assert answer.status_code == 409, answer.json
    assert answer.json["error"] == "too_many_blocks"
    assert blocked_slugs(client, advertiser) == [first.slug]


def test_the_same_block_racing_itself_is_made_once(client, wiring, advertiser, writer_portal):
    with unit_of_work(wiring.session_factory) as session:
        first = portal_blocks.block_portal(
            session,
            portal=portals.authenticate(session, key=advertiser.key),
            slug=writer_portal.slug,
        )
        racing = send_aside(
            wiring, lambda: block(client, advertiser, writer_portal.slug), what="the racing block"
        )
    answer = racing()
    assert answer.status_code == 200, answer.json
    assert answer.json["blocked_at"] == first.blocked_at.isoformat()


# --- opening a conversation --------------------------------------------------------------


@pytest.mark.parametrize(
    ("blocker", "message"),
    [("advertiser", THEIR_BLOCK), ("writer_portal", own_block("sel-lyon"))],
    ids=["advertiser-blocks", "writer-blocks"],
)
def test_no_conversation_opens_between_blocked_communities(
    client, wiring, request, advertiser, writer_portal, ad_id, blocker, message
):
    blocking = request.getfixturevalue(blocker)
    other = writer_portal if blocking is advertiser else advertiser
    block(client, blocking, other.slug)
    refused = contact(client, writer_portal, ad_id)
    assert refused.status_code == 409, refused.json
    assert refused.json["error"] == "community_blocked"
    assert refused.json["message"] == message
    assert stored(wiring, "SELECT count(*) FROM conversations") == 0
    unblock(client, blocking, other.slug)
    assert contact(client, writer_portal, ad_id).status_code == 201


def test_the_blocked_community_cannot_be_contacted_either(client, advertiser, writer_portal, ad_id):
    """The reverse: the blocked portal's ads are closed to the blocker's members too."""
    block(client, advertiser, writer_portal.slug)
    writers_ad = publish(client, writer_portal, member="m-bristol")
    refused = contact(client, advertiser, writers_ad, member=ADVERTISER)
    assert refused.status_code == 409, refused.json
    assert refused.json["error"] == "community_blocked"
    assert refused.json["message"] == own_block("lets-bristol")


def test_a_block_concerns_only_the_two_communities(
    client, advertiser, writer_portal, other_portal, ad_id
):
    block(client, advertiser, writer_portal.slug)
    assert contact(client, other_portal, ad_id).status_code == 201
    # Members of the blocking portal talk to each other as before.
    opened = contact(client, advertiser, ad_id, member="m-neighbour")
    assert opened.status_code == 201, opened.json
    conversation = opened.json["conversation"]["id"]
    assert reply(client, advertiser, conversation).status_code == 201
    assert reply(client, advertiser, conversation, member="m-neighbour").status_code == 201


def test_a_retried_contact_is_answered_as_sent_after_a_block(
    client, advertiser, writer_portal, ad_id
):
    first = contact(client, writer_portal, ad_id, idempotency_key="c-1")
    block(client, advertiser, writer_portal.slug)
    again = contact(client, writer_portal, ad_id, idempotency_key="c-1")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json["message"]["id"] == first.json["message"]["id"]


# --- writing in a conversation -----------------------------------------------------------


@pytest.mark.parametrize("blocker", ["advertiser", "writer_portal"])
def test_neither_party_writes_while_either_community_blocks_the_other(
    client, wiring, request, advertiser, writer_portal, conversation_id, blocker
):
    blocking = request.getfixturevalue(blocker)
    other = writer_portal if blocking is advertiser else advertiser
    block(client, blocking, other.slug)
    for portal, member in ((writer_portal, WRITER), (advertiser, ADVERTISER)):
        refused = reply(client, portal, conversation_id, member=member)
        assert refused.status_code == 409, refused.json
        assert refused.json["error"] == "community_blocked"
        other_side = advertiser if portal is writer_portal else writer_portal
        assert refused.json["message"] == (
            f"your community has blocked the other party's ({other_side.slug}); unblocking "
            "it lets its members and yours talk again"
            if portal is blocking
            else "the other party's community does not accept contact from yours"
        )
        # Not ended: both sides still read it, as it was.
        seen = client.get(f"/v1/conversations/{conversation_id}", headers=portal.headers)
        assert seen.status_code == 200
        assert seen.json["blocked_at"] is None
        assert [message["body"] for message in seen.json["messages"]] == ["Is it still on?"]
    # Nothing stored, and no conversation.ended told: only the first message's delivery.
    assert stored(wiring, "SELECT count(*) FROM messages") == 1
    assert stored(wiring, "SELECT count(*) FROM deliveries") == 1


def test_a_conversation_goes_on_once_unblocked(client, advertiser, writer_portal, conversation_id):
    block(client, advertiser, writer_portal.slug)
    assert reply(client, advertiser, conversation_id).status_code == 409
    unblock(client, advertiser, writer_portal.slug)
    answered = reply(client, advertiser, conversation_id)
    assert answered.status_code == 201, answered.json
    assert answered.json["message"]["seq"] == 2
    assert reply(client, writer_portal, conversation_id, member=WRITER).status_code == 201


def test_both_blocks_must_be_lifted(client, advertiser, writer_portal, conversation_id):
    block(client, advertiser, writer_portal.slug)
    block(client, writer_portal, advertiser.slug)
    refused = reply(client, advertiser, conversation_id)
    assert refused.json["message"].startswith("your community has blocked")  # its own first
    unblock(client, advertiser, writer_portal.slug)
    refused = reply(client, advertiser, conversation_id)
    assert refused.status_code == 409
    assert refused.json["message"] == (
        "the other party's community does not accept contact from yours"
    )
    unblock(client, writer_portal, advertiser.slug)
    assert reply(client, advertiser, conversation_id).status_code == 201


def test_a_retried_message_is_answered_as_sent_after_a_block(
    client, advertiser, writer_portal, conversation_id
):
    first = reply(client, advertiser, conversation_id, idempotency_key="r-1")
    block(client, writer_portal, advertiser.slug)
    again = reply(client, advertiser, conversation_id, idempotency_key="r-1")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json["message"]["id"] == first.json["message"]["id"]


def test_messages_accepted_before_a_block_are_still_delivered(
    client, advertiser, writer_portal, conversation_id
):
    block(client, advertiser, writer_portal.slug)
    inbox = client.get("/v1/inbox", headers=advertiser.headers).json
    assert [event["data"]["message"]["body"] for event in inbox["events"]] == ["Is it still on?"]


def test_a_message_waiting_for_its_conversation_when_a_block_commits_still_goes(
    client, wiring, advertiser, writer_portal, conversation_id
):
    """It was decided on as it read the conversation, before the block (as a message
    sent a moment earlier would have been); the block waits for no message, and the
    next one is refused."""
    with unit_of_work(wiring.session_factory) as first:
        relay.post_message(
            first,
            sender=portals.authenticate(first, key=advertiser.key),
            conversation_id=uuid.UUID(conversation_id),
            member=ADVERTISER,
            name=None,
            body="First",
            idempotency_key=None,
            limits=LIMITS,
        )
        waiting = send_aside(
            wiring,
            lambda: reply(client, writer_portal, conversation_id, member=WRITER, body="Waiting"),
            what="the waiting message",
        )
        assert block(client, advertiser, writer_portal.slug).status_code == 200
    answer = waiting()
    assert answer.status_code == 201, answer.json
    assert reply(client, writer_portal, conversation_id, member=WRITER).status_code == 409


# --- closing -----------------------------------------------------------------------------


def test_a_closed_portals_blocks_go_and_those_of_others_stay(
    client, wiring, advertiser, writer_portal, other_portal
):
    block(client, writer_portal, advertiser.slug)
    block(client, writer_portal, other_portal.slug)
    block(client, advertiser, writer_portal.slug)
    with unit_of_work(wiring.session_factory) as session:
        portals.set_status(session, portal_slug=writer_portal.slug, status=PortalStatus.SUSPENDED)
    with unit_of_work(wiring.session_factory) as session:
        closing.close_portal(session, portal_slug=writer_portal.slug, lifetimes=wiring.lifetimes)
    with unit_of_work(wiring.session_factory) as session:
        left = session.execute(
            select(PortalBlock.blocker_portal_id, PortalBlock.blocked_portal_id)
        ).all()
    assert [tuple(row) for row in left] == [(advertiser.id, writer_portal.id)]
    assert blocked_slugs(client, advertiser) == [writer_portal.slug]


# --- search ------------------------------------------------------------------------------


def found_portals(client, portal=None) -> dict[str, int]:
    """The portals of the ads a search finds, and how many each (the portal facet)."""
    headers = {} if portal is None else portal.headers
    response = client.get("/v1/search?facets=portal&limit=100", headers=headers)
    assert response.status_code == 200, response.json
    hits = {}
    for hit in response.json["hits"]:
        hits[hit["portal"]] = hits.get(hit["portal"], 0) + 1
    assert hits == response.json["facets"]["portal"]  # the facet counts as the hits do
    return hits


@pytest.mark.parametrize("blocker", ["advertiser", "writer"])
def test_neither_communitys_searches_find_the_others_ads_while_either_blocks(
    client, advertiser, writer_portal, other_portal, blocker
):
    for portal in (advertiser, writer_portal, other_portal):
        publish(client, portal, "ad-1")
        publish(client, portal, "ad-2")
    blocking, blocked = (
        (advertiser, writer_portal) if blocker == "advertiser" else (writer_portal, advertiser)
    )
    everyone = {advertiser.slug: 2, writer_portal.slug: 2, other_portal.slug: 2}
    block(client, blocking, blocked.slug)

    assert found_portals(client, blocking) == {blocking.slug: 2, other_portal.slug: 2}
    assert found_portals(client, blocked) == {blocked.slug: 2, other_portal.slug: 2}
    # Nobody else's: a third community, and searches without a key.
    assert found_portals(client, other_portal) == everyone
    assert found_portals(client) == everyone
    # Asked for by name, still not found.
    asked = client.get(f"/v1/search?portal={blocked.slug}", headers=blocking.headers)
    assert asked.json["hits"] == []

    unblock(client, blocking, blocked.slug)
    assert found_portals(client, blocking) == everyone
    assert found_portals(client, blocked) == everyone
