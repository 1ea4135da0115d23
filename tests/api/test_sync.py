from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, func, select, text, update

from directory.db import unit_of_work
from directory.models import SyncSession
from directory.services import sync
from directory.services.housekeeping import close_stale_sync_sessions
from directory.settings import Settings
from tests.apps import app_with
from tests.factories import REFUSED_ADS, ad_payload
from tests.waits import wait_for_a_lock_wait

MAX_OPEN = Settings().sync_session_max_open_per_portal


def open_session(client, portal) -> str:
    response = client.post("/v1/sync-sessions", headers=portal.headers)
    assert response.status_code == 201, response.json
    return response.json["id"]


def stage(client, portal, session_id, items):
    return client.post(
        f"/v1/sync-sessions/{session_id}/items", json={"items": items}, headers=portal.headers
    )


def own_titles(client, portal) -> dict[str, str]:
    items = client.get("/v1/portals/me/ads?limit=1000", headers=portal.headers).json["items"]
    return {ad["external_id"]: ad["title"] for ad in items}


def test_an_opened_session_is_where_its_location_says(client, portal):
    response = client.post("/v1/sync-sessions", headers=portal.headers)
    assert response.status_code == 201, response.json
    assert response.headers["Location"] == f"/v1/sync-sessions/{response.json['id']}"
    assert client.get(response.headers["Location"], headers=portal.headers).json == response.json


def test_a_resync_over_several_requests_replaces_all_ads_at_commit(client, portal):
    client.put("/v1/ads/old", json=ad_payload(title="Old"), headers=portal.headers)
    client.put("/v1/ads/kept", json=ad_payload(title="Kept v1"), headers=portal.headers)
    session_id = open_session(client, portal)
    stage(client, portal, session_id, [{"external_id": "kept", "ad": ad_payload(title="Kept v2")}])
    stage(client, portal, session_id, [{"external_id": "new", "ad": ad_payload(title="New")}])

    assert own_titles(client, portal) == {"old": "Old", "kept": "Kept v1"}  # nothing yet

    result = client.post(f"/v1/sync-sessions/{session_id}/commit", headers=portal.headers)
    assert result.status_code == 200, result.json
    assert (result.json["created"], result.json["updated"], result.json["deleted"]) == (1, 1, 1)
    assert result.json["session"]["status"] == "committed"
    assert own_titles(client, portal) == {"kept": "Kept v2", "new": "New"}


def test_staging_reports_each_item_and_a_rejected_ad_is_kept_at_commit(client, portal):
    client.put("/v1/ads/a-1", json=ad_payload(title="Original"), headers=portal.headers)
    session_id = open_session(client, portal)
    staged = stage(
        client,
        portal,
        session_id,
        [
            {"external_id": "a-1", "ad": ad_payload(title="Broken", category="nope")},
            {"external_id": "a-2", "ad": ad_payload(title="Fine")},
        ],
    )
    assert [r["status"] for r in staged.json["results"]] == ["rejected", "staged"]
    assert "category" in staged.json["results"][0]["errors"]["ad"]
    assert (staged.json["session"]["staged"], staged.json["session"]["rejected"]) == (1, 1)

    result = client.post(f"/v1/sync-sessions/{session_id}/commit", headers=portal.headers).json
    assert result["kept_rejected"] == 1
    assert own_titles(client, portal) == {"a-1": "Original", "a-2": "Fine"}


def test_an_item_sent_again_replaces_what_was_staged(client, portal):
    session_id = open_session(client, portal)
    stage(client, portal, session_id, [{"external_id": "a-1", "ad": ad_payload(title="First")}])
    stage(client, portal, session_id, [{"external_id": "a-1", "ad": ad_payload(title="Second")}])
    client.post(f"/v1/sync-sessions/{session_id}/commit", headers=portal.headers)
    assert own_titles(client, portal) == {"a-1": "Second"}


