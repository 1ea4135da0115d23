"""Batch openings under review: races with the ads' writers and with other batches, and
what a batch answers and leaves behind, as a single contact would."""

from __future__ import annotations

import threading
import time
import uuid

from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from directory.db import unit_of_work
from directory.models import PortalStatus
from directory.services import closing, portals, relay
from tests.api.test_relay import ADVERTISER, LIMITS, WRITER, contact, publish, suspend
from tests.api.test_relay_batch import batch, conversations_of, item, opening
from tests.apps import app_with
from tests.factories import ad_payload
from tests.waits import send_aside


def waiting_sessions(wiring) -> int:
    """How many sessions of the test database wait on a lock now."""
    with wiring.engine.connect() as connection:
        return connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )


def holds_a_row_lock(wiring, ad_id: str) -> bool:
    """Whether a transaction holds a lock on the ad's row that a key share waits for (a
    delete under way)."""
    with unit_of_work(wiring.session_factory) as other:
        try:
            other.execute(
                text("SELECT 1 FROM ads WHERE id = :id FOR KEY SHARE NOWAIT"), {"id": ad_id}
            )
        except OperationalError:
            return True
    return False


def holds_a_conversation(wiring, conversation_id: str) -> bool:
    """Whether a transaction holds a lock on the conversation's row."""
    with unit_of_work(wiring.session_factory) as other:
        try:
            other.execute(
                text("SELECT 1 FROM conversations WHERE id = :id FOR UPDATE NOWAIT"),
                {"id": conversation_id},
            )
        except OperationalError:
            return True
    return False


# --- deadlocks ---------------------------------------------------------------------------


def test_a_batch_opening_two_ads_and_a_replace_deleting_them_wait_in_no_circle(
    app, wiring, advertiser, writer_portal
):
    """A replace deletes the ads it is not given in the order it finds them (here, as
    they were stored: ad-n, then ad-a), not by external id as the batch locks them: the
    batch must not hold ad-a while it waits for ad-n, which the replace holds while it
    waits for ad-a."""
    client = app.test_client()
    later = publish(client, advertiser, "ad-n")  # stored first: the replace meets it first
    first = publish(client, advertiser, "ad-a")
    publish(client, advertiser, "ad-keep")
    with wiring.engine.connect() as connection:
        # The portal holds every ad: its deletion reads the table through, as stored.
        connection.execute(text("ANALYZE ads"))
    with unit_of_work(wiring.session_factory) as holder:
        # Holds the replace at ad-a once it has deleted ad-n; a batch may still lock it.
        holder.execute(text("SELECT 1 FROM ads WHERE id = :id FOR KEY SHARE"), {"id": first})
        replace = send_aside(
            wiring,
            lambda: app.test_client().post(
                "/v1/ads/batch",
                json={"replace": True, "items": [{"external_id": "ad-keep", "ad": ad_payload()}]},
                headers=advertiser.headers,
            ),
            what="the replace",
            waiting=1,
        )
        assert holds_a_row_lock(wiring, later), "the replace was to delete ad-n first"
        batch_answer = send_aside(
            wiring,
            lambda: batch(
                app.test_client(),
                writer_portal,
                [opening(first, member="m-anna"), opening(later, member="m-ben")],
            ),
            what="the batch",
            waiting=2,
        )
    replaced, sent = replace(), batch_answer()
    assert replaced.status_code == 200, replaced.json
    assert replaced.json["deleted_by_replace"] == 2
    assert sent.status_code == 200, sent.json
    assert [r["error"] for r in sent.json["results"]] == ["ad_not_found", "ad_not_found"]


def send_aside_until_waiting(wiring, request, *, what: str, waiting: int):
    """As tests.waits.send_aside with `waiting`, but returns as well once the request has
    answered: it need not wait."""
    answers = []
    thread = threading.Thread(target=lambda: answers.append(request()))
    thread.start()
    deadline = time.monotonic() + 10
    while thread.is_alive() and waiting_sessions(wiring) < waiting:
        assert time.monotonic() < deadline, f"{what} neither answered nor waited on a lock"
        time.sleep(0.01)

    def answer():
        thread.join(30)
        assert answers, f"{what} never answered"
        return answers[0]

    return answer


