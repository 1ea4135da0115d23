"""What a portal can know before its member is refused: the relay's limits
(GET /v1/relay/limits), and in a conversation's view whether its member may write now
(`sending`), as POST /v1/conversations/{id}/messages would answer. So a portal can hide
its compose box, or say how many messages are left, before its member types."""

from __future__ import annotations

import pytest

from directory.models.relay import MAX_MESSAGE_CHARS, MAX_NAME_CHARS
from tests.api.test_member_erasure import ERASURES
from tests.api.test_portal_blocks import block, unblock
from tests.api.test_relay import ADVERTISER, WRITER, contact, publish, reply, suspend
from tests.apps import app_with

ALLOWED_IN_A_ROW = 3


@pytest.fixture
def client(migrated):
    """A directory where a party may send 3 messages in a row."""
    with app_with(migrated, relay_unanswered_messages=ALLOWED_IN_A_ROW) as app:
        yield app.test_client()


@pytest.fixture
def conversation_id(client, advertiser, writer_portal) -> str:
    opened = contact(client, writer_portal, publish(client, advertiser))
    assert opened.status_code == 201, opened.json
    return opened.json["conversation"]["id"]


def view(client, portal, conversation_id) -> dict:
    response = client.get(f"/v1/conversations/{conversation_id}", headers=portal.headers)
    assert response.status_code == 200, response.json
    return response.json


def sending(client, portal, conversation_id, role) -> dict | None:
    return view(client, portal, conversation_id)[role]["sending"]


def listed(client, portal, conversation_id) -> dict:
    response = client.get("/v1/conversations", headers=portal.headers)
    assert response.status_code == 200, response.json
    (found,) = [c for c in response.json["conversations"] if c["id"] == conversation_id]
    return found


def allowed(messages_left: int) -> dict:
    return {"allowed": True, "refusal": None, "messages_left": messages_left}


def refused(refusal: str, messages_left: int = ALLOWED_IN_A_ROW) -> dict:
    return {"allowed": False, "refusal": refusal, "messages_left": messages_left}


def assert_the_answer_agrees(client, portal, conversation_id, *, role, member) -> None:
    """The view's word is what writing then answers."""
    expected = sending(client, portal, conversation_id, role)
    answer = reply(client, portal, conversation_id, member=member, body="Are you there?")
    if expected["allowed"]:
        assert answer.status_code == 201, answer.json
    else:
        assert answer.status_code == 409, answer.json
        assert answer.json["error"] == expected["refusal"]


def test_each_portal_sees_only_its_own_members_state(
    client, advertiser, writer_portal, conversation_id
):
    # The opening was the writer's first message in a row.
    writers = view(client, writer_portal, conversation_id)
    assert writers["initiator"]["sending"] == allowed(ALLOWED_IN_A_ROW - 1)
    assert writers["recipient"]["sending"] is None  # how the other side stands is theirs
    advertisers = view(client, advertiser, conversation_id)
    assert advertisers["recipient"]["sending"] == allowed(ALLOWED_IN_A_ROW)
    assert advertisers["initiator"]["sending"] is None
    # The list shows the same as the conversation itself.
    assert listed(client, writer_portal, conversation_id)["initiator"]["sending"] == (
        allowed(ALLOWED_IN_A_ROW - 1)
    )
    assert listed(client, advertiser, conversation_id)["initiator"]["sending"] is None


def test_the_answer_to_a_message_counts_it(client, advertiser, writer_portal, conversation_id):
    second = reply(client, writer_portal, conversation_id, member=WRITER, body="Hello?")
    assert second.status_code == 201, second.json
    assert second.json["conversation"]["initiator"]["sending"] == allowed(ALLOWED_IN_A_ROW - 2)
    assert second.json["conversation"]["recipient"]["sending"] is None
    third = reply(client, writer_portal, conversation_id, member=WRITER, body="Anyone?")
    # The message that reaches the limit says so: the portal can close the box at once.
    assert third.json["conversation"]["initiator"]["sending"] == refused("awaiting_reply", 0)
    assert sending(client, writer_portal, conversation_id, "initiator") == refused(
        "awaiting_reply", 0
    )
    assert_the_answer_agrees(
        client, writer_portal, conversation_id, role="initiator", member=WRITER
    )


