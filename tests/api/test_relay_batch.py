"""Several messages in one request (POST /v1/messages/batch): each item taken as a
single postMessage would take it, refused items leaving the others sent."""

from __future__ import annotations

import contextlib
import json
import uuid

import pytest
from sqlalchemy import text

from directory.db import OPEN_CONVERSATION_LOCK_NAMESPACE, unit_of_work
from directory.services import portals, relay
from directory.services.relay import MAX_BATCH_MESSAGES
from tests.api.test_relay import (
    ADVERTISER,
    LIMITS,
    WRITER,
    block,
    publish,
)
from tests.waits import send_aside


def batch(client, portal, items):
    return client.post("/v1/messages/batch", json={"items": items}, headers=portal.headers)


def item(conversation_id, *, member=ADVERTISER, body="Yes, come by!", **extra):
    return {"conversation_id": conversation_id, "member": member, "body": body, **extra}


def opening(ad_id, *, member=WRITER, name="Anna", body="Is it still on?", **extra):
    return {"ad_id": ad_id, "member": member, "name": name, "body": body, **extra}


def conversations_of(session, member) -> int:
    return session.scalar(
        text("SELECT count(*) FROM conversations WHERE initiator_member = :member"),
        {"member": member},
    )


@contextlib.contextmanager
def key_taken(wiring, portal, conversation_id: str, member: str, key: str = "k"):
    """Within the block, a transaction of `portal`'s holds a message `member` wrote under
    `key` in the conversation, not committed yet; it commits as the block ends."""
    with unit_of_work(wiring.session_factory) as racing:
        relay.post_message(
            racing,
            sender=portals.authenticate(racing, key=portal.key),
            conversation_id=uuid.UUID(conversation_id),
            member=member,
            name=None,
            body="First words",
            idempotency_key=key,
            limits=LIMITS,
        )
        yield


def counts(session, conversation_id) -> tuple[int, int, int]:
    """(the conversation's message_count, its messages, their deliveries)."""
    return session.execute(
        text(
            "SELECT c.message_count, count(m.id), count(d.id) FROM conversations c"
            " LEFT JOIN messages m ON m.conversation_id = c.id"
            " LEFT JOIN deliveries d ON d.message_id = m.id"
            " WHERE c.id = :id GROUP BY c.id"
        ),
        {"id": conversation_id},
    ).one()


def test_each_message_is_sent_as_a_single_post_would_send_it(
    client, advertiser, writer_portal, conversations
):
    first, second, _ = conversations
    answer = batch(
        client,
        advertiser,
        [
            item(first, body="Yes, on Saturday", name="Luc"),
            item(second, body="Sold, sorry"),
            item(first, body="Bring the wheel"),
        ],
    )
    assert answer.status_code == 200, answer.json
    results = answer.json["results"]
    assert answer.json["counts"] == {"created": 3}
    assert [r["index"] for r in results] == [0, 1, 2]
    assert [r["status"] for r in results] == ["created"] * 3
    assert [r["error"] for r in results] == [None] * 3
    assert [(r["conversation"]["id"], r["message"]["seq"]) for r in results] == [
        (first, 2),
        (second, 2),
        (first, 3),
    ]
    assert results[0]["conversation"]["recipient"]["name"] == "Luc"
    assert results[2]["conversation"]["recipient"]["sending"]["messages_left"] == 8  # two in a row
    assert results[1]["message"]["delivery"]["state"] == "pending"
    # The answer of a single post: the other party only under its alias.
    assert "m-writer" not in json.dumps(answer.json)

    seen = client.get(f"/v1/conversations/{first}", headers=writer_portal.headers).json
    assert [m["body"] for m in seen["messages"]] == [
        "Is it still on?",
        "Yes, on Saturday",
        "Bring the wheel",
    ]
    inbox = client.get("/v1/inbox", headers=writer_portal.headers).json["events"]
    assert [e["data"]["message"]["body"] for e in inbox] == [
        "Yes, on Saturday",
        "Sold, sorry",
        "Bring the wheel",
    ]
    assert [e["data"]["conversation"]["id"] for e in inbox] == [first, second, first]


