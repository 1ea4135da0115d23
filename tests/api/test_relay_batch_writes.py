"""How a batch's messages in conversations are written together (APPEND_MESSAGES), and
written again one at a time when a racing request takes one's idempotency key: each
item ends as a single postMessage of it, sent alone in the batch's order, would end."""

from __future__ import annotations

import psycopg
from sqlalchemy import event, text

from directory.db import libpq_url, unit_of_work
from directory.services import deliveries
from tests.api.test_relay import ADVERTISER, publish
from tests.api.test_relay_batch import (
    batch,
    conversations_of,
    counts,
    item,
    key_taken,
    opening,
)
from tests.waits import send_aside


def stored(session, conversation_id) -> list[tuple[int, str, str]]:
    """The conversation's messages as stored: (seq, sender role, body), in order."""
    return [
        tuple(row)
        for row in session.execute(
            text(
                "SELECT seq, sender_role, body FROM messages"
                " WHERE conversation_id = :id ORDER BY seq"
            ),
            {"id": conversation_id},
        )
    ]


def test_the_limit_in_a_row_is_not_reached_by_a_message_that_lost_its_key(
    app, wiring, advertiser, conversations
):
    """The advertiser may send 10 in a row. The first of eleven loses its key to a racing
    request: ten are sent, and the eleventh, the tenth in a row, is sent too, as a
    single post of it would be; it is not refused as if the lost one had gone in."""
    first, second, _ = conversations
    with key_taken(wiring, advertiser, first, ADVERTISER):
        batch_answer = send_aside(
            wiring,
            lambda: batch(
                app.test_client(),
                advertiser,
                [item(second, body="Other words", idempotency_key="k")]
                + [item(second, body=f"Then {n}") for n in range(10)],
            ),
            what="the batch's insert under the same key",
        )

    results = batch_answer().json["results"]
    assert [(r["status"], r["error"]) for r in results] == [
        ("rejected", "idempotency_key_reused")
    ] + [("created", None)] * 10
    assert [r["message"]["seq"] for r in results[1:]] == list(range(2, 12))
    assert results[10]["conversation"]["recipient"]["sending"]["messages_left"] == 0
    with unit_of_work(wiring.session_factory) as session:
        assert counts(session, second) == (11, 11, 11)


def test_a_raced_item_between_others_leaves_them_numbered_in_order(
    app, wiring, advertiser, conversations
):
    """The raced item in the middle of its conversation's, another conversation's
    messages around it: the others are written in order, without a gap."""
    first, second, third = conversations
    with key_taken(wiring, advertiser, first, ADVERTISER):
        batch_answer = send_aside(
            wiring,
            lambda: batch(
                app.test_client(),
                advertiser,
                [
                    item(second, body="Before"),
                    item(third, body="Elsewhere"),
                    item(second, body="Lost", idempotency_key="k"),
                    item(second, body="After", name="Luc"),
                ],
            ),
            what="the batch's insert under the same key",
        )

    answer = batch_answer()
    assert answer.status_code == 200, answer.json
    results = answer.json["results"]
    assert [(r["status"], r["error"]) for r in results] == [
        ("created", None),
        ("created", None),
        ("rejected", "idempotency_key_reused"),
        ("created", None),
    ]
    assert [results[i]["message"]["seq"] for i in (0, 1, 3)] == [2, 2, 3]
    assert results[3]["conversation"]["recipient"]["name"] == "Luc"
    with unit_of_work(wiring.session_factory) as session:
        assert [body for _, _, body in stored(session, second)] == [
            "Is it still on?",
            "Before",
            "After",
        ]
        assert counts(session, second) == (3, 3, 3)
        assert counts(session, third) == (2, 2, 2)
        assert (
            session.scalar(
                text("SELECT recipient_name FROM conversations WHERE id = :id"), {"id": second}
            )
            == "Luc"
        )


def test_a_single_message_whose_key_is_taken_writes_nothing(app, wiring, advertiser, conversations):
    first, second, _ = conversations
    with key_taken(wiring, advertiser, first, ADVERTISER):
        answer = send_aside(
            wiring,
            lambda: app.test_client().post(
                f"/v1/conversations/{second}/messages",
                json={"member": ADVERTISER, "body": "Other words", "idempotency_key": "k"},
                headers=advertiser.headers,
            ),
            what="the message's insert under the same key",
        )

    answer = answer()
    assert answer.status_code == 409, answer.json
    assert answer.json["error"] == "idempotency_key_reused"
    with unit_of_work(wiring.session_factory) as session:
        assert counts(session, second) == (1, 1, 1)
        assert session.scalar(
            text("SELECT last_sender FROM conversations WHERE id = :id"), {"id": second}
        ) == ("initiator")


