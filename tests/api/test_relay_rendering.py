"""The relay's conversations and messages are written out directly (api/relay/rendering.py),
not dumped through their schemas: each rendering must be its schema's dump, field for
field, for every state a conversation and a message can be in, and as each of the two
portals sees them (a field the schema leaves out, a party's portal id, must stay out)."""

from __future__ import annotations

import dataclasses
import uuid

from sqlalchemy import text

from directory.api.relay import rendering
from directory.api.relay.schemas import (
    ConversationSchema,
    ConversationSummarySchema,
    MessageSchema,
)
from directory.services import portals, relay
from tests.api.test_member_erasure import erase
from tests.api.test_relay import ADVERTISER, LIMITS, WRITER, block, contact, publish, reply


def views(session, portal, conversation_id, limit=50):
    viewer = portals.authenticate(session, key=portal.key)
    return relay.get_conversation(
        session,
        viewer=viewer,
        conversation_id=uuid.UUID(conversation_id),
        limits=LIMITS,
        limit=limit,
    )


def assert_rendered_as_dumped(view):
    assert rendering.conversation(view) == ConversationSchema().dump(view)
    summary = dataclasses.replace(view, messages=None)  # as get_conversation_summary reads
    assert rendering.conversation(summary) == ConversationSchema().dump(summary)
    assert rendering.conversation_summary(view) == ConversationSummarySchema().dump(view)
    for message in view.messages:
        assert rendering.message(message) == MessageSchema().dump(message)


def test_an_open_conversation_as_both_portals_see_it(client, session, advertiser, writer_portal):
    ad_id = publish(client, advertiser)
    opened = contact(client, writer_portal, ad_id, name="Anna").json["conversation"]["id"]
    reply(client, advertiser, opened, name="Luc")
    # The first message arrived by the inbox; the second failed twice by webhook.
    events = client.get("/v1/inbox", headers=advertiser.headers).json["events"]
    client.post(
        "/v1/inbox/ack", json={"ids": [e["id"] for e in events]}, headers=advertiser.headers
    )
    session.execute(
        text(
            "UPDATE deliveries SET attempts = 2, last_status = 500, last_error = 'HTTP 500'"
            " WHERE state <> 'delivered'"
        )
    )
    session.commit()

    for portal in (writer_portal, advertiser):
        view = views(session, portal, opened)
        assert [m.delivery.state.value for m in view.messages] == ["delivered", "pending"]
        assert_rendered_as_dumped(view)
        first_page = views(session, portal, opened, limit=1)
        assert first_page.next_after == 1
        assert_rendered_as_dumped(first_page)


def test_a_blocked_conversation_and_an_erased_party(client, session, advertiser, writer_portal):
    ad_id = publish(client, advertiser)
    blocked = contact(client, writer_portal, ad_id).json["conversation"]["id"]
    block(client, advertiser, blocked, ADVERTISER)
    erased = contact(client, writer_portal, ad_id, member="m-erase-me-7731").json["conversation"][
        "id"
    ]
    assert erase(client, writer_portal).status_code == 200

    for portal in (writer_portal, advertiser):
        view = views(session, portal, blocked)
        assert view.blocked_at is not None and view.blocked_by is not None
        assert view.messages
        assert_rendered_as_dumped(view)
    view = views(session, advertiser, erased)
    assert view.initiator.erased
    assert_rendered_as_dumped(view)


def test_a_conversation_between_two_members_of_one_portal(client, session, advertiser):
    ad_id = publish(client, advertiser)
    opened = contact(client, advertiser, ad_id, member=WRITER).json["conversation"]["id"]
    view = views(session, advertiser, opened)
    assert len(view.your_roles) == 2 and view.messages
    assert_rendered_as_dumped(view)


def test_an_advertiser_erased_leaves_no_ad_to_render(client, session, advertiser, writer_portal):
    ad_id = publish(client, advertiser)
    opened = contact(client, writer_portal, ad_id).json["conversation"]["id"]
    assert erase(client, advertiser, ADVERTISER).status_code == 200
    view = views(session, writer_portal, opened)
    assert view.ad_id is None and view.ad_title is None
    assert_rendered_as_dumped(view)
