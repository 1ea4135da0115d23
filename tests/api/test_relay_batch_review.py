"""Batch openings under review: races with the ads' writers and with other batches, and
what a batch answers and leaves behind, as a single contact would."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from directory.db import unit_of_work
from directory.services import portals, relay
from tests.api.test_relay import LIMITS, contact, publish
from tests.api.test_relay_batch import batch, conversations_of, item, opening
from tests.factories import ad_payload


@pytest.fixture
def conversations(client, advertiser, writer_portal) -> list[str]:
    """Three conversations with the advertiser, about three of its ads, by m-writer-0, 1
    and 2 (as tests/api/test_relay_batch.py's)."""
    opened = []
    for number in range(3):
        ad_id = publish(client, advertiser, f"ad-{number}")
        answer = contact(client, writer_portal, ad_id, member=f"m-writer-{number}")
        assert answer.status_code == 201, answer.json
        opened.append(answer.json["conversation"]["id"])
    return opened


def waiting_sessions(wiring) -> int:
    with wiring.engine.connect() as connection:
        return connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )


def send_aside_waiting(wiring, request, *, what: str, waiting: int):
    """As tests.waits.send_aside, but returns once `waiting` sessions wait on a lock: this
    request's wait comes on top of those already waiting."""
    answers = []
    thread = threading.Thread(target=lambda: answers.append(request()))
    thread.start()
    deadline = time.monotonic() + 10
    while waiting_sessions(wiring) < waiting:
        assert time.monotonic() < deadline, f"{what} never waited on a lock"
        time.sleep(0.01)

    def answer():
        thread.join(30)
        assert answers, f"{what} never answered"
        return answers[0]

    return answer


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
        replace = send_aside_waiting(
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
        batch_answer = send_aside_waiting(
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
    """As send_aside_waiting, but returns as well once the request has answered: it need
    not wait."""
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
        one = send_aside_waiting(
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