def test_two_batches_using_the_same_keys_in_another_order_wait_in_no_circle(
    app, wiring, advertiser, writer_portal, conversations
):
    """A key is the portal's: two batches that use the same two keys (for other messages)
    in opposite orders must not each hold one while waiting for the other, which would
    refuse one of them whole (503) where each item deserves its own answer."""
    client = app.test_client()
    ad_x = publish(client, advertiser, "ad-x")
    ad_y = publish(client, advertiser, "ad-y", member="m-other-owner")
    first, second, third = conversations
    with unit_of_work(wiring.session_factory) as holder:
        # Holds the first batch between its first key and its last.
        relay.post_message(
            holder,
            sender=portals.authenticate(holder, key=writer_portal.key),
            conversation_id=uuid.UUID(third),
            member="m-writer-2",
            name=None,
            body="Held",
            idempotency_key="k-held",
            limits=LIMITS,
        )
        one = send_aside(
            wiring,
            lambda: batch(
                app.test_client(),
                writer_portal,
                [
                    opening(ad_x, member="m-anna", idempotency_key="k1"),
                    item(first, member="m-writer-0", idempotency_key="k-held"),
                    item(first, member="m-writer-0", body="Then", idempotency_key="k2"),
                ],
            ),
            what="the first batch",
            waiting=1,
        )
        other = send_aside_until_waiting(
            wiring,
            lambda: batch(
                app.test_client(),
                writer_portal,
                [
                    item(second, member="m-writer-1", idempotency_key="k2"),
                    opening(ad_y, member="m-ben", idempotency_key="k1"),
                ],
            ),
            what="the other batch",
            waiting=2,
        )
    answers = [one(), other()]
    assert [answer.status_code for answer in answers] == [200, 200], [a.json for a in answers]
    statuses = [[(r["status"], r["error"]) for r in a.json["results"]] for a in answers]
    created, reused = ("created", None), ("rejected", "idempotency_key_reused")
    assert statuses == [[created, reused, created], [reused, reused]]
    with unit_of_work(wiring.session_factory) as session:
        assert conversations_of(session, "m-anna") == 1
        assert conversations_of(session, "m-ben") == 0


def test_openings_of_one_ad_by_two_communities_do_not_wait_for_each_other(
    app, wiring, make_portal, advertiser, writer_portal
):
    """An opening keeps its ad from being deleted (a key share), no more: a batch opening
    a popular ad must not hold every other community's contact of it until it ends."""
    ad_id = publish(app.test_client(), advertiser)
    third_portal = make_portal(slug="sel-paris", name="SEL de Paris")
    with unit_of_work(wiring.session_factory) as batch_transaction:
        sent = relay.post_messages(
            batch_transaction,
            sender=portals.authenticate(batch_transaction, key=writer_portal.key),
            messages=[
                relay.Opening(uuid.UUID(ad_id), "m-anna", "Anna", "Hello", None),
                relay.Opening(uuid.UUID(ad_id), "m-ben", "Ben", "Hello", None),
            ],
            limits=LIMITS,
        )
        assert [outcome.created for outcome in sent] == [True, True]
        other = send_aside_until_waiting(
            wiring,
            lambda: contact(app.test_client(), third_portal, ad_id, member="m-chloe"),
            what="the other community's contact",
            waiting=1,
        )
        assert waiting_sessions(wiring) == 0, "the contact waited for the batch"
    assert other().status_code == 201


# --- as a single contact would ---------------------------------------------------------------


def fields_of(errors: dict) -> set[str]:
    """The field names of an error envelope's `errors` (by location, then field) or of a
    batch item's (by field; _schema where the envelope names none)."""
    if errors and all(isinstance(value, dict) for value in errors.values()):
        return {name for by_field in errors.values() for name in by_field}
    return set(errors or {}) - {"_schema"}


