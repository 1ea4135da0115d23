"""The worker's housekeeping (services/housekeeping.py, worker.housekeeping): finished
sync sessions' staged items go in bounded batches, and several workers at once neither
wait on one another nor keep the relay's retention from running."""

from __future__ import annotations

import dataclasses
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text, update

from directory import build_wiring
from directory.db import unit_of_work
from directory.models import Delivery, DeliveryState, Message, SyncSession, SyncSessionItem
from directory.services import relay
from directory.services.housekeeping import HousekeepingReport, close_stale_sync_sessions
from directory.services.portals import AuthenticatedPortal
from directory.worker import housekeeping
from tests.factories import ad_payload


def staged_session(client, portal, external_ids) -> str:
    """A sync session of `portal` with `external_ids` staged, then aborted."""
    session_id = client.post("/v1/sync-sessions", headers=portal.headers).json["id"]
    items = [{"external_id": external_id, "ad": ad_payload()} for external_id in external_ids]
    staged = client.post(
        f"/v1/sync-sessions/{session_id}/items", json={"items": items}, headers=portal.headers
    )
    assert staged.status_code == 200, staged.json
    return session_id


def waits_on_a_lock(wiring) -> bool:
    with wiring.engine.connect() as connection:
        return bool(
            connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
        )


def items_left(wiring) -> int:
    with unit_of_work(wiring.session_factory) as session:
        return session.scalar(select(func.count()).select_from(SyncSessionItem))


