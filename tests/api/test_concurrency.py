"""Writes of one portal running at the same time: shared where they can be, ordered
where they touch the same ads, never deadlocked, never lost."""

from __future__ import annotations

import threading

from sqlalchemy import select

from directory.db import unit_of_work
from directory.models import PortalKey
from directory.services import ads, portals
from tests.factories import ad_payload
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
    # The loser of the race is told to retry (409), or ran after the winner (200).
    assert sorted(r.status_code for r in responses) in ([200, 200], [200, 409])
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