def test_each_refused_opening_is_refused_as_a_single_contact_of_it_is(
    client, wiring, make_portal, advertiser, writer_portal
):
    expired = publish(client, advertiser, "expired")
    client.post("/v1/ads/expired/expire", headers=advertiser.headers)
    portal_only = publish(client, advertiser, "portal-only", visibility="portal")
    silent = publish(client, advertiser, "silent", accepts_contact=False)
    own = publish(client, writer_portal, "own", member="m-own")
    suspended_portal = make_portal(slug="sel-nantes", name="SEL de Nantes")
    of_suspended = publish(client, suspended_portal, "theirs")
    with unit_of_work(wiring.session_factory) as session:
        portals.set_status(
            session, portal_slug=suspended_portal.slug, status=PortalStatus.SUSPENDED
        )
    blocking_portal = make_portal(slug="sel-lille", name="SEL de Lille")
    of_blocking = publish(client, blocking_portal, "theirs")
    client.put(
        f"/v1/portals/me/blocked-portals/{writer_portal.slug}", headers=blocking_portal.headers
    )
    blocked_with = publish(client, advertiser, "blocked-with")
    conversation = contact(client, writer_portal, blocked_with, member="m-blocked").json
    client.post(
        f"/v1/conversations/{conversation['conversation']['id']}/block",
        json={"member": ADVERTISER},
        headers=advertiser.headers,
    )
    another_of_theirs = publish(client, advertiser, "another")
    refused = [
        (str(uuid.uuid4()), "m-1"),
        (expired, "m-2"),
        (portal_only, "m-3"),
        (silent, "m-4"),
        (own, "m-own"),
        (of_suspended, "m-5"),
        (of_blocking, "m-6"),
        (another_of_theirs, "m-blocked"),
    ]
    answer = batch(client, writer_portal, [opening(ad, member=member) for ad, member in refused])
    assert answer.status_code == 200, answer.json
    in_batch = [(r["status"], r["error"], fields_of(r["errors"])) for r in answer.json["results"]]
    alone = []
    for ad, member in refused:
        single = contact(client, writer_portal, ad, member=member)
        alone.append(("rejected", single.json["error"], fields_of(single.json.get("errors"))))
    assert in_batch == alone
    assert [error for _, error, _ in in_batch] == [
        "ad_not_found",
        "ad_not_found",
        "ad_not_found",
        "contact_disabled",
        "invalid_input",
        "ad_not_found",
        "community_blocked",
        "blocked_by_advertiser",
    ]
    with unit_of_work(wiring.session_factory) as session:
        assert session.scalar(text("SELECT count(*) FROM conversations")) == 1


def test_an_opening_is_replayed_across_a_single_contact_and_a_batch_item(
    client, wiring, advertiser, writer_portal
):
    ad_id, other_ad = publish(client, advertiser), publish(client, advertiser, "ad-2")
    single = contact(client, writer_portal, ad_id, idempotency_key="c-1")
    in_batch = batch(
        client,
        writer_portal,
        [
            opening(other_ad, member="m-ben", idempotency_key="c-2"),
            opening(ad_id, idempotency_key="c-1"),  # the single contact, sent again
            opening(other_ad, idempotency_key="c-1"),  # its key, another ad
            opening(ad_id, name="Annie", idempotency_key="c-1"),  # its key, another name
        ],
    ).json["results"]
    assert [(r["status"], r["error"]) for r in in_batch] == [
        ("created", None),
        ("sent_before", None),
        ("rejected", "idempotency_key_reused"),
        ("rejected", "idempotency_key_reused"),
    ]
    assert in_batch[1]["conversation"]["id"] == single.json["conversation"]["id"]
    assert in_batch[1]["message"]["id"] == single.json["message"]["id"]
    again = contact(client, writer_portal, other_ad, member="m-ben", idempotency_key="c-2")
    assert again.status_code == 200, again.json
    assert again.json["message"]["id"] == in_batch[0]["message"]["id"]
    with unit_of_work(wiring.session_factory) as session:
        assert conversations_of(session, WRITER) == 1
        assert conversations_of(session, "m-ben") == 1


