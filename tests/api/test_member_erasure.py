"""Erasing a member (POST /v1/portals/me/member-erasures): everything the directory holds
under their handle goes; the other party's portal reads its conversations ended."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select, text

from directory.api.ads.schemas import AdPutSchema
from directory.db import unit_of_work
from directory.models import Delivery
from directory.services import ads, members, relay, sync
from tests.api.test_relay import publish
from tests.apps import app_with
from tests.factories import ad_payload
from tests.waits import send_aside

# Distinctive, so that a search of every table for it finds only what erasure missed.
ERASED = "m-erase-me-7731"
WRITER = "m-writer"
OTHER = "m-stays"
ERASURES = "/v1/portals/me/member-erasures"


def contact(client, portal, ad_id, *, member=WRITER, body="Is it still on?"):
    response = client.post(
        f"/v1/ads/{ad_id}/contact",
        json={"member": member, "name": "Anna", "body": body},
        headers=portal.headers,
    )
    assert response.status_code == 201, response.json
    return response.json["conversation"]["id"]


def write(client, portal, conversation_id, *, member, body="Saturday?", name=None):
    return client.post(
        f"/v1/conversations/{conversation_id}/messages",
        json={"member": member, "body": body} | ({} if name is None else {"name": name}),
        headers=portal.headers,
    )


def erase(client, portal, member=ERASED):
    return client.post(ERASURES, json={"member": member}, headers=portal.headers)


def conversation(client, portal, conversation_id):
    response = client.get(f"/v1/conversations/{conversation_id}", headers=portal.headers)
    assert response.status_code == 200, response.json
    return response.json


def rows_naming(wiring, value: str) -> dict[str, int]:
    """Every table's rows whose text holds `value`: what the directory still keeps."""
    found = {}
    with wiring.engine.connect() as connection:
        tables = connection.scalars(
            text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ).all()
        for table in tables:
            count = connection.scalar(
                text(f'SELECT count(*) FROM "{table}" AS t WHERE t::text LIKE :pattern'),
                {"pattern": f"%{value}%"},
            )
            if count:
                found[table] = count
    return found


# --- what goes -------------------------------------------------------------------------


def test_erasing_an_advertiser_deletes_their_ads_and_ends_their_conversations(
    client, wiring, advertiser, writer_portal
):
    ad_id = publish(client, advertiser, "piano", member=ERASED, title="Piano lessons by Odile")
    publish(client, advertiser, "violin", member=ERASED, title="Violin")
    conversation_id = contact(client, writer_portal, ad_id)
    assert (
        write(client, advertiser, conversation_id, member=ERASED, name="Odile").status_code == 201
    )

    erased = erase(client, advertiser)

    assert erased.status_code == 200, erased.json
    assert erased.json == {
        "ads_deleted": 2,
        "conversations_ended": 1,
        "messages_deleted": 2,
        "staged_ads_dropped": 0,
    }
    assert client.get(f"/v1/ads/{ad_id}").status_code == 404
    assert client.get("/v1/portals/me/ads", headers=advertiser.headers).json["items"] == []
    seen = conversation(client, writer_portal, conversation_id)
    assert seen["recipient"]["erased"] is True
    assert seen["recipient"]["name"] is None
    assert seen["ad"] == {"id": None, "title": None}  # the title was the advertiser's words
    assert seen["messages"] == []
    assert seen["message_count"] == 2  # what was exchanged, not what is kept
    assert seen["initiator"] == {
        "role": "initiator",
        "alias": seen["initiator"]["alias"],
        "name": "Anna",
        "portal": {"slug": "lets-bristol", "name": "Bristol LETS"},
        "member": WRITER,
        "erased": False,
        # The conversation ended: the portal hides its compose box.
        "sending": {"allowed": False, "refusal": "party_erased", "messages_left": 10},
    }
    # The advertiser's own portal sees the same: its member is gone from it too.
    own = conversation(client, advertiser, conversation_id)
    assert own["recipient"]["member"] is None
    assert own["recipient"]["erased"] is True
    assert rows_naming(wiring, ERASED) == {}
    assert rows_naming(wiring, "Odile") == {}