def test_both_parties_of_one_conversation_in_one_batch(client, session, writer_portal):
    """Two members of one portal talk: each sets a name, the limit in a row restarts
    with each answer, and the conversation ends as the last message leaves it."""
    own = publish(client, writer_portal, "own", member="m-seller")
    opened = batch(client, writer_portal, [opening(own, member="m-buyer", name="Bea")])
    conversation = opened.json["results"][0]["conversation"]["id"]
    items = []
    for turn in range(12):
        items += [item(conversation, member="m-seller", body=f"S{turn}.{n}") for n in range(3)]
        items += [item(conversation, member="m-buyer", body=f"B{turn}")]
    items[1]["name"] = "Sam"
    items[-1]["name"] = "Bee"
    answer = batch(client, writer_portal, items)
    assert answer.status_code == 200, answer.json
    results = answer.json["results"]
    assert [r["status"] for r in results] == ["created"] * 48
    assert [r["message"]["seq"] for r in results] == list(range(2, 50))
    assert [r["message"]["sender"] for r in results[:4]] == [
        "recipient",
        "recipient",
        "recipient",
        "initiator",
    ]
    row = session.execute(
        text(
            "SELECT message_count, last_sender, unanswered_messages, initiator_name,"
            " recipient_name FROM conversations WHERE id = :id"
        ),
        {"id": conversation},
    ).one()
    assert tuple(row) == (49, "initiator", 1, "Bee", "Sam")
    assert [body for _, _, body in stored(session, conversation)][1:] == [i["body"] for i in items]
    assert counts(session, conversation) == (49, 49, 49)


ODD_BODIES = [
    "NULL",
    "null",
    "",  # replaced below: an empty body is refused by the schema
    '{"a", "b"}',
    "back\\slash \\N",
    "  spaced  ",
    'comma, {brace} and "quote"',
    "line one\nline two\r\nthree",
    "émoji 👋🏽 and RTL \u05e9\u05dc\u05d5\u05dd",
    "x" * 4000,
]


def test_odd_bodies_and_names_are_stored_as_sent(client, session, advertiser, conversations):
    """The batch's words go through arrays: what an array literal treats specially (NULL,
    braces, quotes, backslashes, spaces) stays the member's words."""
    first, second, _ = conversations
    bodies = [body for body in ODD_BODIES if body]
    items = [item(first if n % 2 else second, body=body) for n, body in enumerate(bodies)]
    items[0]["name"] = "NULL"
    items[1]["name"] = '"{Luc}"'
    answer = batch(client, advertiser, items)
    assert answer.status_code == 200, answer.json
    assert [r["status"] for r in answer.json["results"]] == ["created"] * len(bodies)
    written = {
        body for conversation in (first, second) for _, _, body in stored(session, conversation)
    }
    assert set(bodies) <= written
    names = dict(
        session.execute(
            text("SELECT id::text, recipient_name FROM conversations WHERE id IN (:a, :b)"),
            {"a": first, "b": second},
        ).all()
    )
    assert names == {second: "NULL", first: '"{Luc}"'}


def test_a_full_batch_is_delivered_in_its_order(client, session, advertiser, writer_portal):
    """A hundred items across conversations and openings: the writers' inbox shows them
    in the batch's order."""
    ads = [publish(client, advertiser, f"ad-{n}") for n in range(10)]
    opened = batch(
        client,
        writer_portal,
        [opening(ad, member=f"m-w-{n}", body=f"Open {n}") for n, ad in enumerate(ads)],
    ).json["results"]
    conversation_ids = [r["conversation"]["id"] for r in opened]
    items = [item(conversation_ids[(n * 7) % 10], body=f"Reply {n}") for n in range(MAX_ITEMS)]
    answer = batch(client, advertiser, items)
    assert answer.status_code == 200, answer.json
    assert [r["status"] for r in answer.json["results"]] == ["created"] * MAX_ITEMS
    inbox = client.get("/v1/inbox?limit=500", headers=writer_portal.headers).json["events"]
    assert [e["data"]["message"]["body"] for e in inbox] == [i["body"] for i in items]


MAX_ITEMS = 100


def test_two_keys_lost_to_two_racing_requests_refuse_only_their_items(
    app, wiring, advertiser, conversations
):
    first, second, third = conversations
    with (
        key_taken(wiring, advertiser, first, ADVERTISER, key="k-1"),
        key_taken(wiring, advertiser, third, ADVERTISER, key="k-2"),
    ):
        batch_answer = send_aside(
            wiring,
            lambda: batch(
                app.test_client(),
                advertiser,
                [
                    item(second, body="A"),
                    item(second, body="Lost 1", idempotency_key="k-1"),
                    item(second, body="B", idempotency_key="b"),
                    item(second, body="Lost 2", idempotency_key="k-2"),
                    item(second, body="C"),
                ],
            ),
            what="the batch's insert under a taken key",
        )

    answer = batch_answer()
    assert answer.status_code == 200, answer.json
    results = answer.json["results"]
    assert [r["error"] for r in results] == [
        None,
        "idempotency_key_reused",
        None,
        "idempotency_key_reused",
        None,
    ]
    assert [results[i]["message"]["seq"] for i in (0, 2, 4)] == [2, 3, 4]
    with unit_of_work(wiring.session_factory) as session:
        assert [body for _, _, body in stored(session, second)][1:] == ["A", "B", "C"]
        assert counts(session, second) == (4, 4, 4)
        assert counts(session, first) == (2, 2, 2)
        assert counts(session, third) == (2, 2, 2)


