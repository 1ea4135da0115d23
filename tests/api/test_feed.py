from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime

from sqlalchemy import text, update

from directory.api.ads.schemas import AdPutSchema
from directory.db import unit_of_work
from directory.models import Ad, PortalStatus, Visibility
from directory.services import ads, portals, websites
from directory.services.feed import FeedPosition
from tests.factories import ad_payload, in_days
from tests.waits import wait_for_a_lock_wait


def read_all(client, since=None, limit=500):
    changes, cursor = [], since
    while True:
        query = f"/v1/feed?limit={limit}" + (f"&since={cursor}" if cursor else "")
        page = client.get(query).json
        changes += page["changes"]
        cursor = page["next_cursor"]
        if not page["more"]:
            return changes, cursor


def test_feed_lists_upserts_and_deletes_in_order(client, portal):
    first = client.put("/v1/ads/a-1", json=ad_payload(title="One"), headers=portal.headers)
    client.put("/v1/ads/a-2", json=ad_payload(title="Two"), headers=portal.headers)
    client.put("/v1/ads/a-2", json=ad_payload(title="Two again"), headers=portal.headers)
    client.delete("/v1/ads/a-1", headers=portal.headers)
    changes, _ = read_all(client)
    assert [(c["op"], c["ad"] and c["ad"]["title"]) for c in changes] == [
        ("delete", None),  # the ad as it is now: gone
        ("upsert", "Two again"),  # the ad as it is now, for both of its upserts
        ("upsert", "Two again"),
        ("delete", None),
    ]
    assert changes[-1]["ad_id"] == first.json["id"]


def test_upserts_of_ads_that_later_left_public_view_are_told_as_deletes(client, portal):
    ad_id = client.put("/v1/ads/a-1", json=ad_payload(), headers=portal.headers).json["id"]
    client.put("/v1/ads/a-2", json=ad_payload(title="Stays"), headers=portal.headers)
    client.delete("/v1/ads/a-1", headers=portal.headers)
    changes, _ = read_all(client)
    assert [(c["op"], c["ad_id"] == ad_id) for c in changes] == [
        ("delete", True),
        ("upsert", False),
        ("delete", True),
    ]


def test_an_upsert_read_after_the_ad_expired_is_told_as_a_delete(client, portal, session):
    """Expiring writes nothing to the feed: a reader who last saw the ad with its old
    expiry must still learn that it ended earlier, as its later change said."""
    ad_id = client.put("/v1/ads/a-1", json=ad_payload(), headers=portal.headers).json["id"]
    _, cursor = read_all(client)
    shortened = client.put(
        "/v1/ads/a-1", json=ad_payload(expires_at=in_days(1)), headers=portal.headers
    )
    assert shortened.status_code == 200, shortened.json
    session.execute(  # the day passes
        update(Ad).where(Ad.id == uuid.UUID(ad_id)).values(expires_at=datetime.now(UTC))
    )
    session.commit()

    changes, _ = read_all(client, since=cursor)

    assert [(c["op"], c["ad_id"]) for c in changes] == [("delete", ad_id)]


def test_feed_cursor_resumes_after_the_last_change_seen(client, portal):
    client.put("/v1/ads/a-1", json=ad_payload(), headers=portal.headers)
    _, cursor = read_all(client)
    client.put("/v1/ads/a-2", json=ad_payload(title="Later"), headers=portal.headers)
    changes, _ = read_all(client, since=cursor)
    assert [c["ad"]["title"] for c in changes] == ["Later"]


def test_feed_pages_cover_every_change_once(client, portal):
    items = [{"external_id": f"a-{i}", "ad": ad_payload(title=f"Ad {i}")} for i in range(25)]
    client.post("/v1/ads/batch", json={"items": items}, headers=portal.headers)
    changes, _ = read_all(client, limit=7)
    assert sorted(c["ad"]["title"] for c in changes) == sorted(f"Ad {i}" for i in range(25))