def test_erasing_a_writer_ends_their_conversations_for_the_advertiser(
    client, wiring, advertiser, writer_portal
):
    ad_id = publish(client, advertiser, "piano", member=OTHER)
    conversation_id = contact(client, writer_portal, ad_id, member=ERASED, body="Hello from me")

    erased = erase(client, writer_portal)

    assert erased.json == {
        "ads_deleted": 0,
        "conversations_ended": 1,
        "messages_deleted": 1,
        "staged_ads_dropped": 0,
    }
    seen = conversation(client, advertiser, conversation_id)
    assert seen["initiator"]["erased"] is True
    assert seen["initiator"]["name"] is None
    assert seen["recipient"]["erased"] is False
    assert seen["ad"]["title"] == "Bicycle repairs"  # the advertiser's, who stays
    assert client.get(f"/v1/ads/{ad_id}").status_code == 200  # not the erased member's
    assert rows_naming(wiring, ERASED) == {}
    assert rows_naming(wiring, "Hello from me") == {}


def test_an_erased_advertisers_conversation_no_longer_points_at_an_ad_given_to_another(
    client, advertiser, writer_portal
):
    ad_id = publish(client, advertiser, "piano", member=ERASED)
    conversation_id = contact(client, writer_portal, ad_id)
    # The portal gives the ad to another of its members, then erases the first.
    assert publish(client, advertiser, "piano", member=OTHER) == ad_id

    assert erase(client, advertiser).json["ads_deleted"] == 0

    assert client.get(f"/v1/ads/{ad_id}").status_code == 200  # the other member's now
    seen = conversation(client, writer_portal, conversation_id)
    assert seen["ad"] == {"id": None, "title": None}
    assert seen["recipient"]["erased"] is True


def test_nobody_can_write_in_a_conversation_whose_party_was_erased(
    client, advertiser, writer_portal
):
    ad_id = publish(client, advertiser, "piano", member=ERASED)
    conversation_id = contact(client, writer_portal, ad_id)
    erase(client, advertiser)

    refused = write(client, writer_portal, conversation_id, member=WRITER)
    assert refused.status_code == 409, refused.json
    assert refused.json["error"] == "party_erased"
    assert "erased" in refused.json["message"]
    # The erased member's portal, with the old handle: no longer a party.
    gone = write(client, advertiser, conversation_id, member=ERASED)
    assert gone.status_code == 403, gone.json
    assert gone.json["error"] == "not_a_party"
    assert conversation(client, writer_portal, conversation_id)["message_count"] == 1


def test_pending_deliveries_go_with_the_messages_in_both_directions(
    client, wiring, advertiser, writer_portal
):
    ad_id = publish(client, advertiser, "piano", member=ERASED)
    conversation_id = contact(client, writer_portal, ad_id)
    assert write(client, advertiser, conversation_id, member=ERASED).status_code == 201
    # Neither portal has a webhook: both messages wait in the inboxes.
    assert len(client.get("/v1/inbox", headers=advertiser.headers).json["events"]) == 1
    assert len(client.get("/v1/inbox", headers=writer_portal.headers).json["events"]) == 1

    erase(client, advertiser)

    assert client.get("/v1/inbox", headers=advertiser.headers).json["events"] == []
    # The writer's portal is told instead that the conversation ended.
    (ended,) = client.get("/v1/inbox", headers=writer_portal.headers).json["events"]
    assert ended["type"] == "conversation.ended"
    with unit_of_work(wiring.session_factory) as session:
        (left,) = session.scalars(select(Delivery)).all()
        assert left.message_id is None
        assert str(left.ended_conversation_id) == conversation_id


