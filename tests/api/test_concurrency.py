"""Writes of one portal running at the same time: shared where they can be, ordered
where they touch the same ads, never deadlocked, never lost."""

from __future__ import annotations

import threading

from sqlalchemy import select

from directory.api.ads.schemas import AdPutSchema
from directory.db import unit_of_work
from directory.models import AdChange, PortalKey
from directory.services import ads, portals
from tests.factories import BASE_AD, ad_payload
from tests.waits import wait_for_a_lock_wait


def run_together(app, requests):
    """Send each (method, path, json, headers) at once from its own thread."""
    barrier = threading.Barrier(len(requests))
    responses = [None] * len(requests)

    def send(index, method, path, body, headers):
        client = app.test_client()
        barrier.wait()
        responses[index] = client.open(path, method=method, json=body, headers=headers)

    threads = [
        threading.Thread(target=send, args=(index, *request))
        for index, request in enumerate(requests)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return responses


def items(ids, title):
    return {"items": [{"external_id": i, "ad": ad_payload(title=title)} for i in ids]}


def test_batches_changing_the_same_ads_in_opposite_orders_both_apply(app, client, portal):
    ids = [f"a-{i:02}" for i in range(30)]
    client.post("/v1/ads/batch", json=items(ids, "v1"), headers=portal.headers)
    responses = run_together(
        app,
        [
            ("POST", "/v1/ads/batch", items(ids, "from A"), portal.headers),
            ("POST", "/v1/ads/batch", items(list(reversed(ids)), "from B"), portal.headers),
        ],
    )
    assert [r.status_code for r in responses] == [200, 200]
    listed = client.get("/v1/portals/me/ads?limit=100", headers=portal.headers).json["items"]
    assert {ad["version"] for ad in listed} == {3}  # each ad changed twice, one after the other
    assert len({ad["title"] for ad in listed}) == 1  # one batch wholly after the other


def test_batches_of_different_ads_run_side_by_side(app, client, portal):
    responses = run_together(
        app,
        [
            ("POST", "/v1/ads/batch", items([f"a-{i}" for i in range(50)], "A"), portal.headers),
            ("POST", "/v1/ads/batch", items([f"b-{i}" for i in range(50)], "B"), portal.headers),
        ],
    )
    assert [r.json["counts"] for r in responses] == [{"created": 50}, {"created": 50}]


def test_two_batches_creating_the_same_new_ad_leave_one_ad(app, client, portal):
    responses = run_together(
        app,
        [
            ("POST", "/v1/ads/batch", items(["same"], "A"), portal.headers),
            ("POST", "/v1/ads/batch", items(["same"], "B"), portal.headers),
        ],
    )
    # Whichever comes second updates what the first created (or finds it unchanged).
    assert [r.status_code for r in responses] == [200, 200]
    counts = [r.json["counts"] for r in responses]
    assert {"created": 1} in counts and {"updated": 1} in counts, counts
    listed = client.get("/v1/portals/me/ads", headers=portal.headers).json["items"]
    assert [ad["external_id"] for ad in listed] == ["same"]


def test_a_replace_waits_for_ordinary_writes_and_deletes_what_they_made(app, client, portal):
    responses = run_together(
        app,
        [
            ("POST", "/v1/ads/batch", items(["x-1", "x-2"], "ordinary"), portal.headers),
            (
                "POST",
                "/v1/ads/batch",
                {**items(["r-1"], "replace"), "replace": True},
                portal.headers,
            ),
        ],
    )
    assert [r.status_code for r in responses] == [200, 200]
    listed = client.get("/v1/portals/me/ads", headers=portal.headers).json["items"]
    ids = [ad["external_id"] for ad in listed]
    # Either order is fine; a mix (the replace seeing half of the other batch) is not.
    assert ids in (["r-1"], ["r-1", "x-1", "x-2"])


def test_a_request_does_not_wait_for_another_holding_its_keys_row(app, wiring, portal):
    """The first request with a key in a while records when the key was used, which
    locks the key's row until that request ends (a sync commit may take minutes): other
    requests with the key go on without that bookkeeping rather than wait for it."""
    statuses = []

    def request_with_the_same_key():
        response = app.test_client().get("/v1/portals/me", headers=portal.headers)
        statuses.append(response.status_code)

    with unit_of_work(wiring.session_factory) as long_request:
        portals.authenticate(long_request, key=portal.key)  # its row is locked now
        other = threading.Thread(target=request_with_the_same_key)
        other.start()
        other.join(5)
        waited = other.is_alive()
    other.join()

    assert not waited
    assert statuses == [200]
    with unit_of_work(wiring.session_factory) as session:
        last_used = session.scalars(
            select(PortalKey.last_used_at).where(PortalKey.portal_id == portal.id)
        ).all()
    assert all(last_used), last_used  # the long request's record stands


def test_an_unchanged_put_that_waited_while_its_ad_expired_renews_it(app, client, wiring, portal):
    # Judged against the time it came, not the time it got the lock, it was answered
    # "unchanged" and left the ad expired.
    put = app.test_client()
    assert put.put("/v1/ads/a-1", json=ad_payload(), headers=portal.headers).status_code == 201
    answers = []
    with unit_of_work(wiring.session_factory) as holder:
        ads.lock_portal_writes(holder, portal.id, exclusive=True)  # a replace, a sync commit
        racer = threading.Thread(
            target=lambda: answers.append(
                put.put("/v1/ads/a-1", json=ad_payload(), headers=portal.headers)
            )
        )
        racer.start()
        wait_for_a_lock_wait(wiring, what="the PUT", wait_event="advisory")
        ads.expire_ad(holder, portal_id=portal.id, external_id="a-1", lifetimes=wiring.lifetimes)
    racer.join(30)
    (answer,) = answers
    assert answer.status_code == 200, answer.json
    assert (answer.json["version"], answer.json["expired"]) == (3, False)
    stored = client.get("/v1/portals/me/ads/a-1", headers=portal.headers).json
    assert (stored["version"], stored["expired"]) == (3, False)


def _create_without_committing(holder, wiring, portal, external_id, **overrides):
    """Creates the ad in the holder's transaction, which stays open: a racing write of the
    same new ad finds nothing to lock and meets it only at the insert."""
    ads.upsert_ad(
        holder,
        portal_id=portal.id,
        external_id=external_id,
        ad=AdPutSchema().load(ad_payload(**overrides)),
        lifetimes=wiring.lifetimes,
        max_ads=wiring.settings.portal_max_ads,
    )


def _race_a_creation(app, wiring, portal, external_id, request, **overrides):
    """Sends `request` (method, path, json, headers) while another transaction creates
    `external_id` and holds it uncommitted, then commits that one; returns the answer."""
    answers = []
    with unit_of_work(wiring.session_factory) as holder:
        _create_without_committing(holder, wiring, portal, external_id, **overrides)
        method, path, body, headers = request
        racer = threading.Thread(
            target=lambda: answers.append(
                app.test_client().open(path, method=method, json=body, headers=headers)
            )
        )
        racer.start()
        wait_for_a_lock_wait(wiring, what="the racing write", wait_event="transactionid")
    racer.join(30)
    (answer,) = answers
    return answer


def test_a_put_creating_an_ad_another_write_is_creating_updates_it(app, client, wiring, portal):
    # It used to fail on the unique key with 409 constraint_violation: a portal retrying
    # a PUT whose first try was still running got an error for an ad that was stored.
    answer = _race_a_creation(
        app,
        wiring,
        portal,
        "a-1",
        ("PUT", "/v1/ads/a-1", ad_payload(title="The retry"), portal.headers),
        title="The first try",
    )
    assert answer.status_code == 200, answer.json
    assert (answer.json["title"], answer.json["version"]) == ("The retry", 2)
    listed = client.get("/v1/portals/me/ads", headers=portal.headers).json["items"]
    assert [(ad["id"], ad["title"]) for ad in listed] == [(answer.json["id"], "The retry")]


def test_a_put_repeating_an_ad_another_write_is_creating_is_unchanged(app, wiring, portal):
    answer = _race_a_creation(
        app, wiring, portal, "a-1", ("PUT", "/v1/ads/a-1", ad_payload(), portal.headers)
    )
    assert answer.status_code == 200, answer.json
    assert answer.json["version"] == 1


def test_a_put_that_only_creates_refuses_an_ad_another_write_created(app, client, wiring, portal):
    headers = {**portal.headers, "If-None-Match": "*"}
    answer = _race_a_creation(
        app, wiring, portal, "a-1", ("PUT", "/v1/ads/a-1", ad_payload(title="Mine"), headers)
    )
    assert answer.status_code == 412, answer.json
    stored = client.get("/v1/portals/me/ads/a-1", headers=portal.headers).json
    assert (stored["title"], stored["version"]) == (BASE_AD["title"], 1)


def test_a_batch_meeting_a_creation_applies_every_item_and_feeds_one_ad(
    app, client, wiring, portal
):
    answer = _race_a_creation(
        app,
        wiring,
        portal,
        "b-raced",
        ("POST", "/v1/ads/batch", items(["a-new", "b-raced", "c-new"], "batch"), portal.headers),
    )
    assert answer.status_code == 200, answer.json
    assert [(item["external_id"], item["status"]) for item in answer.json["results"]] == [
        ("a-new", "created"),
        ("b-raced", "updated"),
        ("c-new", "created"),
    ]
    listed = client.get("/v1/portals/me/ads?limit=10", headers=portal.headers).json["items"]
    assert sorted((ad["external_id"], ad["title"]) for ad in listed) == [
        ("a-new", "batch"),
        ("b-raced", "batch"),
        ("c-new", "batch"),
    ]
    # The id the batch made for b-raced and never stored is not in the change feed.
    with unit_of_work(wiring.session_factory) as session:
        fed = set(session.scalars(select(AdChange.ad_id).where(AdChange.portal_id == portal.id)))
    assert {str(ad_id) for ad_id in fed} == {ad["id"] for ad in listed}