def test_an_answer_gives_the_full_number_back(client, advertiser, writer_portal, conversation_id):
    for body in ("Hello?", "Anyone?"):
        reply(client, writer_portal, conversation_id, member=WRITER, body=body)
    answer = reply(client, advertiser, conversation_id, name="Luc")
    assert answer.status_code == 201, answer.json
    assert answer.json["conversation"]["recipient"]["sending"] == allowed(ALLOWED_IN_A_ROW - 1)
    assert answer.json["conversation"]["recipient"]["name"] == "Luc"
    assert sending(client, writer_portal, conversation_id, "initiator") == allowed(ALLOWED_IN_A_ROW)


def test_a_retried_message_is_answered_as_the_conversation_stands(
    client, advertiser, writer_portal, conversation_id
):
    first = reply(
        client, writer_portal, conversation_id, member=WRITER, body="Hello?", idempotency_key="k1"
    )
    reply(client, writer_portal, conversation_id, member=WRITER, body="Anyone?")
    again = reply(
        client, writer_portal, conversation_id, member=WRITER, body="Hello?", idempotency_key="k1"
    )
    assert again.status_code == 200, again.json
    assert first.json["conversation"]["initiator"]["sending"] == allowed(1)
    assert again.json["conversation"]["initiator"]["sending"] == refused("awaiting_reply", 0)


def test_a_blocked_conversation_is_closed_to_both(
    client, advertiser, writer_portal, conversation_id
):
    blocked = client.post(
        f"/v1/conversations/{conversation_id}/block",
        json={"member": ADVERTISER},
        headers=advertiser.headers,
    )
    assert blocked.status_code == 200, blocked.json
    assert blocked.json["recipient"]["sending"] == refused("conversation_blocked")
    assert sending(client, writer_portal, conversation_id, "initiator") == refused(
        "conversation_blocked", ALLOWED_IN_A_ROW - 1
    )
    assert_the_answer_agrees(
        client, writer_portal, conversation_id, role="initiator", member=WRITER
    )
    assert_the_answer_agrees(
        client, advertiser, conversation_id, role="recipient", member=ADVERTISER
    )


@pytest.mark.parametrize("blocker", ["advertiser", "writer"])
def test_a_community_block_holds_the_conversation_both_ways_until_lifted(
    client, advertiser, writer_portal, conversation_id, blocker
):
    blocking, blocked = (
        (advertiser, writer_portal) if blocker == "advertiser" else (writer_portal, advertiser)
    )
    assert block(client, blocking, blocked.slug).status_code in (200, 201)
    assert sending(client, advertiser, conversation_id, "recipient")["refusal"] == (
        "community_blocked"
    )
    assert sending(client, writer_portal, conversation_id, "initiator")["refusal"] == (
        "community_blocked"
    )
    assert_the_answer_agrees(
        client, writer_portal, conversation_id, role="initiator", member=WRITER
    )
    assert_the_answer_agrees(
        client, advertiser, conversation_id, role="recipient", member=ADVERTISER
    )
    assert unblock(client, blocking, blocked.slug).status_code == 204
    assert sending(client, writer_portal, conversation_id, "initiator") == allowed(
        ALLOWED_IN_A_ROW - 1
    )
    assert_the_answer_agrees(
        client, writer_portal, conversation_id, role="initiator", member=WRITER
    )


def test_nobody_may_write_to_a_suspended_community(
    client, wiring, advertiser, writer_portal, conversation_id
):
    suspend(wiring, advertiser)
    assert sending(client, writer_portal, conversation_id, "initiator") == refused(
        "recipient_portal_suspended", ALLOWED_IN_A_ROW - 1
    )
    assert_the_answer_agrees(
        client, writer_portal, conversation_id, role="initiator", member=WRITER
    )