def test_an_aborted_session_changes_nothing_and_accepts_no_more_items(client, portal):
    client.put("/v1/ads/a-1", json=ad_payload(title="Original"), headers=portal.headers)
    session_id = open_session(client, portal)
    stage(client, portal, session_id, [{"external_id": "a-2", "ad": ad_payload()}])
    assert (
        client.delete(f"/v1/sync-sessions/{session_id}", headers=portal.headers).status_code == 204
    )
    later = stage(client, portal, session_id, [{"external_id": "a-3", "ad": ad_payload()}])
    assert later.status_code == 409
    assert later.json["error"] == "sync_session_closed"
    commit = client.post(f"/v1/sync-sessions/{session_id}/commit", headers=portal.headers)
    assert commit.status_code == 409
    assert own_titles(client, portal) == {"a-1": "Original"}


def test_a_commit_sent_again_answers_the_same_and_changes_nothing(client, portal):
    client.put("/v1/ads/old", json=ad_payload(), headers=portal.headers)
    session_id = open_session(client, portal)
    stage(client, portal, session_id, [{"external_id": "a-1", "ad": ad_payload()}])
    first = client.post(f"/v1/sync-sessions/{session_id}/commit", headers=portal.headers)
    client.put("/v1/ads/later", json=ad_payload(), headers=portal.headers)

    again = client.post(f"/v1/sync-sessions/{session_id}/commit", headers=portal.headers)

    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json == first.json
    assert (first.json["created"], first.json["deleted"]) == (1, 1)
    assert set(own_titles(client, portal)) == {"a-1", "later"}  # applied once, not again


def test_a_commit_sent_again_tells_the_ads_it_rejected(client, portal, wiring):
    client.post("/v1/currencies", json={"code": "TALENT", "name": "T"}, headers=portal.headers)
    code = f"{portal.slug}:TALENT"
    session_id = open_session(client, portal)
    stage(client, portal, session_id, [{"external_id": "a-1", "ad": ad_payload(currencies=[code])}])
    client.delete(f"/v1/currencies/{code}", headers=portal.headers)  # staged ads don't count
    first = client.post(f"/v1/sync-sessions/{session_id}/commit", headers=portal.headers)
    with unit_of_work(wiring.session_factory) as session:
        session.execute(text("DELETE FROM sync_session_items"))  # as housekeeping does

    again = client.post(f"/v1/sync-sessions/{session_id}/commit", headers=portal.headers)

    assert [item["external_id"] for item in first.json["rejected_items"]] == ["a-1"]
    assert again.json == first.json


@pytest.mark.parametrize(("overrides", "code"), REFUSED_ADS.values(), ids=REFUSED_ADS.keys())
def test_a_rejected_staged_item_carries_the_code_a_put_of_its_ad_is_answered_with(
    client, portal, overrides, code
):
    ad = ad_payload(**overrides)
    single = client.put("/v1/ads/a-1", json=ad, headers=portal.headers)
    session_id = open_session(client, portal)

    response = stage(client, portal, session_id, [{"external_id": "a-2", "ad": ad}])

    assert single.json["error"] == code, single.json
    (result,) = response.json["results"]
    assert (result["status"], result["error"]) == ("rejected", code), result


@pytest.mark.parametrize(
    "item",
    [
        {"external_id": "a-1", "ad": ad_payload(), "colour": "red"},
        {"external_id": "a-1"},
        {"external_id": "a-1", "ad": None},
        {"op": "upsert", "external_id": "a-1", "ad": ad_payload()},  # staging takes no op
    ],
    ids=["unknown-field", "no-ad", "ad-null", "op"],
)
def test_a_staged_item_the_schema_refuses_is_rejected_as_a_validation_error(client, portal, item):
    session_id = open_session(client, portal)

    response = stage(
        client, portal, session_id, [item, {"external_id": "fine", "ad": ad_payload()}]
    )

    assert response.status_code == 200, response.json
    malformed, fine = response.json["results"]
    assert (malformed["status"], malformed["error"]) == ("rejected", "validation_error")
    assert (fine["status"], fine["error"]) == ("staged", None)


@pytest.mark.parametrize("op", ["delete", "expire", "upsert"])
def test_a_staged_item_with_an_op_is_told_that_staging_takes_none(client, portal, op):
    """Its ad was refused besides as "Must be absent for op delete.", where staging
    takes an ad and no op."""
    session_id = open_session(client, portal)

    response = stage(
        client, portal, session_id, [{"op": op, "external_id": "a-1", "ad": ad_payload()}]
    )

    (result,) = response.json["results"]
    assert result["errors"] == {"op": ["Unknown field."]}, result