def test_the_limit_with_one_advertiser_counts_within_the_batch(
    migrated, client, wiring, advertiser, writer_portal
):
    ads = [publish(client, advertiser, f"ad-{number}") for number in range(3)]
    elsewhere = publish(client, advertiser, "elsewhere", member="m-other-owner")
    with app_with(migrated, relay_conversations_with_one_member_per_hour=2) as strict:
        answer = batch(
            strict.test_client(),
            writer_portal,
            [opening(ad, member=f"m-{number}") for number, ad in enumerate(ads)]
            + [opening(elsewhere, member="m-3")],
        )
    results = answer.json["results"]
    assert [(r["status"], r["error"]) for r in results] == [
        ("created", None),
        ("created", None),
        ("rejected", "too_many_conversations"),
        ("created", None),
    ]
    assert "with this advertiser" in results[2]["errors"]["_schema"][0]
    assert 3500 < results[2]["retry_after_s"] <= 3601
    with unit_of_work(wiring.session_factory) as session:
        assert conversations_of(session, "m-2") == 0


def test_a_batch_and_the_erasure_of_an_advertiser_of_many_ads_wait_in_no_circle(
    app, wiring, advertiser, writer_portal
):
    """An erasure deletes a member's ads a write of 1,000 at a time, each write's
    conversations locked as its ads go: a batch that opens a conversation about an ad of
    a later write, and writes in one about an ad of an earlier one, must not hold the
    first while it waits for the second."""
    client = app.test_client()
    ads = [f"ad-{number:04}" for number in range(1001)]
    for start in (0, 1000):
        written = client.post(
            "/v1/ads/batch",
            json={
                "items": [
                    {"external_id": ad, "ad": ad_payload(member=ADVERTISER)}
                    for ad in ads[start : start + 1000]
                ]
            },
            headers=advertiser.headers,
        )
        assert written.status_code == 200, written.json
    with unit_of_work(wiring.session_factory) as session:
        ids = dict(session.execute(text("SELECT external_id, id FROM ads")).all())
    early, late = str(ids[ads[0]]), str(ids[ads[-1]])
    conversation = contact(client, writer_portal, early).json["conversation"]["id"]
    with unit_of_work(wiring.session_factory) as holder:
        # Holds the erasure at the late ad, once it has deleted the first 1,000.
        holder.execute(text("SELECT 1 FROM ads WHERE id = :id FOR KEY SHARE"), {"id": late})
        erasure = send_aside(
            wiring,
            lambda: app.test_client().post(
                "/v1/portals/me/member-erasures",
                json={"member": ADVERTISER},
                headers=advertiser.headers,
            ),
            what="the erasure",
            waiting=1,
        )
        assert holds_a_conversation(wiring, conversation), "the early ad was to go first"
        batch_answer = send_aside(
            wiring,
            lambda: batch(
                app.test_client(),
                writer_portal,
                [opening(late, member="m-anna"), item(conversation, member=WRITER)],
            ),
            what="the batch",
            waiting=2,
        )
    erased, sent = erasure(), batch_answer()
    assert erased.status_code == 200, erased.json
    assert erased.json["ads_deleted"] == 1001
    assert sent.status_code == 200, sent.json
    assert [r["error"] for r in sent.json["results"]] == ["ad_not_found", "party_erased"]