def test_a_refused_item_leaves_the_others_sent(
    client, session, advertiser, writer_portal, conversations
):
    first, second, third = conversations
    block(client, writer_portal, third, "m-writer-2")
    answer = batch(
        client,
        advertiser,
        [
            item(first),
            item(str(uuid.uuid4())),
            item(second, member="m-someone-else"),
            item(third),
            item(first, body=""),
            item(first, colour="blue"),
            "not an object",
            item(second, body="Still here"),
        ],
    )
    assert answer.status_code == 200, answer.json
    results = answer.json["results"]
    assert [(r["status"], r["error"]) for r in results] == [
        ("created", None),
        ("rejected", "conversation_not_found"),
        ("rejected", "not_a_party"),
        ("rejected", "conversation_blocked"),
        ("rejected", "validation_error"),
        ("rejected", "validation_error"),
        ("rejected", "validation_error"),
        ("created", None),
    ]
    assert answer.json["counts"] == {"created": 2, "rejected": 6}
    assert list(results[1]["errors"]) == ["conversation_id"]
    assert list(results[2]["errors"]) == ["member"]
    assert "blocked" in results[3]["errors"]["_schema"][0]
    assert list(results[4]["errors"]) == ["body"]
    assert list(results[5]["errors"]) == ["colour"]
    assert list(results[6]["errors"]) == ["_schema"]
    assert all(r["conversation"] is None and r["message"] is None for r in results[1:7])
    # Only what was sent is stored: one message more in each of the first two.
    assert counts(session, first) == (2, 2, 2)
    assert counts(session, second) == (2, 2, 2)
    assert counts(session, third) == (1, 1, 1)


def test_messages_in_a_row_are_counted_within_the_batch(client, session, advertiser, conversations):
    first = conversations[0]
    answer = batch(client, advertiser, [item(first, body=f"Number {n}") for n in range(11)])
    results = answer.json["results"]
    assert [r["status"] for r in results] == ["created"] * 10 + ["rejected"]
    assert results[10]["error"] == "awaiting_reply"
    assert results[9]["conversation"]["recipient"]["sending"] == {
        "allowed": False,
        "refusal": "awaiting_reply",
        "messages_left": 0,
    }
    assert counts(session, first) == (11, 11, 11)


def test_a_batch_sent_again_sends_nothing_twice(
    client, session, advertiser, writer_portal, conversations
):
    first, second, _ = conversations
    items = [
        item(first, body="One", idempotency_key="q-1"),
        item(second, body="Two", idempotency_key="q-2"),
    ]
    sent = batch(client, advertiser, items).json["results"]
    # The answer was lost; meanwhile the other party answered in the first conversation.
    client.post(
        f"/v1/conversations/{first}/messages",
        json={"member": "m-writer-0", "body": "Thanks"},
        headers=writer_portal.headers,
    )
    again = batch(client, advertiser, items)
    assert again.status_code == 200, again.json
    results = again.json["results"]
    assert [r["status"] for r in results] == ["sent_before", "sent_before"]
    assert again.json["counts"] == {"sent_before": 2}
    assert [r["message"]["id"] for r in results] == [r["message"]["id"] for r in sent]
    assert results[0]["message"]["body"] == "One"
    assert results[0]["conversation"]["message_count"] == 3  # as it is now
    assert counts(session, first) == (3, 3, 3)
    assert counts(session, second) == (2, 2, 2)


def test_a_key_used_twice_in_one_batch(client, session, advertiser, conversations):
    first, second, _ = conversations
    results = batch(
        client,
        advertiser,
        [
            item(first, body="One", idempotency_key="k"),
            item(first, body="One", idempotency_key="k"),
            item(second, body="Other words", idempotency_key="k"),
        ],
    ).json["results"]
    assert [(r["status"], r["error"]) for r in results] == [
        ("created", None),
        ("sent_before", None),
        ("rejected", "idempotency_key_reused"),
    ]
    assert results[1]["message"]["id"] == results[0]["message"]["id"]
    assert list(results[2]["errors"]) == ["idempotency_key"]
    assert counts(session, first) == (2, 2, 2)
    assert counts(session, second) == (1, 1, 1)


def test_a_key_taken_meanwhile_by_another_request_refuses_only_its_item(
    app, wiring, advertiser, conversations
):
    """The key's other message commits while the batch waits on it: that item is
    refused, and nothing of it stays (not even the conversation's count); the rest of the
    batch is sent."""
    first, second, third = conversations
    with key_taken(wiring, advertiser, first, ADVERTISER):
        batch_answer = send_aside(
            wiring,
            lambda: batch(
                app.test_client(),
                advertiser,
                [item(second, body="Other words", idempotency_key="k"), item(third)],
            ),
            what="the batch's insert under the same key",
        )

    answer = batch_answer()
    assert answer.status_code == 200, answer.json
    results = answer.json["results"]
    assert [(r["status"], r["error"]) for r in results] == [
        ("rejected", "idempotency_key_reused"),
        ("created", None),
    ]
    with unit_of_work(wiring.session_factory) as session:
        assert counts(session, first) == (2, 2, 2)
        assert counts(session, second) == (1, 1, 1)
        assert counts(session, third) == (2, 2, 2)