def test_erasure_touches_no_other_member_nor_the_same_handle_at_another_portal(
    client, advertiser, writer_portal
):
    erased_ad = publish(client, advertiser, "piano", member=ERASED)
    kept_ad = publish(client, advertiser, "violin", member=OTHER)
    # The same handle at another portal is another person.
    namesake_ad = publish(client, writer_portal, "guitar", member=ERASED)
    ended = contact(client, writer_portal, erased_ad)
    kept = contact(client, writer_portal, kept_ad)
    namesakes = contact(client, advertiser, namesake_ad, member=OTHER)

    assert erase(client, advertiser).json["conversations_ended"] == 1

    assert client.get(f"/v1/ads/{kept_ad}").status_code == 200
    assert client.get(f"/v1/ads/{namesake_ad}").status_code == 200
    for conversation_id in (kept, namesakes):
        seen = conversation(client, writer_portal, conversation_id)
        assert not seen["initiator"]["erased"] and not seen["recipient"]["erased"]
        assert len(seen["messages"]) == 1
    assert conversation(client, writer_portal, namesakes)["recipient"]["member"] == ERASED
    assert write(client, writer_portal, kept, member=WRITER).status_code == 201
    assert write(client, writer_portal, ended, member=WRITER).status_code == 409


def test_erasing_again_or_a_handle_never_seen_removes_nothing(client, advertiser, writer_portal):
    ad_id = publish(client, advertiser, "piano", member=ERASED)
    contact(client, writer_portal, ad_id)
    assert erase(client, advertiser).json["ads_deleted"] == 1

    nothing = {
        "ads_deleted": 0,
        "conversations_ended": 0,
        "messages_deleted": 0,
        "staged_ads_dropped": 0,
    }
    again = erase(client, advertiser)
    assert (again.status_code, again.json) == (200, nothing)
    never = erase(client, advertiser, member="m-never-seen")
    assert (never.status_code, never.json) == (200, nothing)


def test_the_handle_is_a_new_member_after_its_erasure(client, advertiser, writer_portal):
    ad_id = publish(client, advertiser, "piano", member=OTHER)
    old = contact(client, writer_portal, ad_id, member=ERASED)
    erase(client, writer_portal)

    new = contact(client, writer_portal, ad_id, member=ERASED, body="A new start")

    listed = client.get(f"/v1/conversations?member={ERASED}", headers=writer_portal.headers).json[
        "conversations"
    ]
    assert [item["id"] for item in listed] == [new]
    assert new != old


def test_the_member_filter_of_the_advertisers_list_finds_them_as_advertiser(
    client, advertiser, writer_portal
):
    ad_id = publish(client, advertiser, "piano", member=OTHER)
    conversation_id = contact(client, writer_portal, ad_id)
    listed = client.get(f"/v1/conversations?member={OTHER}", headers=advertiser.headers).json
    assert [item["id"] for item in listed["conversations"]] == [conversation_id]


def test_an_erased_advertisers_ads_leave_search_and_the_feed_says_so(client, advertiser):
    ad_id = publish(client, advertiser, "piano", member=ERASED, title="Piano lessons")
    assert [hit["id"] for hit in client.get("/v1/search?q=piano").json["hits"]] == [ad_id]

    erase(client, advertiser)

    assert client.get("/v1/search?q=piano").json["hits"] == []
    changes = client.get("/v1/feed?limit=100").json["changes"]
    assert [(change["op"], change["ad_id"]) for change in changes][-1] == ("delete", ad_id)


def test_the_erased_members_staged_ads_are_dropped_and_not_published_at_commit(client, advertiser):
    session_id = client.post("/v1/sync-sessions", headers=advertiser.headers).json["id"]
    staged = client.post(
        f"/v1/sync-sessions/{session_id}/items",
        json={
            "items": [
                {"external_id": "piano", "ad": ad_payload(member=ERASED)},
                {"external_id": "violin", "ad": ad_payload(member=OTHER)},
            ]
        },
        headers=advertiser.headers,
    )
    assert staged.status_code == 200, staged.json

    assert erase(client, advertiser).json["staged_ads_dropped"] == 1

    committed = client.post(f"/v1/sync-sessions/{session_id}/commit", headers=advertiser.headers)
    assert committed.status_code == 200, committed.json
    own = client.get("/v1/portals/me/ads", headers=advertiser.headers).json["items"]
    assert [(ad["external_id"], ad["member"]) for ad in own] == [("violin", OTHER)]