def test_finished_sessions_items_go_a_batch_a_call(client, wiring, portal):
    # Each resync leaves up to sync_session_max_items to purge, and a worker away for a
    # while finds many sessions' worth: deleted in one statement, they outlasted the
    # statement timeout, and the purge (and all housekeeping after it) failed every round.
    staged_session(client, portal, [f"ad-{n}" for n in range(5)])
    session_id = staged_session(client, portal, ["expired-1"])
    with unit_of_work(wiring.session_factory) as session:
        session.execute(
            update(SyncSession)
            .where(SyncSession.id == session_id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        session.execute(
            update(SyncSession).where(SyncSession.id != session_id).values(status="committed")
        )
    with unit_of_work(wiring.session_factory) as session:
        first = close_stale_sync_sessions(session, limit=2)
    assert first == HousekeepingReport(expired_sync_sessions=1, purged_sync_items=2, more=True)
    assert items_left(wiring) == 4
    reports = []
    while not reports or reports[-1].more:
        with unit_of_work(wiring.session_factory) as session:
            reports.append(close_stale_sync_sessions(session, limit=2))
    assert sum(report.purged_sync_items for report in reports) == 4
    assert items_left(wiring) == 0


def test_items_another_worker_is_purging_are_left_to_it_and_the_retention_still_runs(
    client, migrated, wiring, portal, make_portal
):
    # Two workers' housekeeping at once: the second waited on the first's delete of the
    # same items, past the statement timeout, and its round failed before the relay's
    # retention and the failing of overdue deliveries.
    held = staged_session(client, portal, ["held-1", "held-2"])
    free = staged_session(client, portal, ["free-1"])
    with unit_of_work(wiring.session_factory) as session:
        session.execute(update(SyncSession).values(status="aborted"))
    writer = make_portal(slug="bristol")
    ad = client.put("/v1/ads/ad-1", json=ad_payload(member="m-owner"), headers=portal.headers)
    sent = client.post(
        f"/v1/ads/{ad.json['id']}/contact",
        json={"member": "m-writer", "name": "Anna", "body": "Hello"},
        headers=writer.headers,
    )
    assert sent.status_code == 201, sent.json
    long_ago = datetime.now(UTC) - timedelta(days=400)
    with unit_of_work(wiring.session_factory) as session:
        session.execute(update(Message).values(created_at=long_ago))
        session.execute(text("UPDATE conversations SET last_message_at = :at"), {"at": long_ago})
        session.execute(text("UPDATE deliveries SET state = 'failed'"))
    worker_wiring = build_wiring(dataclasses.replace(migrated, db_statement_timeout_ms=300))
    try:
        with unit_of_work(wiring.session_factory) as other_worker:
            other_worker.execute(
                text("DELETE FROM sync_session_items WHERE session_id = :id"), {"id": held}
            )
            housekeeping(worker_wiring)
            with unit_of_work(wiring.session_factory) as session:
                left = session.execute(
                    select(SyncSessionItem.session_id).where(SyncSessionItem.session_id == free)
                ).all()
                messages = session.scalar(select(func.count()).select_from(Message))
            assert (left, messages) == ([], 0)
    finally:
        worker_wiring.close()
    assert items_left(wiring) == 0


@pytest.mark.parametrize("blocked", ["today", "long ago"])
def test_a_block_outlives_the_retention_of_its_conversations_messages(
    client, wiring, portal, make_portal, blocked
):
    # The block is the conversation's: purged with its last message (at once, when that
    # was older than the retention, however recent the block), it let the member the
    # advertiser had blocked open a new conversation with them, under a new alias.
    writer = make_portal(slug="bristol")
    ad = client.put("/v1/ads/ad-1", json=ad_payload(member="m-owner"), headers=portal.headers)
    contact = {"member": "m-writer", "name": "Anna", "body": "Hello"}
    opened = client.post(f"/v1/ads/{ad.json['id']}/contact", json=contact, headers=writer.headers)
    conversation_id = opened.json["conversation"]["id"]
    blocked_ = client.post(
        f"/v1/conversations/{conversation_id}/block",
        json={"member": "m-owner"},
        headers=portal.headers,
    )
    assert blocked_.status_code == 200, blocked_.json
    long_ago = datetime.now(UTC) - timedelta(days=400)
    with unit_of_work(wiring.session_factory) as session:
        session.execute(update(Message).values(created_at=long_ago))
        session.execute(text("UPDATE conversations SET last_message_at = :at"), {"at": long_ago})
        if blocked == "long ago":
            session.execute(text("UPDATE conversations SET blocked_at = :at"), {"at": long_ago})
        session.execute(text("UPDATE deliveries SET state = 'failed'"))

    housekeeping(wiring)

    with unit_of_work(wiring.session_factory) as session:
        assert session.scalar(select(func.count()).select_from(Message)) == 0
    again = client.post(f"/v1/ads/{ad.json['id']}/contact", json=contact, headers=writer.headers)
    assert (again.status_code, again.json.get("error")) == (409, "blocked_by_advertiser")


def test_a_blocked_conversation_goes_once_a_party_is_erased(client, wiring, portal, make_portal):
    writer = make_portal(slug="bristol")
    ad = client.put("/v1/ads/ad-1", json=ad_payload(member="m-owner"), headers=portal.headers)
    contact = {"member": "m-writer", "name": "Anna", "body": "Hello"}
    opened = client.post(f"/v1/ads/{ad.json['id']}/contact", json=contact, headers=writer.headers)
    conversation_id = opened.json["conversation"]["id"]
    client.post(
        f"/v1/conversations/{conversation_id}/block",
        json={"member": "m-owner"},
        headers=portal.headers,
    )
    erased = client.post(
        "/v1/portals/me/member-erasures", json={"member": "m-writer"}, headers=writer.headers
    )
    assert erased.status_code in (200, 201, 202), erased.json
    long_ago = datetime.now(UTC) - timedelta(days=400)
    with unit_of_work(wiring.session_factory) as session:
        session.execute(
            text("UPDATE conversations SET last_message_at = :at, blocked_at = :at"),
            {"at": long_ago},
        )
        session.execute(text("UPDATE deliveries SET state = 'failed'"))

    housekeeping(wiring)

    gone = client.get(f"/v1/conversations/{conversation_id}", headers=portal.headers)
    assert gone.status_code == 404


def test_a_message_written_while_its_conversation_is_purged_is_kept_with_it(
    client, wiring, portal, make_portal
):
    # The purge chose the conversation as emptied (its year-old message just deleted)
    # before a reply committed in it, waited on the reply's lock, then deleted it all the
    # same: the reply, answered 201 and never delivered, went with it.
    writer = make_portal(slug="bristol")
    ad = client.put("/v1/ads/ad-1", json=ad_payload(member="m-owner"), headers=portal.headers)
    contact = {"member": "m-writer", "name": "Anna", "body": "Hello"}
    opened = client.post(f"/v1/ads/{ad.json['id']}/contact", json=contact, headers=writer.headers)
    conversation_id = uuid.UUID(opened.json["conversation"]["id"])
    long_ago = datetime.now(UTC) - timedelta(days=400)
    with unit_of_work(wiring.session_factory) as session:
        session.execute(update(Message).values(created_at=long_ago))
        session.execute(text("UPDATE conversations SET last_message_at = :at"), {"at": long_ago})
        session.execute(text("UPDATE deliveries SET state = 'failed'"))

    def purge() -> relay.PurgeReport:
        with unit_of_work(wiring.session_factory) as session:
            return relay.purge_old_messages(session, retention=timedelta(days=365))

    with unit_of_work(wiring.session_factory) as replying:
        reply = relay.post_message(
            replying,
            sender=AuthenticatedPortal(id=portal.id, slug=portal.slug),
            conversation_id=conversation_id,
            member="m-owner",
            name="Odile",
            body="Sorry for the late answer",
            idempotency_key=None,
            limits=wiring.relay_limits,
        )
        # The purge runs while the reply is being written: it passes the conversation
        # over, or (as it did) waits on it.
        purging = ThreadPoolExecutor(1)
        purged = purging.submit(purge)
        while not purged.done() and not waits_on_a_lock(wiring):
            time.sleep(0.01)
    assert purged.result(timeout=30).messages == 1  # the year-old one
    purging.shutdown()

    with unit_of_work(wiring.session_factory) as session:
        kept = session.execute(select(Message.id, Message.body)).all()
        delivery = session.scalar(
            select(Delivery.state).where(Delivery.message_id == reply.message_id)
        )
    assert [tuple(row) for row in kept] == [(reply.message_id, "Sorry for the late answer")]
    assert delivery is DeliveryState.PENDING


def test_a_session_finished_a_month_ago_goes_and_a_recent_one_stays(client, wiring, portal):
    # Every resync left its row for good, with its answer (up to one error per rejected
    # ad): a portal resyncing hourly stored thousands a year, megabytes each.
    old, recent = (staged_session(client, portal, [f"ad-{n}"]) for n in range(2))
    for session_id in (old, recent):
        committed = client.post(
            f"/v1/sync-sessions/{session_id}/commit",
            json={"delete_all": True},
            headers=portal.headers,
        )
        assert committed.status_code == 200, committed.json
    with unit_of_work(wiring.session_factory) as session:
        for session_id, days in ((old, 31), (recent, 29)):
            session.execute(
                update(SyncSession)
                .where(SyncSession.id == session_id)
                .values(finished_at=datetime.now(UTC) - timedelta(days=days))
            )

    housekeeping(wiring)

    assert client.get(f"/v1/sync-sessions/{old}", headers=portal.headers).status_code == 404
    kept = client.get(f"/v1/sync-sessions/{recent}", headers=portal.headers)
    assert (kept.status_code, kept.json["status"]) == (200, "committed")


def test_the_end_of_a_kept_blocked_conversation_leaves_the_inbox_after_the_retention(
    client, wiring, portal, make_portal
):
    # Kept for its block, the conversation kept the news of its end too: failed (an
    # inbox-only portal that never acknowledged it), in that portal's inbox for good.
    writer = make_portal(slug="bristol")
    ad = client.put("/v1/ads/ad-1", json=ad_payload(member="m-owner"), headers=portal.headers)
    contact = {"member": "m-writer", "name": "Anna", "body": "Hello"}
    opened = client.post(f"/v1/ads/{ad.json['id']}/contact", json=contact, headers=writer.headers)
    conversation_id = opened.json["conversation"]["id"]
    client.post(
        f"/v1/conversations/{conversation_id}/block",
        json={"member": "m-owner"},
        headers=portal.headers,
    )
    (event,) = [
        event
        for event in client.get("/v1/inbox", headers=writer.headers).json["events"]
        if event["type"] == "conversation.ended"
    ]
    with unit_of_work(wiring.session_factory) as session:
        session.execute(update(Message).values(created_at=long_ago()))
        session.execute(
            text("UPDATE conversations SET last_message_at = :at, blocked_at = :at"),
            {"at": long_ago()},
        )
        session.execute(
            text("UPDATE deliveries SET state = 'failed', created_at = :at"), {"at": long_ago()}
        )

    housekeeping(wiring)

    assert client.get("/v1/inbox", headers=writer.headers).json["events"] == []
    kept = client.get(f"/v1/conversations/{conversation_id}", headers=portal.headers)
    assert kept.status_code == 200
    again = client.post(f"/v1/ads/{ad.json['id']}/contact", json=contact, headers=writer.headers)
    assert again.json.get("error") == "blocked_by_advertiser"
    assert event["id"].startswith("end_")


def long_ago() -> datetime:
    return datetime.now(UTC) - timedelta(days=400)