def test_a_batch_locks_its_conversations_in_one_order(app, wiring, advertiser, conversations):
    """Two batches writing in the same conversations in opposite orders never wait for
    each other in a circle: a batch waiting for one of its conversations holds none of
    those that come after it, whatever the order of its items."""
    low, high = sorted(conversations[:2], key=uuid.UUID)
    with unit_of_work(wiring.session_factory) as holder:
        holder.execute(text("SELECT 1 FROM conversations WHERE id = :id FOR UPDATE"), {"id": low})
        batch_answer = send_aside(
            wiring,
            lambda: batch(app.test_client(), advertiser, [item(high), item(low)]),
            what="the batch",
        )
        with unit_of_work(wiring.session_factory) as other:
            # Free: the batch waits for `low` before taking `high`, its first item's.
            other.execute(
                text("SELECT 1 FROM conversations WHERE id = :id FOR UPDATE NOWAIT"),
                {"id": high},
            )
    answer = batch_answer()
    assert [r["status"] for r in answer.json["results"]] == ["created", "created"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"items": []}, "items"),
        ({"items": {"conversation_id": "x"}}, "items"),
        ({}, "items"),
        ({"items": None}, "items"),
        ({"items": [], "extra": 1}, "extra"),
    ],
)
def test_bad_batches_are_refused_naming_the_field(client, advertiser, body, field):
    answer = client.post("/v1/messages/batch", json=body, headers=advertiser.headers)
    assert answer.status_code == 400, answer.json
    assert field in answer.json["errors"]["json"]


def test_a_batch_holds_at_most_its_limit_of_messages(client, session, advertiser, conversations):
    too_many = [item(conversations[0])] * (MAX_BATCH_MESSAGES + 1)
    answer = batch(client, advertiser, too_many)
    assert answer.status_code == 400, answer.json
    assert str(MAX_BATCH_MESSAGES) in answer.json["errors"]["json"]["items"][0]
    assert counts(session, conversations[0]) == (1, 1, 1)


def test_a_batch_needs_a_portal_key(client, conversations):
    answer = client.post("/v1/messages/batch", json={"items": [item(conversations[0])]})
    assert answer.status_code == 401
    assert answer.json["error"] == "unauthenticated"


def test_the_writers_side_batches_too(client, advertiser, writer_portal, conversations):
    """Any party's portal: here the writers answer the advertiser's replies, by batch."""
    first, second, _ = conversations
    batch(client, advertiser, [item(first), item(second)])
    results = batch(
        client,
        writer_portal,
        [
            item(first, member="m-writer-0", body="Great"),
            item(second, member="m-writer-1", body="Too bad"),
            item(second, member=WRITER, body="Not mine"),
        ],
    ).json["results"]
    assert [(r["status"], r["error"]) for r in results] == [
        ("created", None),
        ("created", None),
        ("rejected", "not_a_party"),
    ]
    assert results[0]["conversation"]["your_roles"] == ["initiator"]
    assert ADVERTISER not in json.dumps(results)


# --- openings in a batch -------------------------------------------------------------------


def test_openings_are_taken_as_contacts_would_be(
    client, session, advertiser, writer_portal, conversations
):
    ads = [publish(client, advertiser, f"new-{number}") for number in range(2)]
    answer = batch(
        client,
        writer_portal,
        [
            opening(ads[0], member="m-anna", body="Is the bike still there?"),
            item(conversations[0], member="m-writer-0", body="Saturday then"),
            opening(ads[1], member="m-ben", name="Ben", idempotency_key="o-1"),
        ],
    )
    assert answer.status_code == 200, answer.json
    results = answer.json["results"]
    assert [(r["status"], r["error"]) for r in results] == [("created", None)] * 3
    assert answer.json["counts"] == {"created": 3}
    first, reply_result, second = results
    assert first["message"]["seq"] == 1 and second["message"]["seq"] == 1
    assert first["conversation"]["your_roles"] == ["initiator"]
    assert first["conversation"]["initiator"]["member"] == "m-anna"
    assert second["conversation"]["initiator"]["name"] == "Ben"
    assert first["conversation"]["ad"]["id"] == ads[0]
    assert reply_result["conversation"]["id"] == conversations[0]
    # The advertiser only under an alias, as contactAdvertiser answers.
    assert ADVERTISER not in json.dumps(answer.json)

    inbox = client.get("/v1/inbox", headers=advertiser.headers).json["events"]
    opened = {e["data"]["conversation"]["id"]: e["data"] for e in inbox}
    assert opened[first["conversation"]["id"]]["message"]["body"] == "Is the bike still there?"
    assert opened[second["conversation"]["id"]]["to"]["member"] == ADVERTISER
    assert opened[second["conversation"]["id"]]["from"]["name"] == "Ben"
    assert "m-anna" not in json.dumps(inbox) and "m-ben" not in json.dumps(inbox)
    assert counts(session, first["conversation"]["id"]) == (1, 1, 1)