def test_a_feed_cursor_at_the_bigint_limit_is_refused_as_ahead_of_the_feed(client, portal):
    client.put("/v1/ads/a-1", json=ad_payload(), headers=portal.headers)
    last = FeedPosition(2**63 - 1, 2**63 - 1)  # beyond it, the cursor cannot be read
    response = client.get(f"/v1/feed?since={last.encode()}")
    assert response.status_code == 400, response.json
    assert response.json["error"] == "invalid_cursor"


def test_a_cursor_ahead_of_the_feed_is_refused_rather_than_answered_empty(client, portal):
    """Another directory's cursor, say: answered with no changes, more false, and itself
    as next_cursor, its reader would wait for changes that never reach it."""
    client.put("/v1/ads/a-1", json=ad_payload(), headers=portal.headers)
    _, cursor = read_all(client)
    here = FeedPosition.decode(cursor)
    elsewhere = FeedPosition(here.txid + 1_000_000, 0)

    response = client.get(f"/v1/feed?since={elsewhere.encode()}")

    assert response.status_code == 400, response.json
    assert response.json["error"] == "invalid_cursor"
    assert "ahead" in response.json["errors"]["query"]["since"][0]
    assert client.get(f"/v1/feed?since={cursor}").status_code == 200  # its own still reads


def test_feed_shows_public_ads_only_as_the_world_sees_them(client, portal):
    client.put("/v1/ads/a-1", json=ad_payload("portal_only"), headers=portal.headers)
    client.put("/v1/ads/a-2", json=ad_payload("area"), headers=portal.headers)
    changes, _ = read_all(client)
    assert len(changes) == 1
    assert "member" not in changes[0]["ad"]
    assert changes[0]["ad"]["privacy"] == "area"


def test_making_an_ad_portal_only_appears_as_a_delete(client, portal):
    client.put("/v1/ads/a-1", json=ad_payload(), headers=portal.headers)
    _, cursor = read_all(client)
    client.put("/v1/ads/a-1", json=ad_payload("portal_only"), headers=portal.headers)
    changes, _ = read_all(client, since=cursor)
    assert [c["op"] for c in changes] == ["delete"]


def test_expiring_an_ad_appears_as_a_delete(client, portal):
    client.put("/v1/ads/a-1", json=ad_payload(), headers=portal.headers)
    _, cursor = read_all(client)
    client.post("/v1/ads/a-1/expire", headers=portal.headers)
    changes, _ = read_all(client, since=cursor)
    assert [c["op"] for c in changes] == ["delete"]


def test_suspending_a_portal_deletes_its_ads_from_the_feed_and_reactivating_restores(
    client, portal, wiring
):
    client.put("/v1/ads/a-1", json=ad_payload(), headers=portal.headers)
    _, cursor = read_all(client)
    with unit_of_work(wiring.session_factory) as session:
        portals.set_status(session, portal_slug=portal.slug, status=PortalStatus.SUSPENDED)
    changes, cursor = read_all(client, since=cursor)
    assert [c["op"] for c in changes] == ["delete"]
    with unit_of_work(wiring.session_factory) as session:
        portals.set_status(session, portal_slug=portal.slug, status=PortalStatus.ACTIVE)
    changes, _ = read_all(client, since=cursor)
    assert [c["op"] for c in changes] == ["upsert"]


def test_a_change_committed_late_is_not_skipped(client, portal, wiring):
    """A transaction that took its log row first but commits after a later one must
    still reach a reader who has already read past the later one."""
    client.put("/v1/ads/a-1", json=ad_payload(), headers=portal.headers)
    _, cursor = read_all(client)
    slow_started = threading.Event()
    release = threading.Event()

    def slow_writer():
        with wiring.engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO ad_changes (ad_id, portal_id, op) "
                    "SELECT id, portal_id, 'upsert' FROM ads WHERE external_id = 'a-1'"
                )
            )
            slow_started.set()
            release.wait(10)

    thread = threading.Thread(target=slow_writer)
    thread.start()
    slow_started.wait(10)
    client.put("/v1/ads/a-2", json=ad_payload(title="Fast"), headers=portal.headers)
    during, cursor_during = read_all(client, since=cursor)
    release.set()
    thread.join()
    after, _ = read_all(client, since=cursor_during)
    assert during == []  # held back while an older transaction is still open
    assert sorted(c["ad"]["title"] for c in after) == ["Bicycle repairs", "Fast"]