def _talent(portal) -> str:
    return f"{portal.slug}:TALENT"


def _delete_talent(client, portal) -> None:
    answer = client.delete(f"/v1/currencies/{_talent(portal)}", headers=portal.headers)
    assert answer.status_code == 204, answer.json


def _clear_default_currencies(client, portal) -> None:
    answer = client.patch("/v1/portals/me", json={"default_currencies": []}, headers=portal.headers)
    assert answer.status_code == 200, answer.json


@pytest.mark.parametrize(
    ("ad", "change", "code"),
    [
        (
            lambda portal: ad_payload(currencies=[_talent(portal)]),
            _delete_talent,
            "unknown_currency",
        ),
        (lambda portal: ad_payload(currencies=...), _clear_default_currencies, "invalid_input"),
    ],
    ids=["its-currency-deleted", "the-portals-defaults-cleared"],
)
def test_an_ad_the_commit_rejects_carries_its_code_when_told_and_told_again(
    client, portal, ad, change, code
):
    client.post("/v1/currencies", json={"code": "TALENT", "name": "T"}, headers=portal.headers)
    session_id = open_session(client, portal)
    staged = stage(
        client,
        portal,
        session_id,
        [
            {"external_id": "broken-since", "ad": ad(portal)},
            {"external_id": "broken-when-staged", "ad": ad_payload(category="nope")},
            {"external_id": "fine", "ad": ad_payload()},
        ],
    )
    assert [r["status"] for r in staged.json["results"]] == ["staged", "rejected", "staged"]
    change(client, portal)  # staged ads don't count: the commit checks them again

    first = client.post(f"/v1/sync-sessions/{session_id}/commit", headers=portal.headers)
    again = client.post(f"/v1/sync-sessions/{session_id}/commit", headers=portal.headers)

    assert first.status_code == 200, first.json
    # Those rejected when staged were told so then, and not again.
    (item,) = first.json["rejected_items"]
    assert (item["external_id"], item["status"], item["error"]) == (
        "broken-since", "rejected", code
    )  # fmt: skip
    assert item["errors"], item
    assert first.json["kept_rejected"] == 2
    assert again.json == first.json


def test_a_commit_answered_before_items_had_codes_is_told_again_with_no_code(
    client, portal, wiring
):
    client.post("/v1/currencies", json={"code": "TALENT", "name": "T"}, headers=portal.headers)
    session_id = open_session(client, portal)
    ad = ad_payload(currencies=[_talent(portal)])
    stage(client, portal, session_id, [{"external_id": "a-1", "ad": ad}])
    _delete_talent(client, portal)
    first = client.post(f"/v1/sync-sessions/{session_id}/commit", headers=portal.headers)
    # The answer as the release before this one stored it: its items without "error".
    with unit_of_work(wiring.session_factory) as session:
        stored = session.scalar(select(SyncSession.result).where(SyncSession.id == session_id))
        assert [item["error"] for item in stored["rejected_items"]] == ["unknown_currency"]
        stored["rejected_items"] = [
            {"external_id": item["external_id"], "errors": item["errors"]}
            for item in stored["rejected_items"]
        ]
        session.execute(
            update(SyncSession).where(SyncSession.id == session_id).values(result=stored)
        )

    again = client.post(f"/v1/sync-sessions/{session_id}/commit", headers=portal.headers)

    assert again.status_code == 200, again.json
    (item,) = again.json["rejected_items"]
    assert (item["external_id"], item["status"], item["error"]) == ("a-1", "rejected", None)
    assert item["errors"] == first.json["rejected_items"][0]["errors"]
    assert {**again.json, "rejected_items": []} == {**first.json, "rejected_items": []}