def test_refused_openings_leave_nothing_and_the_others_sent(
    client, session, advertiser, writer_portal
):
    ad_id = publish(client, advertiser)
    silent = publish(client, advertiser, "silent", accepts_contact=False)
    own = publish(client, writer_portal, "own", member="m-own")
    answer = batch(
        client,
        writer_portal,
        [
            opening(str(uuid.uuid4()), member="m-1"),
            opening(silent, member="m-2"),
            opening(own, member="m-own"),
            {"ad_id": ad_id, "member": "m-3", "body": "No name"},
            opening(ad_id, member="m-4", conversation_id=str(uuid.uuid4())),
            {"member": "m-5", "body": "To whom?"},
            opening("not-an-id", member="m-6"),
            opening(ad_id, member="m-7"),
        ],
    )
    assert answer.status_code == 200, answer.json
    results = answer.json["results"]
    assert [(r["status"], r["error"]) for r in results] == [
        ("rejected", "ad_not_found"),
        ("rejected", "contact_disabled"),
        ("rejected", "invalid_input"),
        ("rejected", "validation_error"),
        ("rejected", "validation_error"),
        ("rejected", "validation_error"),
        ("rejected", "validation_error"),
        ("created", None),
    ]
    assert list(results[0]["errors"]) == ["ad_id"]
    assert list(results[2]["errors"]) == ["member"]
    assert "open a conversation" in results[3]["errors"]["name"][0]
    assert "not both" in results[4]["errors"]["ad_id"][0]
    assert "conversation_id" in results[5]["errors"]
    assert list(results[6]["errors"]) == ["ad_id"]
    assert all(r["retry_after_s"] is None for r in results)
    for member in ["m-1", "m-2", "m-own", "m-3", "m-4", "m-5", "m-6"]:
        assert conversations_of(session, member) == 0
    assert conversations_of(session, "m-7") == 1


def test_the_limits_on_openings_count_within_the_batch(
    strict_client, client, session, advertiser, writer_portal
):
    ads = [publish(client, advertiser, f"ad-{number}") for number in range(3)]
    answer = batch(strict_client, writer_portal, [opening(ad_id) for ad_id in ads])
    results = answer.json["results"]
    assert [(r["status"], r["error"]) for r in results] == [
        ("created", None),
        ("created", None),
        ("rejected", "too_many_conversations"),
    ]
    assert "opened 2 conversations in the last hour" in results[2]["errors"]["member"][0]
    assert 3500 < results[2]["retry_after_s"] <= 3601
    assert conversations_of(session, WRITER) == 2


def test_a_batch_of_openings_sent_again_opens_nothing_twice(
    client, session, advertiser, writer_portal
):
    ads = [publish(client, advertiser, f"ad-{number}") for number in range(2)]
    items = [
        opening(ads[0], member="m-anna", idempotency_key="o-1"),
        opening(ads[1], member="m-ben", idempotency_key="o-2"),
    ]
    sent = batch(client, writer_portal, items).json["results"]
    client.delete("/v1/ads/ad-1", headers=advertiser.headers)  # meanwhile
    again = batch(client, writer_portal, items).json["results"]
    assert [r["status"] for r in again] == ["sent_before", "sent_before"]
    assert [r["conversation"]["id"] for r in again] == [r["conversation"]["id"] for r in sent]
    assert conversations_of(session, "m-anna") == conversations_of(session, "m-ben") == 1


def test_an_opening_whose_key_is_taken_meanwhile_leaves_no_conversation(
    app, wiring, advertiser, writer_portal, conversations
):
    """The key's other message commits while the opening waits on it: the opening is
    refused and takes back the conversation it had made; the rest is sent."""
    ad_id = publish(app.test_client(), advertiser, "another")
    with key_taken(wiring, writer_portal, conversations[0], "m-writer-0"):
        batch_answer = send_aside(
            wiring,
            lambda: batch(
                app.test_client(),
                writer_portal,
                [opening(ad_id, member="m-late", idempotency_key="k"), opening(ad_id)],
            ),
            what="the opening's insert under the same key",
        )

    results = batch_answer().json["results"]
    assert [(r["status"], r["error"]) for r in results] == [
        ("rejected", "idempotency_key_reused"),
        ("created", None),
    ]
    with unit_of_work(wiring.session_factory) as session:
        assert conversations_of(session, "m-late") == 0
        assert conversations_of(session, WRITER) == 1