def test_a_batch_wakes_the_workers_once_committed(app, wiring, advertiser, conversations):
    first, second, _ = conversations
    with psycopg.connect(libpq_url(wiring.settings.database_url), autocommit=True) as listener:
        listener.execute(f"LISTEN {deliveries.NOTIFY_CHANNEL}")
        answer = batch(app.test_client(), advertiser, [item(first), item(second)])
        assert answer.status_code == 200, answer.json
        woken = list(listener.notifies(timeout=10, stop_after=1))
    assert [n.channel for n in woken] == [deliveries.NOTIFY_CHANNEL]


def test_a_name_set_by_a_message_that_lost_its_key_is_not_kept(
    app, wiring, advertiser, conversations
):
    first, second, _ = conversations
    with key_taken(wiring, advertiser, first, ADVERTISER):
        batch_answer = send_aside(
            wiring,
            lambda: batch(
                app.test_client(),
                advertiser,
                [
                    item(second, body="Lost", name="Lost name", idempotency_key="k"),
                    item(second, body="Kept"),
                ],
            ),
            what="the batch's insert under the same key",
        )

    results = batch_answer().json["results"]
    assert [r["error"] for r in results] == ["idempotency_key_reused", None]
    assert results[1]["conversation"]["recipient"]["name"] is None
    with unit_of_work(wiring.session_factory) as session:
        assert (
            session.scalar(
                text("SELECT recipient_name FROM conversations WHERE id = :id"), {"id": second}
            )
            is None
        )


def test_an_opening_that_lost_its_key_does_not_count_against_the_next(
    strict_client, client, wiring, advertiser, writer_portal, conversations
):
    """A member may open 2 conversations an hour (strict_client). The first of three
    openings loses its key to a racing request: it opens nothing, so the third, the
    member's second, opens one, as it would sent alone after the first was refused; it
    is not refused as if the lost one had opened its conversation."""
    ads = [publish(client, writer_portal, f"w-{n}", member=f"m-seller-{n}") for n in range(3)]
    with key_taken(wiring, advertiser, conversations[0], ADVERTISER):
        batch_answer = send_aside(
            wiring,
            lambda: batch(
                strict_client,
                advertiser,
                [opening(ads[0], member="m-opener", idempotency_key="k")]
                + [opening(ad, member="m-opener") for ad in ads[1:]],
            ),
            what="the batch's insert under the same key",
        )

    results = batch_answer().json["results"]
    assert [(r["status"], r["error"]) for r in results] == [
        ("rejected", "idempotency_key_reused"),
        ("created", None),
        ("created", None),
    ]
    with unit_of_work(wiring.session_factory) as session:
        assert conversations_of(session, "m-opener") == 2


def test_openings_among_replies_are_written_with_them_in_their_order(
    client, session, wiring, advertiser, writer_portal, conversations
):
    """An opening between messages in conversations: its first message goes in with the
    others, in one statement, and the advertiser's portal receives them in the batch's
    order."""
    ad_id = publish(client, advertiser, "another")
    items = [
        item(conversations[0], member="m-writer-0", body="First"),
        opening(ad_id, member="m-new", body="Second"),
        item(conversations[1], member="m-writer-1", body="Third"),
        opening(ad_id, member="m-newer", body="Fourth"),
    ]
    inserts = []

    def count_inserts(connection, cursor, statement, *args):
        if "INSERT INTO messages" in statement:
            inserts.append(statement)

    event.listen(wiring.engine, "before_cursor_execute", count_inserts)
    try:
        answer = batch(client, writer_portal, items)
    finally:
        event.remove(wiring.engine, "before_cursor_execute", count_inserts)

    assert [r["status"] for r in answer.json["results"]] == ["created"] * 4
    assert len(inserts) == 1
    assert [r["message"]["seq"] for r in answer.json["results"]] == [2, 1, 2, 1]
    inbox = client.get("/v1/inbox?limit=50", headers=advertiser.headers).json["events"]
    bodies = [e["data"]["message"]["body"] for e in inbox]
    assert bodies[-4:] == ["First", "Second", "Third", "Fourth"]
    assert conversations_of(session, "m-new") == conversations_of(session, "m-newer") == 1