def test_a_batch_writing_in_conversations_about_many_ads_of_an_erased_advertiser(
    app, wiring, make_portal, advertiser, writer_portal
):
    """The erasure of an advertiser of more than 1,000 ads deletes them a write at a time,
    and each ad deleted locks its conversations: a batch writing in conversations about
    ads of two of those writes deadlocked with it (answered 503) until the erasure locked
    the member's conversations first, in the relay's order."""
    client = app.test_client()
    ads = [f"ad-{number:04}" for number in range(1010)]
    for start in (0, 1000):
        items = [
            {"external_id": ad, "ad": ad_payload(member=ADVERTISER)}
            for ad in ads[start : start + 1000]
        ]
        written = client.post("/v1/ads/batch", json={"items": items}, headers=advertiser.headers)
        assert written.status_code == 200, written.json
    with unit_of_work(wiring.session_factory) as session:
        ids = {
            key: str(value)
            for key, value in session.execute(text("SELECT external_id, id FROM ads"))
        }
    # A conversation about an ad of the second write with a lower id than one about an ad
    # of the first: the batch locks it first.
    early, late = [], []
    for number in range(10):
        for ad, opened in ((ads[number], early), (ads[1000 + number], late)):
            answer = contact(client, writer_portal, ids[ad], member=f"m-{ad}")
            opened.append((answer.json["conversation"]["id"], f"m-{ad}"))
    pair = next(
        (
            (first, second)
            for first in early
            for second in late
            if uuid.UUID(second[0]) < uuid.UUID(first[0])
        ),
        None,
    )
    assert pair is not None
    (early_conversation, early_member), (late_conversation, late_member) = pair
    elsewhere = publish(client, make_portal(slug="sel-paris", name="SEL de Paris"))
    with unit_of_work(wiring.session_factory) as holder:
        # Holds the erasure at the second write, once the first has gone.
        holder.execute(
            text("SELECT 1 FROM ads WHERE id = :id FOR KEY SHARE"), {"id": ids[ads[1000]]}
        )
        erasure = send_aside(
            wiring,
            lambda: app.test_client().post(
                "/v1/portals/me/member-erasures",
                json={"member": ADVERTISER},
                headers=advertiser.headers,
            ),
            what="the erasure",
            waiting=1,
        )
        # Every conversation of the member's, in id order, before any of its ads went:
        # the batch below waits for the first it needs and holds none after it.
        assert holds_a_conversation(wiring, early_conversation)
        assert holds_a_conversation(wiring, late_conversation)
        batch_answer = send_aside(
            wiring,
            lambda: batch(
                app.test_client(),
                writer_portal,
                [
                    opening(elsewhere, member="m-anna"),
                    item(late_conversation, member=late_member),
                    item(early_conversation, member=early_member),
                ],
            ),
            what="the batch",
            waiting=2,
        )
    erased, sent = erasure(), batch_answer()
    assert erased.status_code == 200, erased.json
    assert sent.status_code == 200, sent.json
    assert [r["error"] for r in sent.json["results"]] == [None, "party_erased", "party_erased"]


def test_a_closing_locks_the_portals_conversations_before_its_ads_go(
    app, wiring, advertiser, writer_portal
):
    """As an erasure does: a batch writing in two conversations about the closing portal's
    ads waits for the first it needs, holding none after it, instead of deadlocking with
    the deletes of the ads."""
    client = app.test_client()
    opened = []
    for number in range(2):
        ad_id = publish(client, advertiser, f"ad-{number}")
        answer = contact(client, writer_portal, ad_id, member=f"m-{number}")
        opened.append(answer.json["conversation"]["id"])
    suspend(wiring, advertiser)
    with unit_of_work(wiring.session_factory) as holder:
        # Holds the closing at its first ad, its conversations locked by then.
        holder.execute(
            text("SELECT 1 FROM ads WHERE portal_id = :id FOR KEY SHARE"), {"id": advertiser.id}
        )

        def close():
            with unit_of_work(wiring.session_factory) as session:
                return closing.close_portal(
                    session, portal_slug=advertiser.slug, lifetimes=wiring.lifetimes
                )

        closed = send_aside(wiring, close, what="the closing", waiting=1)
        assert all(holds_a_conversation(wiring, conversation) for conversation in opened)
    assert closed().conversations_ended == 2