def test_a_batch_takes_its_members_locks_in_one_order(app, wiring, advertiser, writer_portal):
    """Two batches opening conversations for the same members in opposite orders never
    wait for each other in a circle: a batch waiting for one member's lock holds none of
    those that come after it, whatever the order of its items."""
    ad_id = publish(app.test_client(), advertiser)
    members = ["m-anna", "m-ben"]
    with unit_of_work(wiring.session_factory) as session:
        ids = {
            member: session.scalar(
                text("SELECT hashtext(:key)"), {"key": f"{writer_portal.id}:{member}"}
            )
            for member in members
        }
    first, later = sorted(members, key=ids.get)
    with unit_of_work(wiring.session_factory) as holder:
        relay.lock_member_openings(holder, portal_id=writer_portal.id, member=first)
        batch_answer = send_aside(
            wiring,
            lambda: batch(
                app.test_client(),
                writer_portal,
                [opening(ad_id, member=later), opening(ad_id, member=first)],
            ),
            what="the batch",
        )
        with unit_of_work(wiring.session_factory) as other:
            # Free: the batch waits for `first` before taking `later`'s.
            assert other.scalar(
                text("SELECT pg_try_advisory_xact_lock(:namespace, :lock_id)"),
                {"namespace": OPEN_CONVERSATION_LOCK_NAMESPACE, "lock_id": ids[later]},
            )
    answer = batch_answer()
    assert [r["status"] for r in answer.json["results"]] == ["created", "created"]


def test_an_erasure_waits_for_a_batch_opening_for_the_member_and_erases_it(
    app, wiring, session, advertiser, writer_portal
):
    """An erasure of a member whose opening a batch is making takes it with the rest, as
    with a single opening."""
    ad_id = publish(app.test_client(), advertiser)
    with unit_of_work(wiring.session_factory) as batch_transaction:
        sent = relay.post_messages(
            batch_transaction,
            sender=portals.authenticate(batch_transaction, key=writer_portal.key),
            messages=[relay.Opening(uuid.UUID(ad_id), "m-leaving", "Anna", "Hello", None)],
            limits=LIMITS,
        )
        assert sent[0].created
        erasure = send_aside(
            wiring,
            lambda: app.test_client().post(
                "/v1/portals/me/member-erasures",
                json={"member": "m-leaving"},
                headers=writer_portal.headers,
            ),
            what="the erasure",
        )
    answer = erasure()
    assert answer.status_code == 200, answer.json
    assert answer.json["conversations_ended"] == 1
    assert conversations_of(session, "m-leaving") == 0


def test_a_batch_locks_its_ads_in_the_order_their_writers_do(
    app, wiring, advertiser, writer_portal
):
    """A batch's openings lock their ads as a write of several ads does (by external id),
    not by their ids: a batch waiting for one ad holds none of those after it."""
    client = app.test_client()
    later = publish(client, advertiser, "ad-b")  # made first: the lower id
    first = publish(client, advertiser, "ad-a")
    assert uuid.UUID(later) < uuid.UUID(first)
    with unit_of_work(wiring.session_factory) as writer:
        writer.execute(text("SELECT 1 FROM ads WHERE id = :id FOR UPDATE"), {"id": first})
        batch_answer = send_aside(
            wiring,
            lambda: batch(
                app.test_client(),
                writer_portal,
                [opening(later, member="m-anna"), opening(first, member="m-ben")],
            ),
            what="the batch",
        )
        with unit_of_work(wiring.session_factory) as other:
            # Free: the batch waits for `first` (ad-a) before taking `later` (ad-b).
            other.execute(text("SELECT 1 FROM ads WHERE id = :id FOR UPDATE NOWAIT"), {"id": later})
    answer = batch_answer()
    assert [r["status"] for r in answer.json["results"]] == ["created", "created"]


def test_another_portals_conversations_are_not_found_through_a_batch(
    client, session, make_portal, conversations
):
    """A portal that is no party to a conversation can neither write in it nor learn that
    it exists, as with postMessage."""
    stranger = make_portal(slug="sel-paris", name="SEL de Paris")
    answer = batch(client, stranger, [item(conversations[0], member="m-writer-0")])
    assert answer.status_code == 200, answer.json
    (result,) = answer.json["results"]
    assert (result["status"], result["error"]) == ("rejected", "conversation_not_found")
    assert list(result["errors"]) == ["conversation_id"]
    assert counts(session, conversations[0]) == (1, 1, 1)