def test_an_expired_session_is_refused(client, portal, wiring):
    session_id = open_session(client, portal)
    with unit_of_work(wiring.session_factory) as session:
        session.execute(
            update(SyncSession).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    response = stage(client, portal, session_id, [{"external_id": "a-1", "ad": ad_payload()}])
    assert response.status_code == 409
    assert response.json["error"] == "sync_session_expired"


@pytest.mark.parametrize("housekept", [False, True], ids=["open", "closed-by-housekeeping"])
def test_an_expired_session_is_refused_as_expired_before_and_after_housekeeping(
    client, portal, wiring, housekept
):
    """The worker's housekeeping closes expired sessions as aborted: the portal's next
    request was then told that its session "is aborted" (sync_session_closed), a few
    minutes after it would have been told that it expired and to open a new one."""
    session_id = open_session(client, portal)
    with unit_of_work(wiring.session_factory) as session:
        session.execute(
            update(SyncSession).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    if housekept:
        with unit_of_work(wiring.session_factory) as session:
            assert close_stale_sync_sessions(session).expired_sync_sessions == 1

    staged = stage(client, portal, session_id, [{"external_id": "a-1", "ad": ad_payload()}])
    committed = client.post(f"/v1/sync-sessions/{session_id}/commit", headers=portal.headers)

    for response in (staged, committed):
        assert response.status_code == 409, response.json
        assert response.json["error"] == "sync_session_expired", response.json
        assert "open a new one" in response.json["message"]


def test_a_session_aborted_by_its_portal_is_refused_as_closed(client, portal):
    session_id = open_session(client, portal)
    client.delete(f"/v1/sync-sessions/{session_id}", headers=portal.headers)

    response = client.post(f"/v1/sync-sessions/{session_id}/commit", headers=portal.headers)

    assert response.status_code == 409, response.json
    assert response.json["error"] == "sync_session_closed"
    assert response.json["message"] == f"sync session {session_id} is aborted"


def test_an_empty_commit_is_refused_unless_it_asks_to_delete_every_ad(client, portal):
    """An export that came out empty looks like a wish to delete everything: the portal
    says which it is."""
    client.put("/v1/ads/a-1", json=ad_payload(), headers=portal.headers)
    session_id = open_session(client, portal)
    commit = f"/v1/sync-sessions/{session_id}/commit"

    refusals = [
        client.post(commit, headers=portal.headers),
        client.post(commit, json={}, headers=portal.headers),
        client.post(commit, json={"delete_all": False}, headers=portal.headers),
    ]
    for refused in refusals:
        assert refused.status_code == 409, refused.json
        assert refused.json["error"] == "empty_resync"
        assert "delete_all" in refused.json["errors"]["json"]
    assert own_titles(client, portal) == {"a-1": "Bicycle repairs"}
    state = client.get(f"/v1/sync-sessions/{session_id}", headers=portal.headers).json
    assert state["status"] == "open"

    result = client.post(commit, json={"delete_all": True}, headers=portal.headers)

    assert result.status_code == 200, result.json
    assert result.json["deleted"] == 1
    assert own_titles(client, portal) == {}
    again = client.post(commit, headers=portal.headers)  # its answer lost: answered as it was
    assert (again.status_code, again.json["deleted"]) == (200, 1)


def test_an_empty_commit_of_a_portal_without_ads_needs_no_asking(client, portal):
    session_id = open_session(client, portal)
    result = client.post(f"/v1/sync-sessions/{session_id}/commit", headers=portal.headers)
    assert (result.status_code, result.json["deleted"]) == (200, 0)


def test_a_commit_with_only_rejected_items_is_no_empty_resync(client, portal):
    """What was rejected when staged is kept as it was: not everything goes."""
    client.put("/v1/ads/a-1", json=ad_payload(), headers=portal.headers)
    client.put("/v1/ads/a-2", json=ad_payload(), headers=portal.headers)
    session_id = open_session(client, portal)
    staged = stage(
        client, portal, session_id, [{"external_id": "a-1", "ad": ad_payload(kind="gift")}]
    )
    assert staged.json["results"][0]["status"] == "rejected"

    result = client.post(f"/v1/sync-sessions/{session_id}/commit", headers=portal.headers)

    assert (result.status_code, result.json["deleted"], result.json["kept_rejected"]) == (
        200,
        1,
        1,
    )


@pytest.mark.parametrize("body", [{"delete_all": "true"}, {"delete_all": 1}, {"delete": True}])
def test_a_commit_refuses_a_delete_all_that_is_no_boolean_or_a_field_it_does_not_take(
    client, portal, body
):
    session_id = open_session(client, portal)
    response = client.post(
        f"/v1/sync-sessions/{session_id}/commit", json=body, headers=portal.headers
    )
    assert response.status_code == 400, response.json
    assert list(response.json["errors"]["json"]) == list(body)


def test_a_commit_finds_the_ads_left_out_by_a_join_whatever_the_length_of_their_ids(
    client, portal, wiring
):
    """The ads a commit deletes are those of the portal that no staged item names. As
    `external_id NOT IN (staged ids)`, PostgreSQL checked each ad against the staged ids
    one by one as soon as they did not fit in work_mem as a hash table: a resync of the
    100,000 ads a portal may store, under ids of 128 characters, ran past the statement
    timeout (60 s) and could never be committed, where an anti-join takes 0.2 s. Told by
    the plan, not by a time: a work_mem of 64 kB makes 1,000 such ids too many."""
    ids = [f"{n:04d}".rjust(128, "x") for n in range(1000)]
    batch = client.post(
        "/v1/ads/batch",
        json={"items": [{"external_id": id_, "ad": ad_payload()} for id_ in ids]},
        headers=portal.headers,
    )
    assert batch.json["counts"] == {"created": 1000}, batch.json["counts"]
    session_id = open_session(client, portal)
    items = [{"external_id": id_, "ad": ad_payload()} for id_ in ids[1:]]
    assert stage(client, portal, session_id, items).status_code == 200
    with wiring.engine.begin() as connection:
        connection.execute(text("ANALYZE ads, sync_session_items"))
    deletions = []

    def deletion_of_ads(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().startswith("DELETE FROM ads"):
            deletions.append((statement, parameters))

    event.listen(wiring.engine, "before_cursor_execute", deletion_of_ads)
    try:
        commit = client.post(f"/v1/sync-sessions/{session_id}/commit", headers=portal.headers)
    finally:
        event.remove(wiring.engine, "before_cursor_execute", deletion_of_ads)

    assert (commit.json["unchanged"], commit.json["deleted"]) == (999, 1), commit.json
    (statement, parameters), *_ = deletions
    with wiring.engine.begin() as connection:
        connection.execute(text("SET LOCAL work_mem = '64kB'"))
        plan = "\n".join(
            row[0] for row in connection.exec_driver_sql(f"EXPLAIN {statement}", parameters)
        )
    assert "SubPlan" not in plan, plan


def test_session_state_shows_counts(client, portal):
    session_id = open_session(client, portal)
    stage(
        client,
        portal,
        session_id,
        [{"external_id": f"a-{i}", "ad": ad_payload()} for i in range(3)],
    )
    state = client.get(f"/v1/sync-sessions/{session_id}", headers=portal.headers).json
    assert (state["status"], state["staged"], state["rejected"]) == ("open", 3, 0)


def test_batch_replace_deletes_ads_left_out_but_keeps_rejected_ones(client, portal):
    for external_id in ("a-1", "a-2", "a-3"):
        client.put(
            f"/v1/ads/{external_id}", json=ad_payload(title=external_id), headers=portal.headers
        )
    response = client.post(
        "/v1/ads/batch",
        json={
            "replace": True,
            "items": [
                {"external_id": "a-1", "ad": ad_payload(title="a-1 v2")},
                {"external_id": "a-2", "ad": ad_payload(title="x" * 201)},  # rejected
            ],
        },
        headers=portal.headers,
    )
    assert response.status_code == 200
    assert [r["status"] for r in response.json["results"]] == ["updated", "rejected"]
    assert response.json["deleted_by_replace"] == 1
    assert own_titles(client, portal) == {"a-1": "a-1 v2", "a-2": "a-2"}


UNNAMED_ITEMS = [
    {"external_id": 1842, "ad": ad_payload()},  # a number, not a string
    {"externalId": "a-1", "ad": ad_payload()},  # the key misspelt
    {"external_id": "has space", "ad": ad_payload()},
    {"ad": ad_payload()},
    "a-1",  # not an object at all
]


def test_a_replace_batch_with_an_item_naming_no_ad_is_refused_whole(client, portal):
    # Its ad could not be kept: it would be deleted for having been left out.
    for external_id in ("1842", "a-1", "a-2"):
        client.put(
            f"/v1/ads/{external_id}", json=ad_payload(title=external_id), headers=portal.headers
        )
    for unnamed in UNNAMED_ITEMS:
        response = client.post(
            "/v1/ads/batch",
            json={
                "replace": True,
                "items": [{"external_id": "a-2", "ad": ad_payload(title="a-2 v2")}, unnamed],
            },
            headers=portal.headers,
        )
        assert response.status_code == 400, response.json
        assert "external_id" in response.json["errors"]["json"]["items"]["1"], response.json
        assert own_titles(client, portal) == {"1842": "1842", "a-1": "a-1", "a-2": "a-2"}


def test_staging_an_item_naming_no_ad_is_refused_whole(client, portal):
    client.put("/v1/ads/1842", json=ad_payload(title="Kept"), headers=portal.headers)
    session_id = open_session(client, portal)
    for unnamed in UNNAMED_ITEMS:
        response = stage(
            client, portal, session_id, [{"external_id": "a-2", "ad": ad_payload()}, unnamed]
        )
        assert response.status_code == 400, response.json
        assert "external_id" in response.json["errors"]["json"]["items"]["1"], response.json
    state = client.get(f"/v1/sync-sessions/{session_id}", headers=portal.headers).json
    assert (state["staged"], state["rejected"]) == (0, 0)
    stage(client, portal, session_id, [{"external_id": "1842", "ad": ad_payload(title="New")}])
    client.post(f"/v1/sync-sessions/{session_id}/commit", headers=portal.headers)
    assert own_titles(client, portal) == {"1842": "New"}


def accepts_contact(client, portal) -> dict[str, bool]:
    items = client.get("/v1/portals/me/ads?limit=1000", headers=portal.headers).json["items"]
    return {ad["external_id"]: ad["accepts_contact"] for ad in items}


def test_a_sync_session_carries_accepts_contact(client, portal):
    client.put("/v1/ads/turned-off", json=ad_payload(), headers=portal.headers)
    session_id = open_session(client, portal)
    stage(
        client,
        portal,
        session_id,
        [
            {"external_id": "turned-off", "ad": ad_payload(accepts_contact=False)},
            {"external_id": "new-off", "ad": ad_payload(accepts_contact=False)},
            {"external_id": "new-default", "ad": ad_payload()},
        ],
    )
    result = client.post(f"/v1/sync-sessions/{session_id}/commit", headers=portal.headers)
    assert (result.json["created"], result.json["updated"]) == (2, 1), result.json
    assert accepts_contact(client, portal) == {
        "turned-off": False, "new-off": False, "new-default": True
    }  # fmt: skip


def test_items_staged_before_accepts_contact_existed_commit_accepting_contact(
    client, portal, wiring
):
    created = client.put("/v1/ads/a-1", json=ad_payload(), headers=portal.headers).json
    session_id = open_session(client, portal)
    stage(
        client,
        portal,
        session_id,
        [
            {"external_id": "a-1", "ad": ad_payload(accepts_contact=False)},
            {"external_id": "a-2", "ad": ad_payload(accepts_contact=False)},
        ],
    )
    # As the release before this one staged them: without the key.
    with unit_of_work(wiring.session_factory) as session:
        session.execute(text("UPDATE sync_session_items SET data = data - 'accepts_contact'"))
    result = client.post(f"/v1/sync-sessions/{session_id}/commit", headers=portal.headers)
    assert (result.json["created"], result.json["unchanged"]) == (1, 1), result.json
    assert accepts_contact(client, portal) == {"a-1": True, "a-2": True}
    own = client.get("/v1/portals/me/ads/a-1", headers=portal.headers).json
    assert own["version"] == created["version"]


def test_an_external_id_given_twice_in_one_request_keeps_the_first(client, portal):
    # The later one replaced the first, which had been reported staged.
    session_id = open_session(client, portal)
    response = stage(
        client,
        portal,
        session_id,
        [
            {"external_id": "a-1", "ad": ad_payload(title="First")},
            {"external_id": "a-1", "ad": ad_payload(title="x" * 201)},
        ],
    )
    assert [r["status"] for r in response.json["results"]] == ["staged", "rejected"]
    assert "first at item 0" in str(response.json["results"][1]["errors"])
    assert [r["error"] for r in response.json["results"]] == [None, "duplicate_external_id"]
    assert (response.json["session"]["staged"], response.json["session"]["rejected"]) == (1, 0)
    client.post(f"/v1/sync-sessions/{session_id}/commit", headers=portal.headers)
    assert own_titles(client, portal) == {"a-1": "First"}


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        (
            [
                {"external_id": "a-1", "ad": ad_payload(title="")},
                {"external_id": "a-1", "ad": ad_payload()},
            ],
            ["validation_error", "duplicate_external_id"],
        ),
        (
            [
                {"external_id": "a-1", "ad": ad_payload()},
                {"external_id": "a-1", "ad": ad_payload(title="")},
            ],
            [None, "duplicate_external_id"],
        ),
    ],
    ids=["malformed-first", "malformed-second"],
)
def test_an_external_id_given_again_after_any_first_item_is_a_duplicate_as_in_a_batch(
    client, portal, items, expected
):
    session_id = open_session(client, portal)

    response = stage(client, portal, session_id, items)

    assert [r["error"] for r in response.json["results"]] == expected, response.json


def test_a_staged_item_keeps_no_finer_location_than_its_ad_will(client, portal, wiring):
    # The point as sent stayed in the staging table, for up to a day and after the
    # commit until housekeeping, though approximate and area ads store only a cell's
    # centre and hidden ones no location at all.
    sent = {"lat": 51.4612345, "lon": -0.1112345}
    items = [
        {"external_id": privacy, "ad": ad_payload(location=sent, privacy=privacy)}
        for privacy in ("exact", "approximate", "area")
    ] + [{"external_id": "hidden", "ad": ad_payload(location=sent, privacy="hidden")}]
    session_id = open_session(client, portal)
    assert stage(client, portal, session_id, items).status_code == 200

    with unit_of_work(wiring.session_factory) as session:
        rows = session.execute(
            text("SELECT external_id, data->'location' FROM sync_session_items")
        ).all()
    staged = {external_id: location for external_id, location in rows}
    result = client.post(f"/v1/sync-sessions/{session_id}/commit", headers=portal.headers)
    assert result.json["created"] == 4, result.json

    stored = {
        ad["external_id"]: ad["location"]
        for ad in client.get("/v1/portals/me/ads", headers=portal.headers).json["items"]
    }
    assert staged == stored
    assert staged["hidden"] is None
    assert staged["exact"] == {"lat": 51.461235, "lon": -0.111235}
    assert staged["approximate"] != sent and staged["area"] != staged["approximate"]


@pytest.fixture(scope="module")
def small_sessions_client(migrated):
    """A second app on the same database, whose sync sessions stage at most 3 ads."""
    with app_with(migrated, sync_session_max_items=3) as app:
        yield app.test_client()


def test_a_session_stages_at_most_its_limit_of_ads_and_keeps_what_it_had(
    small_sessions_client, portal
):
    """Unbounded, one session took a commit as long as it liked (20,000 ads: 4.2 s; a
    million were past the API's worker timeout, and could be retried at will), and each
    read of its counts 0.5 µs per ad staged (300,000: 185 ms)."""
    client = small_sessions_client
    session_id = open_session(client, portal)
    items = [{"external_id": f"a-{n}", "ad": ad_payload()} for n in range(3)]
    assert stage(client, portal, session_id, items[:2]).status_code == 200
    # An external id staged already replaces what it had: no more ads.
    assert stage(client, portal, session_id, items[1:]).status_code == 200
    refused = stage(client, portal, session_id, [{"external_id": "a-3", "ad": ad_payload()}])
    assert refused.status_code == 409, refused.json
    assert refused.json["error"] == "sync_session_full"
    assert refused.json["errors"] == {"json": {"items": [refused.json["message"]]}}
    assert "at most 3 ads" in refused.json["message"]
    state = client.get(f"/v1/sync-sessions/{session_id}", headers=portal.headers).json
    assert (state["staged"], state["status"]) == (3, "open")
    assert stage(client, portal, session_id, items[:1]).status_code == 200
    commit = client.post(f"/v1/sync-sessions/{session_id}/commit", headers=portal.headers)
    assert commit.json["created"] == 3, commit.json


def test_a_portal_opens_at_most_its_limit_of_sessions_at_once(client, portal):
    """Each open session holds its staged ads until it ends: a client opening sessions
    in a loop held as many as it liked."""
    opened = [client.post("/v1/sync-sessions", headers=portal.headers) for _ in range(MAX_OPEN)]
    assert [response.status_code for response in opened] == [201] * MAX_OPEN

    refused = client.post("/v1/sync-sessions", headers=portal.headers)

    assert refused.status_code == 409, refused.json
    assert refused.json["error"] == "too_many_sync_sessions"
    message = refused.json["message"]
    assert f"has {MAX_OPEN} sync sessions open and may have at most {MAX_OPEN}" in message
    assert "commit or abort one" in message
    assert f"the first at {opened[0].json['expires_at']})" in message
    # Named oldest first, so that a portal that lost them can abort them.
    assert message.endswith(", ".join(response.json["id"] for response in opened))


def _end(how: str, client, portal, wiring, session_id: str) -> None:
    if how == "committed":
        answer = client.post(f"/v1/sync-sessions/{session_id}/commit", headers=portal.headers)
        assert answer.status_code == 200, answer.json
    elif how == "aborted":
        answer = client.delete(f"/v1/sync-sessions/{session_id}", headers=portal.headers)
        assert answer.status_code == 204, answer.json
    else:
        with unit_of_work(wiring.session_factory) as session:
            session.execute(
                update(SyncSession)
                .where(SyncSession.id == session_id)
                .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )


@pytest.mark.parametrize("how", ["committed", "aborted", "expired"])
def test_a_session_that_ended_makes_room_for_another(client, portal, wiring, how):
    ids = [open_session(client, portal) for _ in range(MAX_OPEN)]
    assert client.post("/v1/sync-sessions", headers=portal.headers).status_code == 409

    _end(how, client, portal, wiring, ids[-1])

    assert client.post("/v1/sync-sessions", headers=portal.headers).status_code == 201
    assert client.post("/v1/sync-sessions", headers=portal.headers).status_code == 409


def test_another_portals_open_sessions_do_not_count(client, portal, other_portal):
    for _ in range(MAX_OPEN):
        open_session(client, other_portal)

    assert client.post("/v1/sync-sessions", headers=portal.headers).status_code == 201


def test_two_openings_at_once_cannot_both_pass_the_limit(app, wiring, portal):
    """The second waits for the first, then counts the session it opened."""
    with unit_of_work(wiring.session_factory) as arrange:
        for _ in range(MAX_OPEN - 1):
            sync.open_session(arrange, portal_id=portal.id, ttl=timedelta(hours=1), max_open=99)
    answers = []
    with unit_of_work(wiring.session_factory) as first:
        sync.open_session(first, portal_id=portal.id, ttl=timedelta(hours=1), max_open=MAX_OPEN)
        racer = threading.Thread(
            target=lambda: answers.append(
                app.test_client().post("/v1/sync-sessions", headers=portal.headers)
            )
        )
        racer.start()
        wait_for_a_lock_wait(wiring, what="the racing opening")
    racer.join(30)

    (answer,) = answers
    assert answer.status_code == 409, answer.json
    assert answer.json["error"] == "too_many_sync_sessions"
    with unit_of_work(wiring.session_factory) as session:
        assert session.scalar(select(func.count()).select_from(SyncSession)) == MAX_OPEN


@pytest.fixture(scope="module")
def two_sessions_client(migrated):
    """A second app on the same database, whose portals have at most 2 sessions open."""
    with app_with(migrated, sync_session_max_open_per_portal=2) as app:
        yield app.test_client()


def test_the_limit_of_open_sessions_is_the_setting(two_sessions_client, portal):
    client = two_sessions_client
    assert [
        client.post("/v1/sync-sessions", headers=portal.headers).status_code for _ in range(3)
    ] == [201, 201, 409]