def test_erased_conversations_still_count_against_the_portals_opening_limit(
    migrated, client, advertiser, writer_portal
):
    ad_id = publish(client, advertiser, "piano", member=OTHER)
    with app_with(migrated, relay_conversations_per_portal_per_hour=2) as strict:
        strict_client = strict.test_client()
        contact(strict_client, writer_portal, ad_id, member=ERASED)
        contact(strict_client, writer_portal, ad_id, member="m-second")
        erase(strict_client, writer_portal)

        refused = strict_client.post(
            f"/v1/ads/{ad_id}/contact",
            json={"member": "m-third", "name": "Zoe", "body": "Hi"},
            headers=writer_portal.headers,
        )
    assert refused.status_code == 429, refused.json
    assert refused.json["error"] == "too_many_conversations"


# --- racing writers ----------------------------------------------------------------------


def test_a_message_written_while_the_erasure_commits_is_refused(
    app, client, wiring, advertiser, writer_portal
):
    ad_id = publish(client, advertiser, "piano", member=ERASED)
    conversation_id = contact(client, writer_portal, ad_id)
    with unit_of_work(wiring.session_factory) as erasing:
        members.erase_member(
            erasing, portal_id=advertiser.id, member=ERASED, lifetimes=wiring.lifetimes
        )
        writer = send_aside(
            wiring,
            lambda: write(app.test_client(), writer_portal, conversation_id, member=WRITER),
            what="the message",
        )
    answer = writer()
    assert answer.status_code == 409, answer.json
    assert answer.json["error"] == "party_erased"


def test_a_message_committed_before_the_erasure_is_erased_with_the_rest(
    app, client, wiring, advertiser, writer_portal
):
    ad_id = publish(client, advertiser, "piano", member=ERASED)
    conversation_id = contact(client, writer_portal, ad_id)
    with unit_of_work(wiring.session_factory) as writing:
        writing.execute(
            text("SELECT 1 FROM conversations WHERE id = :id FOR UPDATE"), {"id": conversation_id}
        )
        erasure = send_aside(
            wiring, lambda: erase(app.test_client(), advertiser), what="the erasure"
        )
        writing.execute(
            text(
                "INSERT INTO messages (id, conversation_id, seq, sender_role, sender_portal_id,"
                " body, created_at) VALUES (gen_random_uuid(), :id, 2, 'initiator', :portal,"
                " 'Written meanwhile', now())"
            ),
            {"id": conversation_id, "portal": writer_portal.id},
        )
    answer = erasure()
    assert answer.status_code == 200, answer.json
    assert answer.json["messages_deleted"] == 2
    assert conversation(client, writer_portal, conversation_id)["messages"] == []


def test_a_contact_made_while_the_erasure_waits_is_erased_too(
    app, client, wiring, advertiser, writer_portal
):
    ad_id = publish(client, advertiser, "piano", member=ERASED)
    with unit_of_work(wiring.session_factory) as contacting:
        # What a contact holds from finding the ad to committing its conversation.
        contacting.execute(text("SELECT 1 FROM ads WHERE id = :id FOR KEY SHARE"), {"id": ad_id})
        erasure = send_aside(
            wiring, lambda: erase(app.test_client(), advertiser), what="the erasure"
        )
        contacting.execute(
            text(
                "INSERT INTO conversations (id, ad_id, ad_title, initiator_portal_id,"
                " initiator_member, initiator_alias, initiator_name, recipient_portal_id,"
                " recipient_member, recipient_alias, message_count, created_at,"
                " last_message_at) VALUES (gen_random_uuid(), :ad, 'Piano', :writer, :member,"
                " 'member-aaaa', 'Anna', :advertiser, :erased, 'member-bbbb', 0, now(), now())"
            ),
            {
                "ad": ad_id,
                "writer": writer_portal.id,
                "member": WRITER,
                "advertiser": advertiser.id,
                "erased": ERASED,
            },
        )
    answer = erasure()
    assert answer.json["conversations_ended"] == 1, answer.json
    assert rows_naming(wiring, ERASED) == {}