def test_the_last_word_on_an_ad_is_its_state_when_writers_commit_out_of_id_order(
    app, client, portal, wiring
):
    """A sync commit takes its transaction id (locking its session) before it waits for
    the portal's lock, which a write holds; the write then takes a later id, withdraws
    the ad and commits first; the commit makes the ad public again. The feed lists the
    commit's upsert before the write's deletion, yet must end with the ad present."""
    ad_id = client.put("/v1/ads/x", json=ad_payload(title="v1"), headers=portal.headers).json["id"]
    _, cursor = read_all(client)
    session_id = client.post("/v1/sync-sessions", headers=portal.headers).json["id"]
    staged = client.post(
        f"/v1/sync-sessions/{session_id}/items",
        json={"items": [{"external_id": "x", "ad": ad_payload(title="From the sync")}]},
        headers=portal.headers,
    )
    assert staged.status_code == 200, staged.json
    holding, release = threading.Event(), threading.Event()
    committed = {}

    def withdrawing_write():
        # As apply_changes runs: the portal's shared lock first, then the ad's row.
        with unit_of_work(wiring.session_factory) as session:
            ads.lock_portal_writes(session, portal.id, exclusive=False)
            holding.set()
            release.wait(10)
            withdrawn = AdPutSchema().load(
                ad_payload(title="Portal only", visibility=Visibility.PORTAL.value)
            )
            ads.apply_changes(
                session,
                portal_id=portal.id,
                operations=[ads.Upsert("x", withdrawn)],
                lifetimes=wiring.lifetimes,
                max_ads=wiring.settings.portal_max_ads,
            )

    def sync_commit():
        committed["response"] = app.test_client().post(
            f"/v1/sync-sessions/{session_id}/commit", headers=portal.headers
        )

    writer = threading.Thread(target=withdrawing_write)
    writer.start()
    assert holding.wait(10)
    committer = threading.Thread(target=sync_commit)
    committer.start()
    wait_for_a_lock_wait(wiring, what="the commit", wait_event="advisory")
    release.set()
    writer.join(20)
    committer.join(20)
    assert committed["response"].status_code == 200, committed["response"].json
    assert client.get(f"/v1/ads/{ad_id}").json["title"] == "From the sync"
    changes, _ = read_all(client, since=cursor)
    last_word = [change for change in changes if change["ad_id"] == ad_id][-1]
    assert (last_word["op"], last_word["ad"]["title"]) == ("upsert", "From the sync")


def test_the_feed_tells_no_more_of_an_ad_withdrawn_but_kept_than_of_a_deleted_one(client, portal):
    """Whether an ad that left public view still exists (portal-only, expired) is its
    portal's to know: the feed tells it exactly as it tells a deleted ad."""
    kept = client.put("/v1/ads/a-1", json=ad_payload(), headers=portal.headers).json["id"]
    gone = client.put("/v1/ads/a-2", json=ad_payload(), headers=portal.headers).json["id"]
    client.put("/v1/ads/a-1", json=ad_payload("portal_only"), headers=portal.headers)
    client.delete("/v1/ads/a-2", headers=portal.headers)

    changes, _ = read_all(client)

    told = {ad_id: [c["op"] for c in changes if c["ad_id"] == ad_id] for ad_id in (kept, gone)}
    assert told[kept] == told[gone]


def test_changes_to_ads_out_of_public_view_write_nothing_to_the_feed(client, portal, session):
    """Once an ad has expired, what its portal does with it (keeps it, deletes it, makes
    it portal-only, replaces its set without it) is the portal's to know."""
    for external_id in ("a-1", "a-2", "a-3", "a-4"):
        client.put(f"/v1/ads/{external_id}", json=ad_payload(), headers=portal.headers)
    session.execute(update(Ad).values(expires_at=datetime.now(UTC)))  # they all expire
    session.commit()
    _, cursor = read_all(client)

    client.delete("/v1/ads/a-1", headers=portal.headers)
    client.put("/v1/ads/a-2", json=ad_payload("portal_only"), headers=portal.headers)
    client.post(
        "/v1/ads/batch",
        json={"replace": True, "items": [{"external_id": "a-2", "ad": ad_payload("portal_only")}]},
        headers=portal.headers,
    )

    assert read_all(client, since=cursor)[0] == []