def test_an_erased_party_has_no_state_and_the_other_may_not_write(
    client, advertiser, writer_portal, conversation_id
):
    erased = client.post(ERASURES, json={"member": WRITER}, headers=writer_portal.headers)
    assert erased.status_code == 200, erased.json
    # The writer's portal keeps the conversation without its member: nobody to write for.
    assert sending(client, writer_portal, conversation_id, "initiator") is None
    assert sending(client, advertiser, conversation_id, "recipient") == refused("party_erased")
    assert_the_answer_agrees(
        client, advertiser, conversation_id, role="recipient", member=ADVERTISER
    )


def test_both_parties_of_one_portal_each_have_their_own_state(client, advertiser):
    ad_id = publish(client, advertiser, "own-ad")
    opened = contact(client, advertiser, ad_id, member="m-neighbour")
    assert opened.status_code == 201, opened.json
    conversation = opened.json["conversation"]
    assert conversation["your_roles"] == ["initiator", "recipient"]
    assert conversation["initiator"]["sending"] == allowed(ALLOWED_IN_A_ROW - 1)
    assert conversation["recipient"]["sending"] == allowed(ALLOWED_IN_A_ROW)
    answer = reply(client, advertiser, conversation["id"], member=ADVERTISER)
    assert answer.json["conversation"]["initiator"]["sending"] == allowed(ALLOWED_IN_A_ROW)
    assert answer.json["conversation"]["recipient"]["sending"] == allowed(ALLOWED_IN_A_ROW - 1)


# --- the relay's limits ----------------------------------------------------------------


def test_anyone_reads_the_relays_limits_as_the_directory_applies_them(migrated):
    settings = {
        "relay_conversations_per_member_per_hour": 7,
        "relay_conversations_per_portal_per_hour": 70,
        "relay_conversations_with_one_member_per_hour": 5,
        "relay_unanswered_messages": 4,
        "relay_retention_days": 30,
    }
    with app_with(migrated, **settings) as app:
        response = app.test_client().get("/v1/relay/limits")
    assert response.status_code == 200, response.json
    assert response.json == {
        "conversations_per_member_per_hour": 7,
        "conversations_per_portal_per_hour": 70,
        "conversations_with_one_member_per_hour": 5,
        "messages_in_a_row": 4,
        "message_max_chars": MAX_MESSAGE_CHARS,
        "name_max_chars": MAX_NAME_CHARS,
        "retention_days": 30,
    }


def test_the_limit_read_is_the_one_that_refuses(client, advertiser, writer_portal):
    limits = client.get("/v1/relay/limits").json
    ad_id = publish(client, advertiser)
    conversation_id = contact(client, writer_portal, ad_id).json["conversation"]["id"]
    for number in range(2, limits["messages_in_a_row"] + 1):
        sent = reply(client, writer_portal, conversation_id, member=WRITER, body=str(number))
        assert sent.status_code == 201, sent.json
    refused = reply(client, writer_portal, conversation_id, member=WRITER, body="one more")
    assert refused.status_code == 409
    assert refused.json["error"] == "awaiting_reply"
    too_long = reply(
        client, advertiser, conversation_id, body="x" * (limits["message_max_chars"] + 1)
    )
    assert too_long.status_code == 400, too_long.json
    longest = reply(client, advertiser, conversation_id, body="x" * limits["message_max_chars"])
    assert longest.status_code == 201, longest.json


def test_blocking_a_conversation_whose_other_party_was_erased_answers_it_blocked(
    client, advertiser, writer_portal, conversation_id
):
    erased = client.post(ERASURES, json={"member": WRITER}, headers=writer_portal.headers)
    assert erased.status_code == 200, erased.json
    blocked = client.post(
        f"/v1/conversations/{conversation_id}/block",
        json={"member": ADVERTISER},
        headers=advertiser.headers,
    )
    assert blocked.status_code == 200, blocked.json
    # The answer is the conversation as the block left it, as a later read shows it.
    later = view(client, advertiser, conversation_id)
    assert (blocked.json["blocked_by"], later["blocked_by"]) == ("recipient", "recipient")
    assert blocked.json["blocked_at"] == later["blocked_at"]