# --- bad requests ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({}, "Missing data for required field."),
        ({"member": ""}, None),
        ({"member": "x" * 65}, None),
        ({"member": "anna@example.org"}, "not an email address"),
        ({"member": "+33 6 12 34 56 78"}, None),
        ({"member": 42}, "Not a valid string."),
        ({"member": None}, None),
        ({"member": ERASED, "also": "this"}, "Unknown field."),
    ],
)
def test_a_bad_erasure_is_refused_naming_the_field(client, advertiser, body, problem):
    publish(client, advertiser, "piano", member=ERASED)
    response = client.post(ERASURES, json=body, headers=advertiser.headers)
    assert response.status_code in (400, 422), response.json
    errors = response.json["errors"]["json"]
    field = "also" if "also" in body else "member"
    assert field in errors, errors
    if problem is not None:
        assert any(problem in message for message in errors[field]), errors
    assert client.get("/v1/portals/me/ads", headers=advertiser.headers).json["items"] != []


def test_an_erasure_needs_the_portals_key(client, advertiser):
    publish(client, advertiser, "piano", member=ERASED)
    assert client.post(ERASURES, json={"member": ERASED}).status_code == 401
    wrong = {"Authorization": "Bearer cdir_not-a-key"}
    assert client.post(ERASURES, json={"member": ERASED}, headers=wrong).status_code == 401
    assert len(client.get("/v1/portals/me/ads", headers=advertiser.headers).json["items"]) == 1


def test_an_erasure_is_not_json_refused(client, advertiser):
    response = client.post(
        ERASURES, data="member=m-1", headers=advertiser.headers | {"Content-Type": "text/plain"}
    )
    assert response.status_code == 415, response.json


def test_the_erased_members_ads_staged_in_a_committed_session_go_too(client, wiring, advertiser):
    # A committed session's items stay until housekeeping purges them: they hold the
    # member's handle and words as much as an open one's.
    session_id = client.post("/v1/sync-sessions", headers=advertiser.headers).json["id"]
    staged = client.post(
        f"/v1/sync-sessions/{session_id}/items",
        json={"items": [{"external_id": "piano", "ad": ad_payload(member=ERASED)}]},
        headers=advertiser.headers,
    )
    assert staged.status_code == 200, staged.json
    committed = client.post(f"/v1/sync-sessions/{session_id}/commit", headers=advertiser.headers)
    assert committed.status_code == 200, committed.json

    erased = erase(client, advertiser)

    assert erased.json["ads_deleted"] == 1, erased.json
    assert rows_naming(wiring, ERASED) == {}
    # The commit's answer, asked again, is as it was.
    again = client.post(f"/v1/sync-sessions/{session_id}/commit", headers=advertiser.headers)
    assert (again.status_code, again.json) == (200, committed.json)


def test_ads_a_sync_commit_under_way_publishes_for_the_member_are_erased_too(
    app, client, wiring, advertiser
):
    publish(client, advertiser, "violin", member=ERASED)
    session_id = client.post("/v1/sync-sessions", headers=advertiser.headers).json["id"]
    staged = client.post(
        f"/v1/sync-sessions/{session_id}/items",
        json={
            "items": [
                {"external_id": "violin", "ad": ad_payload(member=ERASED)},
                {"external_id": "piano", "ad": ad_payload(member=ERASED)},
            ]
        },
        headers=advertiser.headers,
    )
    assert staged.status_code == 200, staged.json
    with unit_of_work(wiring.session_factory) as committing:
        sync.commit(
            committing,
            portal_id=advertiser.id,
            session_id=uuid.UUID(session_id),
            lifetimes=wiring.lifetimes,
            max_ads=wiring.settings.portal_max_ads,
        )
        erasure = send_aside(
            wiring, lambda: erase(app.test_client(), advertiser), what="the erasure"
        )
    answer = erasure()
    assert answer.status_code == 200, answer.json
    # Whichever came first, the commit's ads are the erased member's: none is left.
    assert client.get("/v1/portals/me/ads", headers=advertiser.headers).json["items"] == []
    assert client.get("/v1/search?q=bicycle").json["hits"] == []
    assert rows_naming(wiring, ERASED) == {}


