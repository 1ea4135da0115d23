"""The limit on a portal's stored ads: new ads beyond it are refused on every path that
creates them (PUT, batches, sync sessions), exactly, even when writes race; changes and
deletions of the ads it has never are."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from directory.api.ads.schemas import AdPutSchema
from directory.db import unit_of_work
from directory.models import AdChange
from directory.services import ads, portals
from tests.apps import app_with
from tests.factories import ad_payload
from tests.waits import send_aside


@pytest.fixture
def set_limit(wiring):
    """Sets a portal's own limit (None: the directory's), as `portals set-max-ads` does."""

    def set_(portal, max_ads: int | None) -> None:
        with unit_of_work(wiring.session_factory) as session:
            portals.set_max_ads(session, portal_slug=portal.slug, max_ads=max_ads)

    return set_


def put(client, portal, external_id: str, **overrides):
    return client.put(
        f"/v1/ads/{external_id}", json=ad_payload(**overrides), headers=portal.headers
    )


def batch(client, portal, *ids: str, replace: bool = False):
    body = {"items": [{"external_id": i, "ad": ad_payload()} for i in ids], "replace": replace}
    return client.post("/v1/ads/batch", json=body, headers=portal.headers)


def stored(client, portal) -> list[str]:
    items = client.get("/v1/portals/me/ads?limit=100", headers=portal.headers).json["items"]
    return [ad["external_id"] for ad in items]


def open_session(client, portal) -> str:
    response = client.post("/v1/sync-sessions", headers=portal.headers)
    assert response.status_code == 201, response.json
    return response.json["id"]


def stage(client, portal, session_id: str, items: list[dict]):
    return client.post(
        f"/v1/sync-sessions/{session_id}/items", json={"items": items}, headers=portal.headers
    )


def commit(client, portal, session_id: str):
    return client.post(f"/v1/sync-sessions/{session_id}/commit", headers=portal.headers)


def test_a_put_creating_an_ad_beyond_the_limit_is_refused(client, portal, set_limit):
    set_limit(portal, 2)
    assert [put(client, portal, i).status_code for i in ("a-1", "a-2")] == [201, 201]

    refused = put(client, portal, "a-3")

    assert refused.status_code == 409, refused.json
    assert refused.json["error"] == "too_many_ads"
    assert (
        "may store at most 2 ads and stores 2: this ad was not created" in (refused.json["message"])
    )
    assert stored(client, portal) == ["a-1", "a-2"]


def test_changes_and_deletions_pass_over_a_lowered_limit_and_new_ads_wait(
    client, portal, set_limit
):
    assert [put(client, portal, i).status_code for i in ("a-1", "a-2", "a-3")] == [201] * 3
    set_limit(portal, 1)  # below what it stores: nothing is deleted

    assert put(client, portal, "a-1", title="Changed").status_code == 200
    assert client.post("/v1/ads/a-2/expire", headers=portal.headers).status_code == 200
    assert client.delete("/v1/ads/a-3", headers=portal.headers).status_code == 204
    assert stored(client, portal) == ["a-1", "a-2"]
    refused = put(client, portal, "a-3")
    assert refused.status_code == 409, refused.json
    assert "may store at most 1 ads and stores 2" in refused.json["message"]


def test_a_batch_rejects_the_new_ads_beyond_the_limit_and_applies_the_others(
    client, wiring, portal, set_limit
):
    put(client, portal, "a-0")
    set_limit(portal, 3)

    response = batch(client, portal, "a-0", "b-1", "b-2", "b-3", "b-4")

    assert response.status_code == 200, response.json
    results = response.json["results"]
    assert [(r["external_id"], r["status"]) for r in results] == [
        ("a-0", "unchanged"),
        ("b-1", "created"),
        ("b-2", "created"),
        ("b-3", "rejected"),
        ("b-4", "rejected"),
    ]
    message = "the portal may store at most 3 ads and stores 3: this ad was not created"
    for result in results[3:]:
        ((text,),) = result["errors"].values()
        assert text.startswith(message), text
        assert (result["id"], result["etag"]) == (None, None)
    assert response.json["counts"] == {"unchanged": 1, "created": 2, "rejected": 2}
    assert stored(client, portal) == ["a-0", "b-1", "b-2"]
    # The refused ads' creations never reach the change feed.
    listed = client.get("/v1/portals/me/ads", headers=portal.headers).json["items"]
    with unit_of_work(wiring.session_factory) as session:
        fed = set(session.scalars(select(AdChange.ad_id).where(AdChange.portal_id == portal.id)))
    assert {str(ad_id) for ad_id in fed} == {ad["id"] for ad in listed}


@pytest.mark.parametrize("replace", [False, True], ids=["batch", "replace batch"])
def test_an_item_refused_for_the_limit_carries_too_many_ads_as_a_put_would(
    client, portal, set_limit, replace
):
    set_limit(portal, 1)

    response = batch(client, portal, "a-1", "a-2", replace=replace)
    single = put(client, portal, "a-3")

    assert [(r["status"], r["error"]) for r in response.json["results"]] == [
        ("created", None),
        ("rejected", "too_many_ads"),
    ]
    assert (single.status_code, single.json["error"]) == (409, "too_many_ads")


def test_a_batch_deleting_as_many_as_it_creates_passes_at_the_limit(client, portal, set_limit):
    put(client, portal, "a-1")
    put(client, portal, "a-2")
    set_limit(portal, 2)
    body = {
        "items": [
            {"op": "delete", "external_id": "a-1"},
            {"external_id": "a-3", "ad": ad_payload()},
        ]
    }

    response = client.post("/v1/ads/batch", json=body, headers=portal.headers)

    assert response.json["counts"] == {"deleted": 1, "created": 1}, response.json
    assert stored(client, portal) == ["a-2", "a-3"]


def test_a_replace_batch_counts_the_ads_it_leaves_not_those_it_replaces(client, portal, set_limit):
    put(client, portal, "a-1")
    put(client, portal, "a-2")
    set_limit(portal, 2)

    replaced = batch(client, portal, "b-1", "b-2", replace=True)
    assert replaced.json["counts"] == {"created": 2}, replaced.json
    assert replaced.json["deleted_by_replace"] == 2

    over = batch(client, portal, "c-1", "c-2", "c-3", replace=True)
    assert [r["status"] for r in over.json["results"]] == ["created", "created", "rejected"]
    assert stored(client, portal) == ["c-1", "c-2"]


def test_a_full_resync_exactly_at_the_limit_commits(client, portal, set_limit):
    for external_id in ("old-1", "old-2", "old-3"):
        put(client, portal, external_id)
    set_limit(portal, 3)
    session_id = open_session(client, portal)
    staged = stage(
        client,
        portal,
        session_id,
        [{"external_id": f"new-{n}", "ad": ad_payload()} for n in range(3)],
    )
    assert staged.status_code == 200, staged.json

    committed = commit(client, portal, session_id)

    assert committed.status_code == 200, committed.json
    assert (committed.json["created"], committed.json["deleted"]) == (3, 3)
    assert stored(client, portal) == ["new-0", "new-1", "new-2"]


def test_staging_more_ads_than_the_portal_may_store_is_refused_at_once(client, portal, set_limit):
    set_limit(portal, 3)
    session_id = open_session(client, portal)
    items = [{"external_id": f"a-{n}", "ad": ad_payload()} for n in range(4)]
    assert stage(client, portal, session_id, items[:3]).status_code == 200

    refused = stage(client, portal, session_id, items[3:])

    assert refused.status_code == 409, refused.json
    assert refused.json["error"] == "too_many_ads"
    assert refused.json["errors"] == {"json": {"items": [refused.json["message"]]}}
    assert "stage 4 ads, and the portal may store at most 3" in refused.json["message"]
    state = client.get(f"/v1/sync-sessions/{session_id}", headers=portal.headers).json
    assert (state["staged"], state["status"]) == (3, "open")
    # Rejected items become no ads of their own: they do not count.
    rejected = [{"external_id": "bad", "ad": ad_payload(category="nope")}]
    assert stage(client, portal, session_id, rejected).status_code == 200
    assert commit(client, portal, session_id).json["created"] == 3


def test_a_commit_that_would_leave_too_many_ads_is_refused_whole_and_stays_open(
    client, portal, set_limit
):
    put(client, portal, "kept", title="Kept")
    set_limit(portal, 3)
    session_id = open_session(client, portal)
    items = [{"external_id": f"a-{n}", "ad": ad_payload()} for n in range(3)]
    # A rejected item keeps its ad as it is: the resync would leave four.
    items.append({"external_id": "kept", "ad": ad_payload(category="nope")})
    assert stage(client, portal, session_id, items).status_code == 200

    refused = commit(client, portal, session_id)

    assert refused.status_code == 409, refused.json
    assert refused.json["error"] == "too_many_ads"
    assert "would leave the portal 4 ads, and it may store at most 3" in refused.json["message"]
    assert stored(client, portal) == ["kept"]
    state = client.get(f"/v1/sync-sessions/{session_id}", headers=portal.headers).json
    assert state["status"] == "open"
    set_limit(portal, 4)
    committed = commit(client, portal, session_id)
    assert committed.status_code == 200, committed.json
    assert stored(client, portal) == ["a-0", "a-1", "a-2", "kept"]


def test_a_resync_that_creates_no_ad_passes_over_a_lowered_limit(client, portal, set_limit):
    """Changes and deletions are never refused: a portal above a limit lowered under it
    still resyncs its ads, changed, as long as it adds none."""
    for external_id in ("a-1", "a-2", "a-3", "a-4"):
        put(client, portal, external_id)
    set_limit(portal, 2)
    session_id = open_session(client, portal)
    items = [
        {"external_id": external_id, "ad": ad_payload(title="Changed")}
        for external_id in ("a-1", "a-2", "a-3")
    ]

    staged = stage(client, portal, session_id, items)
    assert staged.status_code == 200, staged.json
    committed = commit(client, portal, session_id)

    assert committed.status_code == 200, committed.json
    assert (committed.json["updated"], committed.json["deleted"]) == (3, 1)
    assert stored(client, portal) == ["a-1", "a-2", "a-3"]


def test_a_resync_over_a_lowered_limit_that_creates_an_ad_is_refused(client, portal, set_limit):
    for external_id in ("a-1", "a-2", "a-3"):
        put(client, portal, external_id)
    set_limit(portal, 2)
    session_id = open_session(client, portal)
    items = [{"external_id": i, "ad": ad_payload()} for i in ("a-1", "a-2", "new")]
    assert stage(client, portal, session_id, items).status_code == 200

    refused = commit(client, portal, session_id)

    assert refused.status_code == 409, refused.json
    assert refused.json["error"] == "too_many_ads"
    assert stored(client, portal) == ["a-1", "a-2", "a-3"]


@pytest.fixture(scope="module")
def two_ads_client(migrated):
    """A second app on the same database, whose portals store at most 2 ads."""
    with app_with(migrated, portal_max_ads=2) as app:
        yield app.test_client()


def test_the_limit_is_the_setting_unless_the_portal_has_its_own(two_ads_client, portal, set_limit):
    client = two_ads_client
    assert [put(client, portal, i).status_code for i in ("a-1", "a-2", "a-3")] == [201, 201, 409]

    set_limit(portal, 3)
    assert put(client, portal, "a-3").status_code == 201
    assert client.get("/v1/portals/me", headers=portal.headers).json["ads"] == {
        "stored": 3,
        "limit": 3,
    }

    set_limit(portal, None)
    refused = put(client, portal, "a-4")
    assert refused.status_code == 409, refused.json
    assert "may store at most 2 ads and stores 3" in refused.json["message"]


def test_the_profile_shows_the_ads_stored_and_the_limit(client, portal, set_limit):
    me = client.get("/v1/portals/me", headers=portal.headers)
    assert me.json["ads"] == {"stored": 0, "limit": wiring_default(client)}

    put(client, portal, "a-1")
    put(client, portal, "a-2", visibility="portal")
    client.post("/v1/ads/a-2/expire", headers=portal.headers)  # expired ads are stored too
    set_limit(portal, 5)

    assert client.get("/v1/portals/me", headers=portal.headers).json["ads"] == {
        "stored": 2,
        "limit": 5,
    }
    patched = client.patch("/v1/portals/me", json={"name": "Renamed"}, headers=portal.headers)
    assert patched.json["ads"] == {"stored": 2, "limit": 5}


def wiring_default(client) -> int:
    return client.application.extensions["directory"].settings.portal_max_ads


def test_two_creations_racing_for_the_last_place_leave_the_portal_at_its_limit(
    app, wiring, portal, set_limit
):
    """Counted before they write, under the shared write lock, both would see room for
    one more; the second waits for the first to commit, then counts its ad."""
    client = app.test_client()
    put(client, portal, "a-1")
    set_limit(portal, 2)
    with unit_of_work(wiring.session_factory) as first:
        ads.upsert_ad(
            first,
            portal_id=portal.id,
            external_id="a-2",
            ad=AdPutSchema().load(ad_payload()),
            lifetimes=wiring.lifetimes,
            max_ads=wiring.settings.portal_max_ads,
        )
        second = send_aside(
            wiring, lambda: put(app.test_client(), portal, "a-3"), what="the second creation"
        )
    answer = second()

    assert answer.status_code == 409, answer.json
    assert answer.json["error"] == "too_many_ads"
    assert stored(client, portal) == ["a-1", "a-2"]


def test_two_batches_racing_for_the_last_places_share_them(app, wiring, portal, set_limit):
    client = app.test_client()
    set_limit(portal, 3)
    with unit_of_work(wiring.session_factory) as first:
        results = ads.apply_changes(
            first,
            portal_id=portal.id,
            operations=[ads.Upsert(i, AdPutSchema().load(ad_payload())) for i in ("a-1", "a-2")],
            lifetimes=wiring.lifetimes,
            max_ads=wiring.settings.portal_max_ads,
        )
        assert [result.status for result in results] == ["created", "created"]
        second = send_aside(
            wiring,
            lambda: batch(app.test_client(), portal, "b-1", "b-2"),
            what="the second batch",
        )
    answer = second()

    assert [r["status"] for r in answer.json["results"]] == ["created", "rejected"]
    assert stored(client, portal) == ["a-1", "a-2", "b-1"]