def _wait_until_listed_or_waiting(wiring, listed: threading.Event, *, what: str) -> None:
    """Returns once `listed` is set or a session waits on a lock: the change of the
    whole portal has either read its ads or waits for the write under way."""
    deadline = time.monotonic() + 10
    while not listed.is_set():
        with wiring.engine.connect() as connection:
            if connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock'"
                )
            ):
                return
        assert time.monotonic() < deadline, f"{what} neither listed the ads nor waited"
        time.sleep(0.01)


def _race_a_portal_change(client, wiring, portal, *, change, external_id, ad):
    """Writes `ad` (uncommitted) while `change` (a function of a session) changes the
    whole portal in another transaction; commits the write, reads the feed while the
    change is still open, then lets the change commit and reads on. Returns every
    entry read since before the race."""
    _, cursor = read_all(client)
    listed, release = threading.Event(), threading.Event()

    def portal_change():
        with unit_of_work(wiring.session_factory) as session:
            change(session)
            listed.set()
            release.wait(10)

    thread = threading.Thread(target=portal_change)
    with unit_of_work(wiring.session_factory) as writer:
        ads.apply_changes(
            writer,
            portal_id=portal.id,
            operations=[ads.Upsert(external_id, AdPutSchema().load(ad))],
            lifetimes=wiring.lifetimes,
            max_ads=wiring.settings.portal_max_ads,
        )
        thread.start()
        _wait_until_listed_or_waiting(wiring, listed, what="the portal's change")
    assert listed.wait(10)
    during, cursor = read_all(client, since=cursor)  # the write, with the change open
    release.set()
    thread.join(20)
    after, _ = read_all(client, since=cursor)
    return during + after


def test_an_ad_made_public_while_its_portal_is_being_suspended_ends_the_feed_deleted(
    client, portal, wiring
):
    """The suspension lists the portal's public ads to tell them deleted. Were an ad
    that a write under way makes public not among them, the write's upsert, read before
    the suspension commits, would show the ad public, and be the feed's last word on it.
    What orders the two is the key share lock that the write's feed entry takes on the
    portal's row (ad_changes' foreign key), which the suspension's FOR UPDATE waits for:
    without that key, this fails."""
    created = client.put("/v1/ads/a-1", json=ad_payload("portal_only"), headers=portal.headers)
    ad_id = created.json["id"]

    changes = _race_a_portal_change(
        client,
        wiring,
        portal,
        change=lambda session: portals.set_status(
            session, portal_slug=portal.slug, status=PortalStatus.SUSPENDED
        ),
        external_id="a-1",
        ad=ad_payload(title="Public now"),
    )

    assert client.get(f"/v1/ads/{ad_id}").status_code == 404
    last_word = [c for c in changes if c["ad_id"] == ad_id][-1]
    assert last_word["op"] == "delete"


def test_an_ad_made_public_while_its_portals_website_is_verified_ends_with_its_global_id(
    client, make_portal, wiring
):
    """Verifying the website republishes the public ads with their global id; an ad a
    write under way makes public meanwhile must end the feed with its global id too (as
    in the suspension's race above)."""
    portal = make_portal(website="https://sel.example.org")
    created = client.put("/v1/ads/a-1", json=ad_payload("portal_only"), headers=portal.headers)
    ad_id = created.json["id"]

    changes = _race_a_portal_change(
        client,
        wiring,
        portal,
        change=lambda session: websites.trust_website(session, portal_id=portal.id),
        external_id="a-1",
        ad=ad_payload(title="Public now"),
    )

    assert client.get(f"/v1/ads/{ad_id}").json["global_id"] == "https://sel.example.org#a-1"
    last_word = [c for c in changes if c["ad_id"] == ad_id][-1]
    assert (last_word["op"], last_word["ad"]["global_id"]) == (
        "upsert",
        "https://sel.example.org#a-1",
    )