def test_an_ad_written_for_the_member_while_the_erasure_starts_is_erased_too(
    app, client, wiring, advertiser
):
    publish(client, advertiser, "violin", member=ERASED)
    with unit_of_work(wiring.session_factory) as writing:
        ads.upsert_ad(
            writing,
            portal_id=advertiser.id,
            external_id="piano",
            ad=AdPutSchema().load(ad_payload(member=ERASED)),
            lifetimes=wiring.lifetimes,
            max_ads=wiring.settings.portal_max_ads,
        )
        erasure = send_aside(
            wiring, lambda: erase(app.test_client(), advertiser), what="the erasure"
        )
    answer = erasure()
    assert answer.status_code == 200, answer.json
    assert answer.json["ads_deleted"] == 2
    assert client.get("/v1/portals/me/ads", headers=advertiser.headers).json["items"] == []
    assert rows_naming(wiring, ERASED) == {}


def test_ads_staged_for_the_member_while_the_erasure_starts_are_dropped_too(
    app, client, wiring, advertiser
):
    session_id = client.post("/v1/sync-sessions", headers=advertiser.headers).json["id"]
    with unit_of_work(wiring.session_factory) as staging:
        sync.stage_items(
            staging,
            portal_id=advertiser.id,
            session_id=uuid.UUID(session_id),
            items=[("piano", AdPutSchema().load(ad_payload(member=ERASED)))],
            lifetimes=wiring.lifetimes,
            max_items=10,
            max_ads=wiring.settings.portal_max_ads,
        )
        erasure = send_aside(
            wiring, lambda: erase(app.test_client(), advertiser), what="the erasure"
        )
    answer = erasure()
    assert answer.json["staged_ads_dropped"] == 1, answer.json
    committed = client.post(f"/v1/sync-sessions/{session_id}/commit", headers=advertiser.headers)
    assert committed.status_code == 200, committed.json
    assert client.get("/v1/portals/me/ads", headers=advertiser.headers).json["items"] == []


def test_a_member_with_more_conversations_than_a_statement_takes_parameters_is_erased(
    client, wiring, advertiser, writer_portal
):
    # PostgreSQL takes at most 65,535 parameters a statement: a popular advertiser's
    # year of conversations (or a closing portal's) is more.
    ad_id = publish(client, advertiser, "piano", member=ERASED)
    contact(client, writer_portal, ad_id, body="The one with words")
    with unit_of_work(wiring.session_factory) as session:
        session.execute(
            text(
                "INSERT INTO conversations (id, ad_id, ad_title, initiator_portal_id,"
                " initiator_member, initiator_alias, initiator_name, recipient_portal_id,"
                " recipient_member, recipient_alias, message_count, created_at,"
                " last_message_at) SELECT gen_random_uuid(), :ad, 'Piano', :writer,"
                " 'm-' || n, 'member-a' || n, 'Anna', :advertiser, :erased, 'member-b' || n,"
                " 0, now(), now() FROM generate_series(1, 66000) AS n"
            ),
            {
                "ad": ad_id,
                "writer": writer_portal.id,
                "advertiser": advertiser.id,
                "erased": ERASED,
            },
        )

    erased = erase(client, advertiser)

    assert erased.status_code == 200, erased.json["message"]
    assert erased.json["conversations_ended"] == 66001
    assert erased.json["messages_deleted"] == 1
    assert rows_naming(wiring, ERASED) == {}


def test_an_erasure_and_the_members_own_contact_under_way_do_not_deadlock(
    app, client, wiring, advertiser
):
    # The member writing to their own ad is refused, but only once the ad is found: the
    # contact holds the member's opening lock, then waits for the ad's row. An erasure
    # that deleted the ad before taking that lock waited for the contact, which waited
    # for it: PostgreSQL broke the deadlock by failing one of them.
    ad_id = publish(client, advertiser, "piano", member=ERASED)
    with unit_of_work(wiring.session_factory) as contacting:
        relay.lock_member_openings(contacting, portal_id=advertiser.id, member=ERASED)
        erasure = send_aside(
            wiring, lambda: erase(app.test_client(), advertiser), what="the erasure"
        )
        contacting.execute(text("SELECT 1 FROM ads WHERE id = :id FOR KEY SHARE"), {"id": ad_id})
    answer = erasure()
    assert answer.status_code == 200, answer.json
    assert answer.json["ads_deleted"] == 1
